//! The node agent: reads the cluster state from manifest files (standalone) or follows a
//! `palisade-control` over gRPC, compiles it,
//! and keeps the packet path in step — XDP on each local workload's interface, the uplink and
//! each protected host interface, one AF_XDP socket per (interface, queue) handed to that queue's
//! worker, and a new [`Snapshot`] published by an atomic swap whenever the state (or the host's
//! set of addresses) changes. A state that fails to load is reported and ignored: the last good
//! one stays enforced. With host interfaces, it also runs the TAP reader that decides the host's
//! own outgoing packets, and once a second reconciles the kernel's table of admitted flows with
//! connection tracking.

use crate::afxdp::QueueSocket;
use crate::compile::Compiler;
use crate::conntrack::{self, ConnTrack};
use crate::datapath::{Datapath, EndpointToHost, Interface, LocalEndpoint, Mac, Role, Snapshot};
use crate::host::{self, EgressSocket, HostEndpoint, HostInterface, HostPath, HostSnapshot, Tap};
use crate::report::Reporter;
use crate::stats::{self, Drop, WorkerStats};
use crate::worker::{Command, Wait, Worker};
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use palisade_bpf::{Mode, Redirector};
use palisade_control::client::Event;
use palisade_control::felix::Receiver;
use palisade_policy::calc::NodeView;
use palisade_policy::host::Failsafes;
use palisade_policy::model::{parse_mac, workload_mac, Direction, EndpointKind, HostChain};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the cluster state comes from.
    pub source: Source,
    /// RX queues per interface (one worker each).
    pub queues: u32,
    /// Only endpoints of this node (all endpoints when unset).
    pub node: Option<String>,
    /// The uplink interface and its gateway's MAC.
    pub uplink: Option<(String, Mac)>,
    /// How workers wait for packets.
    pub wait: Wait,
    /// Where to serve counters as JSON (`palisadectl stats`).
    pub stats_socket: Option<PathBuf>,
    /// Connection-table capacity (of the workload table, and of each host interface's).
    pub conntrack_capacity: usize,
    /// Host interfaces to protect with their HostEndpoints.
    pub host_interfaces: Vec<String>,
    /// Failsafe ports of the host endpoints.
    pub failsafes: Failsafes,
    /// What happens to pods' new flows to the host that their egress policy allows.
    pub endpoint_to_host: EndpointToHost,
}

/// Untracked (and unpoliced) flows leave the kernel's table after this long without a packet.
const UNTRACKED_IDLE: Duration = Duration::from_secs(60);

/// Where the agent reads the cluster state.
#[derive(Clone, Debug)]
pub enum Source {
    /// Manifest files and directories, watched for changes.
    Files(Vec<PathBuf>),
    /// A `palisade-control` at this URL, followed over gRPC (with mutual TLS when given).
    Control(String, palisade_control::tls::Security),
    /// A Calico Felix driving the agent as its external dataplane: `ToDataplane` messages on
    /// file descriptor 3, `FromDataplane` reports on file descriptor 4.
    FelixDriver,
}

/// The node's view as it arrives from a [`Source`].
enum Feed {
    /// Manifests: the view is computed here.
    Files(Vec<PathBuf>, palisade_policy::load::Stamp),
    /// Felix's dataplane messages (from a control plane or a Felix), rebuilt into the view.
    Messages(std::sync::mpsc::Receiver<Event>, Receiver),
}

/// What [`Feed::next`] found.
#[derive(Default)]
struct Next {
    /// A new view to enforce.
    view: Option<NodeView>,
    /// Why a new state or message was refused (the rest stays as it was).
    error: Option<String>,
}

fn messages(errs: &[palisade_policy::Error]) -> String {
    errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

impl Feed {
    /// Starts reading `source`; returns the first view of `node` (waiting for a message stream's
    /// first `InSync`).
    fn start(source: &Source, node: Option<&str>, stop: &Arc<AtomicBool>) -> Result<(Feed, NodeView), String> {
        let events = match source {
            Source::Files(paths) => {
                let stamp = palisade_policy::load::stamp(paths);
                let cluster = palisade_policy::load_cluster(paths).map_err(|e| messages(&e))?;
                return Ok((Feed::Files(paths.clone(), stamp), NodeView::compute(&cluster, node)));
            }
            Source::Control(url, security) => {
                palisade_control::client::follow(url.clone(), node.unwrap_or_default().to_string(), security.clone(), stop.clone())
                    .map_err(|e| e.to_string())?
            }
            Source::FelixDriver => crate::felix_driver::read_messages(stop.clone()).map_err(|e| format!("reading Felix's messages on fd 3: {e}"))?,
        };
        let mut feed = Feed::Messages(events, Receiver::new());
        loop {
            let next = feed.next(node, Duration::from_millis(200));
            if let Some(e) = next.error {
                eprintln!("palisade-dataplane: refused: {e}");
            }
            if let Some(view) = next.view {
                return Ok((feed, view));
            }
            if stop.load(Ordering::Relaxed) {
                return Err("stopped before the first snapshot arrived".into());
            }
        }
    }

    /// What arrived within `wait` (files are looked at after `wait`; messages are taken as soon
    /// as they arrive, with all that follow them at once).
    fn next(&mut self, node: Option<&str>, wait: Duration) -> Next {
        match self {
            Feed::Files(paths, stamp) => {
                std::thread::sleep(wait);
                let now = palisade_policy::load::stamp(paths);
                if now == *stamp {
                    return Next::default();
                }
                *stamp = now;
                match palisade_policy::load_cluster(paths) {
                    Ok(c) => Next { view: Some(NodeView::compute(&c, node)), error: None },
                    Err(e) => Next { view: None, error: Some(messages(&e)) },
                }
            }
            Feed::Messages(events, receiver) => {
                let first = match events.recv_timeout(wait) {
                    Ok(e) => e,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Next::default(),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(wait);
                        return Next::default();
                    }
                };
                let mut errors = Vec::new();
                for event in std::iter::once(first).chain(events.try_iter()) {
                    match event {
                        Event::Restarted => receiver.restart(),
                        Event::Message(m) => {
                            if let Err(e) = receiver.apply(*m) {
                                errors.push(e);
                            }
                        }
                    }
                }
                let view = if receiver.take_changed() { receiver.view().cloned() } else { None };
                Next { view, error: (!errors.is_empty()).then(|| errors.join("\n")) }
            }
        }
    }

    /// The datastore revision of the enforced messages (0 for files and for a Felix).
    fn revision(&self) -> i64 {
        match self {
            Feed::Files(..) => 0,
            Feed::Messages(_, r) => r.revision(),
        }
    }

    /// Whether the view is complete: a message stream is not between a reconnection and the
    /// new snapshot's `InSync`.
    fn in_sync(&self) -> bool {
        match self {
            Feed::Files(..) => true,
            Feed::Messages(_, r) => r.in_sync(),
        }
    }
}

/// What the agent reports about itself.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    /// Revision of the enforced state (1 = first load; one more for every state applied).
    pub revision: u64,
    /// The control plane's datastore revision of the enforced state (0 for files and a Felix).
    pub applied_revision: i64,
    /// Whether the enforced state is a complete snapshot plus every change since (false while
    /// a reconnected stream's new snapshot is being received).
    pub in_sync: bool,
    /// The last state load that failed, if it is newer than the enforced one.
    pub last_error: Option<String>,
    /// Interfaces with XDP attached, and how the kernel runs it.
    pub interfaces: BTreeMap<String, String>,
    /// Local endpoints enforced.
    pub endpoints: Vec<String>,
    /// Endpoints of this node whose interface does not exist (inactive: their traffic cannot arrive).
    pub missing_interfaces: Vec<String>,
    /// Protected host interfaces and the HostEndpoint applying to each (`null`: none, not policed).
    pub host_interfaces: BTreeMap<String, Option<String>>,
}

/// The JSON served on the stats socket.
#[derive(Serialize)]
struct StatsDoc<'a> {
    status: &'a Status,
    packets: stats::Report,
    xdp: BTreeMap<&'static str, u64>,
    conntrack: conntrack::CtStats,
}

struct Agent {
    config: Config,
    redirector: Redirector,
    compiler: Compiler,
    workers: Vec<Sender<Command>>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Interfaces with XDP and sockets: name → ifindex.
    attached: HashMap<String, u32>,
    /// Local endpoint addresses and their interfaces, as the redirector has them.
    owned: HashMap<IpAddr, u32>,
    /// Interfaces of local endpoints that do not exist yet: the state is applied again when one appears.
    awaited: Vec<String>,
    status: Arc<Mutex<Status>>,
    /// Connection tracking per protected host interface (kept across states).
    host_conntrack: HashMap<String, Arc<ConnTrack>>,
    /// The host-endpoint decision and the kernel's flow table.
    host_path: Arc<HostPath>,
    /// Each protected host interface's TAP device, by interface name.
    taps: HashMap<String, Arc<Tap>>,
    /// The TAP device shared by the workload interfaces (traffic between pods and the host).
    workload_tap: Arc<Tap>,
}

/// The name of the workloads' shared TAP device.
pub const WORKLOAD_TAP: &str = "palwl0";

/// Runs the agent until `stop` is set; returns an error if the first state cannot be loaded
/// or the packet path cannot be set up.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), String> {
    let (mut feed, view) = Feed::start(&config.source, config.node.as_deref(), &stop)?;
    let conntrack = Arc::new(ConnTrack::new(conntrack::Config { capacity: config.conntrack_capacity, timeouts: Default::default() }));
    let mut redirector = Redirector::load().map_err(|e| e.to_string())?;
    let host_path = Arc::new(HostPath::new(redirector.flow_table().map_err(|e| e.to_string())?));
    let workload_tap = Arc::new(Tap::open(WORKLOAD_TAP).map_err(|e| format!("the workloads' TAP device: {e}"))?);
    redirector.reinject_from(workload_tap.ifindex, None).map_err(|e| e.to_string())?;
    let datapath = Datapath::new(conntrack.clone()).with_host(host_path.clone(), config.endpoint_to_host);
    let datapath = Arc::new(datapath);
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let epoch = Instant::now();
    let mut handles = Vec::new();
    let mut workers = Vec::new();
    let mut worker_stats = Vec::new();
    for q in 0..config.queues {
        let (tx, rx) = crossbeam_channel::unbounded();
        let st = Arc::new(WorkerStats::default());
        let w = Worker::new(rx, snapshot.clone(), datapath.clone(), st.clone(), config.wait, epoch);
        handles.push(std::thread::Builder::new().name(format!("palisade-q{q}")).spawn(move || w.run()).map_err(|e| e.to_string())?);
        workers.push(tx);
        worker_stats.push(st);
    }
    {
        let st = Arc::new(WorkerStats::default());
        let (path, datapath, snapshot, stop) = (host_path.clone(), datapath.clone(), snapshot.clone(), stop.clone());
        let sender = EgressSocket::open().map_err(|e| e.to_string())?;
        let stats = st.clone();
        let reader = move || host_egress(&path, &datapath, &sender, &snapshot, &stats, epoch, &stop);
        handles.push(std::thread::Builder::new().name("palisade-host-egress".into()).spawn(reader).map_err(|e| e.to_string())?);
        worker_stats.push(st);
    }
    let status = Arc::new(Mutex::new(Status::default()));
    let mut agent = Agent {
        redirector,
        config: config.clone(),
        compiler: Compiler::new(),
        workers,
        snapshot: snapshot.clone(),
        attached: HashMap::new(),
        owned: HashMap::new(),
        awaited: Vec::new(),
        status: status.clone(),
        host_conntrack: HashMap::new(),
        host_path,
        taps: HashMap::new(),
        workload_tap,
    };
    if let Some((uplink, _)) = &config.uplink {
        agent.attach(uplink, Mode::Owned)?;
    }
    agent.apply(&view, 1, feed.revision())?;
    status.lock().expect("lock").in_sync = true;
    let mut reporter = match &config.source {
        Source::FelixDriver => Some(Reporter::new(crate::felix_driver::reports_to_felix().map_err(|e| format!("reporting to Felix on fd 4: {e}"))?)),
        Source::Control(url, security) => {
            let node = config.node.clone().unwrap_or_default();
            let tx = palisade_control::client::report(url.clone(), node, security.clone(), stop.clone()).map_err(|e| e.to_string())?;
            Some(Reporter::new(Box::new(move |m| tx.send(m).map_err(|_| std::io::Error::other("the report thread has stopped")))))
        }
        Source::Files(_) => None,
    };
    report(&mut reporter, &status);
    let redirector_counters = Arc::new(Mutex::new(BTreeMap::new()));
    if let Some(path) = &config.stats_socket {
        serve_stats(path.clone(), status.clone(), worker_stats.clone(), redirector_counters.clone(), conntrack.clone(), stop.clone())?;
    }
    eprintln!("palisade-dataplane: enforcing revision 1 ({} endpoints, {} queues)", snapshot.load().endpoints.len(), config.queues);

    let mut view = view;
    let mut revision = 1;
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let next = feed.next(config.node.as_deref(), Duration::from_millis(200));
        {
            let mut st = status.lock().expect("lock");
            st.in_sync = feed.in_sync();
            if let Some(msg) = &next.error {
                eprintln!("palisade-dataplane: refused, still enforcing revision {revision}:\n{msg}");
                st.last_error = Some(msg.clone());
            }
        }
        if let Ok(c) = agent.redirector.counters() {
            *redirector_counters.lock().expect("lock") = c.into_iter().collect();
        }
        if last_sweep.elapsed() > Duration::from_secs(1) {
            conntrack.expire(epoch.elapsed().as_nanos() as u64);
            agent.sweep_host(epoch);
            last_sweep = Instant::now();
        }
        if let Some(r) = &mut reporter {
            if let Err(e) = r.heartbeat() {
                eprintln!("palisade-dataplane: reporting: {e}");
            }
        }
        let appeared = agent.awaited.iter().any(|name| palisade_bpf::ifindex(name).is_ok());
        if next.view.is_none() && !appeared && !agent.host_addresses_changed() {
            continue;
        }
        let new_view = next.view.is_some();
        if let Some(v) = next.view {
            // Only programs using a changed policy or profile are compiled again.
            agent.compiler.forget_changed(&view, &v);
            view = v;
        }
        revision += 1;
        let applied = agent.apply(&view, revision, feed.revision());
        if applied.is_ok() && new_view && next.error.is_none() {
            // A refused state or message is reported until something newer is enforced.
            status.lock().expect("lock").last_error = None;
        }
        match applied {
            Ok(()) => {
                report(&mut reporter, &status);
                // Flows admitted without tracking under the previous state must be decided again.
                agent.sweep_host(epoch);
                eprintln!("palisade-dataplane: enforcing revision {revision}")
            }
            Err(e) => eprintln!("palisade-dataplane: applying revision {revision}: {e}"),
        }
    }
    drop(agent); // closes the worker channels and detaches XDP
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Tells a driving Felix or the control plane what is enforced (no one when reading files).
fn report(reporter: &mut Option<Reporter>, status: &Mutex<Status>) {
    let Some(r) = reporter else { return };
    let st = status.lock().expect("lock");
    let hosts: Vec<String> = st.host_interfaces.values().flatten().cloned().collect();
    if let Err(e) = r.enforced(&st.endpoints, &st.missing_interfaces, &hosts) {
        eprintln!("palisade-dataplane: reporting: {e}");
    }
}

impl Agent {
    fn attach(&mut self, name: &str, mode: Mode) -> Result<u32, String> {
        if let Some(&i) = self.attached.get(name) {
            return Ok(i);
        }
        let how = self.redirector.attach(name, self.config.queues, mode).map_err(|e| e.to_string())?;
        let ifindex = palisade_bpf::ifindex(name).map_err(|e| e.to_string())?;
        for (q, worker) in self.workers.iter().enumerate() {
            let s = QueueSocket::open(name, q as u32).map_err(|e| e.to_string())?;
            self.redirector.register_socket(name, q as u32, s.fd()).map_err(|e| e.to_string())?;
            worker.send(Command::Add(ifindex, Box::new(s))).map_err(|e| e.to_string())?;
        }
        if mode == Mode::All {
            self.redirector.capture_egress(ifindex, self.workload_tap.ifindex).map_err(|e| e.to_string())?;
        }
        self.attached.insert(name.to_string(), ifindex);
        self.status.lock().expect("lock").interfaces.insert(name.to_string(), how.to_string());
        Ok(ifindex)
    }

    fn detach(&mut self, name: &str) {
        if let Some(ifindex) = self.attached.remove(name) {
            for w in &self.workers {
                let _ = w.send(Command::Remove(ifindex));
            }
            let _ = self.redirector.detach(name);
            self.status.lock().expect("lock").interfaces.remove(name);
        }
    }

    /// Compiles `view`, attaches to new local interfaces, detaches from gone ones, and
    /// publishes the new snapshot.
    fn apply(&mut self, view: &NodeView, revision: u64, applied_revision: i64) -> Result<(), String> {
        let programs = self.compiler.compile(view);
        let mut interfaces = Vec::new();
        let mut endpoints = Vec::new();
        let mut missing = Vec::new();
        let mut awaited = Vec::new();
        let mut wanted = HashSet::new();
        if let Some((name, gateway)) = &self.config.uplink {
            interfaces.push(Interface {
                name: name.clone(),
                ifindex: self.attached[name],
                mac: interface_mac(name)?,
                role: Role::Uplink { gateway: *gateway },
            });
            wanted.insert(name.clone());
        }
        for ep in view.endpoints.values() {
            let (EndpointKind::Workload, Some(ifname)) = (&ep.kind, &ep.interface) else { continue };
            if palisade_bpf::ifindex(ifname).is_err() {
                missing.push(ep.name.clone());
                awaited.push(ifname.clone());
                continue;
            }
            let ifindex = self.attach(ifname, Mode::All)?;
            wanted.insert(ifname.clone());
            endpoints.push(LocalEndpoint {
                name: ep.name.clone(),
                interface: interfaces.len(),
                mac: ep.mac.unwrap_or_else(|| workload_mac(&ep.name)),
                ips: ep.ips.iter().map(|n| n.addr()).collect(),
                ingress: programs[&(ep.name.clone(), Direction::Ingress)].clone(),
                egress: programs[&(ep.name.clone(), Direction::Egress)].clone(),
            });
            interfaces.push(Interface { name: ifname.clone(), ifindex, mac: interface_mac(ifname)?, role: Role::Workload(endpoints.len() - 1) });
        }
        let host = self.host_snapshot(view, revision)?;
        wanted.extend(host.interfaces.iter().map(|f| f.name.clone()));
        let gone: Vec<String> = self.attached.keys().filter(|n| !wanted.contains(*n)).cloned().collect();
        for name in gone {
            self.detach(&name);
        }
        let owned: HashMap<IpAddr, u32> = endpoints.iter().flat_map(|e| e.ips.iter().map(|ip| (*ip, interfaces[e.interface].ifindex))).collect();
        for (ip, ifindex) in &owned {
            if self.owned.get(ip) != Some(ifindex) {
                self.redirector.set_owned(*ip, Some(*ifindex)).map_err(|e| e.to_string())?;
            }
        }
        for ip in self.owned.keys().filter(|ip| !owned.contains_key(ip)) {
            self.redirector.set_owned(*ip, None).map_err(|e| e.to_string())?;
        }
        self.owned = owned;
        let names = endpoints.iter().map(|e| e.name.clone()).collect();
        let host_status = host.interfaces.iter().map(|f| (f.name.clone(), f.endpoint.as_ref().map(|e| e.name.clone()))).collect();
        self.snapshot.store(Arc::new(Snapshot::new(revision, interfaces, endpoints).with_host(host)));
        let mut st = self.status.lock().expect("lock");
        st.host_interfaces = host_status;
        st.revision = revision;
        st.applied_revision = applied_revision;
        st.endpoints = names;
        st.missing_interfaces = missing;
        self.awaited = awaited;
        Ok(())
    }
}

impl Agent {
    /// The host-endpoint part of the state: attaches to each protected interface, finds its
    /// HostEndpoint and compiles its chains.
    fn host_snapshot(&mut self, view: &NodeView, revision: u64) -> Result<HostSnapshot, String> {
        let addrs = host::interface_addresses().map_err(|e| format!("reading the host's addresses: {e}"))?;
        let mut interfaces = Vec::new();
        for name in self.config.host_interfaces.clone() {
            let ifindex = self.attach(&name, Mode::Host)?;
            let own: Vec<IpAddr> = addrs.iter().filter(|(n, _)| *n == name).map(|(_, a)| *a).collect();
            let endpoint = host::endpoint_for(view, &name, &own).map(|ep| HostEndpoint {
                name: ep.name.clone(),
                chains: HostChain::ALL.iter().map(|c| self.compiler.compile_host(view, ep, *c)).collect(),
            });
            let tap = match self.taps.get(&name) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(Tap::open(&Tap::name_for(ifindex)).map_err(|e| format!("host interface {name}: {e}"))?);
                    self.redirector.reinject_from(t.ifindex, Some(ifindex)).map_err(|e| e.to_string())?;
                    self.redirector.capture_egress(ifindex, t.ifindex).map_err(|e| e.to_string())?;
                    self.taps.insert(name.clone(), t.clone());
                    t
                }
            };
            let capacity = self.config.conntrack_capacity;
            let conntrack = self
                .host_conntrack
                .entry(name.clone())
                .or_insert_with(|| Arc::new(ConnTrack::new(conntrack::Config { capacity, timeouts: Default::default() })))
                .clone();
            interfaces.push(HostInterface { name, ifindex, endpoint, conntrack, tap });
        }
        let local = addrs.into_iter().map(|(_, a)| a).collect();
        Ok(HostSnapshot::new(revision, interfaces, local, self.config.failsafes.clone(), Some(self.workload_tap.clone())))
    }

    /// Whether the host's addresses differ from those the enforced state was built with.
    fn host_addresses_changed(&self) -> bool {
        let Ok(addrs) = host::interface_addresses() else { return false };
        let now: std::collections::HashSet<IpAddr> = addrs.into_iter().map(|(_, a)| a).collect();
        let snap = self.snapshot.load();
        now.len() != snap.host.local.len() || now.iter().any(|a| !snap.host.local.contains(a))
    }

    /// Expires host connection tracking and reconciles the kernel's flow table with it.
    fn sweep_host(&self, epoch: Instant) {
        let snap = self.snapshot.load();
        let now = epoch.elapsed().as_nanos() as u64;
        for f in &snap.host.interfaces {
            f.conntrack.expire(now);
        }
        let mono_at_epoch = palisade_bpf::monotonic_ns().saturating_sub(now);
        self.host_path.sweep(&snap.host, now, |seen| seen.saturating_sub(mono_at_epoch), UNTRACKED_IDLE.as_nanos() as u64);
    }
}

/// The TAP reader: decides each packet the host sends (out of a protected interface, or to a pod)
/// that the kernel's flow table did not admit, and sends the allowed ones out of their interface.
fn host_egress(
    path: &HostPath,
    datapath: &Datapath,
    sender: &EgressSocket,
    snapshot: &ArcSwap<Snapshot>,
    stats: &WorkerStats,
    epoch: Instant,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65536];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let snap = snapshot.load();
        // The host interfaces' TAPs, then the workloads' (index `interfaces.len()`).
        let taps: Vec<&Tap> = snap.host.interfaces.iter().map(|f| &*f.tap).chain(snap.host.workload_tap.as_deref()).collect();
        fds.clear();
        fds.extend(taps.iter().map(|t| libc::pollfd { fd: t.fd(), events: libc::POLLIN, revents: 0 }));
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // SAFETY: a valid array of pollfd for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) } <= 0 {
            continue;
        }
        // A state published while this thread slept decides what woke it (the packets wait).
        if !Arc::ptr_eq(&snap, &snapshot.load()) {
            continue;
        }
        for (i, tap) in taps.iter().enumerate() {
            // Drain what is ready, a bounded batch per TAP and round.
            for _ in 0..64 {
                let n = match tap.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("palisade-dataplane: reading {}: {e}", tap.name);
                        break;
                    }
                };
                stats.count_rx(1);
                let frame = &buf[..n];
                let now = epoch.elapsed().as_nanos() as u64;
                let decided = match snap.host.interfaces.get(i) {
                    Some(f) => path.decide(&snap.host, i, true, frame, now, stats).map(|()| f.ifindex),
                    None => datapath.host_to_pod(&snap, frame, now, stats),
                };
                match decided {
                    Ok(ifindex) => match sender.send(ifindex, frame) {
                        Ok(()) => stats.count_tx(),
                        Err(_) => stats.count_drop(Drop::HostDelivery),
                    },
                    Err(why) => stats.count_drop(why),
                }
            }
        }
    }
}

/// The MAC address of a local interface.
fn interface_mac(name: &str) -> Result<Mac, String> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).map_err(|e| format!("reading the MAC of {name}: {e}"))?;
    parse_mac(text.trim()).ok_or_else(|| format!("interface {name} has no Ethernet address"))
}

fn serve_stats(
    path: PathBuf,
    status: Arc<Mutex<Status>>,
    workers: Vec<Arc<WorkerStats>>,
    xdp: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    conntrack: Arc<ConnTrack>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("stats socket {}: {e}", path.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("palisade-stats".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let status = status.lock().expect("lock");
                        let doc = StatsDoc {
                            status: &status,
                            packets: stats::report(&workers),
                            xdp: xdp.lock().expect("lock").clone(),
                            conntrack: conntrack.stats(),
                        };
                        let _ = serde_json::to_writer(&mut conn, &doc);
                    }
                    Err(_) => {
                        // Wake as soon as a reader connects (readers time revisions by it).
                        let mut fd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&listener), events: libc::POLLIN, revents: 0 };
                        // SAFETY: one valid pollfd for the duration of the call.
                        unsafe { libc::poll(&mut fd, 1, 100) };
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
