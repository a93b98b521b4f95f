//! Real-traffic tests of the packet path: `palisade-dataplane` runs in a lab of network namespaces
//! and veths (see `palisade-lab`), and real TCP/UDP/SCTP/ICMP packets cross it.
//!
//! What the suite proves:
//! - the verdicts the AF_XDP packet path enforces equal the reference evaluator's
//!   (`palisade_policy::eval`) for every pod-to-pod and external-to-pod cell of a connectivity
//!   matrix, over a sequence of policy states (Kubernetes and Calico features) applied live to
//!   one running dataplane;
//! - connection tracking lets replies and the ICMP errors of allowed flows through even where
//!   policy would deny them as new flows;
//! - a policy change applies to new flows at once while established flows keep working, without
//!   restarting the dataplane; a broken state is rejected and the last good one stays enforced;
//! - malformed frames are dropped and counted, and the dataplane keeps forwarding.
//!
//! Every test builds its own lab (torn down by guards, panics included) and needs root.

use palisade_lab::dataplane::Dataplane;
use palisade_lab::echo::{connect, echo, EchoServer};
use palisade_lab::matrix::{self, Outcome, Target, EXTERNAL};
use palisade_lab::state::StateDir;
use palisade_lab::{probe, run_in, unique_name, Lab, Listeners, Protocol};
use palisade_policy::eval::{Evaluator, Flow};
use palisade_policy::model::{workload_interface, workload_mac};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_palisade-dataplane");
const QUEUES: u32 = 2;
const EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Swaps in a new state and waits until the dataplane enforces the next revision; returns it.
fn apply(dp: &mut Dataplane, state: &mut StateDir, files: &[(&str, String)]) -> u64 {
    let before = dp.revision();
    state.swap(files);
    dp.wait_for(before + 1, APPLY_TIMEOUT).unwrap_or_else(|e| panic!("applying a new state: {e}\n{}", dp.log()));
    let now = dp.revision();
    assert_eq!(now, before + 1, "one state change is one revision");
    now
}

// ---------------------------------------------------------------------------------------------
// Manifests.

fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l = format!("    kubernetes.io/metadata.name: \"{name}\"\n");
    for (k, v) in labels {
        l += &format!("    {k}: \"{v}\"\n");
    }
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n{l}---\n")
}

/// A pod with container ports `(name, port, protocol)`.
fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)], ports: &[(&str, u16, &str)]) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let ports: String = if ports.is_empty() {
        String::new()
    } else {
        "      ports:\n".to_string()
            + &ports
                .iter()
                .map(|(n, p, proto)| format!("        - name: {n}\n          containerPort: {p}\n          protocol: {proto}\n"))
                .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  nodeName: node1\n  containers:\n    - name: main\n      image: busybox:1.36\n{ports}status:\n  podIP: {ip}\n  podIPs:\n    - ip: {ip}\n---\n"
    )
}

fn cluster_files(cluster: &str, policy: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![("00-cluster.yaml", cluster.to_string())];
    if !policy.trim().is_empty() {
        v.push(("10-policy.yaml", policy.to_string()));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Lab helpers.

struct Rig {
    // Field order is drop order: listeners, dataplane, lab, then the state directory.
    _listeners: Vec<Listeners>,
    dp: Dataplane,
    lab: Lab,
    state: StateDir,
    targets: Vec<Target>,
}

/// A lab with the pods of `cluster` listening on their container ports, and a dataplane
/// enforcing `cluster` + `policy`.
fn rig(tag: &str, cluster: &str, policy: &str) -> Rig {
    rig_with(tag, cluster, policy, &[])
}

/// [`rig`] with extra arguments for the dataplane.
fn rig_with(tag: &str, cluster: &str, policy: &str, extra: &[&str]) -> Rig {
    let state = StateDir::new(&cluster_files(cluster, policy));
    let parsed = palisade_policy::load_cluster(&[state.current()]).unwrap_or_else(|e| panic!("test cluster does not load: {e:?}"));
    let targets = matrix::targets(&parsed, &[state.current()], None).expect("targets");
    let lab = Lab::up(&matrix::lab_spec(&unique_name(tag), QUEUES, &targets)).expect("lab up");
    let dp = Dataplane::start_with(Path::new(BIN), &lab, &state.path(), QUEUES, extra).expect("dataplane start");
    let listeners = matrix::listen(&lab, &targets).expect("listeners");
    Rig { _listeners: listeners, dp, lab, state, targets }
}

impl Rig {
    fn ns(&self, endpoint: &str) -> String {
        self.lab.pod_netns(endpoint).unwrap_or_else(|| panic!("no pod {endpoint}")).to_string()
    }

    fn ip(&self, endpoint: &str) -> IpAddr {
        self.targets.iter().find(|t| t.endpoint == endpoint).unwrap_or_else(|| panic!("no target {endpoint}")).ip
    }

    fn probe(&self, from: &str, to: &str, protocol: Protocol, port: u16, timeout: Duration) -> bool {
        probe(&self.ns(from), self.ip(to), protocol, port, timeout).expect("probe")
    }

    fn stats(&self) -> Value {
        self.dp.stats().expect("stats")
    }
}

fn counter(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

fn proto_number(p: &str) -> u8 {
    match p {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        "ICMP" => 1,
        other => panic!("protocol {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The matrix equals the reference evaluator.

fn matrix_cluster() -> String {
    namespace("alpha", &[("team", "a")])
        + &namespace("beta", &[("team", "b")])
        + &pod("alpha", "web", "10.66.1.1", &[("app", "web")], &[("http", 80, "TCP"), ("dns", 53, "UDP")])
        + &pod("alpha", "db", "10.66.1.2", &[("app", "db")], &[("api", 8080, "TCP"), ("sig", 9000, "SCTP")])
        + &pod("beta", "client", "10.66.2.1", &[("app", "web")], &[("http", 80, "TCP"), ("api", 8080, "TCP")])
}

/// Scenarios: a name, the policy manifests, and cells `(from, to, protocol, port, allowed)` the
/// scenario is about (checked besides the evaluator, so a scenario cannot pass vacuously).
type Cell = (&'static str, &'static str, &'static str, u16, bool);

fn scenarios() -> Vec<(&'static str, &'static str, Vec<Cell>)> {
    const WEB: &str = "alpha/web";
    const DB: &str = "alpha/db";
    const CLIENT: &str = "beta/client";
    const EXT: &str = EXTERNAL;
    vec![
        ("default allow", "", vec![(WEB, DB, "TCP", 8080, true), (EXT, CLIENT, "TCP", 80, true)]),
        (
            "k8s default-deny ingress",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
            vec![(CLIENT, WEB, "TCP", 80, false), (EXT, DB, "TCP", 8080, false), (WEB, CLIENT, "TCP", 80, true)],
        ),
        (
            "allow by pod label",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-db, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {matchLabels: {app: web}}
"#,
            vec![(WEB, DB, "TCP", 8080, true), (CLIENT, DB, "TCP", 8080, false), (DB, WEB, "TCP", 80, false)],
        ),
        (
            "namespaceSelector",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-b, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
"#,
            vec![(CLIENT, WEB, "TCP", 80, true), (DB, WEB, "TCP", 80, false), (EXT, WEB, "TCP", 80, false)],
        ),
        (
            "ports and port ranges",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ranges, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {}
      ports:
        - {protocol: TCP, port: 8000, endPort: 8100}
        - {protocol: UDP, port: 53}
"#,
            vec![(CLIENT, DB, "TCP", 8080, true), (CLIENT, WEB, "UDP", 53, true), (CLIENT, WEB, "TCP", 80, false), (CLIENT, DB, "SCTP", 9000, false)],
        ),
        (
            "named ports",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {}
      ports:
        - {port: http}
        - {protocol: SCTP, port: sig}
"#,
            vec![(CLIENT, WEB, "TCP", 80, true), (CLIENT, DB, "SCTP", 9000, true), (CLIENT, DB, "TCP", 8080, false), (CLIENT, WEB, "UDP", 53, false)],
        ),
        (
            "ipBlock without except",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-uplink, namespace: beta}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - ipBlock: {cidr: 198.18.0.0/30}
"#,
            vec![(EXT, CLIENT, "TCP", 80, true), (WEB, CLIENT, "TCP", 80, false)],
        ),
        (
            "ipBlock with except",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-uplink, namespace: beta}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - ipBlock: {cidr: 198.18.0.0/30, except: [198.18.0.2/32]}
"#,
            vec![(EXT, CLIENT, "TCP", 80, false), (EXT, WEB, "TCP", 80, true)],
        ),
        (
            "calico deny before allow by order",
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-allow-all, namespace: alpha}
spec:
  order: 20
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - action: Allow
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: z-deny-web, namespace: alpha}
spec:
  order: 10
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - action: Deny
      source:
        selector: app == 'web'
"#,
            vec![(WEB, DB, "TCP", 8080, false), (EXT, DB, "TCP", 8080, true)],
        ),
        (
            "tier with pass and a global policy",
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: sec}
spec:
  order: 100
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec.gate}
spec:
  tier: sec
  order: 10
  selector: all()
  types: [Ingress]
  ingress:
    - action: Deny
      protocol: TCP
      source:
        selector: app == 'web'
      destination:
        ports: [8080]
    - action: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-http}
spec:
  order: 100
  selector: all()
  types: [Ingress]
  ingress:
    - action: Allow
      protocol: TCP
      destination:
        ports: [80]
"#,
            vec![(CLIENT, WEB, "TCP", 80, true), (WEB, DB, "TCP", 8080, false), (EXT, DB, "TCP", 8080, false), (EXT, CLIENT, "TCP", 80, true)],
        ),
        (
            "log then allow",
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log-and-allow-tcp, namespace: alpha}
spec:
  order: 100
  selector: all()
  types: [Ingress]
  ingress:
    - action: Log
    - action: Allow
      protocol: TCP
"#,
            vec![(CLIENT, WEB, "TCP", 80, true), (EXT, DB, "TCP", 8080, true), (CLIENT, WEB, "UDP", 53, false)],
        ),
        (
            "egress default-deny with one allowed destination",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-db, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector: {matchLabels: {app: db}}
      ports:
        - {protocol: TCP, port: 8080}
"#,
            vec![(WEB, DB, "TCP", 8080, true), (WEB, CLIENT, "TCP", 80, false), (DB, WEB, "TCP", 80, false), (EXT, WEB, "TCP", 80, true)],
        ),
    ]
}

#[test]
fn matrix_equals_the_reference_evaluator() {
    let cluster = matrix_cluster();
    let mut r = rig("tm", &cluster, "");
    let timeout = Duration::from_millis(400);
    let mut failures = Vec::new();
    for (i, (name, policy, cells)) in scenarios().into_iter().enumerate() {
        if i > 0 {
            apply(&mut r.dp, &mut r.state, &cluster_files(&cluster, policy));
        }
        let model = palisade_policy::load_cluster(&[r.state.current()]).unwrap_or_else(|e| panic!("{name}: state does not load: {e:?}"));
        let eval = Evaluator::new(&model);
        let expected = |o: &Outcome| {
            let src = if o.from == EXTERNAL { IpAddr::V4(EXT_IP) } else { r.ip(&o.from) };
            let protocol = proto_number(&o.protocol);
            let flow = Flow {
                src,
                dst: r.ip(&o.to),
                protocol,
                src_port: 0,
                dst_port: if protocol == 1 { 0 } else { o.port },
                icmp_type: (protocol == 1).then_some(8),
                icmp_code: (protocol == 1).then_some(0),
            };
            eval.evaluate(&flow).allowed
        };
        let mut outcomes = matrix::probe_all(&r.lab, &r.targets, true, timeout, 8).expect("probe_all");
        assert!(outcomes.len() >= 18, "{name}: only {} cells probed", outcomes.len());
        // A busy machine can make an allowed probe miss its deadline: re-probe cells that disagree
        // with the oracle with a longer timeout (a wrong allow can never turn into a deny this way,
        // nor a genuine wrong deny into an allow).
        for o in outcomes.iter_mut().filter(|o| o.allowed != expected(o)) {
            let ns = if o.from == EXTERNAL { r.lab.ext_netns().to_string() } else { r.ns(&o.from) };
            o.allowed = probe(&ns, r.ip(&o.to), o.protocol.parse().unwrap(), o.port, Duration::from_millis(1500)).expect("re-probe");
        }
        for o in &outcomes {
            let want = expected(o);
            if o.allowed != want {
                failures.push(format!("{name}: {} -> {} {}/{}: dataplane {}, evaluator {}", o.from, o.to, o.protocol, o.port, o.allowed, want));
            }
        }
        for &(from, to, protocol, port, allowed) in &cells {
            let o = outcomes
                .iter()
                .find(|o| o.from == from && o.to == to && o.protocol == protocol && o.port == port)
                .unwrap_or_else(|| panic!("{name}: cell {from} -> {to} {protocol}/{port} not probed"));
            if o.allowed != allowed {
                failures.push(format!("{name}: intended cell {from} -> {to} {protocol}/{port} should be allowed={allowed}, got {}", o.allowed));
            }
        }
        let allowed = outcomes.iter().filter(|o| o.allowed).count();
        if i == 0 {
            assert_eq!(allowed, outcomes.len(), "{name}: without policy everything is allowed\n{}", matrix::table(&outcomes));
        } else {
            assert!(allowed > 0 && allowed < outcomes.len(), "{name}: needs both allowed and denied cells\n{}", matrix::table(&outcomes));
        }
        if failures.iter().any(|f| f.starts_with(name)) {
            eprintln!("== {name} ==\n{}", matrix::table(&outcomes));
        }
        if name == "log then allow" {
            // New flows into the namespace matched the Log rule: they are counted and written out.
            let stats = r.stats();
            let logged =
                stats["packets"]["rules"].as_object().and_then(|rules| rules.iter().find(|(k, _)| k.ends_with("log-and-allow-tcp rule 0 log")));
            assert!(logged.is_some_and(|(_, n)| n.as_u64() > Some(0)), "{name}: no Log counter in {stats}");
            let log = r.dp.log();
            assert!(
                log.lines().any(|l| l.starts_with("palisade-packet: ") && l.contains("log-and-allow-tcp rule 0 ingress")),
                "{name}: no Log line in:\n{log}"
            );
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}\n--- dataplane log:\n{}", failures.len(), failures.join("\n"), r.dp.log());
    let stats = r.stats();
    assert!(counter(&stats, &["packets", "allowed_new"]) > 0, "stats: {stats}");
}

// ---------------------------------------------------------------------------------------------
// Two-pod rigs for the other tests.

fn pair_cluster(ports: &[(&str, u16, &str)]) -> String {
    namespace("ns1", &[]) + &pod("ns1", "a", "10.66.3.1", &[("app", "a")], ports) + &pod("ns1", "b", "10.66.3.2", &[("app", "b")], ports)
}

const A: &str = "ns1/a";
const B: &str = "ns1/b";

/// Ingress default-deny for every pod of ns1, egress default-deny for `b`, and `allow` (a rule
/// list under `ingress:` of b).
fn a_to_b_only(allow_ports: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-ingress, namespace: ns1}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-deny-egress, namespace: ns1}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: a-to-b, namespace: ns1}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {{matchLabels: {{app: a}}}}
      ports:
        - {allow_ports}
"#
    )
}

#[test]
fn the_host_reaches_its_pods_and_pods_reach_the_host_by_policy() {
    let cluster = pair_cluster(&[("http", 80, "TCP")]);
    let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: ns1}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";
    let (t, denied) = (Duration::from_millis(1000), Duration::from_millis(500));
    let mut r = rig("th", &cluster, deny_all);
    let node = r.lab.node_netns().to_string();
    let node_ip = r.lab.node_ip();
    let _node_listener = Listeners::start(&node, &[(Protocol::Tcp, 9100), (Protocol::Udp, 9100)]).expect("node listener");
    assert!(!r.probe(B, A, Protocol::Tcp, 80, denied), "pod to pod: denied by the ingress default deny");
    assert!(probe(&node, r.ip(A), Protocol::Tcp, 80, t).unwrap(), "the host reaches a pod whose ingress denies everything\n{}", r.dp.log());
    for _ in 0..3 {
        let server = EchoServer::start(&r.ns(A), 8080).expect("echo server in the pod");
        let mut c = connect(&node, SocketAddr::new(r.ip(A), 8080), t).expect("host to pod connection");
        assert!((0..50).all(|i| echo(&mut c, format!("m{i}").as_bytes())), "a long host-to-pod exchange (replies via the fast path)");
        drop((c, server));
    }
    assert!(!probe(&r.ns(A), node_ip, Protocol::Tcp, 9100, denied).unwrap(), "pod to host: Felix's default endpoint-to-host action drops");
    let s = r.stats();
    assert!(counter(&s, &["packets", "drops", "endpoint_to_host"]) >= 1, "counted as endpoint_to_host: {s}");
    drop(r);

    r = rig_with("tk", &cluster, "", &["--endpoint-to-host-action", "accept"]);
    let node = r.lab.node_netns().to_string();
    let _node_listener = Listeners::start(&node, &[(Protocol::Tcp, 9100), (Protocol::Udp, 9100)]).expect("node listener");
    assert!(probe(&r.ns(A), node_ip, Protocol::Tcp, 9100, t).unwrap(), "accept: the pod reaches the host\n{}", r.dp.log());
    assert!(probe(&r.ns(A), node_ip, Protocol::Udp, 9100, t).unwrap(), "over UDP too");
    let egress_deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-no-egress, namespace: ns1}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n";
    apply(&mut r.dp, &mut r.state, &cluster_files(&cluster, egress_deny));
    assert!(!probe(&r.ns(A), node_ip, Protocol::Tcp, 9100, denied).unwrap(), "the pod's egress policy applies to traffic to the host");
    assert!(probe(&r.ns(B), node_ip, Protocol::Tcp, 9100, t).unwrap(), "the other pod still reaches the host");
    assert!(probe(&node, r.ip(A), Protocol::Tcp, 80, t).unwrap(), "and the host still reaches the pod");
}

#[test]
fn dual_stack_pods_are_filtered_over_ipv6_as_over_ipv4() {
    let ports = [("http", 80, "TCP"), ("dns", 53, "UDP")];
    let dual = |name: &str, v4: &str, v6: &str| {
        pod("ns1", name, v4, &[("app", name)], &ports).replace(&format!("    - ip: {v4}\n"), &format!("    - ip: {v4}\n    - ip: {v6}\n"))
    };
    let cluster = namespace("ns1", &[]) + &dual("a", "10.66.6.1", "fd00:66::1") + &dual("b", "10.66.6.2", "fd00:66::2");
    let r = rig("t6", &cluster, &a_to_b_only("{protocol: TCP, port: 80}"));
    let (t, denied) = (Duration::from_millis(1000), Duration::from_millis(400));
    let (a, b) = (r.ns(A), r.ns(B));
    for (b_ip, a_ip) in [("10.66.6.2", "10.66.6.1"), ("fd00:66::2", "fd00:66::1")] {
        let (b_ip, a_ip): (IpAddr, IpAddr) = (b_ip.parse().unwrap(), a_ip.parse().unwrap());
        assert!(probe(&a, b_ip, Protocol::Tcp, 80, t).unwrap(), "A -> {b_ip} TCP 80 is allowed\n{}", r.dp.log());
        assert!(!probe(&a, b_ip, Protocol::Udp, 53, denied).unwrap(), "A -> {b_ip} UDP 53 is not");
        assert!(!probe(&a, b_ip, Protocol::Icmp, 0, denied).unwrap(), "A -> {b_ip} ping is not");
        assert!(!probe(&b, a_ip, Protocol::Tcp, 80, denied).unwrap(), "B -> {a_ip} TCP 80 is not");
    }
    let stats = r.stats();
    assert!(counter(&stats, &["packets", "drops", "policy"]) >= 6, "six denied probes are policy drops: {stats}");
}

#[test]
fn replies_are_allowed_by_conntrack() {
    let r = rig("tc", &pair_cluster(&[("http", 80, "TCP")]), &a_to_b_only("{protocol: TCP, port: 80}"));
    let t = Duration::from_millis(1000);
    let before = counter(&r.stats(), &["packets", "tracked"]);
    assert!(r.probe(A, B, Protocol::Tcp, 80, t), "A -> B TCP 80 is allowed and its replies must ride conntrack\n{}", r.dp.log());
    let after = counter(&r.stats(), &["packets", "tracked"]);
    assert!(after > before, "the replies (SYN-ACK, data, FIN) are tracked packets: tracked {before} -> {after}");
    assert!(!r.probe(B, A, Protocol::Tcp, 80, Duration::from_millis(500)), "B -> A is denied by both B's egress and A's ingress");
    let policy = counter(&r.stats(), &["packets", "drops", "policy"]);
    assert!(policy > 0, "the B -> A SYN is a policy drop: {}", r.stats());
}

#[test]
fn icmp_errors_of_allowed_flows_are_related() {
    // A -> B UDP 9999 is allowed but nobody listens there; B's egress denies everything, so B's
    // ICMP port-unreachable only gets back to A as a packet related to the allowed flow. A's
    // connected UDP socket then fails its receive with ECONNREFUSED at once: the probe returns
    // false well before its timeout. The control, UDP 9998 (denied by B's ingress), gets no answer
    // and takes the full timeout — so the fast failure can only be the forwarded ICMP error.
    let r = rig("ti", &pair_cluster(&[]), &a_to_b_only("{protocol: UDP, port: 9999}"));
    let timeout = Duration::from_millis(2000);
    // Warm up neighbour state so the measurement is of the ICMP error alone.
    let _ = r.probe(A, B, Protocol::Udp, 9999, timeout);
    let s0 = r.stats();
    let start = Instant::now();
    let answered = r.probe(A, B, Protocol::Udp, 9999, timeout);
    let elapsed = start.elapsed();
    let s1 = r.stats();
    assert!(!answered, "nobody listens on B:9999");
    assert!(elapsed < timeout / 2, "the ICMP port-unreachable must come back at once, took {elapsed:?}\n{}", r.dp.log());
    let tracked = counter(&s1, &["packets", "tracked"]) - counter(&s0, &["packets", "tracked"]);
    assert!(tracked >= 1, "the ICMP error is forwarded as related to the tracked flow: {s1}");
    assert_eq!(
        counter(&s1, &["packets", "drops", "policy"]),
        counter(&s0, &["packets", "drops", "policy"]),
        "nothing of this exchange is a policy drop"
    );
    assert!(counter(&s1, &["packets", "tx"]) >= counter(&s0, &["packets", "tx"]) + 2, "datagram and ICMP error both forwarded: {s0} -> {s1}");

    let start = Instant::now();
    assert!(!r.probe(A, B, Protocol::Udp, 9998, timeout));
    assert!(start.elapsed() >= timeout - Duration::from_millis(50), "a denied datagram gets no ICMP error back: {:?}", start.elapsed());
}

#[test]
fn policy_change_applies_to_new_flows_while_traffic_runs() {
    let cluster = pair_cluster(&[]);
    let mut r = rig("tp", &cluster, "");
    let server = EchoServer::start(&r.ns(B), 7000).expect("echo server");
    let dst = SocketAddr::new(r.ip(B), 7000);
    let t = Duration::from_millis(500);
    let rev1 = r.dp.revision();

    let mut long = connect(&r.ns(A), dst, Duration::from_secs(2)).expect("no policy: A connects to B");
    assert!(echo(&mut long, b"before"), "echo before the change");

    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-deny-ingress, namespace: ns1}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
"#;
    let rev2 = apply(&mut r.dp, &mut r.state, &cluster_files(&cluster, deny));
    assert_eq!(rev2, rev1 + 1);
    assert!(connect(&r.ns(A), dst, t).is_err(), "after the deny, a new connection A -> B fails");
    assert!(echo(&mut long, b"during"), "the established connection keeps working after the deny\n{}", r.dp.log());

    let rev3 = apply(&mut r.dp, &mut r.state, &cluster_files(&cluster, ""));
    assert_eq!(rev3, rev2 + 1, "the same process kept counting revisions (no restart)");
    let mut again = connect(&r.ns(A), dst, Duration::from_secs(2)).expect("deny removed: A connects again");
    assert!(echo(&mut again, b"after"), "echo on a new connection after the deny is removed");
    assert!(echo(&mut long, b"still"), "the long connection survived both changes");

    drop((long, again, server));
}

#[test]
fn bad_state_keeps_the_last_good_policy() {
    let cluster = pair_cluster(&[("http", 80, "TCP")]);
    let deny_b = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-deny-ingress, namespace: ns1}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
"#;
    let r = rig("tb", &cluster, deny_b);
    let t = Duration::from_millis(500);
    assert!(!r.probe(A, B, Protocol::Tcp, 80, t), "B's ingress is denied");
    assert!(r.probe(B, A, Protocol::Tcp, 80, Duration::from_secs(1)), "A's ingress is open");
    let rev = r.dp.revision();

    std::fs::write(r.state.current().join("20-broken.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: [this is: not: valid\n  - yaml\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        if let Some(e) = r.stats()["status"]["last_error"].as_str() {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "the broken state was never reported: {}", r.stats());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(err.contains("20-broken.yaml"), "last_error names the file: {err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.dp.revision(), rev, "a rejected state is not a new revision");
    assert!(!r.probe(A, B, Protocol::Tcp, 80, t), "still denied under the last good policy");
    assert!(r.probe(B, A, Protocol::Tcp, 80, Duration::from_secs(1)), "still allowed under the last good policy");
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed frames.

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 frame carrying `l4` as `protocol`, with a correct header checksum unless
/// `corrupt`.
fn ipv4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8], corrupt: bool) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut c = checksum(&ip);
    if corrupt {
        c ^= 0x5a5a;
    }
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// Sends `frames` on `eth0` of namespace `ns` through an AF_PACKET socket.
fn send_raw(ns: &str, frames: Vec<Vec<u8>>, dst_mac: [u8; 6]) {
    run_in(ns, move || {
        // SAFETY: plain socket calls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be()));
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    })
    .expect("run_in");
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let r = rig("tx", &pair_cluster(&[("http", 80, "TCP")]), "");
    let t = Duration::from_secs(1);
    assert!(r.probe(A, B, Protocol::Tcp, 80, t), "no policy: A -> B works");

    let host_if = workload_interface(A);
    let mac_text = r.lab.exec(r.lab.node_netns(), &["cat", &format!("/sys/class/net/{host_if}/address")]).expect("host MAC");
    let host_mac: Vec<u8> = mac_text.trim().split(':').map(|b| u8::from_str_radix(b, 16).expect("mac")).collect();
    let host_mac: [u8; 6] = host_mac.try_into().expect("6 bytes");
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (r.ip(A), r.ip(B)) else { panic!("IPv4 pods") };
    let udp = [0x30, 0x39, 0x00, 0x50, 0x00, 0x08, 0x00, 0x00];
    let short_tcp = [0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0]; // 10 of a TCP header's 20 bytes
    const EACH: u64 = 3;
    let mut frames = Vec::new();
    for _ in 0..EACH {
        frames.push(ipv4_frame(host_mac, workload_mac(A), src, dst, 17, &udp, true));
        frames.push(ipv4_frame(host_mac, workload_mac(A), src, dst, 6, &short_tcp, false));
    }
    let s0 = r.stats();
    send_raw(&r.ns(A), frames, host_mac);

    let drops = |s: &Value, k: &str| counter(s, &["packets", "drops", k]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut s1;
    loop {
        s1 = r.stats();
        let done = drops(&s1, "malformed_bad_checksum") - drops(&s0, "malformed_bad_checksum") >= EACH
            && drops(&s1, "malformed_truncated") - drops(&s0, "malformed_truncated") >= EACH;
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(drops(&s1, "malformed_bad_checksum") - drops(&s0, "malformed_bad_checksum"), EACH, "bad checksums counted: {s1}");
    assert_eq!(drops(&s1, "malformed_truncated") - drops(&s0, "malformed_truncated"), EACH, "truncated TCP counted: {s1}");
    assert_eq!(s1["status"]["revision"], s0["status"]["revision"]);
    assert!(r.probe(A, B, Protocol::Tcp, 80, t), "the dataplane still forwards after malformed frames\n{}", r.dp.log());
    assert!(r.probe(B, A, Protocol::Tcp, 80, t), "both ways");
}
