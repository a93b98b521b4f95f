//! The normalized policy model: what the evaluator, the compiler and the control plane consume.
//!
//! It mirrors Felix's data model: Kubernetes NetworkPolicies are already converted to Calico
//! policies (tier `default`, order 1000), every selector is already scoped the way libcalico-go
//! scopes it (policy namespace, `pcns.`/`pcsa.` label prefixes, service-account names), endpoints
//! carry their effective labels (own labels plus those inherited from namespace and
//! service-account profiles), and everything is sorted in evaluation order.

use crate::selector::Selector;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

/// Label on every namespaced endpoint and network set: its namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label on workload endpoints: the orchestrator (`k8s` for pods).
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// Label on workload endpoints: the service account name.
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// Label carrying a namespace's or service account's own name (prefixed by `pcns.`/`pcsa.`).
pub const LABEL_NAME: &str = "projectcalico.org/name";
/// Prefix of namespace labels inherited by endpoints.
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Prefix of service-account labels inherited by endpoints.
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
/// Order of the `default` tier.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Order of converted Kubernetes NetworkPolicies.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// IP protocol numbers with names.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;

    /// The protocol number for a Calico/Kubernetes protocol name (case-insensitive).
    pub fn from_name(name: &str) -> Option<u8> {
        Some(match name.to_ascii_lowercase().as_str() {
            "tcp" => TCP,
            "udp" => UDP,
            "icmp" => ICMP,
            "icmpv6" => ICMPV6,
            "sctp" => SCTP,
            "udplite" => UDPLITE,
            _ => return None,
        })
    }

    /// The canonical name of a protocol number, if it has one.
    pub fn name(p: u8) -> Option<&'static str> {
        Some(match p {
            TCP => "TCP",
            UDP => "UDP",
            ICMP => "ICMP",
            ICMPV6 => "ICMPv6",
            SCTP => "SCTP",
            UDPLITE => "UDPLite",
            _ => return None,
        })
    }

    /// Whether rules may match ports of this protocol.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | SCTP)
    }
}

/// Policy direction, from the endpoint's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A rule's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Accept; final.
    Allow,
    /// Drop; final.
    Deny,
    /// Record and continue with the next rule.
    Log,
    /// Skip the rest of the tier; continue with the next tier (or the profiles).
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (>= first).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// ICMP type with optional code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct IcmpMatch {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code; any code when absent.
    pub code: Option<u8>,
}

/// The source or destination half of a rule. Empty fields do not constrain.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EntityMatch {
    /// The address must be in one of these (after filtering to the flow's IP version: a rule
    /// whose nets are all of the other version never matches).
    pub nets: Vec<IpNet>,
    /// The address must be in none of these (a rule whose not-nets are all of the other IP
    /// version never matches, as in Felix).
    pub not_nets: Vec<IpNet>,
    /// The address must belong to an endpoint or network set matching this (already scoped).
    pub selector: Option<Selector>,
    /// The address must not belong to an endpoint or network set matching this.
    pub not_selector: Option<Selector>,
    /// The port must be in one of these ranges or be one of `named_ports` (if either is set).
    pub ports: Vec<PortRange>,
    /// Named ports, resolved on endpoints matching `selector` (all endpoints when `None`).
    pub named_ports: Vec<String>,
    /// The port must be in none of these.
    pub not_ports: Vec<PortRange>,
    /// Nor any of these named ports.
    pub not_named_ports: Vec<String>,
}

impl EntityMatch {
    /// Whether the match constrains anything.
    pub fn is_empty(&self) -> bool {
        *self == EntityMatch::default()
    }
}

/// A normalized rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    /// What happens when it matches.
    pub action: Action,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    /// Protocol number.
    pub protocol: Option<u8>,
    /// Excluded protocol number.
    pub not_protocol: Option<u8>,
    /// ICMP type/code.
    pub icmp: Option<IcmpMatch>,
    /// Excluded ICMP type/code.
    pub not_icmp: Option<IcmpMatch>,
    /// Source half.
    pub src: EntityMatch,
    /// Destination half.
    pub dst: EntityMatch,
}

/// Where a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    KubernetesNetworkPolicy,
    /// Calico NetworkPolicy.
    NetworkPolicy,
    /// Calico GlobalNetworkPolicy.
    GlobalNetworkPolicy,
    /// Calico StagedNetworkPolicy.
    StagedNetworkPolicy,
    /// Calico StagedGlobalNetworkPolicy.
    StagedGlobalNetworkPolicy,
    /// Calico StagedKubernetesNetworkPolicy.
    StagedKubernetesNetworkPolicy,
}

impl PolicyKind {
    /// Whether the kind never decides a verdict.
    pub fn is_staged(self) -> bool {
        matches!(self, PolicyKind::StagedNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy | PolicyKind::StagedKubernetesNetworkPolicy)
    }
}

/// What a staged policy proposes (Calico `stagedAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StagedAction {
    /// Add or replace the enforced policy of the same name.
    Set,
    /// Delete the enforced policy of the same name.
    Delete,
}

/// A normalized policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// Felix-style name: `namespace/name` for namespaced policies, `name` for global ones;
    /// Kubernetes policies are `namespace/knp.default.name`, staged ones `staged:`-prefixed.
    pub name: String,
    /// Where it came from.
    pub kind: PolicyKind,
    /// Namespace of a namespaced policy.
    pub namespace: Option<String>,
    /// Tier name.
    pub tier: String,
    /// Order in the tier (unset sorts last).
    pub order: Option<f64>,
    /// Endpoints it applies to (already scoped to namespace, namespace and service-account selectors).
    pub selector: Selector,
    /// Applies to ingress.
    pub applies_ingress: bool,
    /// Applies to egress.
    pub applies_egress: bool,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Untracked (host endpoints).
    pub do_not_track: bool,
    /// Pre-DNAT (host endpoints, ingress).
    pub pre_dnat: bool,
    /// Applies to forwarded traffic through host endpoints.
    pub apply_on_forward: bool,
    /// For staged kinds: what the policy proposes.
    pub staged_action: Option<StagedAction>,
}

impl Policy {
    /// Whether the policy applies in `dir`.
    pub fn applies(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.applies_ingress,
            Direction::Egress => self.applies_egress,
        }
    }

    /// The rules for `dir`.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy never decides a verdict.
    pub fn is_staged(&self) -> bool {
        self.kind.is_staged()
    }

    /// For a staged policy, the name of the enforced policy it would set or delete.
    pub fn enforced_name(&self) -> &str {
        self.name.strip_prefix("staged:").unwrap_or(&self.name)
    }
}

/// What happens at the end of a tier in which an applicable policy decided nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TierDefault {
    /// Drop (the default).
    Deny,
    /// Continue with the next tier.
    Pass,
}

/// A tier.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// Order (unset sorts last).
    pub order: Option<f64>,
    /// End-of-tier action.
    pub default_action: TierDefault,
}

/// A profile: rules applied after all tiers, and labels inherited by its endpoints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    /// Name (`kns.<namespace>` and `ksa.<namespace>.<sa>` are generated for Kubernetes).
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Labels given to endpoints using this profile.
    pub labels: BTreeMap<String, String>,
}

impl Profile {
    /// The rules for `dir`.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Workload or host endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A pod or other workload.
    Workload,
    /// A host interface.
    Host,
}

/// A named port on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NamedPort {
    /// Name.
    pub name: String,
    /// Protocol number.
    pub protocol: u8,
    /// Port.
    pub port: u16,
}

/// An endpoint with its effective labels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Endpoint {
    /// `namespace/name` for workloads, `name` for host endpoints.
    pub name: String,
    /// Workload or host.
    pub kind: EndpointKind,
    /// Node it lives on.
    pub node: Option<String>,
    /// Interface name (host-side veth for workloads; `*` for all-interfaces host endpoints).
    pub interface: Option<String>,
    /// Addresses.
    pub ips: Vec<IpNet>,
    /// Effective labels (own, generated and inherited).
    pub labels: BTreeMap<String, String>,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    /// Named ports.
    pub ports: Vec<NamedPort>,
}

impl Endpoint {
    /// Whether `ip` is one of the endpoint's addresses.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        self.ips.iter().any(|n| n.contains(&ip))
    }
}

/// The host-side interface name of a workload endpoint named `namespace/name`: `pal` and 11 hex
/// digits of a stable hash of the name (Calico's `cali` + hash scheme, within IFNAMSIZ). The lab
/// creates the interface under this name and the dataplane finds the endpoint by it.
pub fn workload_interface(endpoint: &str) -> String {
    format!("pal{:011x}", name_hash(endpoint) >> 20)
}

/// The MAC address of a workload's own interface (`eth0` in the pod): locally administered,
/// unicast, derived from the same hash, so the lab (our CNI) and the dataplane agree on it.
pub fn workload_mac(endpoint: &str) -> [u8; 6] {
    let h = name_hash(endpoint).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// Reads a MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| if p.len() == 2 { u8::from_str_radix(p, 16).ok() } else { None }).collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// FNV-1a, 64 bits, then MurmurHash3's finaliser so that names differing in their last
/// character differ in every output bit. Stable across Rust versions and machines (unlike
/// `DefaultHasher`).
fn name_hash(s: &str) -> u64 {
    let mut h = s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A NetworkSet or GlobalNetworkSet: labelled CIDRs that rule selectors can match.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NetworkSet {
    /// `namespace/name` or `name`.
    pub name: String,
    /// Effective labels.
    pub labels: BTreeMap<String, String>,
    /// Member CIDRs.
    pub nets: Vec<IpNet>,
}

/// The whole validated cluster state, in evaluation order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cluster {
    /// Tiers by ascending order (unset last), ties by name; always includes `default`.
    pub tiers: Vec<Tier>,
    /// Policies grouped by tier in tier order, then by order (unset last), ties by name; shared
    /// with the conversion cache (`convert::ConversionCache`) and later builds.
    pub policies: Vec<std::sync::Arc<Policy>>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Network sets.
    pub network_sets: Vec<NetworkSet>,
    /// Namespace labels by namespace name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Service-account labels by namespace and name (declared ones, and those pods run as).
    pub service_accounts: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>,
}

/// The cluster's policies by the namespace their selector requires (Kubernetes and Calico
/// namespaced policies), so that an endpoint's policies are found by testing only the global
/// policies' selectors and those of its own namespace.
pub struct PolicyIndex {
    /// Positions in `cluster.policies` of policies that require no namespace.
    global: Vec<usize>,
    /// Positions of the others, by the namespace they require.
    by_namespace: HashMap<String, Vec<usize>>,
}

impl PolicyIndex {
    /// Indexes the cluster's policies.
    pub fn new(cluster: &Cluster) -> Self {
        let mut global = Vec::new();
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in cluster.policies.iter().enumerate() {
            match p.selector.required_value(LABEL_NAMESPACE) {
                Some(ns) => by_namespace.entry(ns.to_string()).or_default().push(i),
                None => global.push(i),
            }
        }
        PolicyIndex { global, by_namespace }
    }

    /// The same as [`Cluster::tiers_for`], for the cluster this index was made from.
    pub fn tiers_for<'c>(&self, cluster: &'c Cluster, ep: &Endpoint, dir: Direction, stage: Stage) -> Vec<TierView<'c>> {
        let local: &[usize] = ep.labels.get(LABEL_NAMESPACE).and_then(|ns| self.by_namespace.get(ns.as_str())).map_or(&[], Vec::as_slice);
        // Merge the two ascending position lists, keeping cluster order.
        let (mut g, mut l) = (self.global.iter().peekable(), local.iter().peekable());
        let merged = std::iter::from_fn(move || match (g.peek(), l.peek()) {
            (Some(&&a), Some(&&b)) => {
                if a < b {
                    g.next()
                } else {
                    l.next()
                }
            }
            (Some(_), None) => g.next(),
            (None, _) => l.next(),
        });
        cluster.views(ep, dir, stage, merged.map(|&i| &*cluster.policies[i]))
    }
}

/// Which policies a stage of evaluation considers (Calico evaluates host-endpoint traffic in up to
/// three passes: untracked, pre-DNAT, then normal policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// `doNotTrack` policies (host endpoints only).
    Untracked,
    /// `preDNAT` policies (host endpoints, ingress only).
    PreDnat,
    /// All other policies.
    Normal,
}

impl Stage {
    /// Whether `policy` takes part in this stage.
    pub fn includes(self, policy: &Policy) -> bool {
        match self {
            Stage::Untracked => policy.do_not_track,
            Stage::PreDnat => policy.pre_dnat,
            Stage::Normal => !policy.do_not_track && !policy.pre_dnat,
        }
    }
}

/// One of the policy chains Calico runs for traffic through a host endpoint (the host-endpoint
/// pipeline itself, failsafes first, is [`crate::host`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HostChain {
    /// `doNotTrack` policies, run on every packet crossing the interface this way (forwarded
    /// packets: ingress only); an Allow skips connection tracking, no match falls through.
    Untracked(Direction),
    /// `preDNAT` policies, ingress, for new flows to the host or routed through it; no match
    /// falls through.
    PreDnat,
    /// Normal policies, then profiles, for traffic to or from the host's own processes.
    Normal(Direction),
    /// Normal policies with `applyOnForward`, then profiles, for traffic routed through the host;
    /// allowed when no such policy applies.
    Forward(Direction),
}

impl HostChain {
    /// The direction whose rules the chain runs.
    pub fn direction(self) -> Direction {
        match self {
            HostChain::Untracked(d) | HostChain::Normal(d) | HostChain::Forward(d) => d,
            HostChain::PreDnat => Direction::Ingress,
        }
    }

    /// The evaluation stage the chain's policies come from.
    pub fn stage(self) -> Stage {
        match self {
            HostChain::Untracked(_) => Stage::Untracked,
            HostChain::PreDnat => Stage::PreDnat,
            HostChain::Normal(_) | HostChain::Forward(_) => Stage::Normal,
        }
    }

    /// Whether no match falls through to the next chain (instead of ending in a default).
    pub fn falls_through(self) -> bool {
        matches!(self, HostChain::Untracked(_) | HostChain::PreDnat)
    }

    /// Every chain, in a fixed order.
    pub const ALL: [HostChain; 7] = [
        HostChain::Untracked(Direction::Ingress),
        HostChain::Untracked(Direction::Egress),
        HostChain::PreDnat,
        HostChain::Normal(Direction::Ingress),
        HostChain::Normal(Direction::Egress),
        HostChain::Forward(Direction::Ingress),
        HostChain::Forward(Direction::Egress),
    ];
}

impl fmt::Display for HostChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostChain::Untracked(d) => write!(f, "untracked {d}"),
            HostChain::PreDnat => f.write_str("preDNAT ingress"),
            HostChain::Normal(d) => write!(f, "normal {d}"),
            HostChain::Forward(d) => write!(f, "forward {d}"),
        }
    }
}

/// The policies of one tier that apply to an endpoint in one direction and stage.
#[derive(Clone, Debug)]
pub struct TierView<'a> {
    /// The tier.
    pub tier: &'a Tier,
    /// Its applicable policies in order (enforced and staged).
    pub policies: Vec<&'a Policy>,
}

impl TierView<'_> {
    /// Whether an enforced (non-staged) policy applies, which makes the tier's default action count.
    pub fn has_enforced(&self) -> bool {
        self.policies.iter().any(|p| !p.is_staged())
    }
}

impl Cluster {
    /// The endpoint owning `ip`, if any.
    pub fn endpoint_for_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.has_ip(ip))
    }

    /// An endpoint by name.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// For one endpoint, direction and stage: the tiers that have applicable policies, in order,
    /// each with its applicable policies in order. Policies with `doNotTrack` or `preDNAT` only
    /// ever apply to host endpoints, as in Felix.
    pub fn tiers_for(&self, ep: &Endpoint, dir: Direction, stage: Stage) -> Vec<TierView<'_>> {
        let ns = ep.labels.get(LABEL_NAMESPACE).map(String::as_str);
        // Namespaced policies' selectors require the endpoint's namespace: checking that first
        // skips most selectors.
        self.views(ep, dir, stage, self.policies.iter().map(|p| &**p).filter(|p| p.selector.required_value(LABEL_NAMESPACE).is_none_or(|v| ns == Some(v))))
    }

    /// The tier views of the `candidates` (policies in cluster order) that apply.
    fn views<'a>(&'a self, ep: &Endpoint, dir: Direction, stage: Stage, candidates: impl Iterator<Item = &'a Policy>) -> Vec<TierView<'a>> {
        if stage != Stage::Normal && ep.kind != EndpointKind::Host {
            return Vec::new();
        }
        if stage == Stage::PreDnat && dir == Direction::Egress {
            return Vec::new();
        }
        let mut out: Vec<TierView<'_>> = Vec::new();
        // Policies are grouped by tier, in tier order.
        for p in candidates.filter(|p| p.applies(dir) && stage.includes(p) && p.selector.matches(&ep.labels)) {
            match out.last_mut() {
                Some(view) if view.tier.name == p.tier => view.policies.push(p),
                _ => {
                    if let Some(tier) = self.tiers.iter().find(|t| t.name == p.tier) {
                        out.push(TierView { tier, policies: vec![p] });
                    }
                }
            }
        }
        out
    }

    /// For a host endpoint and one of its chains: the tiers with applicable policies, in order
    /// (empty for workload endpoints).
    pub fn host_tiers(&self, ep: &Endpoint, chain: HostChain) -> Vec<TierView<'_>> {
        if ep.kind != EndpointKind::Host {
            return Vec::new();
        }
        let mut views = self.tiers_for(ep, chain.direction(), chain.stage());
        if let HostChain::Forward(_) = chain {
            for v in &mut views {
                v.policies.retain(|p| p.apply_on_forward);
            }
            views.retain(|v| !v.policies.is_empty());
        }
        views
    }

    /// Whether `ip` belongs to an endpoint or network set whose labels match `sel` (Felix's
    /// selector IP sets: endpoint addresses, host endpoints' expected IPs, network-set CIDRs).
    pub fn selector_has_ip(&self, sel: &Selector, ip: IpAddr) -> bool {
        self.endpoints.iter().any(|e| e.has_ip(ip) && sel.matches(&e.labels))
            || self.network_sets.iter().any(|n| n.nets.iter().any(|c| c.contains(&ip)) && sel.matches(&n.labels))
    }

    /// Whether `(ip, protocol, port)` is the named port `name` of an endpoint matching `sel`
    /// (all endpoints when `sel` is `None`): Felix's named-port IP sets, whose members are the
    /// endpoints' own addresses.
    pub fn named_port_has(&self, sel: Option<&Selector>, name: &str, ip: IpAddr, protocol: u8, port: u16) -> bool {
        self.endpoints.iter().any(|e| {
            e.ips.iter().any(|n| n.addr() == ip)
                && sel.is_none_or(|s| s.matches(&e.labels))
                && e.ports.iter().any(|p| p.name == name && p.protocol == protocol && p.port == port)
        })
    }
}
