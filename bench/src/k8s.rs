//! A Kubernetes-shaped cluster generator: namespaces, pods with labels, service accounts and
//! named ports, Kubernetes NetworkPolicies, Calico NetworkPolicies with Deny and Pass rules, and
//! GlobalNetworkPolicies in tiers. Reproducible from a seed; produces manifests (JSON values) that
//! go through the same loader and validation as users' files.

use palisade_policy::eval::Flow;
use palisade_policy::load::{resource_from_value, Loaded};
use palisade_policy::model::{proto, Cluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};

const TIERS: [&str; 3] = ["tier-a", "tier-b", "tier-c"];
const ROLES: [&str; 4] = ["web", "api", "db", "cache"];

/// A generated cluster and a trace of flows between its pods (and from outside).
pub struct Generated {
    /// The validated cluster.
    pub cluster: Cluster,
    /// First packets of flows.
    pub flows: Vec<Flow>,
}

/// Pods per node (Kubernetes' default limit is 110).
pub const PODS_PER_NODE: usize = 100;

/// The name of the `i`th node.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0af4_0000u32 + i as u32 + 2)
}

/// Generates a cluster with `policies` policies (about one pod per two policies, [`PODS_PER_NODE`]
/// pods per node) and `n_flows` flows.
pub fn generate(policies: usize, n_flows: usize, seed: u64) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_ns = (policies / 25).clamp(4, 200);
    let n_apps = (policies / 10).clamp(8, 1000);
    let n_pods = (policies / 2).clamp(20, 5000);
    let mut docs: Vec<Value> = Vec::new();
    for n in 0..n_ns {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 7), "env": if n % 3 == 0 {"prod"} else {"dev"}}}}));
    }
    for (i, t) in TIERS.iter().enumerate() {
        docs.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": t}, "spec": {"order": 100 * (i + 1), "defaultAction": if i == 1 {"Pass"} else {"Deny"}}}));
    }
    let mut pods = Vec::new();
    for p in 0..n_pods {
        let ns = format!("ns{}", rng.gen_range(0..n_ns));
        let app = format!("app{}", rng.gen_range(0..n_apps));
        let role = ROLES[rng.gen_range(0..ROLES.len())];
        let port = [80, 8080, 5432, 6379][rng.gen_range(0..4)];
        docs.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod{p}"), "namespace": ns, "labels": {"app": app, "role": role}},
            "spec": {"nodeName": node_name(p / PODS_PER_NODE), "serviceAccountName": format!("sa-{role}"), "containers": [{"name": "c", "ports": [{"name": "serve", "containerPort": port}, {"name": "metrics", "containerPort": 9090}]}]},
            "status": {"podIP": pod_ip(p).to_string()}}));
        pods.push((ns, app, port));
    }
    for i in 0..policies {
        let (ns, app, port) = pods[rng.gen_range(0..pods.len())].clone();
        let peer_app = &pods[rng.gen_range(0..pods.len())].1;
        let doc = match rng.gen_range(0..20) {
            // Kubernetes NetworkPolicy: the bulk of real clusters.
            0..=11 => {
                let peer = if rng.gen_bool(0.7) {
                    json!({"podSelector": {"matchLabels": {"app": peer_app}}})
                } else {
                    json!({"namespaceSelector": {"matchLabels": {"team": format!("t{}", rng.gen_range(0..7))}}})
                };
                let ports = if rng.gen_bool(0.5) { json!([{"port": port}]) } else { json!([{"port": "serve"}, {"port": "metrics"}]) };
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": format!("knp{i}"), "namespace": ns},
                       "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress", "Egress"],
                                "ingress": [{"from": [peer], "ports": ports}],
                                "egress": [{"to": [{"podSelector": {}}]}, {"ports": [{"protocol": "UDP", "port": 53}]}]}})
            }
            // Calico NetworkPolicy with deny-before-allow and ranges.
            12..=16 => {
                json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": format!("cnp{i}"), "namespace": ns},
                "spec": {"tier": TIERS[rng.gen_range(0..3)], "order": rng.gen_range(1..500), "selector": format!("app == '{app}'"),
                         "ingress": [
                             {"action": "Deny", "protocol": "TCP", "source": {"nets": [format!("198.51.100.{}/32", rng.gen_range(0..255))]}},
                             {"action": "Allow", "protocol": "TCP", "source": {"selector": format!("app == '{peer_app}' || role == 'api'")}, "destination": {"ports": [port, "9000:9100"]}},
                             {"action": "Pass", "source": {"namespaceSelector": "env == 'prod'"}}],
                         "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}, {"action": "Allow", "destination": {"selector": "role == 'db'"}}]}})
            }
            // Global policies in the security tiers.
            _ => json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": format!("gnp{i}")},
                "spec": {"tier": TIERS[rng.gen_range(0..3)], "order": rng.gen_range(1..500), "selector": format!("role == '{}'", ROLES[rng.gen_range(0..4)]),
                         "ingress": [{"action": "Deny", "source": {"nets": ["203.0.113.0/24"]}}, {"action": "Log", "protocol": "TCP", "destination": {"ports": [22]}}, {"action": "Pass"}],
                         "egress": [{"action": "Deny", "destination": {"notNets": ["10.244.0.0/16"]}, "protocol": "TCP"}, {"action": "Pass"}]}}),
        };
        docs.push(doc);
    }
    let loaded: Vec<Loaded> = docs
        .into_iter()
        .map(|d| Loaded { resource: resource_from_value(d, "generated").expect("generated manifest is valid"), file: None })
        .collect();
    let cluster = palisade_policy::convert::build_cluster(&loaded).unwrap_or_else(|e| panic!("generated cluster is invalid: {}", e[0]));
    let flows = (0..n_flows)
        .map(|_| {
            let src =
                if rng.gen_bool(0.1) { IpAddr::V4(Ipv4Addr::new(198, 51, 100, rng.gen())) } else { IpAddr::V4(pod_ip(rng.gen_range(0..n_pods))) };
            let dst = IpAddr::V4(pod_ip(rng.gen_range(0..n_pods)));
            let (protocol, dst_port) = match rng.gen_range(0..10) {
                0 => (proto::UDP, 53),
                1 => (proto::TCP, 22),
                _ => (proto::TCP, [80, 8080, 5432, 6379, 9090, 9050][rng.gen_range(0..6)]),
            };
            Flow { src, dst, protocol, src_port: rng.gen_range(32768..61000), dst_port, icmp_type: None, icmp_code: None }
        })
        .collect();
    Generated { cluster, flows }
}
