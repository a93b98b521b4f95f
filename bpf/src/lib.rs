//! Palisade's XDP redirector (`redirect.bpf.c`, compiled by `build.rs`): loads it, attaches it to
//! interfaces with BPF links (so the kernel detaches it when the process exits, even after a
//! crash), registers AF_XDP sockets per RX queue, maintains the set of owned addresses, and reads
//! its per-CPU counters. On host endpoints it also attaches the TC egress program and shares the
//! table of admitted flows ([`FlowTable`]) with userspace.

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder, ProgramMut};
use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, RawFd};
use std::ptr::NonNull;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// XSKMAP slots per interface: room for this many RX queues each.
const SLOTS_PER_INTERFACE: u32 = 64;
const SOCKET_SLOTS: u32 = 16384;

/// What the redirector sends to userspace from an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every IPv4/IPv6 packet but neighbour discovery and admitted flows between the pod and
    /// the host (workload interfaces); the host's own packets to the pod are checked on egress.
    All = 1,
    /// Only packets to an owned address (uplinks); the rest goes to the kernel.
    Owned = 2,
    /// A host endpoint: admitted flows go to the kernel, everything else to userspace; the
    /// host's own outgoing packets are checked on TC egress the same way.
    Host = 3,
}

/// The mark on packets userspace sends out of a host endpoint itself (TC egress lets them pass).
pub const PALISADE_MARK: u32 = 0x50a1_5ade;

/// How the kernel runs the program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP): veth and most physical NICs.
    Native,
    /// In the generic network stack (after an skb is built): slower, works everywhere.
    Generic,
    /// Offloaded to the NIC.
    Offloaded,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offloaded => "offloaded",
        })
    }
}

/// The program's counters, in the order of the C enum.
pub const COUNTERS: [&str; 15] = [
    "rx",
    "redirected",
    "pass_not_ip",
    "pass_neighbour",
    "pass_not_owned",
    "pass_unconfigured",
    "drop_no_socket",
    "drop_truncated",
    "pass_host_flow",
    "egress_pass_flow",
    "egress_to_tap",
    "egress_pass_other",
    "egress_drop_no_tap",
    "reinjected",
    "reinject_drop",
];

/// An error of the redirector, naming the interface where there is one.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(context: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error(format!("{context}: {e}"))
}

/// An interface the program is attached to.
struct Attached {
    _link: Link,
    /// The TC egress program's link (host endpoints).
    _egress: Option<Link>,
    slot_base: u32,
    queues: u32,
}

/// The loaded program and its attachments. Dropping it detaches everything.
pub struct Redirector {
    object: Object,
    attached: HashMap<u32, Attached>,
    /// TAP devices' reinjection programs, by TAP ifindex.
    taps: HashMap<u32, Link>,
    free_bases: Vec<u32>,
}

/// The interface index of `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|e| err(format!("interface {name:?}"), e))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(err(format!("interface {name}"), std::io::Error::last_os_error())),
        i => Ok(i),
    }
}

impl Redirector {
    /// Loads the program and creates its maps.
    pub fn load() -> Result<Redirector, Error> {
        let open = ObjectBuilder::default().open_memory(OBJECT).map_err(|e| err("opening the XDP object", e))?;
        let object = open.load().map_err(|e| err("loading the XDP program (needs root and a BPF-enabled kernel)", e))?;
        Ok(Redirector {
            object,
            attached: HashMap::new(),
            taps: HashMap::new(),
            free_bases: (0..SOCKET_SLOTS / SLOTS_PER_INTERFACE).rev().map(|i| i * SLOTS_PER_INTERFACE).collect(),
        })
    }

    fn map(&self, name: &str) -> libbpf_rs::Map<'_> {
        self.object.maps().find(|m| m.name() == name).unwrap_or_else(|| panic!("map {name} is in the embedded object"))
    }

    fn program(&self) -> ProgramMut<'_> {
        self.program_named("palisade_redirect")
    }

    fn program_named(&self, name: &str) -> ProgramMut<'_> {
        self.object.progs_mut().find(|p| p.name() == name).unwrap_or_else(|| panic!("program {name} is in the embedded object"))
    }

    /// Attaches program `name` to `index` with a tcx link (`egress` or ingress).
    fn attach_tcx(&self, name: &str, index: u32, ctx: &str) -> Result<Link, Error> {
        let program = self.program_named(name);
        // SAFETY: the options struct is zeroed and sized as libbpf expects; the program pointer
        // is valid while `self.object` lives, and the returned link is owned by the `Link`.
        unsafe {
            let mut opts: libbpf_rs::libbpf_sys::bpf_tcx_opts = std::mem::zeroed();
            opts.sz = std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_tcx_opts>() as _;
            let raw =
                libbpf_rs::libbpf_sys::bpf_program__attach_tcx(libbpf_rs::AsRawLibbpf::as_libbpf_object(&program).as_ptr(), index as i32, &opts);
            match NonNull::new(raw) {
                Some(link) => Ok(Link::from_ptr(link)),
                None => Err(err(ctx, format!("attaching {name} (tcx, kernel 6.6+): {}", std::io::Error::last_os_error()))),
            }
        }
    }

    /// Attaches the reinjection program to the TAP device `tap`: frames written to it enter the
    /// ingress path of `into`, or (`None`, the workloads' shared TAP) of the interface of the
    /// owned address that sent them.
    pub fn reinject_from(&mut self, tap: u32, into: Option<u32>) -> Result<(), Error> {
        let ctx = format!("reinjecting from TAP device {tap}");
        if let Some(host) = into {
            self.map("tap_targets").update(&tap.to_ne_bytes(), &host.to_ne_bytes(), MapFlags::ANY).map_err(|e| err(&ctx, e))?;
        }
        if !self.taps.contains_key(&tap) {
            let link = self.attach_tcx("palisade_tap_ingress", tap, &ctx)?;
            self.taps.insert(tap, link);
        }
        Ok(())
    }

    /// Sends the undecided packets the host sends out of `iface` (attached in [`Mode::Host`] or
    /// [`Mode::All`]) to the TAP device `tap`.
    pub fn capture_egress(&self, iface: u32, tap: u32) -> Result<(), Error> {
        self.map("host_taps")
            .update(&iface.to_ne_bytes(), &tap.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| err(format!("capturing egress of {iface}"), e))
    }

    /// Undoes [`Redirector::reinject_from`].
    pub fn detach_tap(&mut self, tap: u32) {
        let _ = self.map("tap_targets").delete(&tap.to_ne_bytes());
        self.taps.remove(&tap);
    }

    /// Attaches the program to `interface` for `queues` RX queues, replacing any XDP program a
    /// previous run left attached, and reports how the kernel runs it. Until a socket is
    /// registered for a queue, that queue's redirected packets are dropped (fail closed).
    pub fn attach(&mut self, interface: &str, queues: u32, mode: Mode) -> Result<AttachMode, Error> {
        let ctx = format!("attaching XDP to {interface}");
        if queues == 0 || queues > SLOTS_PER_INTERFACE {
            return Err(err(ctx, format!("queues must be 1..={SLOTS_PER_INTERFACE}")));
        }
        let index = ifindex(interface)?;
        if self.attached.contains_key(&index) {
            return Err(err(ctx, "already attached"));
        }
        let slot_base = self.free_bases.pop().ok_or_else(|| err(&ctx, "too many interfaces"))?;
        let mut config = Vec::with_capacity(12);
        for v in [slot_base, queues, mode as u32] {
            config.extend_from_slice(&v.to_ne_bytes());
        }
        let link = self
            .map("interfaces")
            .update(&index.to_ne_bytes(), &config, MapFlags::ANY)
            .map_err(|e| err(&ctx, e))
            .and_then(|()| self.replace_stale(index, &ctx))
            .and_then(|()| self.program().attach_xdp(index as i32).map_err(|e| err(&ctx, e)))
            .and_then(|l| Ok((l, if mode == Mode::Owned { None } else { Some(self.attach_tcx("palisade_host_egress", index, &ctx)?) })));
        let (link, egress) = match link {
            Ok(l) => l,
            Err(e) => {
                let _ = self.map("interfaces").delete(&index.to_ne_bytes());
                self.free_bases.push(slot_base);
                return Err(e);
            }
        };
        self.attached.insert(index, Attached { _link: link, _egress: egress, slot_base, queues });
        let how = self.attach_mode(index).map_err(|e| err(&ctx, e))?;
        if mode == Mode::Host && how == AttachMode::Generic {
            let _ = self.detach(interface);
            return Err(err(ctx, "host endpoints need native XDP: generic XDP would see reinjected packets again"));
        }
        Ok(how)
    }

    /// Detaches an XDP program attached through netlink by an earlier run (a BPF link would
    /// have gone with its process). Programs held by another live link are left alone: the
    /// attach then fails with a clear error.
    fn replace_stale(&self, index: u32, ctx: &str) -> Result<(), Error> {
        let program = self.program();
        let xdp = libbpf_rs::Xdp::new(program.as_fd());
        if xdp.query_id(index as i32, libbpf_rs::XdpFlags::NONE).unwrap_or(0) != 0 {
            xdp.detach(index as i32, libbpf_rs::XdpFlags::NONE)
                .map_err(|e| err(ctx, format!("another XDP program is attached and could not be replaced: {e}")))?;
        }
        Ok(())
    }

    fn attach_mode(&self, index: u32) -> Result<AttachMode, libbpf_rs::Error> {
        let program = self.program();
        let q = libbpf_rs::Xdp::new(program.as_fd()).query(index as i32, libbpf_rs::XdpFlags::NONE)?;
        Ok(match u32::from(q.attach_mode) {
            libbpf_rs::libbpf_sys::XDP_ATTACHED_SKB => AttachMode::Generic,
            libbpf_rs::libbpf_sys::XDP_ATTACHED_HW => AttachMode::Offloaded,
            _ => AttachMode::Native,
        })
    }

    /// Detaches the program from `interface` and forgets its sockets.
    pub fn detach(&mut self, interface: &str) -> Result<(), Error> {
        let index = ifindex(interface)?;
        let a = self.attached.remove(&index).ok_or_else(|| err(format!("detaching XDP from {interface}"), "not attached"))?;
        let _ = self.map("interfaces").delete(&index.to_ne_bytes());
        let _ = self.map("host_taps").delete(&index.to_ne_bytes());
        for q in 0..a.queues {
            let _ = self.map("sockets").delete(&(a.slot_base + q).to_ne_bytes());
        }
        self.free_bases.push(a.slot_base);
        Ok(())
    }

    /// Registers the AF_XDP socket `fd` for RX queue `queue` of an attached interface.
    pub fn register_socket(&self, interface: &str, queue: u32, fd: RawFd) -> Result<(), Error> {
        let ctx = format!("registering the AF_XDP socket of {interface} queue {queue}");
        let index = ifindex(interface)?;
        let a = self.attached.get(&index).ok_or_else(|| err(&ctx, "XDP is not attached"))?;
        if queue >= a.queues {
            return Err(err(ctx, format!("the interface was attached with {} queues", a.queues)));
        }
        self.map("sockets").update(&(a.slot_base + queue).to_ne_bytes(), &(fd as u32).to_ne_bytes(), MapFlags::ANY).map_err(|e| err(ctx, e))
    }

    /// Marks `addr` as owned by the local endpoint on interface `ifindex` (redirected from
    /// `Mode::Owned` interfaces; the source of what the workloads' TAP reinjects), or not (`None`).
    pub fn set_owned(&self, addr: IpAddr, ifindex: Option<u32>) -> Result<(), Error> {
        let (map, key) = match addr {
            IpAddr::V4(a) => ("owned_v4", [32u32.to_ne_bytes().as_slice(), &a.octets()].concat()),
            IpAddr::V6(a) => ("owned_v6", [128u32.to_ne_bytes().as_slice(), &a.octets()].concat()),
        };
        let r = match ifindex {
            Some(i) => self.map(map).update(&key, &i.to_ne_bytes(), MapFlags::ANY),
            None => self.map(map).delete(&key),
        };
        match r {
            Err(e) if ifindex.is_none() && e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| err(format!("{} owned address {addr}", if ifindex.is_some() { "adding" } else { "removing" }), e)),
        }
    }

    /// A handle on the table of admitted host-endpoint flows, usable from any thread.
    pub fn flow_table(&self) -> Result<FlowTable, Error> {
        let map = libbpf_rs::MapHandle::try_from(&self.map("host_flows")).map_err(|e| err("opening the flow table", e))?;
        Ok(FlowTable { map })
    }

    /// The program's counters summed over CPUs, named as in [`COUNTERS`].
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let map = self.map("counters");
        COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let per_cpu = map.lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY).map_err(|e| err("reading XDP counters", e))?;
                let sum = per_cpu.unwrap_or_default().iter().map(|v| u64::from_ne_bytes(v[..8].try_into().expect("u64 values"))).sum();
                Ok((*name, sum))
            })
            .collect()
    }
}

/// A flow as it crosses a host endpoint one way: the key of the kernel's table of admitted flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The host endpoint's interface.
    pub ifindex: u32,
    /// Leaving through the interface (else arriving).
    pub egress: bool,
    /// IP protocol (TCP or UDP: the kernel side handles no others).
    pub protocol: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

const FLOW_KEY_LEN: usize = 44;

impl FlowKey {
    /// The same flow the other way through the same interface (its replies).
    pub fn reversed(&self) -> FlowKey {
        FlowKey { egress: !self.egress, src: self.dst, dst: self.src, src_port: self.dst_port, dst_port: self.src_port, ..*self }
    }

    fn bytes(&self) -> [u8; FLOW_KEY_LEN] {
        let mut b = [0u8; FLOW_KEY_LEN];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4] = self.egress as u8;
        b[5] = if self.src.is_ipv4() { 4 } else { 6 };
        b[6] = self.protocol;
        b[8..10].copy_from_slice(&self.src_port.to_be_bytes());
        b[10..12].copy_from_slice(&self.dst_port.to_be_bytes());
        for (at, a) in [(12, self.src), (28, self.dst)] {
            match a {
                IpAddr::V4(v) => b[at..at + 4].copy_from_slice(&v.octets()),
                IpAddr::V6(v) => b[at..at + 16].copy_from_slice(&v.octets()),
            }
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Option<FlowKey> {
        let addr = |at: usize| -> IpAddr {
            if b[5] == 4 {
                IpAddr::from(<[u8; 4]>::try_from(&b[at..at + 4]).expect("4 bytes"))
            } else {
                IpAddr::from(<[u8; 16]>::try_from(&b[at..at + 16]).expect("16 bytes"))
            }
        };
        (b.len() == FLOW_KEY_LEN).then(|| FlowKey {
            ifindex: u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
            egress: b[4] != 0,
            protocol: b[6],
            src_port: u16::from_be_bytes([b[8], b[9]]),
            dst_port: u16::from_be_bytes([b[10], b[11]]),
            src: addr(12),
            dst: addr(28),
        })
    }
}

/// An admitted flow as the kernel's table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The flow.
    pub key: FlowKey,
    /// Monotonic time (ns, as [`monotonic_ns`]) of its last packet through the kernel path; 0
    /// if none yet.
    pub seen: u64,
    /// Packets through the kernel path.
    pub packets: u64,
    /// The tag given to [`FlowTable::admit`].
    pub tag: u64,
}

/// The kernel's table of admitted host-endpoint flows: packets of these flows (but TCP SYN, FIN
/// and RST) bypass userspace. It is an LRU table: when full, the kernel forgets the least
/// recently used flows, whose packets then simply take the userspace path again.
pub struct FlowTable {
    map: libbpf_rs::MapHandle,
}

impl FlowTable {
    /// Admits a flow (its packets at this interface and direction go to the kernel), with a tag
    /// for userspace's own bookkeeping.
    pub fn admit(&self, key: &FlowKey, tag: u64) -> Result<(), Error> {
        let mut value = [0u8; 24];
        value[16..].copy_from_slice(&tag.to_ne_bytes());
        self.map.update(&key.bytes(), &value, MapFlags::ANY).map_err(|e| err(format!("admitting {key:?}"), e))
    }

    /// Forgets a flow (no error if it is not there).
    pub fn remove(&self, key: &FlowKey) {
        let _ = self.map.delete(&key.bytes());
    }

    /// Every admitted flow.
    pub fn entries(&self) -> Vec<FlowEntry> {
        self.map
            .keys()
            .filter_map(|k| {
                let key = FlowKey::from_bytes(&k)?;
                let v = self.map.lookup(&k, MapFlags::ANY).ok().flatten()?;
                let word = |i: usize| v.get(i * 8..i * 8 + 8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
                Some(FlowEntry { key, seen: word(0)?, packets: word(1)?, tag: word(2)? })
            })
            .collect()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel's last-seen times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_round_trip() {
        for (s, d) in [("10.0.0.1", "192.0.2.7"), ("fd00::1", "2001:db8::9")] {
            let k =
                FlowKey { ifindex: 7, egress: true, protocol: 6, src: s.parse().unwrap(), dst: d.parse().unwrap(), src_port: 40000, dst_port: 22 };
            assert_eq!(FlowKey::from_bytes(&k.bytes()), Some(k));
            assert_eq!(k.reversed().reversed(), k);
            assert_eq!((k.reversed().src_port, k.reversed().egress), (22, false));
        }
    }
}
