//! The local-delivery benchmark: traffic to a protected host's own sockets, through each path.
//!
//! A [`HostLab`]: a client on network `a` sends 64-byte UDP frames (AF_XDP TX in copy mode, CPU 0)
//! to the host's address on eth0, where UDP sockets on ports 10000-10031 are drained by a thread on
//! CPU 1; RPS steers the host's receive processing to CPU 1 as well, and `palisade-dataplane` is
//! pinned there. Each window reports the datagrams the host's UDP layer received per second
//! (`/proc/net/snmp`: delivered to a socket, to a full socket, or to no socket) and CPU 1's busy
//! time per datagram. The same policy is enforced on every filtered path: allow UDP 10000-60000 and
//! TCP 7777 from network `a`, Calico's failsafe ports, deny the rest.
//!
//! Paths: the kernel with no filtering; nftables with the policy (input chain after
//! `ct state established,related accept`); Palisade with the policy as a HostEndpoint and
//! GlobalNetworkPolicy. With one flow, Palisade's packets take the kernel fast path after the
//! first; with a new flow per frame, every frame goes through userspace and the reinjection path.
//! Latency: TCP connect plus one echo (a new connection), and echo round trips on an established
//! connection, to an echo server in the host.

use crate::forward::Traffic;
use crate::traffic::{measure_window, pin, udp_frame, Looper, FORWARDER_CPU, FRAME_LEN};
use palisade_lab::dataplane::Dataplane;
use palisade_lab::echo::{echo, EchoServer};
use palisade_lab::{exec_in, run_in, HostLab, SIDE_A};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// First UDP port of the host's sinks (the generator's destination ports start here).
const SINK_PORT: u16 = 10_000;
const SINK_SOCKETS: u16 = 32;
const ECHO_PORT: u16 = 7777;

/// A path to the host's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalPath {
    /// The kernel, no filtering.
    Kernel,
    /// The kernel with the policy in nftables.
    Nft,
    /// `palisade-dataplane` protecting the host's interfaces with the policy.
    Palisade,
}

impl LocalPath {
    /// The name in results.
    pub fn name(self) -> &'static str {
        match self {
            LocalPath::Kernel => "kernel",
            LocalPath::Nft => "nft",
            LocalPath::Palisade => "palisade",
        }
    }
}

/// One measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Frames the generator handed to its socket, per second.
    pub offered_pps: f64,
    /// Datagrams the host's UDP layer received, per second.
    pub delivered_pps: f64,
    /// Busy time of CPU 1 per delivered datagram, in nanoseconds.
    pub cpu_ns_per_packet: f64,
}

/// Latency percentiles of one path, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// New TCP connection plus one echo: median.
    pub connect_p50_us: f64,
    /// New TCP connection plus one echo: 99th percentile.
    pub connect_p99_us: f64,
    /// Echo round trip on an established connection: median.
    pub rtt_p50_us: f64,
    /// Echo round trip on an established connection: 99th percentile.
    pub rtt_p99_us: f64,
}

/// The lab with its sinks.
pub struct HostRig {
    lab: HostLab,
    host_mac: [u8; 6],
    _sink: Looper,
    _echo: EchoServer,
}

/// The policy of the filtered paths, as Calico resources.
fn manifests() -> String {
    let hep = |name: &str, iface: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: {name}\n  labels: {{host: bench}}\nspec:\n  interfaceName: {iface}\n---\n")
    };
    hep("bench-eth0", "eth0")
        + &hep("bench-eth1", "eth1")
        + "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: bench-host\nspec:\n  selector: has(host)\n  ingress:\n    \
           - {action: Allow, protocol: UDP, source: {nets: [10.91.0.0/24]}, destination: {ports: ['10000:60000']}}\n    \
           - {action: Allow, protocol: TCP, source: {nets: [10.91.0.0/24]}, destination: {ports: [7777]}}\n"
}

/// The same policy in nftables (Calico's failsafe ports included).
const NFT_POLICY: &str = "table inet palisade_bench_host {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname \"lo\" accept
    tcp dport { 22, 179, 2379, 2380, 5473, 6443, 6666, 6667 } accept
    udp dport 68 accept
    iifname { \"eth0\", \"eth1\" } ip saddr 10.91.0.0/24 udp dport 10000-60000 accept
    iifname { \"eth0\", \"eth1\" } ip saddr 10.91.0.0/24 tcp dport 7777 accept
  }
  chain output {
    type filter hook output priority 0; policy drop;
    ct state established,related accept
    oifname \"lo\" accept
    udp dport { 53, 67 } accept
    tcp dport { 179, 2379, 2380, 5473, 6443, 6666, 6667 } accept
  }
}
";

impl HostRig {
    /// Builds the lab `name`, its UDP sinks and echo server.
    pub fn up(name: &str) -> Result<HostRig, String> {
        let lab = HostLab::up(name).map_err(|e| e.to_string())?;
        let host = lab.host_netns().to_string();
        let sh = |script: &str| exec_in(&host, &["sh", "-c", script]).map_err(|e| e.to_string());
        // The host's receive processing (NAPI, XDP, the stack) runs in a kernel thread on CPU 1,
        // leaving CPU 0 to the generator: threaded NAPI needs GRO on the veth.
        sh(&format!(
            "ethtool -K eth0 gro on >/dev/null && echo 1 > /sys/class/net/eth0/threaded && echo {:x} > /sys/class/net/eth0/queues/rx-0/rps_cpus",
            1 << FORWARDER_CPU
        ))?;
        let mac = sh("cat /sys/class/net/eth0/address")?;
        let host_mac = palisade_policy::model::parse_mac(mac.trim()).ok_or_else(|| format!("host MAC: {mac:?}"))?;
        let setup = || -> Result<Vec<UdpSocket>, String> {
            (SINK_PORT..SINK_PORT + SINK_SOCKETS)
                .map(|p| {
                    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p)).map_err(|e| format!("sink port {p}: {e}"))?;
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok(s)
                })
                .collect()
        };
        let mut buf = [0u8; 2048];
        let sink = Looper::start("sink", &host, FORWARDER_CPU, setup, move |sockets| {
            let mut fds: Vec<libc::pollfd> =
                sockets.iter().map(|s| libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(s), events: libc::POLLIN, revents: 0 }).collect();
            // SAFETY: a valid array of pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
            for (s, fd) in sockets.iter().zip(&fds) {
                if fd.revents != 0 {
                    while s.recv(&mut buf).is_ok() {}
                }
            }
        })?;
        let echo = EchoServer::start(&host, ECHO_PORT).map_err(|e| format!("echo server: {e}"))?;
        Ok(HostRig { lab, host_mac, _sink: sink, _echo: echo })
    }

    /// Measures packet rate on `path` with `traffic`.
    pub fn measure(&self, path: LocalPath, traffic: Traffic, dataplane: &Path, warmup: Duration, window: Duration) -> Result<Window, String> {
        let _filter = self.start(path, dataplane)?;
        // Attaching XDP recreates the veth's NAPI threads: pin them now.
        pin_napi_threads(FORWARDER_CPU)?;
        let m = measure_window(self.lab.client_netns(SIDE_A), move |i| traffic.ports(i), self.frame(), warmup, window, || self.udp_received())?;
        Ok(Window { offered_pps: m.offered_pps, delivered_pps: m.counted_pps, cpu_ns_per_packet: m.cpu_ns_per_packet })
    }

    /// Measures TCP latency to the host's echo server on `path`: `connections` new connections
    /// and `round_trips` echoes on one established connection.
    pub fn latency(&self, path: LocalPath, dataplane: &Path, connections: usize, round_trips: usize) -> Result<Latency, String> {
        let _filter = self.start(path, dataplane)?;
        let dst = SocketAddr::new(SIDE_A.host_ip(4), ECHO_PORT);
        // One thread in the client's namespace does it all (entering a namespace costs milliseconds).
        let timed = run_in(self.lab.client_netns(SIDE_A), move || -> Result<(Vec<Duration>, Vec<Duration>), String> {
            let open = || TcpStream::connect_timeout(&dst, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"));
            let mut connects = Vec::with_capacity(connections);
            for _ in 0..connections {
                let t = Instant::now();
                let mut s = open()?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                if !echo(&mut s, b"x") {
                    return Err("no echo on a new connection".into());
                }
                connects.push(t.elapsed());
            }
            let mut s = open()?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut rtts = Vec::with_capacity(round_trips);
            for _ in 0..round_trips {
                let t = Instant::now();
                if !echo(&mut s, b"ping") {
                    return Err("no echo on the established connection".into());
                }
                rtts.push(t.elapsed());
            }
            Ok((connects, rtts))
        });
        let (mut connects, mut rtts) = timed.map_err(|e| e.to_string())??;
        let pct = |v: &mut Vec<Duration>, p: f64| {
            v.sort();
            v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
        };
        Ok(Latency {
            connect_p50_us: pct(&mut connects, 0.5),
            connect_p99_us: pct(&mut connects, 0.99),
            rtt_p50_us: pct(&mut rtts, 0.5),
            rtt_p99_us: pct(&mut rtts, 0.99),
        })
    }

    /// Puts `path`'s filter in place; it goes when the returned guard is dropped.
    fn start(&self, path: LocalPath, dataplane: &Path) -> Result<Filter, String> {
        match path {
            LocalPath::Kernel => Ok(Filter::None),
            LocalPath::Nft => {
                let host = self.lab.host_netns().to_string();
                exec_in(&host, &["nft", NFT_POLICY]).map_err(|e| e.to_string())?;
                Ok(Filter::Nft(host))
            }
            LocalPath::Palisade => {
                let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
                std::fs::write(dir.path().join("host.yaml"), manifests()).map_err(|e| e.to_string())?;
                let (lab, binary, state) = (&self.lab, dataplane.to_path_buf(), dir.path().to_path_buf());
                // The dataplane inherits the CPU affinity of the thread that starts it.
                let dp = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(FORWARDER_CPU)?;
                        Dataplane::start_host(&binary, lab, &state, &[])
                    })
                    .join()
                    .expect("starting the dataplane")
                })?;
                Ok(Filter::Palisade { _dataplane: dp, _state: dir })
            }
        }
    }

    fn frame(&self) -> [u8; FRAME_LEN] {
        let mac = palisade_policy::model::parse_mac(SIDE_A.client_mac).expect("constant MAC");
        let ip = |a: IpAddr| match a {
            IpAddr::V4(v) => v,
            IpAddr::V6(_) => unreachable!("IPv4 constants"),
        };
        udp_frame(self.host_mac, mac, ip(SIDE_A.client_ip(4)), ip(SIDE_A.host_ip(4)))
    }

    /// Datagrams the host's UDP layer has received: into a socket, a full socket, or none.
    fn udp_received(&self) -> Result<u64, String> {
        let snmp = exec_in(self.lab.host_netns(), &["cat", "/proc/net/snmp"]).map_err(|e| e.to_string())?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        let field = |name: &str| -> u64 {
            names.split_whitespace().position(|n| n == name).and_then(|i| values.split_whitespace().nth(i)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok(field("InDatagrams") + field("NoPorts") + field("InErrors"))
    }
}

/// Pins every threaded-NAPI kernel thread (`napi/<interface>-<id>`) to `cpu`.
fn pin_napi_threads(cpu: usize) -> Result<(), String> {
    for entry in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if comm.starts_with("napi/") {
            // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
    Ok(())
}

/// A path's filter in place; dropping it removes it.
enum Filter {
    None,
    /// The host namespace whose nftables table to delete.
    Nft(String),
    // Field order: the dataplane stops before its state directory goes.
    Palisade {
        _dataplane: Dataplane,
        _state: tempfile::TempDir,
    },
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Filter::Nft(host) = self {
            if let Err(e) = exec_in(host, &["nft", "delete table inet palisade_bench_host"]) {
                eprintln!("palisade-bench: {e}");
            }
        }
    }
}
