//! A Calico-style layer-3 lab for one node: pods behind point-to-point veths, an uplink to "the rest of the
//! network", and a node kernel that forwards nothing until a dataplane does.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use palisade_policy::model::{workload_interface, workload_mac};

use crate::netns::{self, exec_in, ip, ip_in, sysctls_in, Netns};
use crate::LabError;

/// The MAC address of `eth0` in the external namespace, the next hop of the node's default route.
pub const EXT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];

/// The node's end of the uplink and the external namespace's end (198.18.0.0/15 is never routed outside a lab).
const NODE_UPLINK_V4: &str = "198.18.0.1";
const EXT_V4: &str = "198.18.0.2";
/// The same for IPv6 (2001:2::/48, the IPv6 benchmarking range).
const NODE_UPLINK_V6: &str = "2001:2::1";
const EXT_V6: &str = "2001:2::2";

/// The node's nftables table: its `forward` chain (policy drop, no rules) makes the node fail closed. A kernel
/// baseline may add rules and sets to it, and flush them after.
pub const NODE_TABLE: &str = "inet palisade_lab";

/// Longest lab name: the uplink `<name>-up` must fit an interface name (15 characters).
const MAX_NAME: usize = 12;

/// What to build: a lab name, the veth queue count and the pods.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Short prefix of every namespace and interface the lab creates (up to 12 of `[A-Za-z0-9_-]`).
    pub name: String,
    /// RX and TX queues of every veth end.
    pub queues: u32,
    /// The pods, each in its own namespace.
    pub pods: Vec<PodSpec>,
}

/// A pod: its endpoint name and addresses.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// `namespace/pod`, which names its host-side interface and MAC as the dataplane expects.
    pub endpoint: String,
    /// IPv4 addresses (as /32) and IPv6 addresses (as /128) of its `eth0`.
    pub ips: Vec<IpAddr>,
}

/// A running lab; dropping it deletes every namespace it created, and with them every interface.
///
/// Namespaces: `<name>-node` (the node), `<name>-ext` (remote hosts), `<name>-p<index>` per pod.
/// A pod's `eth0` (MAC [`workload_mac`]) pairs with the node's [`workload_interface`] (proxy ARP, forwarding,
/// `fe80::1` if the pod has IPv6); the pod routes everything via 169.254.1.1 and fe80::1, the node routes each
/// pod address to its interface. The uplink `<name>-up` (198.18.0.1/30) pairs with `eth0` in the external
/// namespace (198.18.0.2/30, MAC [`EXT_MAC`]), the node's default route, through which the external namespace
/// routes pod addresses; with IPv6 pods, the same over 2001:2::1/64 and 2001:2::2/64. The node forwards in
/// principle, but its nftables table `inet palisade_lab` drops everything in the forward hook: without a
/// dataplane nothing crosses the node.
///
/// Sockets opened in a lab namespace keep it alive after teardown until closed: drop listeners before the lab.
#[derive(Debug)]
pub struct Lab {
    uplink: String,
    node: Netns,
    ext: Netns,
    /// Endpoint and namespace of each pod, in spec order.
    pods: Vec<(String, Netns)>,
}

impl Lab {
    /// Builds the lab; on failure, whatever was created is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        validate(spec)?;
        let queues = spec.queues.to_string();
        let ipv6 = spec.pods.iter().flat_map(|p| &p.ips).any(IpAddr::is_ipv6);
        let quiet = if Path::new("/proc/sys/net/ipv6").exists() { QUIET_IPV6 } else { &[] };

        let node = Netns::create(&format!("{}-node", spec.name))?;
        // Fail closed: forward nothing.
        let fail_closed = format!("add table {NODE_TABLE}; add chain {NODE_TABLE} forward {{ type filter hook forward priority 0; policy drop; }}");
        exec_in(node.name(), &["nft", &fail_closed])?;
        sysctls_in(node.name(), &[quiet, NODE_SYSCTLS].concat())?;
        if ipv6 {
            sysctls_in(node.name(), &[("net.ipv6.conf.all.forwarding", "1")])?;
        }
        ip_in(node.name(), &["link", "set", "lo", "up"])?;

        let ext = Netns::create(&format!("{}-ext", spec.name))?;
        sysctls_in(ext.name(), quiet)?;
        let uplink = format!("{}-up", spec.name);
        veth(&uplink, node.name(), "eth0", ext.name(), &mac(EXT_MAC), &queues)?;
        ip_in(node.name(), &["link", "set", &uplink, "up"])?;
        ip_in(node.name(), &["addr", "add", &format!("{NODE_UPLINK_V4}/30"), "dev", &uplink])?;
        ip_in(node.name(), &["route", "add", "default", "via", EXT_V4])?;
        for dev in ["lo", "eth0"] {
            ip_in(ext.name(), &["link", "set", dev, "up"])?;
        }
        no_checksum_offload(ext.name())?;
        ip_in(ext.name(), &["addr", "add", &format!("{EXT_V4}/30"), "dev", "eth0"])?;
        if ipv6 {
            ip_in(node.name(), &["addr", "add", &format!("{NODE_UPLINK_V6}/64"), "dev", &uplink, "nodad"])?;
            ip_in(node.name(), &["-6", "route", "add", "default", "via", EXT_V6])?;
            ip_in(ext.name(), &["addr", "add", &format!("{EXT_V6}/64"), "dev", "eth0", "nodad"])?;
        }

        let mut lab = Lab { uplink, node, ext, pods: Vec::new() };
        for (index, pod) in spec.pods.iter().enumerate() {
            let ns = Netns::create(&format!("{}-p{index}", spec.name))?;
            sysctls_in(ns.name(), quiet)?;
            lab.pods.push((pod.endpoint.clone(), ns));
            plug(lab.node.name(), lab.ext.name(), lab.pods[index].1.name(), pod, &queues)?;
        }
        Ok(lab)
    }

    /// The node's own IPv4 address (on its uplink): what its processes send from.
    pub fn node_ip(&self) -> IpAddr {
        NODE_UPLINK_V4.parse().expect("constant address")
    }

    /// The node's namespace.
    pub fn node_netns(&self) -> &str {
        self.node.name()
    }

    /// The external namespace, standing for remote hosts.
    pub fn ext_netns(&self) -> &str {
        self.ext.name()
    }

    /// The namespace of the pod with this `namespace/pod` endpoint name.
    pub fn pod_netns(&self, endpoint: &str) -> Option<&str> {
        self.pods.iter().find(|(e, _)| e == endpoint).map(|(_, ns)| ns.name())
    }

    /// The node's uplink interface, `<name>-up`.
    pub fn uplink(&self) -> &str {
        &self.uplink
    }

    /// Runs a command inside one of the namespaces and returns its standard output.
    pub fn exec(&self, ns: &str, command: &[&str]) -> Result<String, LabError> {
        exec_in(ns, command)
    }

    /// Tears the lab down, reporting the first failure (every namespace is still attempted).
    pub fn down(self) -> Result<(), LabError> {
        let Lab { node, ext, pods, .. } = self;
        let results: Vec<_> = pods.into_iter().map(|(_, ns)| ns).chain([ext, node]).map(Netns::delete).collect();
        results.into_iter().collect()
    }

    /// Deletes the namespaces a crashed run left behind for the lab `name`.
    pub fn down_stale(name: &str) -> Result<(), LabError> {
        let ours = |ns: &str| {
            ns.strip_prefix(name).and_then(|rest| rest.strip_prefix('-')).is_some_and(|rest| {
                rest == "node" || rest == "ext" || rest.strip_prefix('p').is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
        };
        netns::list()?.iter().filter(|ns| ours(ns)).try_for_each(|ns| ip(&["netns", "del", ns]))
    }
}

/// IPv6 without the chatter: no duplicate address detection, router solicitations or advertisements.
pub(crate) const QUIET_IPV6: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.router_solicitations", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
];

/// The node routes, without reverse-path filtering (set after the fail-closed table is in place).
const NODE_SYSCTLS: &[(&str, &str)] = &[("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"), ("net.ipv4.ip_forward", "1")];

/// Refuses names that do not fit interface names or that a stale-lab cleanup could confuse, and duplicates.
fn validate(spec: &LabSpec) -> Result<(), LabError> {
    let name_ok = (1..=MAX_NAME).contains(&spec.name.len()) && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(LabError::Spec(format!("name `{}` is not 1 to {MAX_NAME} of [A-Za-z0-9_-]", spec.name)));
    }
    if spec.queues == 0 {
        return Err(LabError::Spec("queues must be at least 1".into()));
    }
    let mut seen = HashSet::new();
    if let Some(pod) = spec.pods.iter().find(|p| !seen.insert(&p.endpoint)) {
        return Err(LabError::Spec(format!("endpoint `{}` appears twice", pod.endpoint)));
    }
    Ok(())
}

/// Connects a pod to the node in its freshly made namespace `ns`: veth, addresses, and routes on all three sides.
fn plug(node: &str, ext: &str, ns: &str, pod: &PodSpec, queues: &str) -> Result<(), LabError> {
    let host = workload_interface(&pod.endpoint);
    veth(&host, node, "eth0", ns, &mac(workload_mac(&pod.endpoint)), queues)?;

    // Linux answers proxy ARP only on forwarding interfaces, and delays its answers to broadcast requests by
    // up to proxy_delay unless that is 0.
    let conf = format!("net.ipv4.conf.{host}");
    let settings = [
        (format!("{conf}.forwarding"), "1"),
        (format!("{conf}.proxy_arp"), "1"),
        (format!("{conf}.rp_filter"), "0"),
        (format!("net.ipv4.neigh.{host}.proxy_delay"), "0"),
    ];
    sysctls_in(node, &settings.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>())?;
    ip_in(node, &["link", "set", &host, "up"])?;
    for dev in ["lo", "eth0"] {
        ip_in(ns, &["link", "set", dev, "up"])?;
    }
    no_checksum_offload(ns)?;

    for addr in &pod.ips {
        let (cidr, uplink) = match addr {
            IpAddr::V4(a) => (format!("{a}/32"), NODE_UPLINK_V4),
            IpAddr::V6(a) => (format!("{a}/128"), NODE_UPLINK_V6),
        };
        let mut add = vec!["addr", "add", &cidr, "dev", "eth0"];
        if addr.is_ipv6() {
            add.push("nodad");
        }
        ip_in(ns, &add)?;
        ip_in(node, &["route", "add", &cidr, "dev", &host, "scope", "link"])?;
        ip_in(ext, &["route", "add", &cidr, "via", uplink])?;
    }
    if pod.ips.iter().any(IpAddr::is_ipv4) {
        ip_in(ns, &["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ip_in(ns, &["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
    }
    if pod.ips.iter().any(IpAddr::is_ipv6) {
        ip_in(node, &["addr", "add", "fe80::1/64", "dev", &host, "nodad"])?;
        ip_in(ns, &["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])?;
    }
    Ok(())
}

/// Turns off transmit checksum offload on `eth0` of `ns`. A veth hands the peer its packets with the
/// TCP/UDP checksum left for "hardware" to fill in; copy-mode AF_XDP receives them without that note,
/// so a dataplane forwarding them would deliver bad checksums. A CNI using an AF_XDP dataplane does the
/// same on the workload side (physical NICs deliver complete checksums).
pub(crate) fn no_checksum_offload(ns: &str) -> Result<(), LabError> {
    exec_in(ns, &["ethtool", "-K", "eth0", "tx", "off"]).map(|_| ())
}

/// Creates a veth pair directly in its two namespaces, with `queues` RX and TX queues on both ends and the
/// second end's MAC set.
pub(crate) fn veth(a: &str, a_ns: &str, b: &str, b_ns: &str, b_mac: &str, queues: &str) -> Result<(), LabError> {
    let q = ["numtxqueues", queues, "numrxqueues", queues];
    let args = [&["link", "add", a, "netns", a_ns][..], &q, &["type", "veth", "peer", "name", b, "address", b_mac, "netns", b_ns], &q];
    ip(&args.concat())
}

/// `02:00:c6:12:00:02` notation.
fn mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
