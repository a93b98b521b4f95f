//! ClassBench filter sets: the public text format, and a generator of sets with the same shapes.
//!
//! Format (one filter per line, priority by line order):
//! `@10.1.2.0/24<TAB>192.168.0.0/16<TAB>0 : 65535<TAB>80 : 80<TAB>0x06/0xFF<TAB>0x0000/0x0000`
//! — source prefix, destination prefix, source port range, destination port range, protocol with
//! mask (mask 0 means any), and TCP flags with mask (ignored here, as by most classifiers).
//!
//! The generator reproduces the published characteristics of the three ClassBench seed families
//! (Taylor & Turner, 2007), not their seed files: *acl* (specific destinations, exact destination
//! ports, few wildcards), *fw* (many wildcard addresses and port ranges: the hardest to classify),
//! *ipc* (medium prefixes on both sides, mixed ports). Prefixes are drawn from nested pools so
//! that rules overlap the way real filter sets do.

use palisade_dataplane::classifier::tree::{TreeRule, FIELDS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;

/// One 5-tuple filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Source prefix (address, length).
    pub src: (u32, u8),
    /// Destination prefix.
    pub dst: (u32, u8),
    /// Source port range.
    pub sport: (u16, u16),
    /// Destination port range.
    pub dport: (u16, u16),
    /// Protocol, or `None` for any.
    pub proto: Option<u8>,
}

fn prefix_range((addr, len): (u32, u8)) -> (u32, u32) {
    if len == 0 {
        (0, u32::MAX)
    } else {
        let mask = u32::MAX << (32 - len);
        (addr & mask, (addr & mask) | !mask)
    }
}

impl Filter {
    /// The filter as a classifier rule.
    pub fn to_rule(self, priority: u32) -> TreeRule<u32> {
        let proto = match self.proto {
            Some(p) => (p as u32, p as u32),
            None => (0, 255),
        };
        TreeRule {
            priority,
            fields: [
                vec![prefix_range(self.src)],
                vec![prefix_range(self.dst)],
                vec![proto],
                vec![(self.sport.0 as u32, self.sport.1 as u32)],
                vec![(self.dport.0 as u32, self.dport.1 as u32)],
            ],
            checked: false,
        }
    }

    /// A random header inside the filter.
    pub fn random_point(self, rng: &mut StdRng) -> [u32; FIELDS] {
        let r = self.to_rule(0);
        let mut k = [0u32; FIELDS];
        for (f, iv) in r.fields.iter().enumerate() {
            k[f] = rng.gen_range(iv[0].0..=iv[0].1);
        }
        k
    }
}

/// Parses a ClassBench filter file; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Filter>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Filter, String> {
    let line = line.strip_prefix('@').ok_or("a filter starts with '@'")?;
    let parts: Vec<&str> = line.split('\t').map(str::trim).filter(|s| !s.is_empty()).collect();
    if parts.len() < 5 {
        return Err(format!("expected at least 5 tab-separated fields, found {}", parts.len()));
    }
    let prefix = |s: &str| -> Result<(u32, u8), String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a prefix"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("{l:?} is not a prefix length"))?;
        Ok((u32::from(addr), len))
    };
    let range = |s: &str| -> Result<(u16, u16), String> {
        let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?} is not a port range"))?;
        let p = |x: &str| x.trim().parse::<u16>().map_err(|_| format!("{x:?} is not a port"));
        let (lo, hi) = (p(a)?, p(b)?);
        if lo > hi {
            return Err(format!("port range {s:?} is reversed"));
        }
        Ok((lo, hi))
    };
    let (pv, pm) = parts[4].split_once('/').ok_or_else(|| format!("{:?} is not protocol/mask", parts[4]))?;
    let hex = |x: &str| u8::from_str_radix(x.trim_start_matches("0x").trim_start_matches("0X"), 16).map_err(|_| format!("{x:?} is not a hex byte"));
    let proto = match hex(pm)? {
        0 => None,
        0xff => Some(hex(pv)?),
        m => return Err(format!("protocol mask 0x{m:02x} is neither 0x00 nor 0xFF")),
    };
    Ok(Filter { src: prefix(parts[0])?, dst: prefix(parts[1])?, sport: range(parts[2])?, dport: range(parts[3])?, proto })
}

/// Writes filters in the ClassBench format.
pub fn format(filters: &[Filter]) -> String {
    let mut s = String::new();
    for f in filters {
        let (pv, pm) = match f.proto {
            Some(p) => (p, 0xff),
            None => (0, 0),
        };
        s.push_str(&format!(
            "@{}/{}\t{}/{}\t{} : {}\t{} : {}\t0x{:02x}/0x{:02X}\t0x0000/0x0000\n",
            Ipv4Addr::from(f.src.0),
            f.src.1,
            Ipv4Addr::from(f.dst.0),
            f.dst.1,
            f.sport.0,
            f.sport.1,
            f.dport.0,
            f.dport.1,
            pv,
            pm
        ));
    }
    s
}

/// The three ClassBench seed families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Access control lists.
    Acl,
    /// Firewalls.
    Fw,
    /// IP chains.
    Ipc,
}

/// A pool of nested prefixes: a few short parents, many longer children inside them.
struct PrefixPool {
    parents: Vec<u32>,
}

impl PrefixPool {
    fn new(rng: &mut StdRng, n: usize) -> Self {
        PrefixPool { parents: (0..n.max(4)).map(|_| rng.gen::<u32>() & 0xffff_0000).collect() }
    }

    /// A specific prefix (mostly /32 and /24).
    fn specific(&self, rng: &mut StdRng) -> (u32, u8) {
        let len = [32u8, 32, 32, 28, 24, 24, 20, 16][rng.gen_range(0..8)];
        self.draw(rng, len)
    }

    /// A medium prefix (/16 to /32).
    fn medium(&self, rng: &mut StdRng) -> (u32, u8) {
        let len = [16u8, 20, 24, 24, 26, 28, 32][rng.gen_range(0..7)];
        self.draw(rng, len)
    }

    /// A short prefix (/8 to /16).
    fn short(&self, rng: &mut StdRng) -> (u32, u8) {
        let len = [8u8, 12, 16][rng.gen_range(0..3)];
        self.draw(rng, len)
    }

    /// A prefix of length `len` inside one of the pool's /16 parents (or shorter).
    fn draw(&self, rng: &mut StdRng, len: u8) -> (u32, u8) {
        let parent = self.parents[rng.gen_range(0..self.parents.len())];
        let addr = if len <= 16 { parent } else { parent | (rng.gen::<u32>() & 0xffff) };
        (addr, len)
    }
}

const WELL_KNOWN: [u16; 12] = [20, 21, 22, 23, 25, 53, 80, 110, 123, 443, 1521, 3306];

fn port_exact(rng: &mut StdRng) -> (u16, u16) {
    let p = if rng.gen_bool(0.7) { WELL_KNOWN[rng.gen_range(0..WELL_KNOWN.len())] } else { rng.gen_range(1024..=65535) };
    (p, p)
}

fn port_range(rng: &mut StdRng) -> (u16, u16) {
    match rng.gen_range(0..4) {
        0 => (0, 1023),
        1 => (1024, 65535),
        2 => (49152, 65535),
        _ => {
            let lo = rng.gen_range(1000..60000);
            (lo, lo + rng.gen_range(1..2000))
        }
    }
}

/// Generates `n` filters of a shape, reproducibly from `seed`; the last is the default (match-all).
pub fn generate(shape: Shape, n: usize, seed: u64) -> Vec<Filter> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pool = PrefixPool::new(&mut rng, (n as f64).sqrt() as usize);
    let any = (0u32, 0u8);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let proto = |rng: &mut StdRng, p_any: f64| {
            if rng.gen_bool(p_any) {
                None
            } else if rng.gen_bool(0.8) {
                Some(6)
            } else if rng.gen_bool(0.8) {
                Some(17)
            } else {
                Some(1)
            }
        };
        let f = match shape {
            Shape::Acl => {
                let src = if rng.gen_bool(0.45) { any } else { pool.medium(&mut rng) };
                let dst = pool.specific(&mut rng);
                let dport = if rng.gen_bool(0.15) {
                    (0, 65535)
                } else if rng.gen_bool(0.8) {
                    port_exact(&mut rng)
                } else {
                    port_range(&mut rng)
                };
                Filter { src, dst, sport: (0, 65535), dport, proto: proto(&mut rng, 0.1) }
            }
            Shape::Fw => {
                let (src, dst) = match rng.gen_range(0..10) {
                    0..=2 => (any, pool.specific(&mut rng)),
                    3..=5 => (pool.specific(&mut rng), any),
                    6..=7 => (pool.medium(&mut rng), pool.medium(&mut rng)),
                    _ => (pool.short(&mut rng), any),
                };
                let sport = if rng.gen_bool(0.8) { (0, 65535) } else { port_range(&mut rng) };
                let dport = match rng.gen_range(0..10) {
                    0..=3 => (0, 65535),
                    4..=6 => port_range(&mut rng),
                    _ => port_exact(&mut rng),
                };
                Filter { src, dst, sport, dport, proto: proto(&mut rng, 0.35) }
            }
            Shape::Ipc => {
                let (src, dst) = match rng.gen_range(0..10) {
                    0..=1 => (any, pool.medium(&mut rng)),
                    2..=3 => (pool.medium(&mut rng), any),
                    _ => (pool.medium(&mut rng), pool.medium(&mut rng)),
                };
                let sport = if rng.gen_bool(0.85) { (0, 65535) } else { port_exact(&mut rng) };
                let dport = if rng.gen_bool(0.4) {
                    (0, 65535)
                } else if rng.gen_bool(0.7) {
                    port_exact(&mut rng)
                } else {
                    port_range(&mut rng)
                };
                Filter { src, dst, sport, dport, proto: proto(&mut rng, 0.2) }
            }
        };
        out.push(f);
    }
    // Filter sets end with a default rule, as ClassBench's seeds do.
    if let Some(last) = out.last_mut() {
        *last = Filter { src: any, dst: any, sport: (0, 65535), dport: (0, 65535), proto: None };
    }
    out
}

/// A trace: each header a random point inside a random filter.
pub fn trace_in_rules(filters: &[Filter], n: usize, seed: u64) -> Vec<[u32; FIELDS]> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| filters[rng.gen_range(0..filters.len())].random_point(&mut rng)).collect()
}

/// A trace of uniformly random headers (protocol among TCP, UDP and ICMP).
pub fn trace_uniform(n: usize, seed: u64) -> Vec<[u32; FIELDS]> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| [rng.gen(), rng.gen(), [6, 17, 1][rng.gen_range(0..3)], rng.gen_range(0..=65535), rng.gen_range(0..=65535)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_classbench_format_and_round_trips() {
        let text = "@10.1.2.0/24\t192.168.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0000\n@0.0.0.0/0\t1.2.3.4/32\t1024 : 65535\t0 : 65535\t0x00/0x00\t0x0000/0x0200\n";
        let f = parse(text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0], Filter { src: (0x0a01_0200, 24), dst: (0xc0a8_0000, 16), sport: (0, 65535), dport: (80, 80), proto: Some(6) });
        assert_eq!(f[1].proto, None);
        assert_eq!(parse(&format(&f)).unwrap(), f);
        let r = f[0].to_rule(3);
        assert_eq!(r.fields[0], vec![(0x0a01_0200, 0x0a01_02ff)]);
        assert_eq!(r.fields[1], vec![(0xc0a8_0000, 0xc0a8_ffff)]);
    }

    #[test]
    fn rejects_malformed_lines_with_the_line_number() {
        assert!(parse("@1.2.3.4/33\t0.0.0.0/0\t0 : 1\t0 : 1\t0x06/0xFF").unwrap_err().starts_with("line 1:"));
        assert!(parse("\n1.2.3.4/32").unwrap_err().starts_with("line 2:"));
        assert!(parse("@1.2.3.4/32\t0.0.0.0/0\t5 : 1\t0 : 1\t0x06/0xFF").unwrap_err().contains("reversed"));
        assert!(parse("@1.2.3.4/32\t0.0.0.0/0\t0 : 1\t0 : 1\t0x06/0x0F").unwrap_err().contains("mask"));
    }

    #[test]
    fn generated_points_lie_inside_their_filters() {
        for shape in [Shape::Acl, Shape::Fw, Shape::Ipc] {
            let f = generate(shape, 200, 7);
            assert_eq!(f, generate(shape, 200, 7), "generation is reproducible");
            let mut rng = StdRng::seed_from_u64(1);
            for x in &f {
                assert!(x.to_rule(0).matches(&x.random_point(&mut rng)));
            }
        }
    }
}
