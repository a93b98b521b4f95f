//! The per-node calculation: what one node must enforce, in the shape of Felix's dataplane
//! protocol.
//!
//! From the whole [`Cluster`], a [`NodeView`] keeps only what a node's endpoints use:
//! - its endpoints, each with its tiers and their policy names per direction, in order
//!   (workloads one list; host endpoints normal, untracked, pre-DNAT and forward lists);
//! - the active policies and profiles, whose rules refer to IP sets by ID instead of selectors;
//! - the active IP sets: a selector's members (endpoint addresses and network-set CIDRs), or a
//!   named port's `(address, protocol, port)` members.
//!
//! The control plane computes it for each subscribed node and streams the differences; the
//! agent computes it for itself when it reads manifests; the compiler turns it into
//! classifiers. A set's members can change without any policy changing, which is what keeps a
//! new pod from recompiling anything.

use crate::model::*;
use crate::selector::Selector;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The match on one side (source or destination) of a rule, with selectors replaced by IP sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetMatch {
    /// CIDRs, one of which must contain the address (any address when empty).
    pub nets: Vec<IpNet>,
    /// CIDRs none of which may contain the address.
    pub not_nets: Vec<IpNet>,
    /// Port ranges; the port must be in one of them or in a named-port set (any port when both are empty).
    pub ports: Vec<PortRange>,
    /// Port ranges the port must not be in.
    pub not_ports: Vec<PortRange>,
    /// IP sets that must all contain the address.
    pub ip_sets: Vec<String>,
    /// IP sets none of which may contain the address.
    pub not_ip_sets: Vec<String>,
    /// Named-port sets, alternatives to `ports`.
    pub named_port_sets: Vec<String>,
    /// Named-port sets that may not contain the address, protocol and port.
    pub not_named_port_sets: Vec<String>,
}

/// A rule as the dataplane receives it (Felix's `Rule` message).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetRule {
    /// What a match does.
    pub action: Action,
    /// 4 or 6 (both when unset).
    pub ip_version: Option<u8>,
    /// Protocol number.
    pub protocol: Option<u8>,
    /// Excluded protocol number.
    pub not_protocol: Option<u8>,
    /// ICMP type and code.
    pub icmp: Option<IcmpMatch>,
    /// Excluded ICMP type and code.
    pub not_icmp: Option<IcmpMatch>,
    /// Source match.
    pub src: SetMatch,
    /// Destination match.
    pub dst: SetMatch,
}

/// A policy active on the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivePolicy {
    /// Namespace of a namespaced policy.
    pub namespace: Option<String>,
    /// Ingress rules.
    pub inbound: Vec<SetRule>,
    /// Egress rules.
    pub outbound: Vec<SetRule>,
    /// `doNotTrack`.
    pub untracked: bool,
    /// `preDNAT`.
    pub pre_dnat: bool,
}

impl ActivePolicy {
    /// The rules for `dir`.
    pub fn rules(&self, dir: Direction) -> &[SetRule] {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// Identifies an active policy: its tier and name (Felix's `PolicyID`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// Tier.
    pub tier: String,
    /// Policy name (`staged:`-prefixed for staged policies).
    pub name: String,
}

impl PolicyId {
    /// Whether the policy is staged (it never decides a verdict).
    pub fn is_staged(&self) -> bool {
        self.name.starts_with("staged:")
    }
}

/// One tier of an endpoint's chain: the applicable policies per direction, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierInfo {
    /// Tier name.
    pub name: String,
    /// What happens when its enforced policies decide nothing.
    pub default_action: TierDefault,
    /// Policies applying to ingress.
    pub ingress: Vec<String>,
    /// Policies applying to egress.
    pub egress: Vec<String>,
}

impl TierInfo {
    /// The policy names for `dir`.
    pub fn policies(&self, dir: Direction) -> &[String] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A local endpoint and its chains.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    /// `namespace/name` for workloads, the HostEndpoint's name for host endpoints.
    pub name: String,
    /// Workload or host.
    pub kind: EndpointKind,
    /// Interface (`*` for all-interfaces host endpoints).
    pub interface: Option<String>,
    /// Addresses (a host endpoint's expected IPs).
    pub ips: Vec<IpNet>,
    /// A workload's own MAC address (its `eth0`).
    pub mac: Option<[u8; 6]>,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    /// Normal tiers.
    pub tiers: Vec<TierInfo>,
    /// Host endpoints: `doNotTrack` tiers.
    pub untracked_tiers: Vec<TierInfo>,
    /// Host endpoints: `preDNAT` tiers (ingress).
    pub pre_dnat_tiers: Vec<TierInfo>,
    /// Host endpoints: `applyOnForward` tiers.
    pub forward_tiers: Vec<TierInfo>,
}

impl EndpointView {
    /// The tiers a chain of this endpoint runs (a workload's chains are its normal tiers).
    pub fn chain_tiers(&self, chain: HostChain) -> &[TierInfo] {
        match chain {
            HostChain::Untracked(_) => &self.untracked_tiers,
            HostChain::PreDnat => &self.pre_dnat_tiers,
            HostChain::Normal(_) => &self.tiers,
            HostChain::Forward(_) => &self.forward_tiers,
        }
    }

    /// Whether `ip` is one of the endpoint's addresses.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips.iter().any(|n| n.contains(&ip))
    }
}

/// Members of an IP set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetMembers {
    /// Addresses and CIDRs (a selector's set).
    Nets(BTreeSet<IpNet>),
    /// `(address, protocol, port)` (a named port's set).
    NamedPorts(BTreeSet<(IpAddr, u8, u16)>),
}

/// Everything one node enforces (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// Active IP sets by ID.
    pub ip_sets: BTreeMap<String, Arc<SetMembers>>,
    /// Active policies.
    pub policies: BTreeMap<PolicyId, Arc<ActivePolicy>>,
    /// Active profiles by name.
    pub profiles: BTreeMap<String, Arc<ActiveProfile>>,
    /// Local endpoints by name.
    pub endpoints: BTreeMap<String, Arc<EndpointView>>,
    /// Every namespace's labels (Felix sends them to every node).
    pub namespaces: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    /// Every service account's labels, by namespace and name.
    pub service_accounts: Arc<BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>>,
}

/// A profile active on the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveProfile {
    /// Ingress rules.
    pub inbound: Vec<SetRule>,
    /// Egress rules.
    pub outbound: Vec<SetRule>,
}

impl ActiveProfile {
    /// The rules for `dir`.
    pub fn rules(&self, dir: Direction) -> &[SetRule] {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// The ID of a selector's IP set: `s:` and a hash of the canonical selector, as Felix names them.
pub fn selector_set_id(sel: &Selector) -> String {
    format!("s:{}", digest(&sel.to_string()))
}

/// The ID of a named port's set (`n:` and a hash of the selector scoping it and the port name).
pub fn named_port_set_id(sel: Option<&Selector>, name: &str) -> String {
    let sel = sel.map(|s| s.to_string()).unwrap_or_default();
    format!("n:{}", digest(&format!("{sel}\u{0}{name}")))
}

fn digest(s: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let hash = sha2::Sha224::digest(s.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash[..21])
}

/// What the views of every node of one cluster share, computed once for all of them: IP-set
/// members, and policies and profiles with their rules in IP-set form. Use one per cluster.
pub struct Shared {
    namespaces: EndpointsByNamespace,
    policy_index: PolicyIndex,
    /// Workload endpoints (positions in the cluster's) by node.
    by_node: HashMap<String, Vec<usize>>,
    /// Host endpoints, which apply on their node or, without one, on every node.
    hosts: Vec<usize>,
    sets: Mutex<HashMap<String, Arc<SetMembers>>>,
    /// Converted policies, kept across clusters.
    policies: Arc<PolicyRules>,
    /// The cluster's policies by address, to keep the converted ones alive with them.
    arcs: HashMap<usize, Arc<Policy>>,
    /// Converted profiles, with the sets their rules use.
    profiles: Mutex<HashMap<String, (Arc<ActiveProfile>, Vec<(String, SetSource)>)>>,
    namespace_labels: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    service_accounts: Arc<BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>>,
}

impl Shared {
    /// An empty cache for `cluster`'s views.
    pub fn new(cluster: &Cluster) -> Shared {
        Shared::reusing(cluster, &Arc::default())
    }

    /// A cache for `cluster`'s views that takes the policies `rules` converted for earlier
    /// clusters (a policy of the same shared `Arc` is not converted again; see
    /// `convert::ConversionCache`), and adds to it.
    pub fn reusing(cluster: &Cluster, rules: &Arc<PolicyRules>) -> Shared {
        {
            let mut r = lock(&rules.0);
            r.generation += 1;
            let generation = r.generation;
            r.policies.retain(|_, c| c.used + 1 >= generation);
        }
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        let mut hosts = Vec::new();
        for (i, e) in cluster.endpoints.iter().enumerate() {
            match (e.kind, &e.node) {
                (EndpointKind::Host, _) => hosts.push(i),
                (EndpointKind::Workload, Some(n)) => by_node.entry(n.clone()).or_default().push(i),
                (EndpointKind::Workload, None) => {}
            }
        }
        Shared {
            namespaces: EndpointsByNamespace::new(cluster),
            policy_index: PolicyIndex::new(cluster),
            by_node,
            hosts,
            sets: Mutex::default(),
            policies: rules.clone(),
            arcs: cluster.policies.iter().map(|p| (Arc::as_ptr(p) as usize, p.clone())).collect(),
            profiles: Mutex::default(),
            namespace_labels: Arc::new(cluster.namespaces.clone()),
            service_accounts: Arc::new(cluster.service_accounts.clone()),
        }
    }
}

/// Policies converted to IP-set form, by the identity of the model's policy (an `Arc<Policy>`
/// that later clusters share while the policy does not change), with the sources of the sets
/// their rules use (whose members each cluster computes again). Entries not used by the last two
/// clusters are dropped.
#[derive(Default)]
pub struct PolicyRules(Mutex<RulesInner>);

#[derive(Default)]
struct RulesInner {
    policies: HashMap<usize, ConvertedPolicy>,
    generation: u64,
}

struct ConvertedPolicy {
    /// Keeps the policy alive, so that its address identifies it while the entry exists.
    _policy: Arc<Policy>,
    active: Arc<ActivePolicy>,
    /// The sets its rules use, by ID.
    sets: Vec<(String, SetSource)>,
    used: u64,
}

/// What an IP set is computed from.
#[derive(Clone, Debug)]
enum SetSource {
    /// The addresses of endpoints and network sets matching a selector.
    Selector(Selector),
    /// The addresses and ports of a named port on endpoints matching a selector (all endpoints
    /// when `None`).
    NamedPort(Option<Selector>, String),
}

impl SetSource {
    fn id(&self) -> String {
        match self {
            SetSource::Selector(sel) => selector_set_id(sel),
            SetSource::NamedPort(sel, name) => named_port_set_id(sel.as_ref(), name),
        }
    }

    fn members(&self, cluster: &Cluster, namespaces: &EndpointsByNamespace) -> SetMembers {
        match self {
            SetSource::Selector(sel) => SetMembers::Nets(
                namespaces
                    .candidates(cluster, Some(sel))
                    .filter(|e| sel.matches(&e.labels))
                    .flat_map(|e| e.ips.iter().copied())
                    .chain(cluster.network_sets.iter().filter(|n| sel.matches(&n.labels)).flat_map(|n| n.nets.iter().copied()))
                    .collect(),
            ),
            SetSource::NamedPort(sel, name) => {
                let mut members = BTreeSet::new();
                for e in namespaces.candidates(cluster, sel.as_ref()).filter(|e| sel.as_ref().is_none_or(|s| s.matches(&e.labels))) {
                    for p in e.ports.iter().filter(|p| p.name == *name) {
                        members.extend(e.ips.iter().map(|n| (n.addr(), p.protocol, p.port)));
                    }
                }
                SetMembers::NamedPorts(members)
            }
        }
    }
}

impl NodeView {
    /// The view of `node` (every endpoint when `None`, as a standalone agent enforces them all).
    pub fn compute(cluster: &Cluster, node: Option<&str>) -> NodeView {
        NodeView::compute_shared(cluster, node, &Shared::new(cluster))
    }

    /// [`NodeView::compute`], reusing (and adding to) what other nodes' views of the same
    /// cluster computed.
    pub fn compute_shared<'c>(cluster: &'c Cluster, node: Option<&str>, shared: &Shared) -> NodeView {
        let index = &shared.policy_index;
        let view = NodeView { namespaces: shared.namespace_labels.clone(), service_accounts: shared.service_accounts.clone(), ..NodeView::default() };
        let mut calc = Calc { cluster, shared, view, sources: Vec::new() };
        let tier_defaults: HashMap<&str, TierDefault> = cluster.tiers.iter().map(|t| (t.name.as_str(), t.default_action)).collect();
        let mut used: BTreeMap<PolicyId, &'c Policy> = BTreeMap::new();
        // Workloads live on one node; a host endpoint without a node applies on every node.
        let local: Vec<&'c Endpoint> = match node {
            None => cluster.endpoints.iter().collect(),
            Some(n) => {
                let hosts = shared.hosts.iter().filter(|&&i| cluster.endpoints[i].node.as_deref().is_none_or(|en| en == n));
                let mut positions: Vec<usize> = shared.by_node.get(n).into_iter().flatten().chain(hosts).copied().collect();
                positions.sort_unstable();
                positions.into_iter().map(|i| &cluster.endpoints[i]).collect()
            }
        };
        for ep in local {
            let mut collect = |views: [Vec<TierView<'c>>; 2]| -> Vec<TierInfo> {
                let mut out: Vec<TierInfo> = Vec::new();
                for (d, vs) in views.into_iter().enumerate() {
                    for v in vs {
                        let names: Vec<String> = v.policies.iter().map(|p| p.name.clone()).collect();
                        for p in &v.policies {
                            used.insert(PolicyId { tier: v.tier.name.clone(), name: p.name.clone() }, p);
                        }
                        let info = match out.iter_mut().find(|t| t.name == v.tier.name) {
                            Some(t) => t,
                            None => {
                                out.push(TierInfo {
                                    name: v.tier.name.clone(),
                                    default_action: tier_defaults[v.tier.name.as_str()],
                                    ingress: Vec::new(),
                                    egress: Vec::new(),
                                });
                                out.last_mut().expect("pushed")
                            }
                        };
                        if d == 0 {
                            info.ingress = names;
                        } else {
                            info.egress = names;
                        }
                    }
                }
                // In tier order (a tier may only have egress policies, found second).
                out.sort_by_key(|t| cluster.tiers.iter().position(|x| x.name == t.name));
                out
            };
            use Direction::{Egress, Ingress};
            let view = match ep.kind {
                EndpointKind::Workload => EndpointView {
                    tiers: collect([index.tiers_for(cluster, ep, Ingress, Stage::Normal), index.tiers_for(cluster, ep, Egress, Stage::Normal)]),
                    ..EndpointView::of(ep)
                },
                EndpointKind::Host => EndpointView {
                    tiers: collect([cluster.host_tiers(ep, HostChain::Normal(Ingress)), cluster.host_tiers(ep, HostChain::Normal(Egress))]),
                    untracked_tiers: collect([
                        cluster.host_tiers(ep, HostChain::Untracked(Ingress)),
                        cluster.host_tiers(ep, HostChain::Untracked(Egress)),
                    ]),
                    pre_dnat_tiers: collect([cluster.host_tiers(ep, HostChain::PreDnat), Vec::new()]),
                    forward_tiers: collect([cluster.host_tiers(ep, HostChain::Forward(Ingress)), cluster.host_tiers(ep, HostChain::Forward(Egress))]),
                    ..EndpointView::of(ep)
                },
            };
            for p in &ep.profiles {
                if let Some(profile) = cluster.profiles.get(p) {
                    if !calc.view.profiles.contains_key(p) {
                        let active = calc.profile(p, profile);
                        calc.view.profiles.insert(p.clone(), active);
                    }
                }
            }
            calc.view.endpoints.insert(ep.name.clone(), Arc::new(view));
        }
        for (id, p) in used {
            let active = calc.policy(p);
            calc.view.policies.insert(id, active);
        }
        calc.view
    }

    /// A policy by tier and name.
    pub fn policy(&self, tier: &str, name: &str) -> Option<&ActivePolicy> {
        // BTreeMap lookups need an owned key; policies are few per chain, so this allocates little.
        self.policies.get(&PolicyId { tier: tier.to_string(), name: name.to_string() }).map(|p| &**p)
    }
}

impl EndpointView {
    fn of(ep: &Endpoint) -> EndpointView {
        EndpointView {
            name: ep.name.clone(),
            kind: ep.kind,
            interface: ep.interface.clone(),
            ips: ep.ips.clone(),
            mac: (ep.kind == EndpointKind::Workload).then(|| workload_mac(&ep.name)),
            profiles: ep.profiles.clone(),
            tiers: Vec::new(),
            untracked_tiers: Vec::new(),
            pre_dnat_tiers: Vec::new(),
            forward_tiers: Vec::new(),
        }
    }
}

/// The state of one [`NodeView::compute_shared`].
struct Calc<'c, 's> {
    cluster: &'c Cluster,
    shared: &'s Shared,
    view: NodeView,
    /// The sets used by the rules being converted, by ID.
    sources: Vec<(String, SetSource)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Calc<'_, '_> {
    /// A profile in IP-set form: converted for another node's view of this cluster (its sets
    /// added to this view), or converted now and shared.
    fn profile(&mut self, name: &str, profile: &Profile) -> Arc<ActiveProfile> {
        let cached = lock(&self.shared.profiles).get(name).cloned();
        if let Some((active, sets)) = cached {
            for (id, source) in &sets {
                self.add_set(id, source);
            }
            return active;
        }
        self.sources.clear();
        let active = Arc::new(ActiveProfile { inbound: self.rules(&profile.ingress), outbound: self.rules(&profile.egress) });
        lock(&self.shared.profiles).insert(name.to_string(), (active.clone(), std::mem::take(&mut self.sources)));
        active
    }

    /// A policy in IP-set form: converted for an earlier cluster (its sets' members computed for
    /// this one), or converted now and kept.
    fn policy(&mut self, p: &Policy) -> Arc<ActivePolicy> {
        let key = p as *const Policy as usize;
        let cached = {
            let mut rules = lock(&self.shared.policies.0);
            let generation = rules.generation;
            rules.policies.get_mut(&key).map(|c| {
                c.used = generation;
                (c.active.clone(), c.sets.clone())
            })
        };
        if let Some((active, sets)) = cached {
            for (id, source) in &sets {
                self.add_set(id, source);
            }
            return active;
        }
        self.sources.clear();
        let active = Arc::new(ActivePolicy {
            namespace: p.namespace.clone(),
            inbound: self.rules(&p.ingress),
            outbound: self.rules(&p.egress),
            untracked: p.do_not_track,
            pre_dnat: p.pre_dnat,
        });
        // Only a policy of the cluster (not a copy) can be found again by its address.
        if let Some(arc) = self.shared.arcs.get(&key) {
            let mut rules = lock(&self.shared.policies.0);
            let used = rules.generation;
            let sets = std::mem::take(&mut self.sources);
            rules.policies.insert(key, ConvertedPolicy { _policy: arc.clone(), active: active.clone(), sets, used });
        }
        active
    }

    /// The ID of the set of `source`, with its members added to the view.
    fn set(&mut self, source: SetSource) -> String {
        let id = source.id();
        self.add_set(&id, &source);
        if !self.sources.iter().any(|(i, _)| *i == id) {
            self.sources.push((id.clone(), source));
        }
        id
    }

    /// Adds set `id` to the view: from the shared cache, or computed from `source` and shared.
    fn add_set(&mut self, id: &str, source: &SetSource) {
        if self.view.ip_sets.contains_key(id) {
            return;
        }
        let cached = lock(&self.shared.sets).get(id).cloned();
        let m = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(source.members(self.cluster, &self.shared.namespaces));
                lock(&self.shared.sets).insert(id.to_string(), m.clone());
                m
            }
        };
        self.view.ip_sets.insert(id.to_string(), m);
    }

    fn rules(&mut self, rules: &[Rule]) -> Vec<SetRule> {
        rules.iter().map(|r| self.rule(r)).collect()
    }

    fn rule(&mut self, r: &Rule) -> SetRule {
        SetRule {
            action: r.action,
            ip_version: r.ip_version,
            protocol: r.protocol,
            not_protocol: r.not_protocol,
            icmp: r.icmp,
            not_icmp: r.not_icmp,
            src: self.side(&r.src),
            dst: self.side(&r.dst),
        }
    }

    fn side(&mut self, m: &EntityMatch) -> SetMatch {
        let selector = |s: &Selector| SetSource::Selector(s.clone());
        let named = |n: &String| SetSource::NamedPort(m.selector.clone(), n.clone());
        SetMatch {
            nets: m.nets.clone(),
            not_nets: m.not_nets.clone(),
            ports: m.ports.clone(),
            not_ports: m.not_ports.clone(),
            ip_sets: m.selector.iter().map(|s| self.set(selector(s))).collect(),
            not_ip_sets: m.not_selector.iter().map(|s| self.set(selector(s))).collect(),
            named_port_sets: m.named_ports.iter().map(|n| self.set(named(n))).collect(),
            not_named_port_sets: m.not_named_ports.iter().map(|n| self.set(named(n))).collect(),
        }
    }
}

/// What a change of cluster can change in node views: found by matching the changed endpoints
/// and network sets against the selectors of the IP sets in use, and the changed policies against
/// each node's endpoints (a label index, as Felix's calculation graph keeps), so that views a
/// change cannot touch are not computed again.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every view may change (tiers, namespaces or service accounts changed, or a host endpoint
    /// for every node did).
    all: bool,
    /// Nodes whose own endpoints changed.
    nodes: HashSet<String>,
    /// IP sets whose members may have changed.
    sets: HashSet<String>,
    /// Profiles that changed.
    profiles: HashSet<String>,
    /// Policies that changed, appeared or went away, with their new version.
    policies: Vec<(PolicyId, Option<Arc<Policy>>)>,
}

impl Changes {
    /// The changes from `old` to `new`; `rules` (the cache the views of `old` were computed with)
    /// supplies the IP sets that policies use.
    pub fn between(old: &Cluster, new: &Cluster, rules: &PolicyRules) -> Changes {
        // Tiers order every chain; namespaces and service accounts are in every view.
        let all = old.tiers != new.tiers || old.namespaces != new.namespaces || old.service_accounts != new.service_accounts;
        let mut c = Changes { all, ..Changes::default() };
        for name in old.profiles.keys().chain(new.profiles.keys()) {
            if old.profiles.get(name) != new.profiles.get(name) {
                c.profiles.insert(name.clone());
            }
        }
        // Endpoints and network sets that changed, each version as (labels, has addresses, named ports).
        let mut entities: Vec<(&BTreeMap<String, String>, bool, &[NamedPort])> = Vec::new();
        let (old_eps, new_eps) = (by_name(&old.endpoints, |e| &e.name), by_name(&new.endpoints, |e| &e.name));
        for (name, e) in old_eps.iter().chain(&new_eps) {
            let (before, after) = (old_eps.get(name), new_eps.get(name));
            if before == after {
                continue;
            }
            match (e.kind, &e.node) {
                (EndpointKind::Host, None) => c.all = true,
                (_, Some(n)) => {
                    c.nodes.insert(n.clone());
                }
                (EndpointKind::Workload, None) => {}
            }
            entities.push((&e.labels, !e.ips.is_empty(), &e.ports));
        }
        let (old_sets, new_sets) = (by_name(&old.network_sets, |n| &n.name), by_name(&new.network_sets, |n| &n.name));
        for (name, n) in old_sets.iter().chain(&new_sets) {
            if old_sets.get(name) != new_sets.get(name) {
                entities.push((&n.labels, !n.nets.is_empty(), &[]));
            }
        }
        // Policies, by tier and name.
        let ids = |cl: &'_ Cluster| cl.policies.iter().map(|p| (PolicyId { tier: p.tier.clone(), name: p.name.clone() }, p.clone())).collect::<HashMap<_, _>>();
        let (old_ps, new_ps) = (ids(old), ids(new));
        for id in old_ps.keys().chain(new_ps.keys()) {
            let (before, after) = (old_ps.get(id), new_ps.get(id));
            let same = match (before, after) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            };
            if !same && !c.policies.iter().any(|(i, _)| i == id) {
                c.policies.push((id.clone(), after.cloned()));
            }
        }
        if entities.is_empty() {
            return c;
        }
        // The sets the views of `old` can use: those of its policies and profiles.
        let mut sources: HashMap<String, SetSource> = HashMap::new();
        {
            let cached = lock(&rules.0);
            for p in old.policies.iter().chain(&new.policies) {
                match cached.policies.get(&(Arc::as_ptr(p) as usize)) {
                    Some(conv) => sources.extend(conv.sets.iter().cloned()),
                    None => sources.extend(rule_sources(p.ingress.iter().chain(&p.egress))),
                }
            }
        }
        for p in old.profiles.values().chain(new.profiles.values()) {
            sources.extend(rule_sources(p.ingress.iter().chain(&p.egress)));
        }
        for (id, source) in sources {
            let touched = entities.iter().any(|(labels, has_addresses, ports)| match &source {
                SetSource::Selector(sel) => *has_addresses && sel.matches(*labels),
                SetSource::NamedPort(sel, name) => ports.iter().any(|p| p.name == *name) && sel.as_ref().is_none_or(|s| s.matches(*labels)),
            });
            if touched {
                c.sets.insert(id);
            }
        }
        c
    }

    /// Whether the view of `node` may differ under `new` (whose views `shared` serves) from `view`,
    /// its view under the old cluster.
    pub fn may_change(&self, node: &str, view: &NodeView, new: &Cluster, shared: &Shared) -> bool {
        if self.all || self.nodes.contains(node) {
            return true;
        }
        if view.ip_sets.keys().any(|id| self.sets.contains(id)) {
            return true;
        }
        let local = || {
            let hosts = shared.hosts.iter().filter(|&&i| new.endpoints[i].node.as_deref().is_none_or(|n| n == node));
            shared.by_node.get(node).into_iter().flatten().chain(hosts).map(|&i| &new.endpoints[i])
        };
        // A profile matters where an endpoint names it (it may not have existed before).
        self.profiles.iter().any(|p| local().any(|e| e.profiles.contains(p)))
            || self
                .policies
                .iter()
                .any(|(id, now)| view.policies.contains_key(id) || now.as_ref().is_some_and(|p| local().any(|e| p.selector.matches(&e.labels))))
    }
}

/// Items by name.
fn by_name<'a, T>(items: &'a [T], name: impl Fn(&'a T) -> &'a String) -> HashMap<&'a str, &'a T> {
    items.iter().map(|i| (name(i).as_str(), i)).collect()
}

/// The IP sets that rules use, by ID.
fn rule_sources<'r>(rules: impl Iterator<Item = &'r Rule>) -> Vec<(String, SetSource)> {
    let mut out = Vec::new();
    for r in rules {
        for m in [&r.src, &r.dst] {
            for sel in m.selector.iter().chain(&m.not_selector) {
                let s = SetSource::Selector(sel.clone());
                out.push((s.id(), s));
            }
            for name in m.named_ports.iter().chain(&m.not_named_ports) {
                let s = SetSource::NamedPort(m.selector.clone(), name.clone());
                out.push((s.id(), s));
            }
        }
    }
    out
}

/// Endpoints (indices into the cluster's) by namespace: the only ones a namespaced selector can
/// match, so computing its members skips the rest of the cluster.
struct EndpointsByNamespace(HashMap<String, Vec<usize>>);

impl EndpointsByNamespace {
    fn new(cluster: &Cluster) -> Self {
        let mut map: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in cluster.endpoints.iter().enumerate() {
            if let Some(ns) = e.labels.get(LABEL_NAMESPACE) {
                map.entry(ns.clone()).or_default().push(i);
            }
        }
        EndpointsByNamespace(map)
    }

    /// The endpoints that can match `sel` (all when `None`).
    fn candidates<'a>(&'a self, cluster: &'a Cluster, sel: Option<&Selector>) -> Box<dyn Iterator<Item = &'a Endpoint> + 'a> {
        match sel.and_then(|s| s.required_value(LABEL_NAMESPACE)) {
            Some(ns) => Box::new(self.0.get(ns).into_iter().flatten().map(move |&i| &cluster.endpoints[i])),
            None => Box::new(cluster.endpoints.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{parse_str, Loaded};

    fn cluster(yaml: &str) -> Cluster {
        let loaded: Vec<Loaded> = parse_str(yaml).expect("parses").into_iter().map(|resource| Loaded { resource, file: None }).collect();
        crate::convert::build_cluster(&loaded).expect("builds")
    }

    const TWO_NODES: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod, labels: {app: web}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}\nstatus: {podIP: 10.0.0.1}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: prod, labels: {app: db}}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.2}\n---
apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: any-eth0}\nspec: {interfaceName: eth0}\n---
apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: web-in}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'db'}, destination: {ports: [http]}}]\n---
apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: all-out}\nspec:\n  selector: all()\n  types: [Egress]\n  egress: [{action: Deny, destination: {selector: app == 'web'}}]\n";

    #[test]
    fn a_node_sees_its_workloads_every_host_endpoint_without_a_node_and_the_sets_its_rules_use() {
        let c = cluster(TWO_NODES);
        let v1 = NodeView::compute(&c, Some("n1"));
        assert_eq!(v1.endpoints.keys().collect::<Vec<_>>(), ["any-eth0", "prod/web"]);
        let web = &v1.endpoints["prod/web"];
        assert_eq!(web.tiers.len(), 1);
        assert_eq!((web.tiers[0].ingress.as_slice(), web.tiers[0].egress.as_slice()), (&["web-in".to_string()][..], &["all-out".to_string()][..]));
        let db_set = selector_set_id(&Selector::parse("app == 'db'").expect("selector"));
        assert_eq!(*v1.ip_sets[&db_set], SetMembers::Nets(["10.0.0.2/32".parse().expect("net")].into()), "a remote pod is a set member");
        let v2 = NodeView::compute(&c, Some("n2"));
        assert_eq!(v2.endpoints.keys().collect::<Vec<_>>(), ["any-eth0", "prod/db"]);
        assert!(!v2.policies.keys().any(|p| p.name == "web-in"), "a policy selecting nothing on n2 is not active there");
        assert!(!v2.ip_sets.contains_key(&db_set), "nor are its sets");
    }

    #[test]
    fn views_computed_with_a_shared_cache_equal_views_computed_alone() {
        let c = cluster(TWO_NODES);
        let shared = Shared::new(&c);
        for node in ["n2", "n1", "n2", "n3"] {
            assert_eq!(NodeView::compute_shared(&c, Some(node), &shared), NodeView::compute(&c, Some(node)), "node {node}");
        }
    }

    #[test]
    fn policies_converted_for_an_earlier_cluster_are_reused_with_this_clusters_set_members() {
        use crate::convert::{build_cluster_cached, ConversionCache};
        let loaded = |yaml: &str| -> Vec<Arc<Loaded>> {
            parse_str(yaml).expect("parses").into_iter().map(|resource| Arc::new(Loaded { resource, file: None })).collect()
        };
        let (mut converted, rules) = (ConversionCache::default(), Arc::new(PolicyRules::default()));
        let first = loaded(TWO_NODES);
        let c1 = build_cluster_cached(&first, &mut converted).expect("builds");
        let v1 = NodeView::compute_shared(&c1, Some("n1"), &Shared::reusing(&c1, &rules));
        assert_eq!(v1, NodeView::compute(&c1, Some("n1")));
        // The db pod moves to another address; the policies are the same shared resources.
        let mut second = first.clone();
        second[2] = loaded(&TWO_NODES.replace("10.0.0.2", "10.0.0.9"))[2].clone();
        let c2 = build_cluster_cached(&second, &mut converted).expect("builds");
        let v2 = NodeView::compute_shared(&c2, Some("n1"), &Shared::reusing(&c2, &rules));
        assert_eq!(v2, NodeView::compute(&c2, Some("n1")), "reused policies, this cluster's members");
        let id = PolicyId { tier: "default".into(), name: "web-in".into() };
        assert!(Arc::ptr_eq(&v1.policies[&id], &v2.policies[&id]), "the unchanged policy was not converted again");
        let db_set = selector_set_id(&Selector::parse("app == 'db'").expect("selector"));
        assert_eq!(*v2.ip_sets[&db_set], SetMembers::Nets(["10.0.0.9/32".parse().expect("net")].into()));
    }
}
