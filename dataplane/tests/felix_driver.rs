//! `palisade-dataplane --felix-driver` driven the way Calico Felix drives an external dataplane:
//! framed `ToDataplane` messages on its fd 3 (a snapshot computed from a cluster, `InSync`, then
//! an IP-set delta and a bad update), framed `FromDataplane` reports read back from its fd 4, and
//! real traffic between two pods of a lab checking what is enforced. Needs root.

use palisade_control::felix::{diff, read_frame, write_frame};
use palisade_control::proto::felix::{self as fx, from_dataplane, to_dataplane::Payload, FromDataplane, ToDataplane};
use palisade_lab::dataplane::Dataplane;
use palisade_lab::matrix;
use palisade_lab::state::StateDir;
use palisade_lab::{probe, unique_name, Lab, Listeners, Protocol};
use palisade_policy::calc::NodeView;
use std::io::PipeWriter;
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-dataplane");

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns1, labels: {app: a}}\nspec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.66.9.1}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: ns1, labels: {app: b}}\nspec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.66.9.2}\n---
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: ns1}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-to-b, namespace: ns1}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]}\n";

/// The node's view of a cluster, as Felix's calculation graph would send it.
fn view_of(state: &StateDir) -> NodeView {
    let cluster = palisade_policy::load_cluster(&[state.current()]).expect("the test cluster loads");
    NodeView::compute(&cluster, Some("node1"))
}

fn send(to: &mut PipeWriter, payloads: Vec<Payload>) {
    for p in payloads {
        write_frame(to, &ToDataplane { sequence_number: 0, payload: Some(p), palisade_revision: 0 }).expect("writing to the driver");
    }
}

#[test]
fn felix_drives_the_dataplane_over_fd_3_and_reads_reports_on_fd_4() {
    let state = StateDir::new(&[("cluster.yaml", CLUSTER.to_string())]);
    let parsed = palisade_policy::load_cluster(&[state.current()]).expect("cluster");
    let targets = matrix::targets(&parsed, &[state.current()], Some(&[(Protocol::Tcp, 80)])).expect("targets");
    let lab = Lab::up(&matrix::lab_spec(&unique_name("fd"), 1, &targets)).expect("lab");
    let _listeners: Vec<Listeners> = matrix::listen(&lab, &targets).expect("listeners");
    let (mut dp, mut to_driver, mut reports) = Dataplane::start_felix_driver(Path::new(BIN), &lab, 1).expect("driver");
    let (tx, report_rx) = mpsc::channel::<FromDataplane>();
    std::thread::spawn(move || {
        while let Ok(Some(m)) = read_frame::<FromDataplane>(&mut reports) {
            if tx.send(m).is_err() {
                return;
            }
        }
    });

    // Felix starts with its configuration, then the snapshot, then InSync.
    let v1 = view_of(&state);
    let mut snapshot = vec![Payload::ConfigUpdate(fx::ConfigUpdate { config: [("DataplaneDriver".to_string(), BIN.to_string())].into() })];
    snapshot.extend(diff(&NodeView::default(), &v1));
    send(&mut to_driver, snapshot);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dp.revision(), 0, "nothing is enforced before InSync\n{}", dp.log());
    send(&mut to_driver, vec![Payload::InSync(fx::InSync {})]);
    dp.wait_for(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));

    let (a, b): (IpAddr, IpAddr) = ("10.66.9.1".parse().unwrap(), "10.66.9.2".parse().unwrap());
    let ns = |e: &str| lab.pod_netns(e).unwrap_or_else(|| panic!("pod {e}")).to_string();
    let t = Duration::from_millis(800);
    let reaches = |from: &str, to: IpAddr| probe(&ns(from), to, Protocol::Tcp, 80, t).expect("probe");
    assert!(reaches("ns1/a", b), "a-to-b allows a to reach b\n{}", dp.log());
    assert!(!reaches("ns1/b", a), "deny-ingress stops b reaching a");

    // The reports: in sync, both endpoints up.
    let mut statuses = Vec::new();
    let mut in_sync = false;
    while let Ok(m) = report_rx.recv_timeout(Duration::from_secs(2)) {
        match m.payload {
            Some(from_dataplane::Payload::DataplaneInSync(_)) => in_sync = true,
            Some(from_dataplane::Payload::WorkloadEndpointStatusUpdate(u)) => {
                statuses.push((u.id.expect("id").workload_id, u.status.expect("status").status));
            }
            _ => {}
        }
        if in_sync && statuses.len() == 2 {
            break;
        }
    }
    statuses.sort();
    assert!(in_sync, "the driver reported DataplaneInSync");
    assert_eq!(statuses, [("ns1/a".to_string(), "up".to_string()), ("ns1/b".to_string(), "up".to_string())]);

    // Pod a is relabelled: Felix sends only the IP-set delta, and a no longer reaches b.
    let relabelled = StateDir::new(&[("cluster.yaml", CLUSTER.replace("labels: {app: a}", "labels: {app: x}"))]);
    let v2 = view_of(&relabelled);
    let delta = diff(&v1, &v2);
    assert!(matches!(&delta[..], [Payload::IpsetDeltaUpdate(d)] if d.removed_members == ["10.66.9.1/32"]), "{delta:?}");
    send(&mut to_driver, delta);
    dp.wait_for(2, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!reaches("ns1/a", b), "the relabelled a is no longer in a-to-b's source set\n{}", dp.log());

    // A bad update is refused whole, named, and changes nothing.
    let bad = fx::ActivePolicyUpdate {
        id: Some(fx::PolicyId { tier: "default".into(), name: "ns1/knp.default.deny-ingress".into() }),
        policy: Some(fx::Policy {
            inbound_rules: vec![fx::Rule { action: "allow".into(), src_net: vec!["10.66.9.0/99".into()], ..Default::default() }],
            ..Default::default()
        }),
    };
    send(&mut to_driver, vec![Payload::ActivePolicyUpdate(bad)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        let err = dp.stats().ok().and_then(|v| v["status"]["last_error"].as_str().map(String::from));
        if let Some(e) = err {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no error reported for the bad update\n{}", dp.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(err.contains("ns1/knp.default.deny-ingress") && err.contains("src_net"), "{err}");
    assert!(!reaches("ns1/b", a), "the refused update changed nothing: still denied");

    // Felix goes away: so does its driver.
    drop(to_driver);
    assert!(dp.wait_exit(Duration::from_secs(10)).is_some(), "the driver exits when Felix closes fd 3\n{}", dp.log());
}
