//! A bare-metal host to protect: a "host" namespace with two uplinks, each to a network of its own.
//!
//! ```text
//!   <name>-a  eth0 10.91.0.2/24 fd91::2/64 ──── eth0 10.91.0.1/24 fd91::1/64 ┐
//!                                                                           <name>-host (routes between them)
//!   <name>-b  eth0 10.92.0.2/24 fd92::2/64 ──── eth1 10.92.0.1/24 fd92::1/64 ┘
//! ```
//!
//! Clients in `a` and `b` route everything through the host, so `a` ↔ `b` traffic is forwarded by it. The host
//! keeps Debian's loose reverse-path filter. Dropping the lab deletes its namespaces and interfaces.

use std::net::IpAddr;
use std::path::Path;

use crate::netns::{exec_in, ip_in, sysctls_in, Netns};
use crate::topology::{no_checksum_offload, veth, QUIET_IPV6};
use crate::LabError;

/// One side of the host: the host's interface, its addresses and the client's.
#[derive(Clone, Copy, Debug)]
pub struct Side {
    /// The host's interface name.
    pub interface: &'static str,
    /// The host's IPv4 and IPv6 addresses on it.
    pub host: [&'static str; 2],
    /// The client's IPv4 and IPv6 addresses.
    pub client: [&'static str; 2],
    /// The client's MAC.
    pub client_mac: &'static str,
}

/// The `a` side.
pub const SIDE_A: Side =
    Side { interface: "eth0", host: ["10.91.0.1", "fd91::1"], client: ["10.91.0.2", "fd91::2"], client_mac: "02:00:0a:5b:00:02" };
/// The `b` side.
pub const SIDE_B: Side =
    Side { interface: "eth1", host: ["10.92.0.1", "fd92::1"], client: ["10.92.0.2", "fd92::2"], client_mac: "02:00:0a:5c:00:02" };

impl Side {
    /// The host's address of this IP version (4 or 6).
    pub fn host_ip(&self, version: u8) -> IpAddr {
        self.host[usize::from(version == 6)].parse().expect("constant address")
    }

    /// The client's address of this IP version.
    pub fn client_ip(&self, version: u8) -> IpAddr {
        self.client[usize::from(version == 6)].parse().expect("constant address")
    }
}

/// The running host lab.
#[derive(Debug)]
pub struct HostLab {
    host: Netns,
    a: Netns,
    b: Netns,
}

impl HostLab {
    /// Builds the lab (`name`: up to 12 of `[A-Za-z0-9_-]`); on failure, whatever was created is removed.
    pub fn up(name: &str) -> Result<HostLab, LabError> {
        let quiet = if Path::new("/proc/sys/net/ipv6").exists() { QUIET_IPV6 } else { &[] };
        let host = Netns::create(&format!("{name}-host"))?;
        sysctls_in(
            host.name(),
            &[
                quiet,
                &[
                    ("net.ipv4.conf.all.rp_filter", "2"),
                    ("net.ipv4.conf.default.rp_filter", "2"),
                    ("net.ipv4.ip_forward", "1"),
                    ("net.ipv6.conf.all.forwarding", "1"),
                ],
            ]
            .concat(),
        )?;
        ip_in(host.name(), &["link", "set", "lo", "up"])?;
        let a = Netns::create(&format!("{name}-a"))?;
        let b = Netns::create(&format!("{name}-b"))?;
        for (side, client) in [(SIDE_A, &a), (SIDE_B, &b)] {
            sysctls_in(client.name(), quiet)?;
            veth(side.interface, host.name(), "eth0", client.name(), side.client_mac, "1")?;
            for (ns, dev, addrs) in [(host.name(), side.interface, side.host), (client.name(), "eth0", side.client)] {
                ip_in(ns, &["link", "set", dev, "up"])?;
                ip_in(ns, &["addr", "add", &format!("{}/24", addrs[0]), "dev", dev])?;
                ip_in(ns, &["addr", "add", &format!("{}/64", addrs[1]), "dev", dev, "nodad"])?;
            }
            ip_in(client.name(), &["link", "set", "lo", "up"])?;
            ip_in(client.name(), &["route", "add", "default", "via", side.host[0]])?;
            ip_in(client.name(), &["-6", "route", "add", "default", "via", side.host[1]])?;
            // The host reads the clients' packets with AF_XDP: they must carry complete checksums.
            no_checksum_offload(client.name())?;
        }
        Ok(HostLab { host, a, b })
    }

    /// The host's namespace.
    pub fn host_netns(&self) -> &str {
        self.host.name()
    }

    /// The namespace of the client on `side` (`SIDE_A` or `SIDE_B`).
    pub fn client_netns(&self, side: Side) -> &str {
        if side.interface == SIDE_A.interface {
            self.a.name()
        } else {
            self.b.name()
        }
    }

    /// Runs a command in the host namespace.
    pub fn exec_host(&self, command: &[&str]) -> Result<String, LabError> {
        exec_in(self.host.name(), command)
    }
}
