//! Listeners and probes over a plain veth pair between two namespaces (no lab, no dataplane).

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use palisade_lab::{exec_in, ip, ip_in, probe, unique_name, Listeners, Netns, Protocol};

const CLIENT_V4: &str = "198.19.0.1";
const SERVER_V4: &str = "198.19.0.2";
const CLIENT_V6: &str = "2001:2:0:1::1";
const SERVER_V6: &str = "2001:2:0:1::2";
const PORTS: [(Protocol, u16); 3] = [(Protocol::Tcp, 8080), (Protocol::Udp, 5353), (Protocol::Sctp, 3868)];
const ALL: [Protocol; 4] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp];

/// Two namespaces joined by a veth, with IPv4 and IPv6 addresses on each end; deleted on drop.
struct Pair {
    client: Netns,
    server: Netns,
}

fn pair() -> Pair {
    let name = unique_name("pp");
    let pair = Pair { client: Netns::create(&format!("{name}c")).unwrap(), server: Netns::create(&format!("{name}s")).unwrap() };
    let (client, server) = (pair.client.name(), pair.server.name());
    ip(&["link", "add", "veth0", "netns", client, "type", "veth", "peer", "name", "veth0", "netns", server]).unwrap();
    for (ns, v4, v6) in [(client, CLIENT_V4, CLIENT_V6), (server, SERVER_V4, SERVER_V6)] {
        ip_in(ns, &["link", "set", "lo", "up"]).unwrap();
        ip_in(ns, &["link", "set", "veth0", "up"]).unwrap();
        ip_in(ns, &["addr", "add", &format!("{v4}/24"), "dev", "veth0"]).unwrap();
        ip_in(ns, &["addr", "add", &format!("{v6}/64"), "dev", "veth0", "nodad"]).unwrap();
    }
    pair
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(protocol: Protocol) -> u16 {
    PORTS.iter().find(|(p, _)| *p == protocol).map_or(0, |&(_, port)| port)
}

#[test]
fn every_protocol_answers_over_ipv4_and_ipv6() {
    let pair = pair();
    let _listeners = Listeners::start(pair.server.name(), &PORTS).unwrap();
    for dst in [SERVER_V4, SERVER_V6] {
        for protocol in ALL {
            let answered = probe(pair.client.name(), addr(dst), protocol, port(protocol), Duration::from_secs(2)).unwrap();
            assert!(answered, "{protocol} to {dst}");
        }
    }
}

#[test]
fn closed_ports_do_not_answer() {
    let pair = pair();
    let _listeners = Listeners::start(pair.server.name(), &PORTS).unwrap();
    for dst in [SERVER_V4, SERVER_V6] {
        // A reset and a port unreachable come back at once.
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let start = Instant::now();
            assert!(!probe(pair.client.name(), addr(dst), protocol, 9, Duration::from_secs(3)).unwrap(), "{protocol} to {dst}");
            assert!(start.elapsed() < Duration::from_secs(1), "{protocol} to {dst} took {:?}", start.elapsed());
        }
        // The SCTP listener answers only its own ports.
        assert!(!probe(pair.client.name(), addr(dst), Protocol::Sctp, 9, Duration::from_millis(300)).unwrap());
    }
}

#[test]
fn dropped_listeners_stop_answering() {
    let pair = pair();
    drop(Listeners::start(pair.server.name(), &PORTS).unwrap());
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert!(!probe(pair.client.name(), addr(SERVER_V4), protocol, port(protocol), Duration::from_millis(300)).unwrap(), "{protocol}");
    }
}

#[test]
fn an_nftables_drop_silences_every_protocol() {
    let pair = pair();
    let _listeners = Listeners::start(pair.server.name(), &PORTS).unwrap();
    let rules = format!(
        "add table inet t; add chain inet t input {{ type filter hook input priority 0; }}; \
         add rule inet t input ip saddr {CLIENT_V4} drop; add rule inet t input ip6 saddr {CLIENT_V6} drop"
    );
    exec_in(pair.server.name(), &["nft", &rules]).unwrap();
    let timeout = Duration::from_millis(300);
    for dst in [SERVER_V4, SERVER_V6] {
        for protocol in ALL {
            let start = Instant::now();
            assert!(!probe(pair.client.name(), addr(dst), protocol, port(protocol), timeout).unwrap(), "{protocol} to {dst}");
            let took = start.elapsed();
            assert!(took >= timeout && took < timeout + Duration::from_millis(300), "{protocol} to {dst} took {took:?}");
        }
    }
}

#[test]
fn concurrent_probes_see_only_their_answers() {
    let pair = pair();
    let _listeners = Listeners::start(pair.server.name(), &PORTS).unwrap();
    let probes: Vec<_> = (0..12)
        .map(|i| {
            let client = pair.client.name().to_owned();
            // Every third probe goes to a port nobody listens on, while its raw socket sees the others' answers.
            let (protocol, dst) = ([Protocol::Sctp, Protocol::Icmp][i % 2], [SERVER_V4, SERVER_V6][i / 2 % 2]);
            let port = if i % 3 == 0 { 9 } else { port(protocol) };
            let expected = protocol == Protocol::Icmp || port != 9;
            thread::spawn(move || (probe(&client, addr(dst), protocol, port, Duration::from_millis(800)).unwrap(), expected, protocol, dst))
        })
        .collect();
    for probe in probes {
        let (answered, expected, protocol, dst) = probe.join().unwrap();
        assert_eq!(answered, expected, "{protocol} to {dst}");
    }
}

#[test]
fn a_missing_namespace_is_an_error() {
    assert!(probe("palisade-lab-none", addr(SERVER_V4), Protocol::Tcp, 1, Duration::from_millis(100)).is_err());
    assert!(Listeners::start("palisade-lab-none", &PORTS).is_err());
}
