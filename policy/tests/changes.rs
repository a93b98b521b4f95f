//! `calc::Changes` (which node views a change can touch) against computing every view again: for
//! random clusters and one random change of a resource, a node whose view is said to be untouched
//! has exactly the view a fresh computation gives. Each build reuses the conversions of the one
//! before (as the control plane does) and is checked against a build from scratch.

use palisade_policy::calc::{Changes, NodeView, PolicyRules, Shared};
use palisade_policy::convert::{build_cluster, build_cluster_cached, ConversionCache};
use palisade_policy::load::{parse_str, Loaded};
use palisade_policy::model::Cluster;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PODS: usize = 6;
const POLICIES: usize = 3;

/// One manifest per resource; a change replaces one of them.
type Docs = Vec<String>;

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop::sample::select(items)
}

fn namespace(i: usize) -> impl Strategy<Value = String> {
    pick(&["prod", "dev"]).prop_map(move |env| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{i}, labels: {{env: {env}}}}}\n"))
}

fn pod(i: usize) -> impl Strategy<Value = String> {
    (0..2usize, pick(&NODES), pick(&["web", "db", "cache"]), any::<bool>(), 0..3u8).prop_map(move |(ns, node, app, named, ip)| {
        let ports = if named { "[{name: http, containerPort: 8080}]" } else { "[]" };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{ns}, labels: {{app: {app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, ports: {ports}}}]}}\nstatus: {{podIP: 10.{ip}.0.{}}}\n",
            i + 1
        )
    })
}

fn network_set() -> impl Strategy<Value = String> {
    (pick(&["ext", "int"]), 0..3u8).prop_map(|(role, net)| {
        format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: outside, labels: {{role: {role}}}}}\nspec: {{nets: [192.168.{net}.0/24]}}\n")
    })
}

fn host_endpoint() -> impl Strategy<Value = String> {
    (prop::option::of(pick(&NODES)), pick(&["edge", "core"])).prop_map(|(node, tier)| {
        let node = node.map(|n| format!(", node: {n}")).unwrap_or_default();
        format!("apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {{name: h1, labels: {{host: {tier}}}}}\nspec: {{interfaceName: eth9, expectedIPs: [10.9.0.1], profiles: [extra]{node}}}\n")
    })
}

/// A profile the host endpoint names, or (named otherwise) does not find.
fn profile() -> impl Strategy<Value = String> {
    (pick(&["extra", "other"]), pick(&["app == 'db'", "role == 'ext'"])).prop_map(|(name, src)| {
        format!("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {name}}}\nspec:\n  ingress: [{{action: Allow, source: {{selector: \"{src}\"}}}}]\n")
    })
}

const SELECTORS: &[&str] = &["app == 'web'", "app == 'db'", "all()", "role == 'ext'", "host == 'edge'", "has(app)", "env == 'prod'"];

fn policy(i: usize) -> impl Strategy<Value = String> {
    (any::<bool>(), pick(SELECTORS), pick(&["Allow", "Deny"]), pick(SELECTORS), pick(&["", "ports: [http]", "ports: [80]"])).prop_map(
        move |(global, sel, action, src, dst)| {
            let (kind, ns) = if global { ("GlobalNetworkPolicy", String::new()) } else { ("NetworkPolicy", ", namespace: ns0".to_string()) };
            format!(
                "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: pol{i}{ns}}}\nspec:\n  selector: \"{sel}\"\n  ingress: [{{action: {action}, protocol: TCP, source: {{selector: \"{src}\"}}, destination: {{{dst}}}}}]\n"
            )
        },
    )
}

fn docs() -> impl Strategy<Value = Docs> {
    let namespaces = (namespace(0), namespace(1));
    let pods: Vec<_> = (0..PODS).map(pod).collect();
    let policies: Vec<_> = (0..POLICIES).map(policy).collect();
    (namespaces, pods, network_set(), host_endpoint(), profile(), policies).prop_map(|((a, b), pods, set, host, profile, policies)| {
        let mut d = vec![a, b];
        d.extend(pods);
        d.push(set);
        d.push(host);
        d.push(profile);
        d.extend(policies);
        d
    })
}

/// Builds clusters from docs, sharing the parsed resource of a manifest seen before (as the
/// control plane's store shares unchanged resources between states).
#[derive(Default)]
struct Builder {
    parsed: HashMap<String, Arc<Loaded>>,
    converted: ConversionCache,
}

impl Builder {
    fn cluster(&mut self, docs: &Docs) -> Cluster {
        let loaded: Vec<Arc<Loaded>> = docs
            .iter()
            .map(|d| {
                self.parsed
                    .entry(d.clone())
                    .or_insert_with(|| {
                        let mut r = parse_str(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
                        Arc::new(Loaded { resource: r.remove(0), file: None })
                    })
                    .clone()
            })
            .collect();
        let cluster = build_cluster_cached(&loaded, &mut self.converted).unwrap_or_else(|e| panic!("generated cluster is invalid: {e:?}"));
        assert_eq!(cluster, build_cluster(&loaded).expect("builds"), "a build reusing conversions equals a fresh one");
        cluster
    }
}

/// For each node: whether `Changes` said its view may change, and whether it did.
fn check(before: &Docs, after: &Docs) -> Vec<(bool, bool)> {
    let mut b = Builder::default();
    let rules = Arc::new(PolicyRules::default());
    let old = b.cluster(before);
    let shared = Shared::reusing(&old, &rules);
    let views: Vec<NodeView> = NODES.iter().map(|n| NodeView::compute_shared(&old, Some(n), &shared)).collect();
    let new = b.cluster(after);
    let changes = Changes::between(&old, &new, &rules);
    let shared = Shared::reusing(&new, &rules);
    NODES
        .iter()
        .zip(&views)
        .map(|(n, view)| (changes.may_change(n, view, &new, &shared), *view != NodeView::compute(&new, Some(n))))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_view_said_untouched_by_a_change_is_untouched(before in docs(), replacement in docs(), which in 0..(2 + PODS + 3 + POLICIES)) {
        let mut after = before.clone();
        after[which] = replacement[which].clone();
        for (node, (may_change, changed)) in NODES.iter().zip(check(&before, &after)) {
            prop_assert!(may_change || !changed, "the view of {} changed, but was said untouched\nbefore: {}\nafter: {}", node, before[which], after[which]);
        }
    }
}

/// Not every view is recomputed: a pod relabelled where no selector sees it touches its node only.
#[test]
fn a_change_seen_by_no_other_node_touches_only_its_own() {
    let mut before: Docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns0}\n".into(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns0, labels: {app: web}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.0.0.1}\n".into(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: ns0, labels: {app: db}}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.2}\n".into(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: ns0, labels: {app: db}}\nspec: {nodeName: n3}\nstatus: {podIP: 10.0.0.3}\n".into(),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: db}\nspec:\n  selector: app == 'db'\n  ingress: [{action: Allow, source: {selector: app == 'web'}}]\n".into(),
    ];
    let after = {
        let mut a = before.clone();
        a[3] = a[3].replace("app: db", "app: db, tier: gold");
        a
    };
    assert_eq!(check(&before, &after), vec![(false, false), (false, false), (true, false)], "only n3's pod changed, and no set selects on `tier`");
    // The web pod's address is in a set that n2 and n3 use.
    before[1] = before[1].replace("10.0.0.1", "10.0.0.9");
    let moved = check(&after, &{
        let mut a = after.clone();
        a[1] = before[1].clone();
        a
    });
    assert_eq!(moved, vec![(true, true), (true, true), (true, true)], "n1's own pod, in the set n2's and n3's policy uses");
}
