//! Loads the redirector and attaches it to a veth in a network namespace this test creates:
//! the verifier accepts it, the attach mode is reported, ARP passes, IP without a socket is
//! dropped and counted, and an ended run's attachment does not block the next.

use palisade_bpf::{AttachMode, Mode, Redirector};
use std::process::Command;

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        Netns(name.into())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into the namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
}

fn counter(r: &Redirector, name: &str) -> u64 {
    r.counters().unwrap().into_iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn attaches_counts_and_detaches() {
    let pid = std::process::id() % 100000;
    let (a, b) = (Netns::new(&format!("pbt{pid}a")), Netns::new(&format!("pbt{pid}b")));
    run(&[
        "ip",
        "link",
        "add",
        "xa",
        "netns",
        &a.0,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "xb",
        "netns",
        &b.0,
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
    ]);
    run(&["ip", "-n", &a.0, "addr", "add", "10.99.0.1/24", "dev", "xa"]);
    run(&["ip", "-n", &b.0, "addr", "add", "10.99.0.2/24", "dev", "xb"]);
    run(&["ip", "-n", &a.0, "link", "set", "xa", "up"]);
    run(&["ip", "-n", &b.0, "link", "set", "xb", "up"]);
    let ns = a.0.clone();
    std::thread::spawn(move || {
        enter(&ns);
        // A run that ended: its BPF link went with it, so a new run attaches at once.
        let mut r = Redirector::load().unwrap();
        r.attach("xa", 2, Mode::All).unwrap();
        drop(r);
        let mut r = Redirector::load().unwrap();
        assert_eq!(r.attach("xa", 2, Mode::All).unwrap(), AttachMode::Native, "veth supports native XDP");
        assert!(r.attach("xa", 2, Mode::All).is_err(), "double attach is refused");
        // ARP passes (ping resolves the neighbour), IP is dropped: no socket is registered.
        let ping = Command::new("ip")
            .args(["netns", "exec", &format!("{}b", &ns[..ns.len() - 1]), "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.99.0.1"])
            .output()
            .unwrap();
        assert!(!ping.status.success(), "IP without a socket must be dropped");
        assert!(counter(&r, "pass_not_ip") >= 1, "ARP was passed to the kernel");
        assert!(counter(&r, "drop_no_socket") >= 2, "echo requests were dropped: {:?}", r.counters());
        let neigh = run(&["ip", "neigh", "show", "dev", "xa"]);
        assert!(neigh.contains("10.99.0.2"), "the kernel learned the peer through ARP: {neigh}");
        r.detach("xa").unwrap();
        let ping = Command::new("ip")
            .args(["netns", "exec", &format!("{}b", &ns[..ns.len() - 1]), "ping", "-c", "1", "-W", "1", "10.99.0.1"])
            .output()
            .unwrap();
        assert!(ping.status.success(), "after detach the kernel answers again");
    })
    .join()
    .unwrap();
}
