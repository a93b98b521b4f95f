//! The host-endpoint pipeline: how Calico decides a packet that crosses a host endpoint, as a
//! reference for the dataplane (which runs the same steps on compiled chains).
//!
//! Per packet, in order:
//! 1. **Failsafes**: traffic to the host on an inbound failsafe port, from the host to an
//!    outbound failsafe port, and the replies of both, is allowed before any policy, so an
//!    operator cannot lock themselves out (Felix's `FailsafeInboundHostPorts` and
//!    `FailsafeOutboundHostPorts`). Failsafes concern the host's own traffic, not forwarded traffic.
//! 2. **Untracked policy** (`doNotTrack`): ingress rules for every packet arriving through the
//!    endpoint, egress rules for the host's own packets leaving through it. Allow accepts the
//!    packet without connection tracking, Deny drops it (even in an established connection),
//!    no match goes on.
//! 3. **Connection tracking**: a packet of an established connection is allowed.
//! 4. A new flow: **pre-DNAT policy** (ingress) — Allow and Deny decide, no match goes on; then
//!    **normal policy** for the host's own traffic (tiers, profiles, default deny), or, for
//!    traffic routed through the host, the `applyOnForward` policies (allowed if none applies).

use crate::eval::{DirectionVerdict, Evaluator, Flow};
use crate::model::{proto, Direction, Endpoint, HostChain};
use ipnet::IpNet;
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;

/// One failsafe entry: a protocol, a port, and optionally the remote network it is open to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Failsafe {
    /// IP protocol number (TCP, UDP or SCTP).
    pub protocol: u8,
    /// The remote network (any when unset).
    pub net: Option<IpNet>,
    /// The port on the far side: the host's listening port for inbound entries, the remote
    /// service's port for outbound ones.
    pub port: u16,
}

impl fmt::Display for Failsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = proto::name(self.protocol).unwrap_or("?").to_lowercase();
        match self.net {
            Some(n) => write!(f, "{p}:{n}:{}", self.port),
            None => write!(f, "{p}:{}", self.port),
        }
    }
}

/// Felix's default `FailsafeInboundHostPorts`.
pub const DEFAULT_INBOUND: &str = "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
/// Felix's default `FailsafeOutboundHostPorts`.
pub const DEFAULT_OUTBOUND: &str = "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";

/// Parses a failsafe list in Felix's syntax: comma-separated `port`, `proto:port` or
/// `proto:cidr:port` entries (TCP when the protocol is left out), or `none`.
pub fn parse_failsafes(list: &str) -> Result<Vec<Failsafe>, String> {
    let list = list.trim();
    if list.eq_ignore_ascii_case("none") || list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',').map(|e| parse_entry(e.trim())).collect()
}

fn parse_entry(e: &str) -> Result<Failsafe, String> {
    let bad = |why: &str| format!("failsafe entry {e:?}: {why} (expected port, proto:port or proto:cidr:port)");
    let (proto_part, rest) = match e.split_once(':') {
        Some((p, rest)) => (Some(p), rest),
        None => (None, e),
    };
    let (net, port) = match rest.rsplit_once(':') {
        Some((n, p)) => {
            let n = n.trim_start_matches('[').trim_end_matches(']');
            (Some(n.parse::<IpNet>().or_else(|_| n.parse::<IpAddr>().map(IpNet::from)).map_err(|_| bad("bad network"))?), p)
        }
        None => (None, rest),
    };
    let protocol = match proto_part.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => proto::TCP,
        Some("udp") => proto::UDP,
        Some("sctp") => proto::SCTP,
        Some(_) => return Err(bad("protocol must be tcp, udp or sctp")),
    };
    let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
    Ok(Failsafe { protocol, net, port })
}

/// The failsafe ports of a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failsafes {
    /// Open to the host (matched on the destination port, the remote is the source).
    pub inbound: Vec<Failsafe>,
    /// Open from the host (matched on the destination port, the remote is the destination).
    pub outbound: Vec<Failsafe>,
}

impl Default for Failsafes {
    fn default() -> Self {
        Failsafes {
            inbound: parse_failsafes(DEFAULT_INBOUND).expect("valid default"),
            outbound: parse_failsafes(DEFAULT_OUTBOUND).expect("valid default"),
        }
    }
}

impl Failsafes {
    /// No failsafes (`none` for both).
    pub fn none() -> Self {
        Failsafes { inbound: Vec::new(), outbound: Vec::new() }
    }

    /// The entry that lets a packet of the host's own traffic through, crossing the host endpoint
    /// in `dir` (ingress: to the host): a request to a failsafe port or its reply.
    pub fn admits(&self, dir: Direction, flow: &Flow) -> Option<&Failsafe> {
        fn hit(list: &[Failsafe], protocol: u8, remote: IpAddr, port: u16) -> Option<&Failsafe> {
            list.iter().find(|f| f.protocol == protocol && f.port == port && f.net.is_none_or(|n| n.contains(&remote)))
        }
        let p = flow.protocol;
        if !proto::has_ports(flow.protocol) {
            return None;
        }
        match dir {
            // A request to an inbound port, or the reply from an outbound one.
            Direction::Ingress => hit(&self.inbound, p, flow.src, flow.dst_port).or_else(|| hit(&self.outbound, p, flow.src, flow.src_port)),
            Direction::Egress => hit(&self.outbound, p, flow.dst, flow.dst_port).or_else(|| hit(&self.inbound, p, flow.dst, flow.src_port)),
        }
    }
}

/// How a packet crosses a host endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Crossing {
    /// Ingress: arriving through the endpoint's interface; egress: leaving through it.
    pub direction: Direction,
    /// To or from the host's own processes (false: routed through the host).
    pub local: bool,
}

/// What decided a packet at a host endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum HostStep {
    /// A failsafe entry.
    Failsafe {
        /// The entry, in Felix's syntax.
        entry: String,
    },
    /// A policy chain.
    Chain {
        /// Which chain.
        chain: HostChain,
        /// Its verdict.
        verdict: DirectionVerdict,
    },
}

/// The outcome for a packet at a host endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostVerdict {
    /// Whether the packet passes.
    pub allowed: bool,
    /// Whether an allowed packet's flow is recorded by connection tracking (false when untracked
    /// policy allowed it).
    pub tracked: bool,
    /// The step that decided.
    pub step: HostStep,
}

impl HostVerdict {
    fn chain(chain: HostChain, verdict: DirectionVerdict) -> HostVerdict {
        HostVerdict { allowed: verdict.allowed, tracked: !matches!(chain, HostChain::Untracked(_)), step: HostStep::Chain { chain, verdict } }
    }
}

/// The chain a new flow's verdict ends in after pre-DNAT: normal policy for the host's own
/// traffic, forward policy for routed traffic.
pub fn final_chain(crossing: Crossing) -> HostChain {
    if crossing.local {
        HostChain::Normal(crossing.direction)
    } else {
        HostChain::Forward(crossing.direction)
    }
}

/// The untracked chain a packet meets, if any: ingress rules for every arriving packet, egress
/// rules for the host's own leaving packets.
pub fn untracked_chain(crossing: Crossing) -> Option<HostChain> {
    (crossing.direction == Direction::Ingress || crossing.local).then_some(HostChain::Untracked(crossing.direction))
}

/// Steps 1 and 2 (failsafes, untracked policy), which every packet goes through; `None` when
/// they do not decide and connection tracking comes next.
pub fn per_packet(ev: &Evaluator<'_>, failsafes: &Failsafes, hep: &Endpoint, crossing: Crossing, flow: &Flow) -> Option<HostVerdict> {
    if crossing.local {
        if let Some(f) = failsafes.admits(crossing.direction, flow) {
            return Some(HostVerdict { allowed: true, tracked: true, step: HostStep::Failsafe { entry: f.to_string() } });
        }
    }
    let chain = untracked_chain(crossing)?;
    let v = ev.host_chain(hep, chain, flow, false);
    (v.decided_by != crate::eval::Decision::FallThrough).then(|| HostVerdict::chain(chain, v))
}

/// Step 4: the verdict for the first packet of a new (tracked) flow.
pub fn new_flow(ev: &Evaluator<'_>, hep: &Endpoint, crossing: Crossing, flow: &Flow) -> HostVerdict {
    if crossing.direction == Direction::Ingress {
        let v = ev.host_chain(hep, HostChain::PreDnat, flow, false);
        if v.decided_by != crate::eval::Decision::FallThrough {
            return HostVerdict::chain(HostChain::PreDnat, v);
        }
    }
    let chain = final_chain(crossing);
    HostVerdict::chain(chain, ev.host_chain(hep, chain, flow, false))
}

/// The verdict for a packet that connection tracking does not know (the first of its flow).
pub fn first_packet(ev: &Evaluator<'_>, failsafes: &Failsafes, hep: &Endpoint, crossing: Crossing, flow: &Flow) -> HostVerdict {
    per_packet(ev, failsafes, hep, crossing, flow).unwrap_or_else(|| new_flow(ev, hep, crossing, flow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failsafe_syntax() {
        let f = parse_failsafes("22, udp:68 ,tcp:10.0.0.0/8:2379,udp:[fd00::/64]:53,sctp:fd00::1:9").unwrap();
        assert_eq!(f[0], Failsafe { protocol: proto::TCP, net: None, port: 22 });
        assert_eq!(f[1], Failsafe { protocol: proto::UDP, net: None, port: 68 });
        assert_eq!(f[2].net, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(f[3].net, Some("fd00::/64".parse().unwrap()));
        assert_eq!((f[4].protocol, f[4].net, f[4].port), (proto::SCTP, Some("fd00::1/128".parse().unwrap()), 9));
        assert_eq!(f[2].to_string(), "tcp:10.0.0.0/8:2379");
        assert!(parse_failsafes("none").unwrap().is_empty());
        for bad in ["tcp:x", "icmp:1", "tcp:10.0.0.0/33:22", "70000"] {
            assert!(parse_failsafes(bad).is_err(), "{bad}");
        }
        assert_eq!(Failsafes::default().inbound.len(), 9);
    }

    #[test]
    fn failsafes_admit_requests_and_their_replies() {
        let f = Failsafes { inbound: parse_failsafes("tcp:10.0.0.0/8:22").unwrap(), outbound: parse_failsafes("udp:53").unwrap() };
        let flow = |src: &str, dst: &str, protocol, sp, dp| Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port: sp,
            dst_port: dp,
            icmp_type: None,
            icmp_code: None,
        };
        assert!(f.admits(Direction::Ingress, &flow("10.1.1.1", "192.0.2.1", proto::TCP, 40000, 22)).is_some());
        assert!(f.admits(Direction::Ingress, &flow("11.1.1.1", "192.0.2.1", proto::TCP, 40000, 22)).is_none(), "outside the net");
        assert!(f.admits(Direction::Ingress, &flow("10.1.1.1", "192.0.2.1", proto::UDP, 40000, 22)).is_none(), "other protocol");
        assert!(f.admits(Direction::Egress, &flow("192.0.2.1", "10.1.1.1", proto::TCP, 22, 40000)).is_some(), "reply of inbound");
        assert!(f.admits(Direction::Egress, &flow("192.0.2.1", "8.8.8.8", proto::UDP, 5000, 53)).is_some());
        assert!(f.admits(Direction::Ingress, &flow("8.8.8.8", "192.0.2.1", proto::UDP, 53, 5000)).is_some(), "reply of outbound");
        assert!(f.admits(Direction::Egress, &flow("192.0.2.1", "10.1.1.1", proto::TCP, 40000, 22)).is_none(), "22 is not outbound");
    }
}
