//! A network lab on one machine for testing the Palisade dataplane, made of network namespaces and veths.
//!
//! [`Lab`] lays out one node the way Calico does (pods routed over point-to-point veths with proxy ARP, an
//! uplink to an external namespace) and fails closed until a dataplane forwards. [`Listeners`] and [`probe`]
//! check reachability with TCP, UDP, SCTP and ICMP over IPv4 and IPv6 without subprocesses: sockets are
//! opened inside a namespace with [`run_in`]. Everything created is removed by guards on drop, panics included.
//! [`dataplane::Dataplane`] runs `palisade-dataplane` on a lab, and [`matrix`] probes every pod from every other.
//! [`HostLab`] is a bare-metal host with two networks, for host-endpoint tests. [`state::StateDir`] is a
//! manifest directory to change under a running dataplane; [`echo`] holds long-lived TCP connections;
//! [`etcd::Etcd`] is a real etcd on loopback.

pub mod dataplane;
pub mod echo;
mod error;
pub mod etcd;
mod host_lab;
pub mod matrix;
mod netns;
mod probe;
mod sock;
pub mod state;
mod topology;
mod wire;

use std::sync::atomic::{AtomicU32, Ordering};

pub use error::LabError;
pub use host_lab::{HostLab, Side, SIDE_A, SIDE_B};
pub use netns::{exec_in, ip, ip_in, run_in, sysctl_in, Netns};
pub use probe::{probe, Listeners, Protocol};
pub use topology::{Lab, LabSpec, PodSpec, EXT_MAC, NODE_TABLE};

/// A binary of this workspace built next to the running executable: in cargo's target
/// directory beside a binary, or one level up from a test's `deps` directory.
pub fn built_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dirs = exe.ancestors().skip(1).take(2);
    let candidates: Vec<std::path::PathBuf> = dirs.map(|d| d.join(name)).collect();
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| candidates.first().cloned().unwrap_or_else(|| name.into()))
}

/// A name unique to this process and call, `<tag><pid mod 10000, 4 digits><counter>`: with a tag of up to
/// 3 characters it is short enough for a [`LabSpec::name`] while parallel tests run.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{tag}{:04}{}", std::process::id() % 10_000, NEXT.fetch_add(1, Ordering::Relaxed))
}
