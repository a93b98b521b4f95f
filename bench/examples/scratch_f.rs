use std::time::Instant;
use std::sync::Arc;
fn big_cluster(pods: usize, policies: usize) -> String {
    let mut s = String::new();
    for n in 0..10 {
        s += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{n}}}}}\n---\n");
    }
    for p in 0..pods {
        let ip = format!("10.{}.{}.{}", 100 + p / 65536, (p / 256) % 256, p % 256);
        s += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{}, labels: {{app: a{}}}}}\nspec: {{nodeName: node{}, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{podIP: {ip}}}\n---\n",
            p % 10, p % 50, p % 1000);
    }
    for q in 0..policies {
        s += &format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: pol{q}, namespace: ns{}}}\nspec:\n  selector: app == 'a{}'\n  ingress:\n    - {{action: Allow, protocol: TCP, source: {{selector: app == 'a{}'}}, destination: {{ports: [80]}}}}\n---\n",
            q % 10, q % 50, (q + 1) % 50);
    }
    s
}
fn main() {
    let docs = palisade_policy::load::parse_documents(&big_cluster(10000, 1000)).unwrap();
    let loaded: Vec<Arc<palisade_policy::load::Loaded>> = docs.into_iter().map(|(r, _)| Arc::new(palisade_policy::load::Loaded { resource: r, file: None })).collect();
    let mut cache = palisade_policy::convert::PolicyCache::default();
    let rules = Arc::new(palisade_policy::calc::PolicyRules::default());
    for _ in 0..std::env::var("N").map_or(3, |v| v.parse().unwrap()) {
        let t = Instant::now();
        let c = palisade_policy::convert::build_cluster_cached(&loaded, &mut cache).unwrap();
        let t1 = t.elapsed();
        let t = Instant::now();
        let shared = palisade_policy::calc::Shared::reusing(&c, &rules);
        let mut n = 0;
        for i in 0..1000 {
            let v = palisade_policy::calc::NodeView::compute_shared(&c, Some(&format!("node{i}")), &shared);
            n += v.endpoints.len();
        }
        let t2 = t.elapsed();
        println!("build {t1:?} 1000 views {t2:?} {n}");
    }
}
