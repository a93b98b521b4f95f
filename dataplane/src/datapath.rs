//! The per-packet decision, independent of sockets: parse, connection tracking, the policy of
//! the source endpoint (egress) and of the destination endpoint (ingress), then the L3 route
//! with its MAC rewrite and TTL decrement. Workers call [`Datapath::decide`] for every frame.
//!
//! Paths, as on a Calico node:
//! - workload → local workload: source egress, then destination ingress;
//! - workload → elsewhere: source egress, out of the uplink to its gateway;
//! - uplink → local workload: destination ingress.
//!
//! A packet from a workload interface whose source address is not that workload's is dropped
//! (Calico's anti-spoofing check); a packet for an address the node has no route for is dropped.
//! A packet arriving on a host endpoint's interface goes through [`crate::host`] instead and,
//! if allowed, to the host's kernel. Between a pod and the host itself, as in Calico: the host
//! may always reach its pods (their ingress policy does not apply; the pod's replies are let in by
//! connection tracking), and a pod's new flow to the host goes through the pod's egress policy and
//! then the [`EndpointToHost`] action.
//!
//! A new flow that matches a Log rule is written to stderr as a `palisade-packet:` line (Calico
//! writes `calico-packet:` lines to the kernel log), at most [`LOG_LINES_PER_SECOND`] a second;
//! the rule's counter counts every match.

use crate::compile::{Classification, Program};
use crate::conntrack::{ConnTrack, Track};
use crate::host::{HostPath, HostSnapshot};
use crate::packet::{self, ForwardError, Packet};
use crate::stats::{self, Drop, WorkerStats};
use ahash::AHashMap as HashMap;
use palisade_policy::model::{proto, Action};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A MAC address.
pub type Mac = [u8; 6];

/// What an interface is to the dataplane.
#[derive(Clone, Debug)]
pub enum Role {
    /// The host side of a workload's veth; the index is into [`Snapshot::endpoints`].
    Workload(usize),
    /// The node's uplink: traffic to non-local addresses leaves here, to `gateway`.
    Uplink {
        /// The next hop's MAC address.
        gateway: Mac,
    },
}

/// An interface the dataplane receives from and transmits on.
#[derive(Clone, Debug)]
pub struct Interface {
    /// Name in the node's namespace.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Its own MAC (the source of frames we transmit on it).
    pub mac: Mac,
    /// Workload or uplink.
    pub role: Role,
}

/// A workload endpoint on this node, with its compiled policy.
#[derive(Clone, Debug)]
pub struct LocalEndpoint {
    /// `namespace/name`.
    pub name: String,
    /// Index into [`Snapshot::interfaces`].
    pub interface: usize,
    /// The workload's own MAC (destination of frames delivered to it).
    pub mac: Mac,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Policy for traffic it receives.
    pub ingress: Arc<Program>,
    /// Policy for traffic it sends.
    pub egress: Arc<Program>,
}

/// Everything a worker needs to decide, published as a whole by an atomic pointer swap.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Monotonic revision of the applied state.
    pub revision: u64,
    /// Interfaces, by position.
    pub interfaces: Vec<Interface>,
    /// Local workload endpoints.
    pub endpoints: Vec<LocalEndpoint>,
    /// Host endpoints.
    pub host: HostSnapshot,
    by_ifindex: HashMap<u32, usize>,
    by_ip: HashMap<IpAddr, usize>,
    uplink: Option<usize>,
}

impl Snapshot {
    /// Builds the lookup tables for these interfaces and endpoints.
    pub fn new(revision: u64, interfaces: Vec<Interface>, endpoints: Vec<LocalEndpoint>) -> Snapshot {
        let by_ifindex = interfaces.iter().enumerate().map(|(i, f)| (f.ifindex, i)).collect();
        let by_ip = endpoints.iter().enumerate().flat_map(|(i, e)| e.ips.iter().map(move |ip| (*ip, i))).collect();
        let uplink = interfaces.iter().position(|f| matches!(f.role, Role::Uplink { .. }));
        Snapshot { revision, interfaces, endpoints, host: HostSnapshot::default(), by_ifindex, by_ip, uplink }
    }

    /// The snapshot with these host endpoints.
    pub fn with_host(self, host: HostSnapshot) -> Snapshot {
        Snapshot { host, ..self }
    }

    /// The local endpoint owning `ip`.
    pub fn endpoint_of(&self, ip: IpAddr) -> Option<&LocalEndpoint> {
        self.by_ip.get(&ip).map(|&i| &self.endpoints[i])
    }
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame on this interface index.
    Forward(u32),
    /// Hand the frame to the host's kernel through this host interface's TAP device.
    ToHost(usize),
    /// Hand the frame (from a pod) to the host's kernel through the workloads' TAP device.
    PodToHost,
    /// Drop it, for this reason.
    Drop(Drop),
}

/// What happens to a pod's new flow to the host itself once the pod's egress policy allowed it
/// (Felix's `DefaultEndpointToHostAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointToHost {
    /// Dropped (Felix's default).
    Drop,
    /// Accepted.
    Accept,
}

/// Most Log-rule lines written per second (the rest are only counted).
pub const LOG_LINES_PER_SECOND: u64 = 100;

/// The decision logic shared by all workers.
pub struct Datapath {
    conntrack: Arc<ConnTrack>,
    /// Host endpoints' decision and the kernel's flow table.
    host: Option<Arc<HostPath>>,
    endpoint_to_host: EndpointToHost,
    /// The second (of the caller's clock) that the log budget is for, and the lines written in it.
    log_second: AtomicU64,
    log_lines: AtomicU64,
}

impl Datapath {
    /// A datapath tracking connections in `conntrack`.
    pub fn new(conntrack: Arc<ConnTrack>) -> Datapath {
        Datapath { conntrack, host: None, endpoint_to_host: EndpointToHost::Drop, log_second: AtomicU64::new(0), log_lines: AtomicU64::new(0) }
    }

    /// The datapath deciding host-endpoint traffic, and traffic between pods and the host, with
    /// `path`; a pod's new flows to the host that its egress policy allows meet `endpoint_to_host`.
    pub fn with_host(self, path: Arc<HostPath>, endpoint_to_host: EndpointToHost) -> Datapath {
        Datapath { host: Some(path), endpoint_to_host, ..self }
    }

    /// Decides a frame the host sends to one of its pods (always allowed: tracked so that the
    /// pod's replies are known); returns the pod's interface index.
    pub fn host_to_pod(&self, snap: &Snapshot, frame: &[u8], now: u64, stats: &WorkerStats) -> Result<u32, Drop> {
        let pkt = packet::parse(frame).map_err(|e| Drop::Malformed(e.name()))?;
        let ep = snap.endpoint_of(pkt.dst).ok_or(Drop::NoRoute)?;
        let ifindex = snap.interfaces[ep.interface].ifindex;
        match self.conntrack.track(&pkt, now) {
            Track::Invalid(why) => return Err(Drop::Invalid(why)),
            Track::New { .. } => self.conntrack.commit(&pkt, now, 0).map_err(|_| Drop::ConntrackFull)?,
            Track::Established { .. } | Track::Related { .. } => {
                stats.count_tracked();
                if let Some(path) = &self.host {
                    path.admit_tracked(ifindex, true, &pkt);
                }
            }
        }
        Ok(ifindex)
    }

    /// A pod's packet to the host itself: its replies and the packets of flows already allowed
    /// pass; a new flow needs the pod's egress policy, then the endpoint-to-host action.
    fn pod_to_host(&self, snap: &Snapshot, e: usize, ifindex: u32, pkt: &Packet, now: u64, stats: &WorkerStats) -> Verdict {
        match self.conntrack.track(pkt, now) {
            Track::Invalid(why) => return Verdict::Drop(Drop::Invalid(why)),
            Track::Established { .. } | Track::Related { .. } => {
                stats.count_tracked();
                if let Some(path) = &self.host {
                    path.admit_tracked(ifindex, false, pkt);
                }
                return Verdict::PodToHost;
            }
            Track::New { .. } => {}
        }
        let program = &snap.endpoints[e].egress;
        let c = program.classify(&pkt.flow());
        stats.count_rule(program, &c);
        if !c.allowed {
            return Verdict::Drop(Drop::Policy);
        }
        if self.endpoint_to_host == EndpointToHost::Drop {
            return Verdict::Drop(Drop::EndpointToHost);
        }
        match self.conntrack.commit(pkt, now, c.decided_by) {
            Ok(()) => Verdict::PodToHost,
            Err(_) => Verdict::Drop(Drop::ConntrackFull),
        }
    }

    /// Decides the fate of `frame`, received on `ifindex` at `now` (monotonic ns), and
    /// rewrites it for forwarding when allowed.
    pub fn decide(&self, snap: &Snapshot, ifindex: u32, frame: &mut [u8], now: u64, stats: &WorkerStats) -> Verdict {
        if let (Some(i), Some(path)) = (snap.host.interface(ifindex), &self.host) {
            return match path.decide(&snap.host, i, false, frame, now, stats) {
                Ok(()) => Verdict::ToHost(i),
                Err(why) => Verdict::Drop(why),
            };
        }
        let Some(&in_if) = snap.by_ifindex.get(&ifindex) else { return Verdict::Drop(Drop::UnknownInterface) };
        let pkt = match packet::parse(frame) {
            Ok(p) => p,
            Err(e) => return Verdict::Drop(Drop::Malformed(e.name())),
        };
        let src = match snap.interfaces[in_if].role {
            Role::Workload(e) if snap.by_ip.get(&pkt.src) == Some(&e) => Some(e),
            Role::Workload(_) => return Verdict::Drop(Drop::Spoofed),
            Role::Uplink { .. } if snap.by_ip.contains_key(&pkt.src) => return Verdict::Drop(Drop::Spoofed),
            Role::Uplink { .. } => None,
        };
        let dst = snap.by_ip.get(&pkt.dst).copied();
        // Only a destination that is no local endpoint can be the host itself (pod-to-pod
        // packets skip the lookup).
        if let (Some(e), None, Some(_)) = (src, dst, &self.host) {
            if snap.host.local.contains(&pkt.dst) {
                return self.pod_to_host(snap, e, ifindex, &pkt, now, stats);
            }
        }
        let (out_if, dst_mac) = match (dst, snap.uplink) {
            (Some(e), _) => (snap.endpoints[e].interface, snap.endpoints[e].mac),
            (None, Some(u)) if src.is_some() => match snap.interfaces[u].role {
                Role::Uplink { gateway } => (u, gateway),
                Role::Workload(_) => unreachable!("the uplink index points at the uplink"),
            },
            (None, _) => return Verdict::Drop(Drop::NoRoute),
        };
        match self.conntrack.track(&pkt, now) {
            Track::Established { .. } | Track::Related { .. } => stats.count_tracked(),
            Track::Invalid(why) => return Verdict::Drop(Drop::Invalid(why)),
            Track::New { .. } => {
                if let Some(v) = self.admit(snap, &pkt, src, dst, now, stats) {
                    return v;
                }
            }
        }
        let out = &snap.interfaces[out_if];
        match packet::rewrite_for_forward(frame, &pkt, out.mac, dst_mac) {
            Ok(()) => Verdict::Forward(out.ifindex),
            Err(ForwardError::TtlExceeded) => Verdict::Drop(Drop::TtlExceeded),
            Err(ForwardError::FrameMismatch) => Verdict::Drop(Drop::Malformed("frame_mismatch")),
        }
    }

    /// Runs the policy of a new flow; `None` if allowed (and now tracked).
    fn admit(&self, snap: &Snapshot, pkt: &Packet, src: Option<usize>, dst: Option<usize>, now: u64, stats: &WorkerStats) -> Option<Verdict> {
        let flow = pkt.flow();
        let mut tag = 0;
        for (endpoint, egress) in [(src, true), (dst, false)] {
            let Some(e) = endpoint else { continue };
            let ep = &snap.endpoints[e];
            let program = if egress { &ep.egress } else { &ep.ingress };
            let c = program.classify(&flow);
            stats.count_rule(program, &c);
            if !c.matched.is_empty() {
                self.log(program, &c, &ep.name, egress, pkt, now);
            }
            if !c.allowed {
                return Some(Verdict::Drop(Drop::Policy));
            }
            tag = c.decided_by;
        }
        match self.conntrack.commit(pkt, now, tag) {
            Ok(()) => None,
            Err(_) => Some(Verdict::Drop(Drop::ConntrackFull)),
        }
    }

    /// Writes a line for each Log rule (not staged) that the classification matched, within the
    /// budget of the current second.
    fn log(&self, program: &Program, c: &Classification, endpoint: &str, egress: bool, pkt: &Packet, now: u64) {
        let second = now / 1_000_000_000;
        for rule in program.matched_rules(c).filter(|r| r.action == Action::Log && !r.staged) {
            if self.log_second.swap(second, Relaxed) != second {
                self.log_lines.store(0, Relaxed);
            }
            if self.log_lines.fetch_add(1, Relaxed) >= LOG_LINES_PER_SECOND {
                return;
            }
            let proto = proto::name(pkt.protocol).map_or_else(|| pkt.protocol.to_string(), str::to_string);
            eprintln!(
                "palisade-packet: {} {} {endpoint} {proto} {} -> {}",
                stats::describe_rule(rule),
                if egress { "egress" } else { "ingress" },
                SocketAddr::new(pkt.src, pkt.src_port),
                SocketAddr::new(pkt.dst, pkt.dst_port),
            );
        }
    }
}
