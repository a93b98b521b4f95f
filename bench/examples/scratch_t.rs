use std::time::Instant;
fn main() {
    let n = 10000;
    let mut s = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n---\n");
    for (name, ip) in [("gen", "10.0.0.1"), ("sink", "10.0.0.2")] {
        s += &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: bench\n  labels:\n    app: {name}\nspec:\n  nodeName: node1\n  containers:\n    - name: main\n      image: busybox\nstatus:\n  podIP: {ip}\n---\n");
    }
    s += "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: sink-ingress\nspec:\n  selector: app == 'sink'\n  types: [Ingress]\n  ingress:\n";
    for i in 0..n {
        s += &format!("    - {{action: Allow, protocol: UDP, source: {{nets: [100.{}.{}.0/24]}}, destination: {{ports: [{}]}}}}\n", 64 + i / 256, i % 256, 1000 + i % 1000);
    }
    s += "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: toggle}\nspec:\n  selector: app == 'sink'\n  order: 1\n  types: [Ingress]\n  ingress:\n    - {action: Deny, protocol: TCP, destination: {ports: [1000]}}\n";
    let docs = palisade_policy::load::parse_documents(&s).unwrap();
    let mut loaded: Vec<std::sync::Arc<palisade_policy::load::Loaded>> = docs.into_iter().map(|(r, _)| std::sync::Arc::new(palisade_policy::load::Loaded { resource: r, file: None })).collect();
    let mut cache = palisade_policy::convert::PolicyCache::default();
    let c = palisade_policy::convert::build_cluster_cached(&loaded, &mut cache).unwrap();
    let mut view = palisade_policy::calc::NodeView::compute(&c, Some("node1"));
    let mut comp = palisade_dataplane::compile::Compiler::new();
    comp.compile(&view);
    for i in 0..5 {
        let toggle = format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: toggle}}\nspec:\n  selector: app == 'sink'\n  order: 1\n  types: [Ingress]\n  ingress:\n    - {{action: Deny, protocol: TCP, destination: {{ports: [{}]}}}}\n", 2000 + i);
        let t = Instant::now();
        let d = palisade_policy::load::parse_documents(&toggle).unwrap().into_iter().next().unwrap();
        let n = loaded.len();
        loaded[n - 1] = std::sync::Arc::new(palisade_policy::load::Loaded { resource: d.0, file: None });
        let t0 = t.elapsed();
        let t = Instant::now();
        let c = palisade_policy::convert::build_cluster_cached(&loaded, &mut cache).unwrap();
        let t1 = t.elapsed();
        let t = Instant::now();
        let v = palisade_policy::calc::NodeView::compute(&c, Some("node1"));
        let t2 = t.elapsed();
        let t = Instant::now();
        comp.forget_changed(&view, &v);
        let p = comp.compile(&v);
        let t3 = t.elapsed();
        view = v;
        println!("parse {t0:?} convert {t1:?} view {t2:?} compile {t3:?} {}", p.len());
    }
}
