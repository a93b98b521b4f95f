//! The compiled classifier equals the reference evaluator.
//!
//! Random clusters — tiers with Deny or Pass defaults, Calico, global, staged and Kubernetes
//! policies with every action, orders, selectors, namespace and service-account selectors, nets
//! and notNets of both IP versions, ports, ranges, named ports and their negations, protocols and
//! notProtocol, ICMP type/code and notICMP, network sets, a host endpoint and doNotTrack, preDNAT and
//! applyOnForward global policies — are compiled, and
//! for every endpoint, both directions and random IPv4 and IPv6 flows, the program's verdict,
//! deciding rule or default, and the Log/Pass/staged rules matched on the way must equal
//! `Evaluator::direction`; each of the host endpoint's chains (untracked, pre-DNAT, normal,
//! forward) must equal `Evaluator::host_chain`, and the dataplane's host-endpoint pipeline
//! (failsafes, untracked, pre-DNAT, normal or forward) must decide as `palisade_policy::host`.

use palisade_dataplane::compile::{Compiler, Programs};
use palisade_dataplane::host::{Decided, HostEndpoint};
use palisade_policy::calc::NodeView;
use palisade_policy::eval::{Decision, Evaluator, Flow};
use palisade_policy::host::{self, parse_failsafes, Crossing, Failsafes, HostStep};
use palisade_policy::load::{resource_from_value, Loaded};
use palisade_policy::model::{proto, Cluster, Direction, EndpointKind, HostChain};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::IpAddr;

const SELECTORS: &[&str] = &["", "app == 'web'", "app in {'db', 'api'}", "has(app)", "!has(app)", "all()", "role == 'host'", "kind == 'ext'"];
const NETS_V4: &[&str] = &["10.0.0.0/16", "10.0.1.0/24", "10.0.2.3/32", "198.51.100.0/24", "0.0.0.0/0"];
const NETS_V6: &[&str] = &["fd00::/64", "fd00::3/128", "2001:db8::/32", "::/0"];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn opt<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.4, s)
}

fn nets(version: Option<u8>) -> impl Strategy<Value = Vec<String>> {
    let pool: Vec<&'static str> = match version {
        Some(4) => NETS_V4.to_vec(),
        Some(6) => NETS_V6.to_vec(),
        _ => NETS_V4.iter().chain(NETS_V6).copied().collect(),
    };
    prop::collection::vec(prop::sample::select(pool).prop_map(String::from), 1..3)
}

fn ports() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        prop_oneof![
            pick(&[53i64, 80, 8080]).prop_map(Value::from),
            pick(&["1000:2000", "80:80", "8000:9000"]).prop_map(Value::from),
            pick(&["http", "dns"]).prop_map(Value::from),
        ],
        1..3,
    )
}

fn entity(version: Option<u8>, with_ports: bool) -> impl Strategy<Value = Value> {
    (
        opt(nets(version)),
        opt(nets(version)),
        opt(pick(SELECTORS)),
        opt(pick(SELECTORS)),
        opt(pick(&["team == 'a'", "all()", "global()"])),
        opt(Just(json!({"names": ["default"]}))),
        if with_ports { opt(ports()).boxed() } else { Just(None).boxed() },
        if with_ports { opt(ports()).boxed() } else { Just(None).boxed() },
    )
        .prop_map(|(n, nn, s, ns, nsel, sa, p, np)| {
            let mut e = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    e.insert(k.into(), v);
                }
            };
            put("nets", n.map(Value::from));
            put("notNets", nn.map(Value::from));
            put("selector", s.map(Value::from));
            put("notSelector", ns.map(Value::from));
            put("namespaceSelector", nsel.map(Value::from));
            put("serviceAccounts", sa);
            put("ports", p.map(Value::from));
            put("notPorts", np.map(Value::from));
            Value::Object(e)
        })
}

fn rule() -> impl Strategy<Value = Value> {
    let proto_and_version = prop_oneof![
        Just((None, None)),
        pick(&["TCP", "UDP", "SCTP"]).prop_flat_map(|p| opt(pick(&[4u8, 6])).prop_map(move |v| (Some(p), v))),
        opt(Just(4u8)).prop_map(|v| (Some("ICMP"), v)),
        opt(Just(6u8)).prop_map(|v| (Some("ICMPv6"), v)),
        Just((None, Some(4u8))),
        Just((None, Some(6u8))),
    ];
    (pick(&["Allow", "Deny", "Log", "Pass", "Allow", "Deny"]), proto_and_version).prop_flat_map(|(action, (protocol, version))| {
        let ported = matches!(protocol, Some("TCP" | "UDP" | "SCTP"));
        let icmp = matches!(protocol, Some("ICMP" | "ICMPv6"));
        let icmp_s = move || if icmp { opt((pick(&[0i64, 3, 8]), opt(pick(&[0i64, 1])))).boxed() } else { Just(None).boxed() };
        (
            entity(version, ported),
            entity(version, ported),
            icmp_s(),
            icmp_s(),
            if protocol.is_none() { opt(pick(&["TCP", "UDP", "ICMP"])).boxed() } else { Just(None).boxed() },
        )
            .prop_map(move |(src, dst, ic, nic, notp)| {
                let mut r = json!({"action": action, "source": src, "destination": dst});
                let o = r.as_object_mut().unwrap();
                if let Some(p) = protocol {
                    o.insert("protocol".into(), p.into());
                }
                if let Some(v) = version {
                    o.insert("ipVersion".into(), v.into());
                }
                if let Some(p) = notp {
                    o.insert("notProtocol".into(), p.into());
                }
                let icmp_json = |(t, c): (i64, Option<i64>)| match c {
                    Some(c) => json!({"type": t, "code": c}),
                    None => json!({"type": t}),
                };
                if let Some(x) = ic {
                    o.insert("icmp".into(), icmp_json(x));
                }
                if let Some(x) = nic {
                    o.insert("notICMP".into(), icmp_json(x));
                }
                r
            })
    })
}

fn calico_policy() -> impl Strategy<Value = Value> {
    (
        pick(&["NetworkPolicy", "GlobalNetworkPolicy", "StagedNetworkPolicy", "StagedGlobalNetworkPolicy", "NetworkPolicy", "GlobalNetworkPolicy"]),
        pick(&["default", "t1", "t2"]),
        opt(pick(&[10.0f64, 100.0, 1000.0])),
        pick(SELECTORS),
        opt(pick(TYPES)),
        prop::collection::vec(rule(), 0..4),
        prop::collection::vec(rule(), 0..4),
        pick(&["", "", "applyOnForward", "doNotTrack", "preDNAT"]),
    )
        .prop_map(|(kind, tier, order, sel, types, ingress, egress, host_mode)| {
            let namespaced = if kind.contains("Global") { None } else { Some("ns1") };
            let mut spec = json!({"tier": tier, "selector": sel, "ingress": ingress, "egress": egress});
            let o = spec.as_object_mut().unwrap();
            if namespaced.is_none() && !host_mode.is_empty() {
                o.insert("applyOnForward".into(), true.into());
                if host_mode != "applyOnForward" {
                    o.insert(host_mode.into(), true.into());
                }
                if host_mode == "preDNAT" {
                    o.insert("egress".into(), json!([]));
                    o.insert("types".into(), json!(["Ingress"]));
                }
            }
            if let Some(x) = order {
                o.insert("order".into(), x.into());
            }
            if let Some(t) = types.filter(|_| !o.contains_key("types")) {
                o.insert("types".into(), t.to_vec().into());
            }
            let mut meta = json!({"name": "set-below"});
            if let Some(ns) = namespaced {
                meta["namespace"] = ns.into();
            }
            json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})
        })
}

/// A generated Kubernetes rule: peers and ports, each possibly absent.
type K8sRule = (Option<Vec<Value>>, Option<Vec<Value>>);

fn k8s_policy() -> impl Strategy<Value = Value> {
    let peer = prop_oneof![
        Just(json!({"podSelector": {"matchLabels": {"app": "web"}}})),
        Just(json!({"namespaceSelector": {}})),
        Just(json!({"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {}})),
        Just(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}})),
    ];
    let port = prop_oneof![
        Just(json!({"port": 80})),
        Just(json!({"protocol": "UDP", "port": "dns"})),
        Just(json!({"port": "http"})),
        Just(json!({"port": 1000, "endPort": 2000})),
    ];
    let krule = (opt(prop::collection::vec(peer, 0..3)), opt(prop::collection::vec(port, 0..3))).boxed();
    (
        prop::collection::vec(krule.clone(), 0..3),
        opt(prop::collection::vec(krule, 0..3)),
        opt(pick(TYPES)),
        prop_oneof![Just(json!({})), Just(json!({"matchLabels": {"app": "db"}}))],
    )
        .prop_map(|(ingress, egress, types, pod_sel)| {
            let conv = |rules: Vec<K8sRule>, key: &str| -> Value {
                rules
                    .into_iter()
                    .map(|(peers, ports)| {
                        let mut r = serde_json::Map::new();
                        if let Some(p) = peers {
                            r.insert(key.into(), p.into());
                        }
                        if let Some(p) = ports {
                            r.insert("ports".into(), p.into());
                        }
                        Value::Object(r)
                    })
                    .collect()
            };
            let mut spec = json!({"podSelector": pod_sel, "ingress": conv(ingress, "from")});
            if let Some(e) = egress {
                spec["egress"] = conv(e, "to");
            }
            if let Some(t) = types {
                spec["policyTypes"] = t.to_vec().into();
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "set-below", "namespace": "ns2"}, "spec": spec})
        })
}

fn base_resources(t1_pass: bool, t2_order: Option<f64>) -> Vec<Value> {
    let pod = |name: &str, ns: &str, app: Option<&str>, ips: &[&str], ports: Value| {
        let mut labels = serde_json::Map::new();
        if let Some(a) = app {
            labels.insert("app".into(), a.into());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
               "spec": {"containers": [{"name": "c", "ports": ports}]},
               "status": {"podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
    };
    let mut t2 = json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "t2"}, "spec": {}});
    if let Some(o) = t2_order {
        t2["spec"]["order"] = o.into();
    }
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1", "labels": {"team": "a"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns2", "labels": {"team": "b"}}}),
        pod("web1", "ns1", Some("web"), &["10.0.1.1", "fd00::1"], json!([{"name": "http", "containerPort": 80}])),
        pod(
            "db1",
            "ns1",
            Some("db"),
            &["10.0.1.2"],
            json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
        ),
        pod("api2", "ns2", Some("api"), &["10.0.2.3", "fd00::3"], json!([{"name": "dns", "containerPort": 53, "protocol": "UDP"}])),
        pod("bare2", "ns2", None, &["10.0.2.4"], json!([])),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint", "metadata": {"name": "host-eth0", "labels": {"role": "host"}},
               "spec": {"node": "n1", "interfaceName": "eth0", "expectedIPs": ["192.0.2.10"], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet", "metadata": {"name": "ext", "namespace": "ns1", "labels": {"kind": "ext"}}, "spec": {"nets": ["198.51.100.0/25"]}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "gext", "labels": {"kind": "ext"}}, "spec": {"nets": ["203.0.113.0/25", "2001:db8::/48"]}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "t1"}, "spec": {"order": 100, "defaultAction": if t1_pass {"Pass"} else {"Deny"}}}),
        t2,
    ]
}

const TYPES: &[&[&str]] = &[&["Ingress"], &["Egress"], &["Ingress", "Egress"]];
const V4_ADDRS: &[&str] =
    &["10.0.1.1", "10.0.1.2", "10.0.2.3", "10.0.2.4", "192.0.2.10", "198.51.100.7", "198.51.100.200", "203.0.113.5", "192.0.2.99"];
const V6_ADDRS: &[&str] = &["fd00::1", "fd00::3", "fd00::99", "2001:db8::5", "2001:db9::1"];

fn flow() -> impl Strategy<Value = Flow> {
    let addrs = prop_oneof![(pick(V4_ADDRS), pick(V4_ADDRS)), (pick(V6_ADDRS), pick(V6_ADDRS)),];
    (
        addrs,
        pick(&[proto::TCP, proto::UDP, proto::SCTP, proto::ICMP, proto::ICMPV6, 47u8]),
        pick(&[53u16, 80, 1500, 8080, 40000]),
        pick(&[53u16, 80, 1500, 8080, 40000]),
        pick(&[(0u8, 0u8), (3, 1), (8, 0), (8, 1)]),
    )
        .prop_map(|((s, d), protocol, sp, dp, (t, c))| {
            let icmp = matches!(protocol, proto::ICMP | proto::ICMPV6);
            let ported = proto::has_ports(protocol);
            Flow {
                src: s.parse::<IpAddr>().unwrap(),
                dst: d.parse::<IpAddr>().unwrap(),
                protocol,
                src_port: if ported { sp } else { 0 },
                dst_port: if ported { dp } else { 0 },
                icmp_type: icmp.then_some(t),
                icmp_code: icmp.then_some(c),
            }
        })
}

fn cluster_docs() -> impl Strategy<Value = Vec<Value>> {
    (any::<bool>(), opt(pick(&[50.0f64, 2_000_000.0])), prop::collection::vec(calico_policy(), 1..6), prop::collection::vec(k8s_policy(), 0..2))
        .prop_map(|(t1_pass, t2_order, calico, k8s)| {
            let mut docs = base_resources(t1_pass, t2_order);
            for (i, mut p) in calico.into_iter().enumerate() {
                p["metadata"]["name"] = format!("p{i}").into();
                docs.push(p);
            }
            for (i, mut p) in k8s.into_iter().enumerate() {
                p["metadata"]["name"] = format!("k{i}").into();
                docs.push(p);
            }
            docs
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_classifier_equals_reference_evaluator(docs in cluster_docs(), flows in prop::collection::vec(flow(), 24)) {
        let cluster = cluster_of(&docs);
        // The second compile reuses the first one's programs, as the agent does on every update.
        let view = NodeView::compute(&cluster, None);
        let mut compiler = Compiler::new();
        compiler.compile(&view);
        let programs = compiler.compile(&view);
        programs_equal_evaluator(&cluster, &programs, &flows)?;
    }

    /// The agent's path: a compiler that compiled one cluster, told what changed, compiles the
    /// next one (reusing the programs of unchanged policies) and still equals the evaluator.
    #[test]
    fn recompiled_classifier_equals_reference_evaluator(before in cluster_docs(), after in cluster_docs(), flows in prop::collection::vec(flow(), 16)) {
        let (old, cluster) = (cluster_of(&before), cluster_of(&after));
        let (old_view, view) = (NodeView::compute(&old, None), NodeView::compute(&cluster, None));
        let mut compiler = Compiler::new();
        compiler.compile(&old_view);
        compiler.forget_changed(&old_view, &view);
        let programs = compiler.compile(&view);
        programs_equal_evaluator(&cluster, &programs, &flows)?;
    }

    /// An edit that keeps every policy's rule count (the usual edit of a rule's ports, peers or
    /// action): the programs using the edited policies are patched rule by rule, not rebuilt.
    #[test]
    fn patched_classifier_equals_reference_evaluator(
        before in cluster_docs(),
        pool in prop::collection::vec(rule(), 8),
        edited in prop::collection::vec(any::<bool>(), 6),
        flows in prop::collection::vec(flow(), 16),
    ) {
        let mut after = before.clone();
        let mut next = 0;
        for (doc, edit) in after.iter_mut().filter(|d| d["apiVersion"] == "projectcalico.org/v3" && d["kind"].as_str().is_some_and(|k| k.ends_with("NetworkPolicy"))).zip(&edited) {
            for dir in ["ingress", "egress"] {
                let Some(rules) = doc["spec"][dir].as_array_mut().filter(|_| *edit) else { continue };
                for r in rules {
                    *r = pool[next % pool.len()].clone();
                    next += 1;
                }
            }
        }
        let (old, cluster) = (cluster_of(&before), cluster_of(&after));
        let (old_view, view) = (NodeView::compute(&old, None), NodeView::compute(&cluster, None));
        let mut compiler = Compiler::new();
        compiler.compile(&old_view);
        for ep in old_view.endpoints.values().filter(|e| e.kind == EndpointKind::Host) {
            for chain in HostChain::ALL {
                compiler.compile_host(&old_view, ep, chain);
            }
        }
        compiler.forget_changed(&old_view, &view);
        let programs = compiler.compile(&view);
        programs_equal_evaluator(&cluster, &programs, &flows)?;
        host_chains_equal_evaluator(&cluster, &view, &mut compiler, &flows)?;
    }

    #[test]
    fn compiled_host_chains_equal_reference_evaluator(docs in cluster_docs(), flows in prop::collection::vec(flow(), 24)) {
        let cluster = cluster_of(&docs);
        let view = NodeView::compute(&cluster, None);
        let mut compiler = Compiler::new();
        compiler.compile(&view);
        host_chains_equal_evaluator(&cluster, &view, &mut compiler, &flows)?;
    }

    #[test]
    fn compiled_host_pipeline_equals_reference(
        docs in cluster_docs(),
        flows in prop::collection::vec(flow(), 16),
        failsafes in pick(&["default", "none", "tcp:10.0.0.0/16:80,udp:53,tcp:[fd00::/64]:8080"]),
    ) {
        let cluster = cluster_of(&docs);
        let failsafes = match failsafes {
            "default" => Failsafes::default(),
            list => Failsafes { inbound: parse_failsafes(list).unwrap(), outbound: parse_failsafes(list).unwrap() },
        };
        let view = NodeView::compute(&cluster, None);
        let mut compiler = Compiler::new();
        compiler.compile(&view);
        let ev = Evaluator::new(&cluster);
        for ep in cluster.endpoints.iter().filter(|e| e.kind == EndpointKind::Host) {
            let hv = &view.endpoints[&ep.name];
            let hep = HostEndpoint { name: ep.name.clone(), chains: HostChain::ALL.iter().map(|c| compiler.compile_host(&view, hv, *c)).collect() };
            for direction in [Direction::Ingress, Direction::Egress] {
                for local in [true, false] {
                    let crossing = Crossing { direction, local };
                    for f in &flows {
                        let want = host::per_packet(&ev, &failsafes, ep, crossing, f);
                        let got = hep.per_packet(&failsafes, crossing, f);
                        prop_assert_eq!(describe(got.as_ref()), want.as_ref().map(|v| (v.allowed, step(&v.step))), "per packet {:?} {:?}", crossing, f);
                        let want = host::new_flow(&ev, ep, crossing, f);
                        let got = hep.new_flow(crossing, f);
                        prop_assert_eq!(describe(Some(&got)), Some((want.allowed, step(&want.step))), "new flow {:?} {:?}", crossing, f);
                    }
                }
            }
        }
    }
}

/// The cluster that generated manifests describe.
fn cluster_of(docs: &[Value]) -> Cluster {
    let loaded: Vec<Loaded> =
        docs.iter().map(|d| Loaded { resource: resource_from_value(d.clone(), "generated").expect("valid resource"), file: None }).collect();
    match palisade_policy::convert::build_cluster(&loaded) {
        Ok(c) => c,
        Err(e) => panic!("generator produced an invalid cluster: {}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")),
    }
}

/// Every endpoint's programs decide each flow as the evaluator does: verdict, deciding rule and
/// the Log, Pass and staged rules matched on the way.
fn programs_equal_evaluator(cluster: &Cluster, programs: &Programs, flows: &[Flow]) -> Result<(), TestCaseError> {
    let ev = Evaluator::new(cluster);
    for ep in &cluster.endpoints {
        for dir in [Direction::Ingress, Direction::Egress] {
            let prog = &programs[&(ep.name.clone(), dir)];
            for f in flows {
                let want = ev.direction(ep, dir, f, false);
                let got = prog.classify(f);
                prop_assert_eq!(got.allowed, want.allowed, "verdict for {:?} {} {:?}", ep.name, dir, f);
                prop_assert_eq!(prog.decision(&got), want.decided_by, "decision for {:?} {} {:?}", ep.name, dir, f);
                prop_assert_eq!(prog.matched(&got), want.matched, "trail for {:?} {} {:?}", ep.name, dir, f);
            }
        }
    }
    Ok(())
}

/// A decision as (allowed, what decided): "failsafe" or the chain and its deciding rule.
/// Every chain of every host endpoint, compiled by `compiler` (which compiled `view`), decides
/// as the evaluator does.
fn host_chains_equal_evaluator(cluster: &Cluster, view: &NodeView, compiler: &mut Compiler, flows: &[Flow]) -> Result<(), TestCaseError> {
    let ev = Evaluator::new(cluster);
    for ep in cluster.endpoints.iter().filter(|e| e.kind == EndpointKind::Host) {
        for chain in HostChain::ALL {
            let prog = compiler.compile_host(view, &view.endpoints[&ep.name], chain);
            for f in flows {
                let want = ev.host_chain(ep, chain, f, false);
                let got = prog.classify(f);
                prop_assert_eq!(got.allowed, want.allowed, "verdict for {} {} {:?}", ep.name, chain, f);
                prop_assert_eq!(prog.fell_through(&got), want.decided_by == Decision::FallThrough);
                prop_assert_eq!(prog.decision(&got), want.decided_by, "decision for {} {} {:?}", ep.name, chain, f);
                prop_assert_eq!(prog.matched(&got), want.matched, "trail for {} {} {:?}", ep.name, chain, f);
            }
        }
    }
    Ok(())
}

fn describe(d: Option<&Decided<'_>>) -> Option<(bool, String)> {
    d.map(|d| match d {
        Decided::Failsafe => (true, "failsafe".to_string()),
        Decided::Chain(chain, program, c) => (c.allowed, format!("{chain}: {:?}", program.decision(c))),
    })
}

fn step(s: &HostStep) -> String {
    match s {
        HostStep::Failsafe { .. } => "failsafe".to_string(),
        HostStep::Chain { chain, verdict } => format!("{chain}: {:?}", verdict.decided_by),
    }
}
