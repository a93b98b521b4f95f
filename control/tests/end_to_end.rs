//! End to end, as a user runs it: real etcd, `palisade-control` on it, `palisadectl apply` and
//! `delete`, and `palisade-dataplane --control` enforcing on real traffic in a lab. The control
//! plane, etcd and the agent are restarted in turn; a deny never stops denying meanwhile.
//!
//! Needs root, and `palisade-dataplane` and `palisadectl` built next to this test (as
//! `cargo test --workspace` does).

use palisade_lab::dataplane::Dataplane;
use palisade_lab::etcd::Etcd;
use palisade_lab::{matrix, probe, unique_name, Lab, Listeners, Protocol};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns1, labels: {app: a}}\nspec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.66.7.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: ns1, labels: {app: b}}\nspec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.66.7.2}\n";
const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-deny, namespace: ns1}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n";

/// A binary built next to this test (cargo's target directory).
fn sibling(name: &str) -> PathBuf {
    let bin = palisade_lab::built_binary(name);
    assert!(bin.exists(), "{} is not built: run the whole suite (cargo test --workspace)", bin.display());
    bin
}

/// `palisade-control` on etcd in namespace `ns`, killed on drop.
struct ControlPlane(Child);

impl ControlPlane {
    fn start(ns: &str, etcd: &Etcd, port: u16) -> ControlPlane {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_palisade-control")])
            .args(["--etcd-endpoints", &etcd.url(), "--listen", &format!("127.0.0.1:{port}"), "--insecure"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("palisade-control");
        ControlPlane(child)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `palisadectl` in namespace `ns` against the control plane; retries while it is still
/// starting.
fn palisadectl(ns: &str, url: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(sibling("palisadectl"))
            .args(args)
            .args(["--server", url])
            .output()
            .expect("palisadectl");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(Instant::now() < deadline && err.contains("connect"), "palisadectl {args:?}: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn apply_through_the_control_plane_enforces_on_traffic_across_restarts() {
    let files = tempfile::tempdir().expect("tempdir");
    let cluster = write(files.path(), "cluster.yaml", CLUSTER);
    let deny = write(files.path(), "deny.yaml", DENY_B);
    let parsed = palisade_policy::load_cluster(&[files.path().join("cluster.yaml")]).expect("cluster");
    let targets = matrix::targets(&parsed, &[files.path().join("cluster.yaml")], Some(&[(Protocol::Tcp, 80)])).expect("targets");
    let lab = Lab::up(&matrix::lab_spec(&unique_name("ce"), 1, &targets)).expect("lab");
    let _listeners: Vec<Listeners> = matrix::listen(&lab, &targets).expect("listeners");
    // etcd, the control plane and palisadectl run on the node's loopback, where the agent is.
    let node = lab.node_netns().to_string();
    let mut etcd = Etcd::start_in(Some(&node)).expect("etcd");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let url = format!("http://127.0.0.1:{port}");
    let mut control = ControlPlane::start(&node, &etcd, port);
    let palisadectl = |args: &[&str]| palisadectl(&node, &url, args);
    palisadectl(&["apply", "-f", &cluster]);
    let dataplane = sibling("palisade-dataplane");
    let mut dp = Dataplane::start_control(&dataplane, &lab, &url, 1).expect("agent");
    let a = lab.pod_netns("ns1/a").expect("pod a").to_string();
    let b_ip: IpAddr = "10.66.7.2".parse().unwrap();
    let (t, denied) = (Duration::from_millis(1000), Duration::from_millis(400));
    let reaches = || probe(&a, b_ip, Protocol::Tcp, 80, t).expect("probe");
    let blocked = || (0..3).all(|_| !probe(&a, b_ip, Protocol::Tcp, 80, denied).expect("probe"));
    assert!(reaches(), "no policy: a reaches b\n{}", dp.log());

    // Runs palisadectl and waits for the agent to apply the datastore revision it wrote.
    let change = |dp: &mut Dataplane, args: &[&str]| {
        let out = palisadectl(args);
        let revision = out.split("(revision ").filter_map(|r| r.split(')').next()?.parse::<i64>().ok()).max();
        let revision = revision.unwrap_or_else(|| panic!("palisadectl printed no revision:\n{out}"));
        dp.wait_for_applied(revision, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}\n{}", dp.log()));
    };
    change(&mut dp, &["apply", "-f", &deny]);
    assert!(blocked(), "after palisadectl apply, the deny is enforced");
    // The agent reports to the control plane: in sync, both pods up.
    let reported = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let out = palisadectl(&["status"]);
            let lines: Vec<&str> = out.lines().collect();
            let node_ok = lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&["node1", "true", "true"]));
            let up = |pod: &str| lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["workload", pod, "up"]);
            if node_ok && up("ns1/a") && up("ns1/b") {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "palisadectl status never showed node1 in sync with both pods up:\n{out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    reported();
    let got = palisadectl(&["get", "networkpolicy", "-n", "ns1"]);
    assert!(got.contains("b-deny"), "palisadectl get lists it:\n{got}");

    // The control plane goes away: the agent keeps enforcing the last state.
    drop(control);
    assert!(blocked(), "control plane down: still denied");
    control = ControlPlane::start(&node, &etcd, port);
    change(&mut dp, &["delete", "networkpolicy", "b-deny", "-n", "ns1"]);
    assert!(reaches(), "after the control plane's restart and the delete, allowed again\n{}", dp.log());
    reported(); // the agent's reports reached the new control plane too

    // etcd restarts under the control plane: writes go through once it is back.
    change(&mut dp, &["apply", "-f", &deny]);
    assert!(blocked(), "denied again");
    etcd.stop();
    assert!(blocked(), "etcd down: still denied");
    etcd.restart().expect("etcd restart");
    change(&mut dp, &["delete", "-f", &deny]);
    assert!(reaches(), "after etcd's restart the delete reaches the agent");
    change(&mut dp, &["apply", "-f", &deny]);

    // The agent restarts: it enforces the stored state from its first revision.
    drop(dp);
    let dp = Dataplane::start_control(&dataplane, &lab, &url, 1).expect("agent restart");
    assert!(blocked(), "the restarted agent enforces the stored deny\n{}", dp.log());
    drop((dp, control));
}
