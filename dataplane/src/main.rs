//! `palisade-dataplane`: the node agent and its packet workers.

use clap::Parser;

/// mimalloc: building cluster models and views allocates and frees millions of small objects,
/// which glibc's allocator handles at about half the speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use palisade_control::tls::Security;
use palisade_dataplane::agent::{self, Config, Source};
use palisade_dataplane::datapath::EndpointToHost;
use palisade_dataplane::worker::Wait;
use palisade_policy::host::{parse_failsafes, Failsafes};
use palisade_policy::model::parse_mac;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Enforce Kubernetes and Calico network policy on this node's workload interfaces and on the
/// host's own interfaces (HostEndpoints) with XDP and AF_XDP. The state comes from manifest files
/// (standalone, watched for changes), from palisade-control, or from a Calico Felix.
#[derive(Parser)]
#[command(name = "palisade-dataplane", version)]
struct Args {
    /// Manifest files or directories holding the cluster state (Pods, Namespaces, HostEndpoints,
    /// policies, ...), watched for changes.
    #[arg(long = "state", visible_alias = "policy", required_unless_present_any = ["control", "felix_driver"], conflicts_with_all = ["control", "felix_driver"])]
    state: Vec<PathBuf>,
    /// Follow the cluster state from palisade-control at this URL (http://127.0.0.1:5473)
    /// instead of files; the agent keeps enforcing the last state while it is unreachable.
    #[arg(long, conflicts_with = "felix_driver")]
    control: Option<String>,
    /// Run as Calico Felix's external dataplane driver (Felix's DataplaneDriver setting): read
    /// Felix's ToDataplane messages on file descriptor 3, report on file descriptor 4.
    #[arg(long)]
    felix_driver: bool,
    /// Mutual TLS with the control plane, with the PEM files of this directory (ca.pem,
    /// client.pem, client-key.pem; `palisadectl certs` makes them); the URL is then https://.
    #[arg(long, requires = "control")]
    control_tls_dir: Option<PathBuf>,
    /// A host interface to protect with its HostEndpoint (repeat for more). Interfaces without a
    /// HostEndpoint are not policed.
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Ports always open to the host, in Felix's syntax: `port`, `proto:port`, `proto:cidr:port`,
    /// comma-separated, or `none`.
    #[arg(long, default_value = palisade_policy::host::DEFAULT_INBOUND)]
    failsafe_inbound: String,
    /// Ports the host may always reach, in the same syntax.
    #[arg(long, default_value = palisade_policy::host::DEFAULT_OUTBOUND)]
    failsafe_outbound: String,
    /// What happens to a pod's new connection to the host itself once the pod's egress policy
    /// allowed it (Felix's DefaultEndpointToHostAction). The host may always reach its pods.
    #[arg(long, value_enum, default_value_t = ToHost::Drop)]
    endpoint_to_host_action: ToHost,
    /// RX queues per interface, one worker thread each.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// This node's name: only its endpoints are enforced (default: every endpoint whose
    /// interface exists here; with --control or --felix-driver, the host name).
    #[arg(long)]
    node: Option<String>,
    /// The uplink interface: traffic to non-local addresses leaves through it.
    #[arg(long, requires = "gateway_mac")]
    uplink: Option<String>,
    /// MAC address of the uplink's next hop (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    gateway_mac: Option<String>,
    /// Spin on the rings instead of sleeping in poll() when idle.
    #[arg(long)]
    busy_poll: bool,
    /// Unix socket serving counters as JSON (read it with `palisadectl stats`).
    #[arg(long, default_value = "/run/palisade/dataplane.sock")]
    stats_socket: PathBuf,
    /// Most connections tracked at once.
    #[arg(long, default_value_t = 1 << 20)]
    conntrack_capacity: usize,
}

/// `--endpoint-to-host-action` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ToHost {
    /// Drop (Felix's default).
    Drop,
    /// Accept.
    Accept,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let uplink = match (args.uplink, args.gateway_mac) {
        (Some(u), Some(m)) => match parse_mac(&m) {
            Some(mac) => Some((u, mac)),
            None => {
                eprintln!("palisade-dataplane: --gateway-mac {m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    if args.queues == 0 {
        eprintln!("palisade-dataplane: --queues must be at least 1");
        return ExitCode::from(2);
    }
    let failsafes = match (parse_failsafes(&args.failsafe_inbound), parse_failsafes(&args.failsafe_outbound)) {
        (Ok(inbound), Ok(outbound)) => Failsafes { inbound, outbound },
        (Err(e), _) => {
            eprintln!("palisade-dataplane: --failsafe-inbound: {e}");
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!("palisade-dataplane: --failsafe-outbound: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).expect("signal handler");
    }
    // A control plane computes the view of a named node, as Calico names nodes by host name.
    let node = match args.node {
        None if args.control.is_some() || args.felix_driver => match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(h) => Some(h.trim().to_string()),
            Err(e) => {
                eprintln!("palisade-dataplane: no --node given and the host name is unreadable: {e}");
                return ExitCode::from(2);
            }
        },
        n => n,
    };
    let config = Config {
        source: match args.control {
            Some(url) => Source::Control(url, args.control_tls_dir.map_or(Security::Plaintext, Security::Tls)),
            None if args.felix_driver => Source::FelixDriver,
            None => Source::Files(args.state),
        },
        queues: args.queues,
        node,
        uplink,
        wait: if args.busy_poll { Wait::BusyPoll } else { Wait::Wakeup },
        stats_socket: Some(args.stats_socket),
        conntrack_capacity: args.conntrack_capacity,
        host_interfaces: args.interfaces,
        failsafes,
        endpoint_to_host: match args.endpoint_to_host_action {
            ToHost::Drop => EndpointToHost::Drop,
            ToHost::Accept => EndpointToHost::Accept,
        },
    };
    match agent::run(config, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}
