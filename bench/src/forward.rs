//! The packet-rate benchmark: 64-byte UDP frames from a generator pod through the node to a sink
//! pod, forwarded in turn by each path under test, on one lab built once.
//!
//! CPU placement (2 cores): the generator thread runs on CPU 0, and so does the receive side of
//! the generator's veth (veth runs the receiver's XDP and NAPI on the sender's CPU). Forwarding
//! happens on CPU 1: the Palisade or bare forwarder process/thread is pinned there, and for the
//! kernel paths RPS steers the node's receive processing there. The sink's `eth0` counts and
//! drops every IPv4 frame in an nftables netdev ingress hook (ARP still gets answered), the same
//! for every path. Each window reports the frames the sink counted per second and CPU 1's busy
//! time per forwarded frame.

use crate::traffic::{measure_window, pin, udp_frame, Looper, FORWARDER_CPU, FRAME_LEN};
use palisade_bpf::{Mode, Redirector};
use palisade_dataplane::afxdp::QueueSocket;
use palisade_dataplane::packet;
use palisade_lab::dataplane::Dataplane;
use palisade_lab::{exec_in, Lab, LabSpec, PodSpec, NODE_TABLE};
use palisade_policy::model::{workload_interface, workload_mac};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

const GEN: &str = "bench/gen";
const SINK: &str = "bench/sink";
const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The destination ports the policy's last rule allows; new-flow traffic walks through them.
const PORTS: (u16, u16) = (10_000, 60_000);
/// Source ports of the many-flows pattern.
const MANY_FLOWS: u16 = 1024;

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Traffic {
    /// One UDP flow.
    One,
    /// 1024 long-lived UDP flows, round robin.
    Many,
    /// Every frame opens a new flow (a new source/destination port pair).
    New,
}

impl Traffic {
    /// The name in results.
    pub fn name(self) -> &'static str {
        match self {
            Traffic::One => "one-flow",
            Traffic::Many => "1024-flows",
            Traffic::New => "new-flows",
        }
    }

    /// The UDP source and destination port of the `i`th frame.
    pub(crate) fn ports(self, i: u64) -> (u16, u16) {
        match self {
            Traffic::One => (40_000, PORTS.0),
            Traffic::Many => (40_000 + (i % u64::from(MANY_FLOWS)) as u16, PORTS.0),
            Traffic::New => {
                let sports = 65_536 - 1024;
                let dports = u64::from(PORTS.1 - PORTS.0) + 1;
                (1024 + (i % sports) as u16, PORTS.0 + ((i / sports) % dports) as u16)
            }
        }
    }
}

/// A forwarding path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// AF_XDP receive, parse, MAC rewrite and TTL decrement, transmit: no classifier, no
    /// connection tracking (the floor of any AF_XDP dataplane on this machine).
    Bare,
    /// `palisade-dataplane` enforcing a policy of this many rules on the sink.
    Palisade(usize),
    /// Linux forwarding, nftables with no rules but an accept.
    Kernel,
    /// Linux forwarding, nftables with the same rules as a linear chain (after Calico's
    /// `ct state established,related accept`).
    NftLinear(usize),
    /// Linux forwarding, nftables with the same rules as one lookup in a concatenated interval set.
    NftSet(usize),
}

impl ForwardPath {
    /// The name in results.
    pub fn name(self) -> String {
        match self {
            ForwardPath::Bare => "bare-afxdp".into(),
            ForwardPath::Palisade(n) => format!("palisade-{n}-rules"),
            ForwardPath::Kernel => "kernel".into(),
            ForwardPath::NftLinear(n) => format!("nft-linear-{n}-rules"),
            ForwardPath::NftSet(n) => format!("nft-set-{n}-rules"),
        }
    }

    /// Rules in the policy (0 for the paths without).
    pub fn rules(self) -> usize {
        match self {
            ForwardPath::Bare | ForwardPath::Kernel => 0,
            ForwardPath::Palisade(n) | ForwardPath::NftLinear(n) | ForwardPath::NftSet(n) => n,
        }
    }
}

/// The kinds of [`ForwardPath`], for choosing them on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PathKind {
    /// [`ForwardPath::Bare`].
    Bare,
    /// [`ForwardPath::Palisade`].
    Palisade,
    /// [`ForwardPath::Kernel`].
    Kernel,
    /// [`ForwardPath::NftLinear`].
    NftLinear,
    /// [`ForwardPath::NftSet`].
    NftSet,
}

impl PathKind {
    /// The paths of this kind: one, or one per rule count.
    pub fn with_rules(self, rules: &[usize]) -> Vec<ForwardPath> {
        match self {
            PathKind::Bare => vec![ForwardPath::Bare],
            PathKind::Kernel => vec![ForwardPath::Kernel],
            PathKind::Palisade => rules.iter().map(|&n| ForwardPath::Palisade(n)).collect(),
            PathKind::NftLinear => rules.iter().map(|&n| ForwardPath::NftLinear(n)).collect(),
            PathKind::NftSet => rules.iter().map(|&n| ForwardPath::NftSet(n)).collect(),
        }
    }
}

/// One measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Frames the generator handed to its socket, per second.
    pub offered_pps: f64,
    /// Frames the sink received, per second.
    pub forwarded_pps: f64,
    /// Busy time of the forwarding CPU per forwarded frame, in nanoseconds.
    pub cpu_ns_per_packet: f64,
    /// Share of the forwarding CPU that was busy.
    pub cpu_busy: f64,
}

/// The lab: a generator pod and a sink pod on one node, one queue per veth.
pub struct Rig {
    lab: Lab,
    gen_host: String,
    sink_host: String,
    gen_host_mac: [u8; 6],
    sink_host_mac: [u8; 6],
}

impl Rig {
    /// Builds the lab `name` (a stale one of that name is removed first).
    pub fn up(name: &str) -> Result<Rig, String> {
        Lab::down_stale(name).map_err(|e| e.to_string())?;
        let pod = |endpoint: &str, ip: Ipv4Addr| PodSpec { endpoint: endpoint.into(), ips: vec![IpAddr::V4(ip)] };
        let spec = LabSpec { name: name.into(), queues: 1, pods: vec![pod(GEN, GEN_IP), pod(SINK, SINK_IP)] };
        let lab = Lab::up(&spec).map_err(|e| e.to_string())?;
        let (gen_host, sink_host) = (workload_interface(GEN), workload_interface(SINK));
        let node = lab.node_netns().to_string();
        let sink_ns = lab.pod_netns(SINK).expect("sink pod").to_string();
        let sh = |ns: &str, script: &str| exec_in(ns, &["sh", "-c", script]).map_err(|e| e.to_string());
        sh(&node, &format!("echo {:x} > /sys/class/net/{gen_host}/queues/rx-0/rps_cpus", 1 << FORWARDER_CPU))?;
        sh(&sink_ns, "nft 'add table netdev bench_sink; add chain netdev bench_sink rx { type filter hook ingress device eth0 priority 0; }; add rule netdev bench_sink rx ether type ip counter drop'")?;
        let mac = |ifname: &str| -> Result<[u8; 6], String> {
            let text = sh(&node, &format!("cat /sys/class/net/{ifname}/address"))?;
            palisade_policy::model::parse_mac(text.trim()).ok_or_else(|| format!("MAC of {ifname}: {text:?}"))
        };
        let (gen_host_mac, sink_host_mac) = (mac(&gen_host)?, mac(&sink_host)?);
        Ok(Rig { lab, gen_host, sink_host, gen_host_mac, sink_host_mac })
    }

    /// Measures `path` with `traffic`: `warmup` of traffic, then a window of `window`.
    pub fn measure(&self, path: ForwardPath, traffic: Traffic, dataplane: &Path, warmup: Duration, window: Duration) -> Result<Window, String> {
        let _forwarder = self.start(path, dataplane)?;
        let ns = self.lab.pod_netns(GEN).expect("gen pod");
        let m = measure_window(ns, move |i| traffic.ports(i), self.frame(), warmup, window, || self.sink_count())?;
        Ok(Window { offered_pps: m.offered_pps, forwarded_pps: m.counted_pps, cpu_ns_per_packet: m.cpu_ns_per_packet, cpu_busy: m.cpu_busy })
    }

    /// Starts the forwarder of `path`; it stops when the returned guard is dropped.
    fn start(&self, path: ForwardPath, dataplane: &Path) -> Result<Forwarder, String> {
        match path {
            ForwardPath::Bare => bare_forwarder(self).map(|f| Forwarder::Bare { _forwarder: f }),
            ForwardPath::Palisade(rules) => {
                let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
                std::fs::write(dir.path().join("cluster.yaml"), cluster(rules)).map_err(|e| e.to_string())?;
                let (lab, binary, state) = (&self.lab, dataplane.to_path_buf(), dir.path().to_path_buf());
                // The dataplane inherits the CPU affinity of the thread that starts it.
                let dp = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(FORWARDER_CPU)?;
                        Dataplane::start(&binary, lab, &state, 1)
                    })
                    .join()
                    .expect("starting the dataplane")
                })?;
                Ok(Forwarder::Palisade { _dataplane: dp, _state: dir })
            }
            ForwardPath::Kernel | ForwardPath::NftLinear(_) | ForwardPath::NftSet(_) => {
                let node = self.lab.node_netns().to_string();
                nft(&node, &nft_ruleset(path))?;
                Ok(Forwarder::Kernel(node, nft_cleanup(path)))
            }
        }
    }

    /// The generator's frame template (ports zero).
    fn frame(&self) -> [u8; FRAME_LEN] {
        udp_frame(self.gen_host_mac, workload_mac(GEN), GEN_IP, SINK_IP)
    }

    /// Frames counted by the sink so far.
    fn sink_count(&self) -> Result<u64, String> {
        let out = exec_in(self.lab.pod_netns(SINK).expect("sink pod"), &["nft", "list", "chain", "netdev", "bench_sink", "rx"])
            .map_err(|e| e.to_string())?;
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no packet counter in the sink's chain:\n{out}"))
    }

    /// Tears the lab down.
    pub fn down(self) -> Result<(), String> {
        self.lab.down().map_err(|e| e.to_string())
    }
}

/// A running forwarder; dropping it stops it and leaves the node as it was.
enum Forwarder {
    Bare {
        _forwarder: Looper,
    },
    // Field order: the dataplane stops before its state directory goes.
    Palisade {
        _dataplane: Dataplane,
        _state: tempfile::TempDir,
    },
    /// The node namespace and the nftables script that undoes the run's rules.
    Kernel(String, String),
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Forwarder::Kernel(node, cleanup) = self {
            if let Err(e) = nft(node, cleanup) {
                eprintln!("palisade-bench: {e}");
            }
        }
    }
}

/// Runs `nft -f -` with `script` in namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The `i`th of the policy's rules that the traffic does not match: UDP from a /24 of
/// 100.64.0.0/10 to one port below the traffic's.
fn filler(i: usize) -> (String, u16) {
    (format!("100.{}.{}.0/24", 64 + i / 256, i % 256), 1000 + (i % 1000) as u16)
}

/// The nftables script of a kernel path, for the lab node's fail-closed `forward` chain (policy drop): an accept
/// for [`ForwardPath::Kernel`]; for the others Calico's established shortcut, then the rules (the last one matches
/// the traffic), as a linear chain or one lookup in a concatenated interval set.
fn nft_ruleset(path: ForwardPath) -> String {
    let n = path.rules();
    let chain = format!("{NODE_TABLE} forward");
    let mut s = String::new();
    match path {
        ForwardPath::Kernel => s += &format!("add rule {chain} accept\n"),
        ForwardPath::NftLinear(_) => {
            s += &format!("add rule {chain} ct state established,related accept\n");
            for i in 0..n.saturating_sub(1) {
                let (net, port) = filler(i);
                s += &format!("add rule {chain} ip saddr {net} udp dport {port} accept\n");
            }
            s += &format!("add rule {chain} ip saddr {GEN_IP} udp dport {}-{} accept\n", PORTS.0, PORTS.1);
        }
        ForwardPath::NftSet(_) => {
            s += &format!("add set {NODE_TABLE} bench_rules {{ type ipv4_addr . inet_service; flags interval; }}\n");
            let mut elements: Vec<String> = (0..n.saturating_sub(1)).map(filler).map(|(net, port)| format!("{net} . {port}")).collect();
            elements.push(format!("{GEN_IP} . {}-{}", PORTS.0, PORTS.1));
            for chunk in elements.chunks(1000) {
                s += &format!("add element {NODE_TABLE} bench_rules {{ {} }}\n", chunk.join(", "));
            }
            s += &format!("add rule {chain} ct state established,related accept\n");
            s += &format!("add rule {chain} ip saddr . udp dport @bench_rules accept\n");
        }
        ForwardPath::Bare | ForwardPath::Palisade(_) => unreachable!("not a kernel path"),
    }
    s
}

/// Undoes [`nft_ruleset`].
fn nft_cleanup(path: ForwardPath) -> String {
    let mut s = format!("flush chain {NODE_TABLE} forward\n");
    if let ForwardPath::NftSet(_) = path {
        s += &format!("delete set {NODE_TABLE} bench_rules\n");
    }
    s
}

/// The cluster state of [`ForwardPath::Palisade`]: the two pods and a Calico GlobalNetworkPolicy on the sink's ingress
/// with `rules` rules, the same as [`nft_ruleset`]'s.
pub(crate) fn cluster(rules: usize) -> String {
    let pod = |name: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: bench\n  labels:\n    app: {name}\nspec:\n  nodeName: node1\n  containers:\n    - name: main\n      image: busybox\nstatus:\n  podIP: {ip}\n  podIPs:\n    - ip: {ip}\n---\n"
        )
    };
    let mut s = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n---\n");
    s += &pod("gen", GEN_IP);
    s += &pod("sink", SINK_IP);
    s += "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: sink-ingress\nspec:\n  selector: app == 'sink'\n  types: [Ingress]\n  ingress:\n";
    for i in 0..rules.saturating_sub(1) {
        let (net, port) = filler(i);
        s += &format!("    - {{action: Allow, protocol: UDP, source: {{nets: [{net}]}}, destination: {{ports: [{port}]}}}}\n");
    }
    s += &format!("    - {{action: Allow, protocol: UDP, source: {{nets: [{GEN_IP}/32]}}, destination: {{ports: ['{}:{}']}}}}\n", PORTS.0, PORTS.1);
    s
}

/// The bare AF_XDP forwarder, on [`FORWARDER_CPU`] in the node namespace: our XDP program on the generator's
/// host veth, one socket there and one on the sink's host veth.
fn bare_forwarder(rig: &Rig) -> Result<Looper, String> {
    let (rx_if, tx_if) = (rig.gen_host.clone(), rig.sink_host.clone());
    let (src_mac, dst_mac) = (rig.sink_host_mac, workload_mac(SINK));
    let setup = move || -> Result<_, String> {
        let mut redirector = Redirector::load().map_err(|e| e.to_string())?;
        redirector.attach(&rx_if, 1, Mode::All).map_err(|e| e.to_string())?;
        let rx = QueueSocket::open(&rx_if, 0).map_err(|e| e.to_string())?;
        let tx = QueueSocket::open(&tx_if, 0).map_err(|e| e.to_string())?;
        redirector.register_socket(&rx_if, 0, rx.fd()).map_err(|e| e.to_string())?;
        Ok((redirector, rx, tx))
    };
    let mut scratch = [0u8; 2048];
    Looper::start("bare forwarder", rig.lab.node_netns(), FORWARDER_CPU, setup, move |(_redirector, rx, tx)| {
        let n = rx.receive(64);
        for i in 0..n {
            let p = rx.packet(i);
            let len = p.len().min(scratch.len());
            scratch[..len].copy_from_slice(&p[..len]);
            let frame = &mut scratch[..len];
            if let Ok(pkt) = packet::parse(frame) {
                if packet::rewrite_for_forward(frame, &pkt, src_mac, dst_mac).is_ok() {
                    tx.send(frame);
                }
            }
        }
        rx.recycle();
        if tx.tx_pending() {
            tx.flush();
        }
        if n == 0 {
            let mut fd = libc::pollfd { fd: rx.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut fd, 1, 20) };
        }
    })
}
