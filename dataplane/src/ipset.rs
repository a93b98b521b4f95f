//! IP sets and named-port sets: the members of a selector, updatable in place.
//!
//! As in Felix, a rule's selector is not compiled into the rule: the rule refers to a set, and
//! the set's members (endpoint addresses, host endpoints' expected IPs, network-set CIDRs) can
//! change without recompiling any rule. Readers never block: members are swapped atomically.

use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

/// Sorted, disjoint, inclusive address intervals of one IP version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges<K> {
    ranges: Vec<(K, K)>,
}

impl<K: Copy + Ord> Ranges<K> {
    /// Builds from possibly overlapping intervals.
    pub fn from_unsorted(mut v: Vec<(K, K)>, succ: impl Fn(K) -> Option<K>) -> Self {
        v.sort_unstable();
        let mut out: Vec<(K, K)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            if let Some(last) = out.last_mut() {
                if succ(last.1).is_none_or(|n| lo <= n) {
                    last.1 = last.1.max(hi);
                    continue;
                }
            }
            out.push((lo, hi));
        }
        Ranges { ranges: out }
    }

    /// Whether `k` is in one of the intervals.
    pub fn contains(&self, k: K) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < k);
        i < self.ranges.len() && self.ranges[i].0 <= k
    }

    /// The intervals.
    pub fn intervals(&self) -> &[(K, K)] {
        &self.ranges
    }
}

/// The interval of addresses of an IPv4 CIDR.
pub fn v4_range(n: &ipnet::Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

/// The interval of addresses of an IPv6 CIDR.
pub fn v6_range(n: &ipnet::Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

/// The members of an IP set, both versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSetMembers {
    /// IPv4 members.
    pub v4: Ranges<u32>,
    /// IPv6 members.
    pub v6: Ranges<u128>,
}

impl IpSetMembers {
    /// Members from CIDRs of either version.
    pub fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for n in nets {
            match n {
                IpNet::V4(n) => v4.push(v4_range(n)),
                IpNet::V6(n) => v6.push(v6_range(n)),
            }
        }
        IpSetMembers { v4: Ranges::from_unsorted(v4, |x: u32| x.checked_add(1)), v6: Ranges::from_unsorted(v6, |x: u128| x.checked_add(1)) }
    }

    /// Whether `ip` is a member.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

/// A set of addresses whose members can be replaced while lookups run.
#[derive(Debug, Default)]
pub struct IpSet {
    members: ArcSwap<IpSetMembers>,
}

impl IpSet {
    /// A set with these members.
    pub fn new(members: IpSetMembers) -> Self {
        IpSet { members: ArcSwap::from_pointee(members) }
    }

    /// Whether `ip` is a member now.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.members.load().contains(ip)
    }

    /// Replaces the members; returns whether they changed.
    pub fn set(&self, members: IpSetMembers) -> bool {
        if **self.members.load() == members {
            return false;
        }
        self.members.store(Arc::new(members));
        true
    }
}

/// `(address, protocol, port)` members of a named-port set.
pub type NamedPortMembers = HashSet<(IpAddr, u8, u16)>;

/// A named-port set (Felix's `ip,proto:port` sets) whose members can be replaced while lookups run.
#[derive(Debug, Default)]
pub struct NamedPortSet {
    members: ArcSwap<NamedPortMembers>,
}

impl NamedPortSet {
    /// A set with these members.
    pub fn new(members: NamedPortMembers) -> Self {
        NamedPortSet { members: ArcSwap::from_pointee(members) }
    }

    /// Whether the endpoint at `ip` has this named port as `protocol`/`port`.
    #[inline]
    pub fn contains(&self, ip: IpAddr, protocol: u8, port: u16) -> bool {
        self.members.load().contains(&(ip, protocol, port))
    }

    /// Replaces the members; returns whether they changed.
    pub fn set(&self, members: NamedPortMembers) -> bool {
        if **self.members.load() == members {
            return false;
        }
        self.members.store(Arc::new(members));
        true
    }
}
