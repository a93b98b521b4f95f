//! The one-node lab: layout, teardown in every case, and failing closed without a dataplane.

use std::net::IpAddr;
use std::panic;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_lab::{probe, unique_name, Lab, LabError, LabSpec, Listeners, PodSpec, Protocol, EXT_MAC};
use palisade_policy::model::{workload_interface, workload_mac};

fn spec(name: &str, pods: &[(&str, &[&str])]) -> LabSpec {
    let pods = pods.iter().map(|(endpoint, ips)| PodSpec { endpoint: endpoint.to_string(), ips: ips.iter().map(|ip| addr(ip)).collect() });
    LabSpec { name: name.to_owned(), queues: 2, pods: pods.collect() }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The lab's namespaces that exist, sorted.
fn namespaces(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut found: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{name}-")))
        .map(str::to_owned)
        .collect();
    found.sort();
    found
}

/// Asserts that `output` contains each of `wanted`.
fn assert_has(output: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(output.contains(w), "no `{w}` in:\n{output}");
    }
}

#[test]
fn layout_matches_the_spec() {
    let name = unique_name("pt");
    let pods: [(&str, &[&str]); 3] = [("ns1/a", &["10.65.0.1"]), ("ns1/b", &["10.65.0.2"]), ("ns2/c", &["10.65.0.3", "fd00:65::3"])];
    let lab = Lab::up(&spec(&name, &pods)).unwrap();
    let expected = ["ext", "node", "p0", "p1", "p2"].map(|suffix| format!("{name}-{suffix}"));
    assert_eq!(namespaces(&name), expected);
    let (node, ext, uplink) = (lab.node_netns(), lab.ext_netns(), lab.uplink());
    assert_eq!((node, ext, uplink), (&*format!("{name}-node"), &*format!("{name}-ext"), &*format!("{name}-up")));
    let queues = "numtxqueues 2 numrxqueues 2";

    for (index, (endpoint, ips)) in pods.iter().enumerate() {
        let ns = lab.pod_netns(endpoint).unwrap();
        assert_eq!(ns, format!("{name}-p{index}"));
        let eth0 = lab.exec(ns, &["ip", "-d", "addr", "show", "eth0"]).unwrap();
        assert_has(&eth0, &[&format!("link/ether {}", mac(workload_mac(endpoint))), queues, "state UP"]);
        let host = workload_interface(endpoint);
        let host_link = lab.exec(node, &["ip", "-d", "link", "show", &host]).unwrap();
        assert_has(&host_link, &[queues, "state UP"]);
        for sysctl in [format!("ipv4/conf/{host}/proxy_arp"), format!("ipv4/conf/{host}/forwarding"), "ipv4/ip_forward".into()] {
            assert_eq!(lab.exec(node, &["cat", &format!("/proc/sys/net/{sysctl}")]).unwrap().trim(), "1", "{sysctl}");
        }
        assert_eq!(lab.exec(node, &["cat", &format!("/proc/sys/net/ipv4/neigh/{host}/proxy_delay")]).unwrap().trim(), "0");
        let (pod_routes, node_routes, ext_routes) = (
            lab.exec(ns, &["ip", "route"]).unwrap(),
            lab.exec(node, &["ip", "route"]).unwrap() + &lab.exec(node, &["ip", "-6", "route"]).unwrap(),
            lab.exec(ext, &["ip", "route"]).unwrap() + &lab.exec(ext, &["ip", "-6", "route"]).unwrap(),
        );
        assert_has(&pod_routes, &["default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"]);
        for ip in ips.iter().copied() {
            let (inet, via) = if addr(ip).is_ipv4() { (format!("inet {ip}/32"), "198.18.0.1") } else { (format!("inet6 {ip}/128"), "2001:2::1") };
            assert_has(&eth0, &[&inet]);
            assert_has(&node_routes, &[&format!("{ip} dev {host}")]);
            assert_has(&ext_routes, &[&format!("{ip} via {via} dev eth0")]);
        }
    }
    let c = lab.pod_netns("ns2/c").unwrap();
    assert_has(&lab.exec(c, &["ip", "-6", "route"]).unwrap(), &["default via fe80::1 dev eth0"]);
    assert_has(&lab.exec(node, &["ip", "addr", "show", &workload_interface("ns2/c")]).unwrap(), &["inet6 fe80::1/64"]);
    assert_eq!(lab.pod_netns("ns9/z"), None);

    assert_has(&lab.exec(node, &["ip", "-d", "addr", "show", uplink]).unwrap(), &[queues, "inet 198.18.0.1/30", "inet6 2001:2::1/64"]);
    assert_has(&lab.exec(node, &["ip", "route"]).unwrap(), &[&format!("default via 198.18.0.2 dev {uplink}")]);
    assert_has(
        &lab.exec(ext, &["ip", "-d", "addr", "show", "eth0"]).unwrap(),
        &[&format!("link/ether {}", mac(EXT_MAC)), queues, "inet 198.18.0.2/30"],
    );
    assert_has(&lab.exec(node, &["nft", "list", "table", "inet", "palisade_lab"]).unwrap(), &["hook forward", "policy drop"]);

    lab.down().unwrap();
    assert_eq!(namespaces(&name), Vec::<String>::new());
}

#[test]
fn a_panic_in_scope_tears_the_lab_down() {
    let name = unique_name("pt");
    let failed = panic::catch_unwind(|| {
        let _lab = Lab::up(&spec(&name, &[("ns1/a", &["10.65.1.1"])])).unwrap();
        assert_eq!(namespaces(&name).len(), 3);
        panic!("the test body fails");
    });
    assert!(failed.is_err());
    assert_eq!(namespaces(&name), Vec::<String>::new());
}

#[test]
fn down_stale_removes_a_forgotten_lab() {
    let name = unique_name("pt");
    std::mem::forget(Lab::up(&spec(&name, &[("ns1/a", &["10.65.2.1"]), ("ns1/b", &["10.65.2.2"])])).unwrap());
    assert_eq!(namespaces(&name).len(), 4);
    Lab::down_stale(&name).unwrap();
    assert_eq!(namespaces(&name), Vec::<String>::new());
}

#[test]
fn bad_specs_are_refused_and_half_built_labs_removed() {
    let mut bad = spec("abcdefghijklm", &[]);
    assert!(matches!(Lab::up(&bad), Err(LabError::Spec(_))));
    bad.name = unique_name("pt");
    bad.queues = 0;
    assert!(matches!(Lab::up(&bad), Err(LabError::Spec(_))));
    assert!(matches!(Lab::up(&spec(&bad.name, &[("ns1/a", &[]), ("ns1/a", &[])])), Err(LabError::Spec(_))));

    // The second pod's route clashes with the first's, after its namespace and veth were made.
    let name = unique_name("pt");
    let clash = Lab::up(&spec(&name, &[("ns1/a", &["10.65.3.1"]), ("ns1/b", &["10.65.3.1"])]));
    assert!(matches!(&clash, Err(LabError::Command { message, .. }) if message.contains("File exists")), "{clash:?}");
    assert_eq!(namespaces(&name), Vec::<String>::new());
}

#[test]
fn without_a_dataplane_the_node_forwards_nothing_but_answers_arp() {
    let name = unique_name("pt");
    let lab = Lab::up(&spec(&name, &[("ns1/a", &["10.65.4.1"]), ("ns1/b", &["10.65.4.2"])])).unwrap();
    let (a, b) = (lab.pod_netns("ns1/a").unwrap(), lab.pod_netns("ns1/b").unwrap());
    let _listener = Listeners::start(b, &[(Protocol::Tcp, 8080)]).unwrap();

    let start = Instant::now();
    assert!(!probe(a, addr("10.65.4.2"), Protocol::Tcp, 8080, Duration::from_millis(400)).unwrap());
    assert!(start.elapsed() < Duration::from_secs(1));

    let host = lab.exec(lab.node_netns(), &["ip", "-br", "link", "show", "dev", &workload_interface("ns1/a")]).unwrap();
    let host_mac = host.split_whitespace().nth(2).unwrap();
    let neigh = lab.exec(a, &["ip", "neigh", "show", "169.254.1.1", "dev", "eth0"]).unwrap();
    assert_has(&neigh, &[&format!("lladdr {host_mac}")]);
    assert!(["REACHABLE", "STALE", "DELAY"].iter().any(|state| neigh.contains(state)), "{neigh}");
}

#[test]
fn the_kernel_routes_the_lab_once_the_fail_closed_table_is_gone() {
    let name = unique_name("pt");
    let lab = Lab::up(&spec(&name, &[("ns1/a", &["10.65.5.1", "fd00:65:5::1"]), ("ns1/b", &["10.65.5.2", "fd00:65:5::2"])])).unwrap();
    let (a, b) = (lab.pod_netns("ns1/a").unwrap(), lab.pod_netns("ns1/b").unwrap());
    let ports = [(Protocol::Tcp, 8080), (Protocol::Udp, 5353), (Protocol::Sctp, 3868), (Protocol::Icmp, 0)];
    let _listeners = Listeners::start(b, &ports).unwrap();
    lab.exec(lab.node_netns(), &["nft", "delete", "table", "inet", "palisade_lab"]).unwrap();

    let timeout = Duration::from_secs(2);
    for dst in ["10.65.5.2", "fd00:65:5::2"] {
        for (protocol, port) in ports {
            assert!(probe(a, addr(dst), protocol, port, timeout).unwrap(), "pod {protocol} to {dst}");
        }
    }
    for (from, dst) in [(a, "198.18.0.2"), (a, "2001:2::2"), (lab.ext_netns(), "10.65.5.1"), (lab.ext_netns(), "fd00:65:5::1")] {
        assert!(probe(from, addr(dst), Protocol::Icmp, 0, timeout).unwrap(), "ping {dst} from {from}");
    }
}
