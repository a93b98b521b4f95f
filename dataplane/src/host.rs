//! Host endpoints: policy on the host's own interfaces (Calico's HostEndpoint).
//!
//! - **Kernel side** (palisade-bpf): XDP on a host endpoint's interface lets the packets of
//!   admitted flows into the kernel and sends the rest to AF_XDP; tcx egress lets the host's own
//!   packets of admitted flows out and redirects the rest to the interface's TAP device. TCP SYN,
//!   FIN and RST always come to userspace, which tracks connection state.
//! - **Decision** ([`HostPath::decide`]): the steps of `palisade_policy::host` on compiled
//!   chains — failsafes, untracked policy, connection tracking (a table per interface, as a
//!   connection crosses each interface once each way), then pre-DNAT and normal or forward policy.
//! - **Delivery**: an allowed arriving packet is written to the interface's TAP device, whose tcx
//!   ingress program redirects it into the real interface's ingress path: the kernel receives it
//!   as if from the wire (reverse-path filter, sockets bound to the interface and nftables see the
//!   real interface) and delivers it to a local socket or routes it on. An allowed leaving packet
//!   is sent on its interface through a packet socket, marked so that tcx lets it pass.
//!   A tracked flow enters the kernel's flow table both ways with its first established packet
//!   (an untracked one at once, one way), so the rest of the connection stays in the kernel.

use crate::compile::{Classification, Program};
use crate::conntrack::{ConnTrack, Track};
use crate::packet::{self, FlowTuple, Packet};
use crate::stats::{Drop, WorkerStats};
use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use palisade_bpf::{FlowKey, FlowTable};
use palisade_policy::calc::{EndpointView, NodeView};
use palisade_policy::eval::Flow;
use palisade_policy::host::{final_chain, untracked_chain, Crossing, Failsafes};
use palisade_policy::model::{proto, Direction, EndpointKind, HostChain};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// One interface the dataplane protects as a host endpoint.
pub struct HostInterface {
    /// Interface name.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// The HostEndpoint that applies, with its compiled chains; `None`: not policed (Calico
    /// leaves interfaces without a host endpoint alone).
    pub endpoint: Option<HostEndpoint>,
    /// Connection tracking for the flows crossing this interface.
    pub conntrack: Arc<ConnTrack>,
    /// Its TAP device.
    pub tap: Arc<Tap>,
}

/// A host endpoint's compiled chains.
#[derive(Debug)]
pub struct HostEndpoint {
    /// The HostEndpoint's name.
    pub name: String,
    /// One program per chain, in the order of [`HostChain::ALL`].
    pub chains: Vec<Arc<Program>>,
}

/// What decided a packet at a host endpoint (the compiled counterpart of
/// `palisade_policy::host::HostStep`).
#[derive(Clone, Debug)]
pub enum Decided<'a> {
    /// A failsafe entry allowed it (tracked).
    Failsafe,
    /// A chain's program decided.
    Chain(HostChain, &'a Arc<Program>, Classification),
}

impl Decided<'_> {
    /// Whether the packet passes.
    pub fn allowed(&self) -> bool {
        match self {
            Decided::Failsafe => true,
            Decided::Chain(_, _, c) => c.allowed,
        }
    }
}

impl HostEndpoint {
    fn chain(&self, c: HostChain) -> &Arc<Program> {
        &self.chains[HostChain::ALL.iter().position(|x| *x == c).expect("every chain is compiled")]
    }

    /// Failsafes and untracked policy, for every packet (`palisade_policy::host::per_packet`);
    /// `None` when they do not decide and connection tracking comes next.
    pub fn per_packet(&self, failsafes: &Failsafes, crossing: Crossing, flow: &Flow) -> Option<Decided<'_>> {
        if crossing.local && failsafes.admits(crossing.direction, flow).is_some() {
            return Some(Decided::Failsafe);
        }
        let chain = untracked_chain(crossing)?;
        let program = self.chain(chain);
        let c = program.classify(flow);
        (!program.fell_through(&c)).then_some(Decided::Chain(chain, program, c))
    }

    /// Pre-DNAT, then normal or forward policy, for a new flow (`palisade_policy::host::new_flow`).
    pub fn new_flow(&self, crossing: Crossing, flow: &Flow) -> Decided<'_> {
        if crossing.direction == Direction::Ingress {
            let program = self.chain(HostChain::PreDnat);
            let c = program.classify(flow);
            if !program.fell_through(&c) {
                return Decided::Chain(HostChain::PreDnat, program, c);
            }
        }
        let chain = final_chain(crossing);
        let program = self.chain(chain);
        Decided::Chain(chain, program, program.classify(flow))
    }
}

impl std::fmt::Debug for HostInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostInterface").field("name", &self.name).field("ifindex", &self.ifindex).field("endpoint", &self.endpoint).finish()
    }
}

/// The host-endpoint part of a snapshot.
#[derive(Debug, Default)]
pub struct HostSnapshot {
    /// Revision of the state (tags flows admitted without connection tracking).
    pub revision: u64,
    /// Protected interfaces.
    pub interfaces: Vec<HostInterface>,
    /// The host's own addresses (traffic to or from them is local, else forwarded).
    pub local: HashSet<IpAddr>,
    /// Failsafe ports.
    pub failsafes: Failsafes,
    /// The TAP device that delivers pods' packets to the host and captures the host's packets
    /// to pods.
    pub workload_tap: Option<Arc<Tap>>,
    by_ifindex: HashMap<u32, usize>,
}

impl HostSnapshot {
    /// Builds the lookup tables.
    pub fn new(
        revision: u64,
        interfaces: Vec<HostInterface>,
        local: HashSet<IpAddr>,
        failsafes: Failsafes,
        workload_tap: Option<Arc<Tap>>,
    ) -> HostSnapshot {
        let by_ifindex = interfaces.iter().enumerate().map(|(i, f)| (f.ifindex, i)).collect();
        HostSnapshot { revision, interfaces, local, failsafes, workload_tap, by_ifindex }
    }

    /// The protected interface with this index.
    pub fn interface(&self, ifindex: u32) -> Option<usize> {
        self.by_ifindex.get(&ifindex).copied()
    }
}

/// How an allowed packet's flow enters the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// A tracked flow: enter it both ways in the kernel's table.
    Tracked,
    /// Allowed without tracking: enter this way only, tagged with the revision.
    Untracked,
}

/// The host-endpoint decision, shared by the workers (arriving packets) and the TAP reader
/// (leaving packets).
pub struct HostPath {
    flows: FlowTable,
}

impl HostPath {
    /// A path that admits flows into the kernel's table `flows`.
    pub fn new(flows: FlowTable) -> HostPath {
        HostPath { flows }
    }

    /// Decides a frame crossing protected interface `iface` (`egress`: leaving it) at `now`, and
    /// records the flow if it is allowed; `Err` with the reason to drop it.
    pub fn decide(&self, snap: &HostSnapshot, iface: usize, egress: bool, frame: &[u8], now: u64, stats: &WorkerStats) -> Result<(), Drop> {
        let f = &snap.interfaces[iface];
        let pkt = packet::parse(frame).map_err(|e| Drop::Malformed(e.name()))?;
        let direction = if egress { Direction::Egress } else { Direction::Ingress };
        let Some(hep) = &f.endpoint else {
            // Not policed: let it through, and the rest of its flow, until the state changes.
            self.admit(snap.revision, f.ifindex, direction, &pkt, Admit::Untracked);
            return Ok(());
        };
        let local = snap.local.contains(if egress { &pkt.src } else { &pkt.dst });
        let crossing = Crossing { direction, local };
        let flow = pkt.flow();
        let admit = |how| {
            self.admit(snap.revision, f.ifindex, direction, &pkt, how);
            Ok(())
        };
        // 1 and 2: failsafes and untracked policy, every packet.
        match hep.per_packet(&snap.failsafes, crossing, &flow) {
            Some(Decided::Failsafe) => {
                return match f.conntrack.track(&pkt, now) {
                    Track::New { .. } => f.conntrack.commit(&pkt, now, 0).map_err(|_| Drop::ConntrackFull),
                    _ => admit(Admit::Tracked),
                };
            }
            Some(Decided::Chain(_, program, c)) => {
                stats.count_rule(program, &c);
                return if c.allowed { admit(Admit::Untracked) } else { Err(Drop::Policy) };
            }
            None => {}
        }
        // 3. Connection tracking.
        match f.conntrack.track(&pkt, now) {
            Track::Established { .. } | Track::Related { .. } => {
                stats.count_tracked();
                return admit(Admit::Tracked);
            }
            Track::Invalid(why) => return Err(Drop::Invalid(why)),
            Track::New { .. } => {}
        }
        // 4. A new flow: pre-DNAT, then normal or forward policy.
        let Decided::Chain(_, program, c) = hep.new_flow(crossing, &flow) else { unreachable!("policy chains decide new flows") };
        stats.count_rule(program, &c);
        if !c.allowed {
            return Err(Drop::Policy);
        }
        // The flow enters the kernel's table with its first established packet: flows of one
        // packet (a DNS query, a scan) never cost the two table updates.
        f.conntrack.commit(&pkt, now, c.decided_by).map_err(|_| Drop::ConntrackFull)
    }

    /// Enters the tracked TCP or UDP flow of `pkt`, seen crossing `ifindex` (`egress`: leaving
    /// it), into the kernel's table both ways.
    pub fn admit_tracked(&self, ifindex: u32, egress: bool, pkt: &Packet) {
        let direction = if egress { Direction::Egress } else { Direction::Ingress };
        self.admit(0, ifindex, direction, pkt, Admit::Tracked);
    }

    /// Enters a TCP or UDP flow into the kernel's table: both ways for tracked flows, this way
    /// only (tagged with the revision) for untracked ones. A full or failing table only costs
    /// speed: the packets keep coming to userspace.
    fn admit(&self, revision: u64, ifindex: u32, direction: Direction, pkt: &Packet, how: Admit) {
        let flows = &self.flows;
        if !matches!(pkt.protocol, proto::TCP | proto::UDP) || pkt.fragment != packet::Fragment::None {
            return;
        }
        let key = FlowKey {
            ifindex,
            egress: direction == Direction::Egress,
            protocol: pkt.protocol,
            src: pkt.src,
            dst: pkt.dst,
            src_port: pkt.src_port,
            dst_port: pkt.dst_port,
        };
        match how {
            Admit::Tracked => {
                let _ = flows.admit(&key, 0);
                let _ = flows.admit(&key.reversed(), 0);
            }
            Admit::Untracked => {
                let _ = flows.admit(&key, revision.max(1));
            }
        }
    }

    /// Keeps connection tracking in step with the kernel's table and prunes it: tracked flows
    /// that passed in the kernel are kept alive, flows connection tracking has forgotten (closed,
    /// expired) leave the table, and so do untracked flows of an older revision or idle for
    /// `untracked_idle` ns. `to_epoch` converts the kernel's monotonic times to `now`'s clock.
    pub fn sweep(&self, snap: &HostSnapshot, now: u64, to_epoch: impl Fn(u64) -> u64, untracked_idle: u64) {
        for e in self.flows.entries() {
            let seen = (e.seen != 0).then(|| to_epoch(e.seen));
            let keep = match (e.tag, snap.interface(e.key.ifindex)) {
                (_, None) => false,
                (0, Some(i)) => {
                    let k = &e.key;
                    let tuple = FlowTuple { src: k.src, dst: k.dst, protocol: k.protocol, src_port: k.src_port, dst_port: k.dst_port };
                    snap.interfaces[i].conntrack.touch(&tuple, seen, now)
                }
                (tag, Some(_)) => tag == snap.revision.max(1) && seen.is_none_or(|s| now.saturating_sub(s) < untracked_idle),
            };
            if !keep {
                self.flows.remove(&e.key);
            }
        }
    }
}

/// A host interface's TAP device: the host receives the packets userspace allowed through it,
/// and userspace reads from it the packets the host sends that the kernel could not decide.
pub struct Tap {
    fd: OwnedFd,
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tap({})", self.name)
    }
}

impl Tap {
    /// The TAP device's name for the host interface with index `ifindex`.
    pub fn name_for(ifindex: u32) -> String {
        format!("palh{ifindex}")
    }

    /// Creates the TAP device `name` (it goes away with the process): up, no ARP, no IPv6
    /// addresses of its own, so that the kernel sends nothing through it by itself.
    pub fn open(name: &str) -> io::Result<Tap> {
        let path = c"/dev/net/tun";
        // SAFETY: a valid path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(with_context(io::Error::last_os_error(), "opening /dev/net/tun"));
        }
        // SAFETY: `fd` is a freshly opened descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // Non-blocking reads: the reader polls every TAP and drains what is ready.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: TUNSETIFF takes an ifreq, which lives for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(with_context(io::Error::last_os_error(), &format!("creating TAP device {name}")));
        }
        let file = format!("/proc/sys/net/ipv6/conf/{name}/addr_gen_mode");
        // IPv6 may be disabled: the file is then missing, which is fine.
        if let Err(e) = std::fs::write(&file, "1") {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(with_context(e, &file));
            }
        }
        set_up(name)?;
        let ifindex = palisade_bpf::ifindex(name).map_err(io::Error::other)?;
        Ok(Tap { fd, name: name.to_string(), ifindex })
    }

    /// Hands an arriving frame to the kernel, which receives it as if from the paired interface.
    pub fn deliver(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: writes `frame.len()` bytes from a valid buffer.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, to poll for frames to read.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame the host sent (`Ok(0)`: none waiting).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into a valid buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        Ok(n as usize)
    }
}

/// Sends the host's frames that userspace allowed out of their interface, bypassing the qdisc
/// layer and TC, and marked (so TC egress would let them pass anyway).
pub struct EgressSocket {
    fd: OwnedFd,
}

impl EgressSocket {
    /// Opens the packet socket.
    pub fn open() -> io::Result<EgressSocket> {
        // SAFETY: plain socket call; checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(with_context(io::Error::last_os_error(), "opening a packet socket"));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let mark = palisade_bpf::PALISADE_MARK as libc::c_int;
        for (level, opt, v) in [(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, one), (libc::SOL_SOCKET, libc::SO_MARK, mark)] {
            // SAFETY: an int option of the right size.
            if unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, (&v as *const libc::c_int).cast(), 4) } < 0 {
                return Err(with_context(io::Error::last_os_error(), "configuring the packet socket"));
            }
        }
        Ok(EgressSocket { fd })
    }

    /// Sends a whole frame out of `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid buffer and address of the stated sizes.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Every address configured on this host's interfaces (in the caller's network namespace), with
/// its interface's name.
pub fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: getifaddrs gives each node a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
            // SAFETY: the family says which sockaddr type the address is.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push((name, IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes())));
                }
                libc::AF_INET6 => {
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push((name, IpAddr::from(a.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The host endpoint of a node's view that applies to interface `iface` (with addresses
/// `addrs`): the one naming the interface; else one without an interface name whose expected
/// IPs are on it; else an all-interfaces (`*`) one. Ties go to the first by name.
pub fn endpoint_for<'a>(view: &'a NodeView, iface: &str, addrs: &[IpAddr]) -> Option<&'a EndpointView> {
    // The view's endpoints are sorted by name: the first found wins ties.
    let heps = || view.endpoints.values().map(|e| &**e).filter(|e| e.kind == EndpointKind::Host);
    let named = |want: &str| heps().find(|e| e.interface.as_deref() == Some(want));
    named(iface)
        .or_else(|| heps().find(|e| e.interface.as_deref().unwrap_or("").is_empty() && addrs.iter().any(|a| e.has_ip(*a))))
        .or_else(|| named("*"))
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("interface name {name:?} must be 1..{} bytes", libc::IFNAMSIZ)));
    }
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: a plain socket for the interface ioctls; closed by OwnedFd.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = ifreq(name)?;
    // SAFETY: the ioctls read and write the ifreq, which lives for the calls.
    unsafe {
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(with_context(io::Error::last_os_error(), &format!("reading the flags of {name}")));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(with_context(io::Error::last_os_error(), &format!("bringing {name} up")));
        }
    }
    Ok(())
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
