//! Property test: the engine's Kubernetes NetworkPolicy path against the Kubernetes API's own rules.
//!
//! The engine never evaluates a `networking.k8s.io/v1` NetworkPolicy directly: it converts it into
//! a Calico policy (as libcalico-go does: scoped selectors, `pcns.` namespace labels, one rule per
//! protocol and peer, named ports as destination matches) and evaluates that with Calico's tiers
//! and profiles. This test generates small random clusters (namespaces, pods with named container
//! ports, valid NetworkPolicies) and flows, and checks that `build_cluster` + `Evaluator` give the
//! same verdict as [`Scenario::allowed`], an oracle written from the NetworkPolicy API reference:
//! policy selection and isolation, `policyTypes` defaulting, peers (`podSelector`,
//! `namespaceSelector`, both, `ipBlock` with `except`) and ports (protocol, `port`, `endPort`,
//! named container ports).
//!
//! The oracle is independent of the conversion: it reads the raw resources, matches
//! `LabelSelector`s, CIDRs and ports itself, and uses no engine code (no Calico selectors, no
//! model, no `ipnet`). Only Kubernetes-valid states are generated, so the engine must accept them.

use palisade_policy::convert::build_cluster;
use palisade_policy::eval::{Evaluator, Flow};
use palisade_policy::load::Loaded;
use palisade_policy::resources::*;
use proptest::prelude::*;
use proptest::sample::{select, subsequence, Index};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;

/// Label keys and the values generated for them.
type Vocab = &'static [(&'static str, &'static [&'static str])];
const NAMESPACE_LABELS: Vocab = &[("team", &["a", "b"]), ("env", &["a", "b"])];
const NAMESPACE_SELECTOR_LABELS: Vocab = &[("team", &["a", "b"]), ("env", &["a", "b"]), ("kubernetes.io/metadata.name", &["ns-0", "ns-1", "ns-2"])];
const POD_LABELS: Vocab = &[("app", &["a", "b"]), ("tier", &["a", "b"])];
/// `ipBlock`s: CIDR and exceptions (each strictly inside the CIDR).
const IP_BLOCKS: &[(&str, &[&str])] = &[
    ("10.244.0.0/16", &["10.244.1.0/24"]),
    ("10.244.0.0/16", &[]),
    ("10.244.1.0/24", &[]),
    ("0.0.0.0/0", &[]),
    ("0.0.0.0/0", &["10.244.0.0/16"]),
    ("0.0.0.0/0", &["198.51.100.0/24", "10.244.2.0/24"]),
    ("198.51.100.0/24", &[]),
];
const PORTS: &[i64] = &[53, 80, 8080, 9090];
const END_PORTS: &[i64] = &[80, 9090, 9091, 65535];
/// `web` is on no pod.
const PORT_NAMES: &[&str] = &["http", "dns", "metrics", "web"];
const EXTERNAL: &[&str] = &["198.51.100.7", "203.0.113.9"];

/// A generated cluster state (raw resources) and flows to check against it.
#[derive(Clone, Debug)]
struct Scenario {
    namespaces: Vec<Metadata>,
    pods: Vec<(Metadata, PodSpec, PodStatus)>,
    policies: Vec<(Metadata, K8sNetworkPolicySpec)>,
    flows: Vec<Flow>,
}

/// A pod as the oracle sees it.
struct PodView<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    spec: &'a PodSpec,
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Ingress,
    Egress,
}

/// `LabelSelector` semantics: every `matchLabels` pair and every `matchExpressions` requirement holds.
fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                op => panic!("operator {op} is not generated"),
            }
        })
}

/// Whether `ip` lies in the IPv4 CIDR `cidr`.
fn in_cidr(cidr: &str, ip: IpAddr) -> bool {
    let (net, len) = cidr.split_once('/').expect("CIDR");
    let (net, len): (Ipv4Addr, u32) = (net.parse().expect("IPv4 network"), len.parse().expect("prefix length"));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    matches!(ip, IpAddr::V4(a) if u32::from(a) & mask == u32::from(net) & mask)
}

/// Protocol number of a NetworkPolicyPort or ContainerPort protocol (default TCP).
fn protocol(p: &Option<String>) -> u8 {
    match p.as_deref().unwrap_or("TCP") {
        "TCP" => TCP,
        "UDP" => UDP,
        "SCTP" => SCTP,
        other => panic!("protocol {other} is not generated"),
    }
}

impl Scenario {
    fn resources(&self) -> Vec<Loaded> {
        let ns = self.namespaces.iter().map(|m| Resource::Namespace(m.clone()));
        let pods = self.pods.iter().map(|(m, s, st)| Resource::Pod(m.clone(), s.clone(), st.clone()));
        let pols = self.policies.iter().map(|(m, s)| Resource::K8sNetworkPolicy(m.clone(), s.clone()));
        ns.chain(pods).chain(pols).map(|resource| Loaded { resource, file: None }).collect()
    }

    fn pod_at(&self, ip: IpAddr) -> Option<PodView<'_>> {
        self.pods.iter().find(|(_, _, st)| st.pod_ip.as_deref().and_then(|s| s.parse().ok()) == Some(ip)).map(|(m, spec, _)| PodView {
            namespace: m.namespace.as_deref().expect("pods are namespaced"),
            labels: &m.labels,
            spec,
        })
    }

    /// A namespace's labels, including the automatic `kubernetes.io/metadata.name`.
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let m = self.namespaces.iter().find(|m| m.name == ns).expect("pods live in generated namespaces");
        let mut labels = m.labels.clone();
        labels.insert("kubernetes.io/metadata.name".into(), ns.into());
        labels
    }

    /// The policies that select `pod` and apply in `dir` (policyTypes as written, or defaulted:
    /// Ingress, plus Egress when there is at least one egress rule).
    fn isolating(&self, pod: &PodView, dir: Dir) -> Vec<&(Metadata, K8sNetworkPolicySpec)> {
        self.policies
            .iter()
            .filter(|(m, spec)| {
                let types = match spec.policy_types.as_deref() {
                    Some(t) if !t.is_empty() => t.to_vec(),
                    _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress".into(), "Egress".into()],
                    _ => vec!["Ingress".into()],
                };
                m.namespace.as_deref() == Some(pod.namespace)
                    && selector_matches(spec.pod_selector.as_ref().expect("podSelector is required"), pod.labels)
                    && types.iter().any(|t| t == if dir == Dir::Ingress { "Ingress" } else { "Egress" })
            })
            .collect()
    }

    /// Kubernetes semantics: the source pod's egress and the destination pod's ingress must both
    /// allow; a side that is not a pod, or a pod no policy isolates in that direction, allows.
    fn allowed(&self, flow: &Flow) -> bool {
        let side = |ip: IpAddr, dir: Dir, remote: IpAddr| {
            self.pod_at(ip).is_none_or(|pod| {
                let policies = self.isolating(&pod, dir);
                policies.is_empty() || policies.iter().any(|(m, spec)| self.policy_allows(m.namespace.as_deref().unwrap(), spec, dir, remote, flow))
            })
        };
        side(flow.src, Dir::Egress, flow.dst) && side(flow.dst, Dir::Ingress, flow.src)
    }

    /// Whether one of the policy's rules for `dir` admits the flow with remote address `remote`.
    fn policy_allows(&self, ns: &str, spec: &K8sNetworkPolicySpec, dir: Dir, remote: IpAddr, flow: &Flow) -> bool {
        // Peers and ports of each rule; missing lists are empty lists.
        let rules: Vec<(&[K8sPeer], &[K8sPort])> = match dir {
            Dir::Ingress => {
                spec.ingress.iter().flatten().map(|r| (r.from.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default())).collect()
            }
            Dir::Egress => {
                spec.egress.iter().flatten().map(|r| (r.to.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default())).collect()
            }
        };
        rules.into_iter().any(|(peers, ports)| {
            (peers.is_empty() || peers.iter().any(|p| self.peer_matches(ns, p, remote)))
                && (ports.is_empty() || ports.iter().any(|p| self.port_matches(p, flow)))
        })
    }

    fn peer_matches(&self, policy_ns: &str, peer: &K8sPeer, remote: IpAddr) -> bool {
        if let Some(b) = &peer.ip_block {
            return in_cidr(&b.cidr, remote) && !b.except.iter().flatten().any(|e| in_cidr(e, remote));
        }
        let Some(pod) = self.pod_at(remote) else { return false };
        let namespace_ok = match &peer.namespace_selector {
            Some(s) => selector_matches(s, &self.namespace_labels(pod.namespace)),
            None => pod.namespace == policy_ns,
        };
        namespace_ok && peer.pod_selector.as_ref().is_none_or(|s| selector_matches(s, pod.labels))
    }

    /// A named port is resolved on the destination pod: the selected pod for ingress rules, the
    /// remote pod for egress rules; both are the pod at the flow's destination address.
    fn port_matches(&self, port: &K8sPort, flow: &Flow) -> bool {
        let proto = protocol(&port.protocol);
        let dport = i64::from(flow.dst_port);
        proto == flow.protocol
            && match &port.port {
                None => true,
                Some(NumOrString::Num(p)) => *p <= dport && dport <= port.end_port.unwrap_or(*p),
                Some(NumOrString::Str(name)) => self.pod_at(flow.dst).is_some_and(|pod| {
                    pod.spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .any(|cp| cp.name.as_deref() == Some(name.as_str()) && protocol(&cp.protocol) == proto && cp.container_port == dport)
                }),
            }
    }

    fn describe(&self, flow: &Flow) -> String {
        let mut out = String::from("namespaces:\n");
        for m in &self.namespaces {
            out += &format!("  {} {:?}\n", m.name, m.labels);
        }
        out += "pods:\n";
        for (m, spec, st) in &self.pods {
            let ports: Vec<_> = spec.containers.iter().flat_map(|c| &c.ports).collect();
            out += &format!(
                "  {}/{} {} {:?} ports {}\n",
                m.namespace.as_deref().unwrap(),
                m.name,
                st.pod_ip.as_deref().unwrap(),
                m.labels,
                serde_json::to_string(&ports).unwrap()
            );
        }
        out += "policies:\n";
        for (m, spec) in &self.policies {
            out += &format!("  {}/{}: {}\n", m.namespace.as_deref().unwrap(), m.name, serde_json::to_string(spec).unwrap());
        }
        out + &format!("flow: {flow:?}")
    }
}

fn labels(vocab: Vocab) -> impl Strategy<Value = BTreeMap<String, String>> {
    let per_key: Vec<_> =
        vocab.iter().map(|&(k, vs)| prop::option::of(select(vs)).prop_map(move |v| v.map(|v| (k.to_string(), v.to_string())))).collect();
    per_key.prop_map(|kvs| kvs.into_iter().flatten().collect())
}

fn label_selector(vocab: Vocab) -> impl Strategy<Value = LabelSelector> {
    let pair = select(vocab).prop_flat_map(|(k, vs)| select(vs).prop_map(move |v| (k.to_string(), v.to_string())));
    let requirement = (select(vocab), select(&["In", "NotIn", "Exists", "DoesNotExist"][..])).prop_flat_map(|((key, vs), op)| {
        let values = if matches!(op, "In" | "NotIn") { subsequence(vs, 1..=vs.len()).prop_map(Some).boxed() } else { Just(None).boxed() };
        values.prop_map(move |values| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.into_iter().map(String::from).collect()),
        })
    });
    (prop::option::of(prop::collection::vec(pair, 0..=2)), prop::option::of(prop::collection::vec(requirement, 0..=2)))
        .prop_map(|(ml, me)| LabelSelector { match_labels: ml.map(|v| v.into_iter().collect()), match_expressions: me })
}

fn peer() -> impl Strategy<Value = K8sPeer> {
    prop_oneof![
        label_selector(POD_LABELS).prop_map(|s| K8sPeer { pod_selector: Some(s), ..Default::default() }),
        label_selector(NAMESPACE_SELECTOR_LABELS).prop_map(|s| K8sPeer { namespace_selector: Some(s), ..Default::default() }),
        (label_selector(POD_LABELS), label_selector(NAMESPACE_SELECTOR_LABELS)).prop_map(|(p, n)| K8sPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        select(IP_BLOCKS).prop_map(|(cidr, except)| K8sPeer {
            ip_block: Some(K8sIpBlock { cidr: cidr.into(), except: (!except.is_empty()).then(|| except.iter().map(|e| e.to_string()).collect()) }),
            ..Default::default()
        }),
    ]
}

fn port() -> impl Strategy<Value = K8sPort> {
    let target = prop_oneof![
        Just((None, None)),
        select(PORTS).prop_map(|p| (Some(NumOrString::Num(p)), None)),
        (select(PORTS), select(END_PORTS)).prop_map(|(a, b)| (Some(NumOrString::Num(a.min(b))), Some(a.max(b)))),
        select(PORT_NAMES).prop_map(|n| (Some(NumOrString::Str(n.into())), None)),
    ];
    (prop::option::of(select(&["TCP", "UDP", "SCTP"][..])), target).prop_map(|(proto, (port, end_port))| K8sPort {
        protocol: proto.map(String::from),
        port,
        end_port,
    })
}

/// Peers and ports of a rule: each absent, empty or one or two entries.
fn rule_parts() -> impl Strategy<Value = (Option<Vec<K8sPeer>>, Option<Vec<K8sPort>>)> {
    (prop::option::of(prop::collection::vec(peer(), 0..=2)), prop::option::of(prop::collection::vec(port(), 0..=2)))
}

fn policy(n_ns: usize) -> impl Strategy<Value = (usize, K8sNetworkPolicySpec)> {
    let types: &[&[&str]] = &[&[], &["Ingress"], &["Egress"], &["Ingress", "Egress"]];
    let ingress = prop::collection::vec(rule_parts().prop_map(|(from, ports)| K8sIngressRule { from, ports }), 0..=2);
    let egress = prop::collection::vec(rule_parts().prop_map(|(to, ports)| K8sEgressRule { to, ports }), 0..=2);
    (0..n_ns, label_selector(POD_LABELS), prop::option::of(select(types)), prop::option::of(ingress), prop::option::of(egress)).prop_map(
        |(ns, sel, types, ingress, egress)| {
            let policy_types = types.map(|t| t.iter().map(|s| s.to_string()).collect());
            (ns, K8sNetworkPolicySpec { pod_selector: Some(sel), policy_types, ingress, egress, staged_action: None })
        },
    )
}

/// Distinct named container ports with protocol (absent meaning TCP) and number.
fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    subsequence(&["http", "dns", "metrics"][..], 0..=2).prop_flat_map(|names| {
        let ports: Vec<_> = names
            .into_iter()
            .map(|n| {
                (prop::option::of(select(&["TCP", "UDP"][..])), select(PORTS)).prop_map(move |(p, port)| ContainerPort {
                    name: Some(n.into()),
                    container_port: port,
                    protocol: p.map(String::from),
                })
            })
            .collect();
        ports
    })
}

fn pod(n_ns: usize) -> impl Strategy<Value = (usize, BTreeMap<String, String>, u8, Vec<ContainerPort>)> {
    (0..n_ns, labels(POD_LABELS), 0u8..3, container_ports())
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let flow = (
        any::<Index>(),
        any::<Index>(),
        select(&[TCP, UDP, SCTP, ICMP][..]),
        select(&[53u16, 80, 8080, 9090, 9091][..]),
        select(&[80u16, 40000][..]),
    );
    (2usize..=3)
        .prop_flat_map(move |n_ns| {
            (
                prop::collection::vec(labels(NAMESPACE_LABELS), n_ns),
                prop::collection::vec(pod(n_ns), 2..=6),
                prop::collection::vec(policy(n_ns), 1..=4),
                prop::collection::vec(flow.clone(), 1..=16),
            )
        })
        .prop_map(|(ns_labels, pods, policies, flows)| {
            let ns_name = |i: usize| format!("ns-{i}");
            let namespaces = ns_labels.into_iter().enumerate().map(|(i, labels)| Metadata { name: ns_name(i), namespace: None, labels }).collect();
            let pods: Vec<_> = pods
                .into_iter()
                .enumerate()
                .map(|(i, (ns, labels, subnet, ports))| {
                    let meta = Metadata { name: format!("pod-{i}"), namespace: Some(ns_name(ns)), labels };
                    let spec = PodSpec { containers: vec![Container { name: "main".into(), ports }], ..Default::default() };
                    (meta, spec, PodStatus { pod_ip: Some(format!("10.244.{subnet}.{}", i + 1)), pod_ips: vec![] })
                })
                .collect();
            let policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, (ns, spec))| (Metadata { name: format!("policy-{i}"), namespace: Some(ns_name(ns)), labels: BTreeMap::new() }, spec))
                .collect();
            let addresses: Vec<IpAddr> =
                pods.iter().map(|(_, _, st)| st.pod_ip.as_deref().unwrap()).chain(EXTERNAL.iter().copied()).map(|a| a.parse().unwrap()).collect();
            let flows = flows
                .into_iter()
                .map(|(src, dst, protocol, dport, sport)| {
                    let icmp = protocol == ICMP;
                    Flow {
                        src: *src.get(&addresses),
                        dst: *dst.get(&addresses),
                        protocol,
                        src_port: if icmp { 0 } else { sport },
                        dst_port: if icmp { 0 } else { dport },
                        icmp_type: icmp.then_some(8),
                        icmp_code: icmp.then_some(0),
                    }
                })
                .collect();
            Scenario { namespaces, pods, policies, flows }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn kubernetes_policies_follow_the_kubernetes_spec(s in scenario()) {
        let cluster = match build_cluster(&s.resources()) {
            Ok(c) => c,
            Err(es) => return Err(TestCaseError::fail(format!("valid state rejected: {es:?}"))),
        };
        let ev = Evaluator::new(&cluster);
        for flow in &s.flows {
            let v = ev.evaluate(flow);
            let expected = s.allowed(flow);
            prop_assert_eq!(
                v.allowed,
                expected,
                "engine {} but Kubernetes {}\n{}\nengine egress: {:?}\nengine ingress: {:?}",
                if v.allowed { "allows" } else { "denies" },
                if expected { "allows" } else { "denies" },
                s.describe(flow),
                v.egress.map(|d| d.decided_by),
                v.ingress.map(|d| d.decided_by)
            );
        }
    }
}
