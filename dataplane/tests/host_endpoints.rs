//! Real-traffic tests of host endpoints: `palisade-dataplane --interface eth0 --interface eth1`
//! protects the host namespace of a [`HostLab`] (two networks, `a` behind eth0 and `b` behind
//! eth1, routed through the host). Clients connect to real listeners in the host, to each other
//! through it, and the host connects out; every verdict is a real connection that succeeds or not.
//!
//! What the suite proves, with Calico's semantics:
//! - a host endpoint denies by default in both directions; the failsafe ports stay open unless
//!   configured `none`; forwarded traffic is allowed while no `applyOnForward` policy applies;
//! - the seed example `restrict-host-ssh` and its interaction with the failsafe tcp:22;
//! - allows by source net and port, ordered deny rules, a live policy change (new flows follow it
//!   at once, an established connection survives it);
//! - `applyOnForward`, `preDNAT` (before normal policy, for local and forwarded traffic) and
//!   `doNotTrack` (no connection tracking: the replies need their own allow);
//! - host egress policy, with the replies of allowed connections let in by connection tracking;
//! - after a connection is admitted its packets take the kernel fast path (XDP and tcx counters).
//!
//! Every test builds its own lab (torn down by guards, panics included) and needs root.

use palisade_lab::dataplane::Dataplane;
use palisade_lab::echo::{connect, echo, EchoServer};
use palisade_lab::state::StateDir;
use palisade_lab::{probe, unique_name, HostLab, Listeners, Protocol, Side, SIDE_A, SIDE_B};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-dataplane");
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a probe waits: a denied probe costs this much.
const T: Duration = Duration::from_millis(700);

/// The HostEndpoints of both interfaces: eth0 (network a) and eth1 (network b).
fn host_endpoints() -> String {
    let hep = |name: &str, iface: &str, side: Side, role: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: host1\n    \
             role: {role}\nspec:\n  node: host1\n  interfaceName: {iface}\n  expectedIPs: [\"{}\", \"{}\"]\n---\n",
            side.host[0], side.host[1]
        )
    };
    hep("host1-eth0", "eth0", SIDE_A, "outer") + &hep("host1-eth1", "eth1", SIDE_B, "inner")
}

struct Rig {
    dp: Dataplane,
    state: StateDir,
    _listeners: Vec<Listeners>,
    lab: HostLab,
}

/// Listeners: the host serves TCP 22, 8080, 9090 and UDP 5353, 5354; each client serves TCP
/// 7000, 7001 and UDP 53.
fn rig(tag: &str, policy: &str, extra: &[&str]) -> Rig {
    let lab = HostLab::up(&unique_name(tag)).expect("host lab");
    let host = [(Protocol::Tcp, 22), (Protocol::Tcp, 8080), (Protocol::Tcp, 9090), (Protocol::Udp, 5353), (Protocol::Udp, 5354)];
    let client = [(Protocol::Tcp, 7000), (Protocol::Tcp, 7001), (Protocol::Udp, 53)];
    let listeners = vec![
        Listeners::start(lab.host_netns(), &host).expect("host listeners"),
        Listeners::start(lab.client_netns(SIDE_A), &client).expect("a listeners"),
        Listeners::start(lab.client_netns(SIDE_B), &client).expect("b listeners"),
    ];
    let state = StateDir::new(&files(policy));
    let dp = Dataplane::start_host(BIN.as_ref(), &lab, &state.path(), extra).unwrap_or_else(|e| panic!("starting the dataplane: {e}"));
    Rig { dp, state, _listeners: listeners, lab }
}

fn files(policy: &str) -> Vec<(&'static str, String)> {
    vec![("00-host.yaml", host_endpoints()), ("10-policy.yaml", policy.to_string())]
}

impl Rig {
    /// Whether the client on `from` reaches the host's address on side `to` (IPv4 unless `v6`).
    fn to_host(&self, from: Side, to: Side, protocol: Protocol, port: u16, version: u8) -> bool {
        probe(self.lab.client_netns(from), to.host_ip(version), protocol, port, T).expect("probe")
    }

    /// Whether the client on `from` reaches the client on `to`, through the host.
    fn through(&self, from: Side, to: Side, protocol: Protocol, port: u16) -> bool {
        probe(self.lab.client_netns(from), to.client_ip(4), protocol, port, T).expect("probe")
    }

    /// Whether the host reaches the client on `to`.
    fn host_reaches(&self, to: Side, protocol: Protocol, port: u16) -> bool {
        probe(self.lab.host_netns(), to.client_ip(4), protocol, port, T).expect("probe")
    }

    /// Replaces the policy and waits until it is enforced.
    fn apply(&mut self, policy: &str) {
        let before = self.dp.revision();
        self.state.swap(&files(policy));
        self.dp.wait_for(before + 1, APPLY_TIMEOUT).unwrap_or_else(|e| panic!("applying a new policy: {e}\n{}", self.dp.log()));
    }

    fn stats(&self) -> Value {
        self.dp.stats().expect("stats")
    }
}

/// Waits (up to 2 s: the dataplane refreshes the XDP counters it serves every 200 ms) until the
/// kernel-side counter `name` reaches `min`; returns the counters seen last.
fn wait_xdp(r: &Rig, name: &str, min: u64) -> (bool, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = r.stats();
        if s["xdp"][name].as_u64().unwrap_or(0) >= min || std::time::Instant::now() > deadline {
            return (s["xdp"][name].as_u64().unwrap_or(0) >= min, s["xdp"].clone());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_endpoints_deny_by_default_except_failsafes_and_forwarded_traffic() {
    let r = rig("hd", "", &[]);
    assert_eq!(r.stats()["status"]["host_interfaces"]["eth0"], "host1-eth0", "eth0 is protected by its HostEndpoint");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "no policy: TCP to the host is denied");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Udp, 5353, 4), "no policy: UDP to the host is denied");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Icmp, 0, 4), "no policy: ping to the host is denied");
    assert!(!r.to_host(SIDE_B, SIDE_A, Protocol::Tcp, 8080, 4), "no policy: the other interface too");
    assert!(!r.host_reaches(SIDE_B, Protocol::Tcp, 7000), "no policy: the host's own connections out are denied");
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 4), "failsafe inbound tcp:22 (IPv4)");
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 6), "failsafe inbound tcp:22 (IPv6)");
    assert!(r.host_reaches(SIDE_B, Protocol::Udp, 53), "failsafe outbound udp:53, and its reply");
    assert!(r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7000), "forwarded traffic: no applyOnForward policy, allowed");
    assert!(r.through(SIDE_B, SIDE_A, Protocol::Udp, 53), "forwarded traffic the other way");
    let s = r.stats();
    assert!(s["packets"]["drops"]["policy"].as_u64().unwrap_or(0) >= 5, "denied packets are counted: {s}");
    drop(r);

    let r = rig("hn", "", &["--failsafe-inbound", "none", "--failsafe-outbound", "none"]);
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 4), "failsafes `none`: SSH is denied like the rest");
    assert!(!r.host_reaches(SIDE_B, Protocol::Udp, 53), "failsafes `none`: DNS out is denied");
}

#[test]
fn restrict_host_ssh_works_as_documented_with_and_without_failsafes() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/restrict-host-ssh/host-endpoint-policy.yaml"))
        .expect("seed example");
    let r = rig("hs", &example, &["--failsafe-inbound", "none"]);
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 4), "SSH from 10.91.0.2, inside 10.0.0.0/8: allowed by rule 0");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 6), "SSH from fd91::2, outside 10.0.0.0/8: denied by rule 1");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "other ports: end-of-tier deny");
    let s = r.stats();
    let rules = &s["packets"]["rules"];
    assert!(rules["default/restrict-host-ssh rule 0 allow"].as_u64().unwrap_or(0) >= 1, "rule 0 counted: {rules}");
    assert!(rules["default/restrict-host-ssh rule 1 deny"].as_u64().unwrap_or(0) >= 1, "rule 1 counted: {rules}");
    drop(r);

    // With Calico's default failsafes, tcp:22 is open to everyone before any policy, as in Calico.
    let r = rig("hf", &example, &[]);
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 22, 6), "the failsafe keeps SSH open from outside 10.0.0.0/8");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "other ports stay denied");
}

const ORDERED: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-mdns}
spec:
  order: 10
  selector: has(kubernetes.io/hostname)
  ingress:
    - action: Deny
      protocol: UDP
      destination: {ports: [5353]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-from-a}
spec:
  order: 20
  selector: has(kubernetes.io/hostname)
  ingress:
    - action: Allow
      protocol: UDP
      source: {nets: [10.91.0.0/24]}
    - action: Allow
      protocol: TCP
      source: {nets: [10.91.0.0/24]}
      destination: {ports: [8080, 8088]}
"#;

#[test]
fn allow_by_source_net_and_port_ordered_denies_and_live_changes() {
    let mut r = rig("ho", ORDERED, &["--failsafe-inbound", "none"]);
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Udp, 5354, 4), "UDP from a's net: allowed");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Udp, 5353, 4), "UDP 5353: the order-10 deny wins over the order-20 allow");
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "TCP 8080 from a's net: allowed");
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 9090, 4), "TCP 9090: no rule, end-of-tier deny");
    assert!(!r.to_host(SIDE_B, SIDE_B, Protocol::Tcp, 8080, 4), "TCP 8080 from b's net: not allowed");

    // A long connection, then a change that would deny it as a new flow.
    let server = EchoServer::start(r.lab.host_netns(), 8088).expect("echo server");
    let dst = SocketAddr::new(SIDE_A.host_ip(4), 8088);
    let mut long = connect(r.lab.client_netns(SIDE_A), dst, Duration::from_secs(2)).expect("allowed connection");
    for i in 0..200 {
        assert!(echo(&mut long, format!("message {i}").as_bytes()), "echo {i} before the change");
    }
    let (ok, x) = wait_xdp(&r, "pass_host_flow", 150);
    assert!(ok, "the connection's packets in take the kernel fast path: {x}");
    let (ok, x) = wait_xdp(&r, "egress_pass_flow", 150);
    assert!(ok, "and its packets out too: {x}");

    r.apply(&ORDERED.replace("ports: [8080, 8088]", "ports: [8080]"));
    assert!(connect(r.lab.client_netns(SIDE_A), dst, T).is_err(), "after the change a new connection to 8088 is denied");
    assert!(echo(&mut long, b"after the change"), "the established connection survives the change");
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "8080 still allowed");
    r.apply(ORDERED);
    let mut again = connect(r.lab.client_netns(SIDE_A), dst, Duration::from_secs(2)).expect("allowed again");
    assert!(echo(&mut again, b"again") && echo(&mut long, b"still"), "new and old connections work");
    drop((long, again, server));
}

#[test]
fn apply_on_forward_pre_dnat_and_do_not_track() {
    let forward = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: forward-7000-only}
spec:
  selector: has(kubernetes.io/hostname)
  applyOnForward: true
  types: [Ingress, Egress]
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [7000]}}
  egress:
    - {action: Allow, protocol: TCP, destination: {ports: [7000]}}
"#;
    let mut r = rig("hp", "", &["--failsafe-inbound", "none"]);
    assert!(r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7001), "no applyOnForward policy: forwarded 7001 allowed");
    r.apply(forward);
    assert!(r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7000), "applyOnForward allows 7000 on both interfaces");
    assert!(r.through(SIDE_B, SIDE_A, Protocol::Tcp, 7000), "and the other way");
    assert!(!r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7001), "an applyOnForward policy applies: 7001 hits the tier's default deny");
    assert!(!r.through(SIDE_A, SIDE_B, Protocol::Udp, 53), "and so does UDP");

    // preDNAT: before normal policy, for the host and for forwarded traffic alike.
    let pre_dnat = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-8080}
spec:
  selector: has(kubernetes.io/hostname)
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [8080]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-a}
spec:
  selector: role == 'outer'
  preDNAT: true
  applyOnForward: true
  types: [Ingress]
  ingress:
    - {action: Deny, protocol: TCP, source: {nets: [10.91.0.0/24]}, destination: {ports: [8080, 7000]}}
    - {action: Allow, protocol: TCP, destination: {ports: [9090]}}
"#;
    r.apply(pre_dnat);
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "preDNAT deny on eth0 beats the normal allow");
    assert!(r.to_host(SIDE_B, SIDE_B, Protocol::Tcp, 8080, 4), "eth1 has no preDNAT policy: the normal allow decides");
    assert!(!r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7000), "preDNAT applies to forwarded traffic too");
    assert!(r.through(SIDE_A, SIDE_B, Protocol::Tcp, 7001), "forwarded traffic preDNAT does not match: allowed (no forward policy)");
    assert!(r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 9090, 4), "a preDNAT allow skips normal policy (which has no rule for 9090)");

    // doNotTrack: no connection state, so the host's replies need an untracked egress allow.
    let untracked_in = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked-9090}
spec:
  selector: has(kubernetes.io/hostname)
  doNotTrack: true
  applyOnForward: true
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [9090]}}
"#;
    r.apply(untracked_in);
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 9090, 4), "untracked ingress allow alone: the replies have no connection to match");
    let both_ways = untracked_in.to_string() + "  egress:\n    - {action: Allow, protocol: TCP, source: {ports: [9090]}}\n";
    r.apply(&both_ways);
    assert!(
        r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 9090, 4),
        "with the untracked egress allow for the replies, it works\n{}\n{}",
        r.dp.log(),
        r.stats()
    );
    assert!(!r.to_host(SIDE_A, SIDE_A, Protocol::Tcp, 8080, 4), "other ports still end in the normal default deny");
}

#[test]
fn host_egress_policy_and_replies_by_connection_tracking() {
    let egress = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-out}
spec:
  selector: has(kubernetes.io/hostname)
  types: [Egress]
  egress:
    - {action: Allow, protocol: TCP, destination: {nets: [10.92.0.0/24], ports: [7000]}}
"#;
    let r = rig("he", egress, &["--failsafe-outbound", "none"]);
    assert!(r.host_reaches(SIDE_B, Protocol::Tcp, 7000), "allowed out; the replies come in by connection tracking (no ingress allow)");
    assert!(!r.host_reaches(SIDE_B, Protocol::Tcp, 7001), "another port: denied");
    assert!(!r.host_reaches(SIDE_A, Protocol::Tcp, 7000), "another network: denied");
    assert!(!r.to_host(SIDE_B, SIDE_B, Protocol::Tcp, 8080, 4), "ingress has no allow: denied");
    let (ok, x) = wait_xdp(&r, "egress_to_tap", 3);
    assert!(ok, "the host's undecided packets went to userspace: {x}");
    let (ok, x) = wait_xdp(&r, "reinjected", 1);
    assert!(ok, "and allowed arriving packets were reinjected: {x}");
}
