//! Validation and normalization: raw resources → [`Cluster`].
//!
//! Follows libcalico-go's update processors and Kubernetes conversion: Kubernetes policies become
//! Calico policies, Calico v3 policies become Felix's v1 form with scoped selectors, pods become
//! workload endpoints with generated labels and the `kns.`/`ksa.` profiles. Every problem is
//! reported with its file, resource and field; nothing invalid is dropped silently.

use crate::load::{Error, Loaded};
use crate::model::*;
use crate::resources::*;
use crate::selector::Selector;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Builds the validated cluster model from loaded resources, or returns every error found.
pub fn build_cluster<L: std::borrow::Borrow<Loaded>>(loaded: &[L]) -> Result<Cluster, Vec<Error>> {
    let refs: Vec<&Loaded> = loaded.iter().map(|l| l.borrow()).collect();
    let mut b = Builder::start(&refs);
    for l in refs {
        b.current_file = l.file.clone();
        b.resource(&l.resource);
    }
    b.finish()
}

/// [`build_cluster`], converting again only the resources `cache` has not seen: a policy or
/// endpoint converted by an earlier build from the same shared resource is reused as it is.
pub fn build_cluster_cached(loaded: &[Arc<Loaded>], cache: &mut ConversionCache) -> Result<Cluster, Vec<Error>> {
    let refs: Vec<&Loaded> = loaded.iter().map(|l| &**l).collect();
    let mut b = Builder::start(&refs);
    cache.generation += 1;
    for l in loaded {
        b.current_file = l.file.clone();
        if ConversionCache::keeps(&l.resource) {
            cache.convert(&mut b, l);
        } else {
            b.resource(&l.resource);
        }
    }
    let generation = cache.generation;
    cache.entries.retain(|_, e| e.used + 1 >= generation);
    b.finish()
}

/// Policies and endpoints converted by earlier builds, by the identity of the resource they came
/// from (an `Arc<Loaded>` that the caller keeps sharing while it does not change). Converting
/// them is most of a build's time (microseconds per rule or pod), and they depend on nothing but
/// their resource, so a build with the cache costs little more than copying what it converted
/// before. Entries unused by the last two builds are dropped.
#[derive(Default)]
pub struct ConversionCache {
    entries: HashMap<usize, Converted>,
    generation: u64,
}

/// What converting one resource added to a build.
struct Converted {
    /// Keeps the resource alive, so that its address identifies it while the entry exists.
    _source: Arc<Loaded>,
    errors: Vec<Error>,
    policy: Option<Arc<Policy>>,
    tier_ref: Option<TierRef>,
    endpoint: Option<(Endpoint, EndpointOrigin)>,
    used: u64,
}

impl ConversionCache {
    /// Whether resources of this kind are cached: those whose conversion depends on nothing else.
    fn keeps(r: &Resource) -> bool {
        r.is_policy() || matches!(r, Resource::Pod(..) | Resource::WorkloadEndpoint(..) | Resource::HostEndpoint(..))
    }

    /// Adds what `l` converts to to `b`, converted now or by an earlier build.
    fn convert(&mut self, b: &mut Builder, l: &Arc<Loaded>) {
        let entry = self.entries.entry(Arc::as_ptr(l) as usize).or_insert_with(|| {
            let (errors, policies, tier_refs, endpoints) = (b.errors.len(), b.policies.len(), b.tier_refs.len(), b.endpoints.len());
            b.resource(&l.resource);
            let endpoint = b.endpoints.drain(endpoints..).next().zip(b.endpoint_origins.drain(endpoints..).next());
            Converted {
                _source: l.clone(),
                errors: b.errors.drain(errors..).collect(),
                policy: b.policies.drain(policies..).next(),
                tier_ref: b.tier_refs.drain(tier_refs..).next(),
                endpoint,
                used: 0,
            }
        });
        entry.used = self.generation;
        b.errors.extend(entry.errors.iter().cloned());
        b.policies.extend(entry.policy.clone());
        b.tier_refs.extend(entry.tier_ref.clone());
        if let Some((ep, origin)) = &entry.endpoint {
            b.endpoints.push(ep.clone());
            b.endpoint_origins.push(origin.clone());
        }
    }
}

/// A tier a policy names, the policy and its file: checked once every tier is known.
type TierRef = (String, String, Option<std::path::PathBuf>);

#[derive(Default)]
struct Builder {
    current_file: Option<std::path::PathBuf>,
    errors: Vec<Error>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    service_accounts: BTreeMap<(String, String), BTreeMap<String, String>>,
    user_profiles: Vec<Profile>,
    tiers: Vec<Tier>,
    policies: Vec<Arc<Policy>>,
    /// Endpoints before profile labels are inherited.
    endpoints: Vec<Endpoint>,
    /// Where each endpoint (same index) was defined, for errors about its addresses.
    endpoint_origins: Vec<EndpointOrigin>,
    network_sets: Vec<NetworkSet>,
    /// Tier referenced by each policy, for the existence check at the end.
    tier_refs: Vec<TierRef>,
}

/// The resource an endpoint came from and the field of each of its addresses.
#[derive(Clone)]
struct EndpointOrigin {
    id: String,
    file: Option<std::path::PathBuf>,
    /// Field path of each entry of the endpoint's `ips`.
    ip_fields: Vec<String>,
    /// The service account (namespace, name) a pod runs as, which gets a profile.
    service_account: Option<(String, String)>,
}

/// Errors for one resource: knows the resource's identity and file.
struct Ctx<'a> {
    id: String,
    errors: &'a mut Vec<Error>,
    file: Option<std::path::PathBuf>,
}

impl Ctx<'_> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        let mut e = Error::field(self.id.clone(), field, message);
        e.file = self.file.clone();
        self.errors.push(e);
    }

    fn selector(&mut self, field: &str, s: &Option<String>) -> Option<Selector> {
        let s = s.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
        match Selector::parse(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                self.err(field, format!("invalid selector {s:?}: {e}"));
                None
            }
        }
    }

    fn net(&mut self, field: &str, s: &str) -> Option<IpNet> {
        parse_net(s).map_err(|m| self.err(field, m)).ok()
    }

    fn nets(&mut self, field: &str, list: &Option<Vec<String>>) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().flatten().enumerate() {
            if let Some(n) = self.net(&format!("{field}[{i}]"), s) {
                out.push(n);
            }
        }
        out
    }
}

/// Parses a CIDR or a bare address (as a host route), masking host bits like Calico does.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

fn protocol_number(v: &NumOrString) -> Result<u8, String> {
    match v {
        NumOrString::Num(n) if (1..=255).contains(n) => Ok(*n as u8),
        NumOrString::Num(n) => Err(format!("protocol number {n} is out of range 1-255")),
        NumOrString::Str(s) => proto::from_name(s)
            .or_else(|| s.parse::<u8>().ok().filter(|n| *n >= 1))
            .ok_or_else(|| format!("unknown protocol {s:?} (use TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)")),
    }
}

/// A port criterion: a numeric range or a named port.
enum PortSpec {
    Range(PortRange),
    Named(String),
}

/// Whether `s` is a valid port name (Kubernetes IANA_SVC_NAME: 1-15 of `[a-z0-9-]`, a letter,
/// no leading, trailing or double hyphen).
pub fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("port {n} is out of range 0-65535"))
}

fn port_spec(v: &NumOrString) -> Result<PortSpec, String> {
    match v {
        NumOrString::Num(n) => port_number(*n).map(|p| PortSpec::Range(PortRange { first: p, last: p })),
        NumOrString::Str(s) => {
            if let Some((a, b)) = s.split_once(':') {
                let parse = |x: &str| x.trim().parse::<i64>().map_err(|_| format!("invalid port range {s:?}")).and_then(port_number);
                let (first, last) = (parse(a)?, parse(b)?);
                if first > last {
                    return Err(format!("port range {s:?} has its first port after its last"));
                }
                Ok(PortSpec::Range(PortRange { first, last }))
            } else if let Ok(n) = s.parse::<i64>() {
                port_number(n).map(|p| PortSpec::Range(PortRange { first: p, last: p }))
            } else if valid_port_name(s) {
                Ok(PortSpec::Named(s.clone()))
            } else {
                Err(format!("{s:?} is neither a port, a \"first:last\" range nor a valid port name"))
            }
        }
    }
}

/// A rule's source or destination in Calico v3 terms, with selectors already parsed.
#[derive(Default)]
struct V3Entity {
    nets: Vec<IpNet>,
    not_nets: Vec<IpNet>,
    selector: Option<Selector>,
    not_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    ports: Vec<PortSpec>,
    not_ports: Vec<PortSpec>,
    /// The service-account selector (names and label selector combined), when given.
    service_accounts: Option<Selector>,
}

/// A rule in Calico v3 terms, before selector scoping.
struct V3Rule {
    action: Action,
    ip_version: Option<u8>,
    protocol: Option<u8>,
    not_protocol: Option<u8>,
    icmp: Option<IcmpMatch>,
    not_icmp: Option<IcmpMatch>,
    src: V3Entity,
    dst: V3Entity,
}

fn ns_label_selector(ns: &str) -> Selector {
    Selector::Eq(LABEL_NAMESPACE.into(), ns.into())
}

/// libcalico-go's `getEndpointSelector`: the selector an entity rule's addresses must match, given
/// the policy's namespace (`None` for global policies).
fn scope_entity(e: V3Entity, policy_ns: Option<&str>) -> EntityMatch {
    let has_ns = Selector::Has(LABEL_NAMESPACE.into());
    let ns_sel = match (&e.namespace_selector, policy_ns) {
        (Some(nsel), _) => Some(nsel.with_key_prefix(NAMESPACE_LABEL_PREFIX).replace_all_global(&has_ns, &Selector::Not(Box::new(has_ns.clone())))),
        (None, Some(ns)) => Some(ns_label_selector(ns)),
        (None, None) => None,
    };
    let mut selector = match (e.service_accounts, e.selector) {
        (Some(sa), Some(s)) => Some(Selector::And(vec![sa, s])),
        (a, b) => a.or(b),
    };
    if let Some(ns_sel) = ns_sel {
        if selector.is_some() || e.not_selector.is_some() || e.namespace_selector.is_some() {
            selector = Some(match selector {
                Some(s) => Selector::And(vec![ns_sel, s]),
                None => ns_sel,
            });
        }
    }
    let split = |specs: Vec<PortSpec>| {
        let mut ranges = Vec::new();
        let mut names = Vec::new();
        for p in specs {
            match p {
                PortSpec::Range(r) => ranges.push(r),
                PortSpec::Named(n) => names.push(n),
            }
        }
        (ranges, names)
    };
    let (ports, named_ports) = split(e.ports);
    let (not_ports, not_named_ports) = split(e.not_ports);
    EntityMatch { nets: e.nets, not_nets: e.not_nets, selector, not_selector: e.not_selector, ports, named_ports, not_ports, not_named_ports }
}

fn scope_rule(r: V3Rule, policy_ns: Option<&str>) -> Rule {
    Rule {
        action: r.action,
        ip_version: r.ip_version,
        protocol: r.protocol,
        not_protocol: r.not_protocol,
        icmp: r.icmp,
        not_icmp: r.not_icmp,
        src: scope_entity(r.src, policy_ns),
        dst: scope_entity(r.dst, policy_ns),
    }
}

fn icmp_match(c: &mut Ctx, field: &str, f: &Option<IcmpFields>) -> Option<IcmpMatch> {
    let f = f.as_ref()?;
    let t = match f.icmp_type {
        Some(t) if (0..=254).contains(&t) => t as u8,
        Some(t) => {
            c.err(&format!("{field}.type"), format!("ICMP type {t} is out of range 0-254"));
            return None;
        }
        None => {
            if f.code.is_some() {
                c.err(&format!("{field}.code"), "an ICMP code needs an ICMP type");
            }
            return None;
        }
    };
    let code = match f.code {
        Some(x) if (0..=255).contains(&x) => Some(x as u8),
        Some(x) => {
            c.err(&format!("{field}.code"), format!("ICMP code {x} is out of range 0-255"));
            None
        }
        None => None,
    };
    Some(IcmpMatch { icmp_type: t, code })
}

fn calico_entity(c: &mut Ctx, field: &str, e: &Option<EntityRule>) -> V3Entity {
    let Some(e) = e else { return V3Entity::default() };
    if e.services.is_some() {
        c.err(&format!("{field}.services"), "Kubernetes Service matches are not supported by Palisade");
    }
    let mut ports = |name: &str, list: &Option<Vec<NumOrString>>| -> Vec<PortSpec> {
        let mut out = Vec::new();
        for (i, p) in list.iter().flatten().enumerate() {
            match port_spec(p) {
                Ok(s) => out.push(s),
                Err(m) => c.err(&format!("{field}.{name}[{i}]"), m),
            }
        }
        out
    };
    let (p, np) = (ports("ports", &e.ports), ports("notPorts", &e.not_ports));
    let service_accounts = e.service_accounts.as_ref().and_then(|sa| {
        let sel = c.selector(&format!("{field}.serviceAccounts.selector"), &sa.selector).map(|s| s.with_key_prefix(SERVICE_ACCOUNT_LABEL_PREFIX));
        let names = sa.names.as_ref().filter(|n| !n.is_empty()).map(|n| {
            let mut v = n.clone();
            v.sort();
            v.dedup();
            Selector::In(LABEL_SERVICE_ACCOUNT.into(), v)
        });
        match (sel, names) {
            (Some(s), Some(n)) => Some(Selector::And(vec![s, n])),
            (s, n) => s.or(n),
        }
    });
    V3Entity {
        nets: c.nets(&format!("{field}.nets"), &e.nets),
        not_nets: c.nets(&format!("{field}.notNets"), &e.not_nets),
        selector: c.selector(&format!("{field}.selector"), &e.selector),
        not_selector: c.selector(&format!("{field}.notSelector"), &e.not_selector),
        namespace_selector: c.selector(&format!("{field}.namespaceSelector"), &e.namespace_selector),
        ports: p,
        not_ports: np,
        service_accounts,
    }
}

fn calico_rule(c: &mut Ctx, field: &str, r: &CalicoRule) -> Option<V3Rule> {
    let before = c.errors.len();
    let action = match r.action.as_str() {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Log" => Action::Log,
        "Pass" => Action::Pass,
        other => {
            c.err(&format!("{field}.action"), format!("unknown action {other:?} (use Allow, Deny, Log or Pass)"));
            Action::Deny
        }
    };
    if r.http.is_some() {
        c.err(&format!("{field}.http"), "HTTP (L7) matches are not supported by Palisade");
    }
    let ip_version = match r.ip_version {
        None => None,
        Some(v @ (4 | 6)) => Some(v as u8),
        Some(v) => {
            c.err(&format!("{field}.ipVersion"), format!("ipVersion must be 4 or 6, not {v}"));
            None
        }
    };
    let mut protocol_of =
        |name: &str, v: &Option<NumOrString>| v.as_ref().and_then(|p| protocol_number(p).map_err(|m| c.err(&format!("{field}.{name}"), m)).ok());
    let protocol = protocol_of("protocol", &r.protocol);
    let not_protocol = protocol_of("notProtocol", &r.not_protocol);
    let icmp = icmp_match(c, &format!("{field}.icmp"), &r.icmp);
    let not_icmp = icmp_match(c, &format!("{field}.notICMP"), &r.not_icmp);
    let src = calico_entity(c, &format!("{field}.source"), &r.source);
    let dst = calico_entity(c, &format!("{field}.destination"), &r.destination);
    let rule = V3Rule { action, ip_version, protocol, not_protocol, icmp, not_icmp, src, dst };
    check_rule(c, field, &rule);
    (c.errors.len() == before).then_some(rule)
}

/// Cross-field checks Calico's validator makes on a rule.
fn check_rule(c: &mut Ctx, field: &str, r: &V3Rule) {
    let has_ports = |e: &V3Entity| !e.ports.is_empty() || !e.not_ports.is_empty();
    if (has_ports(&r.src) || has_ports(&r.dst)) && !r.protocol.is_some_and(proto::has_ports) {
        c.err(&format!("{field}.protocol"), "rules with ports must set protocol to TCP, UDP or SCTP");
    }
    if r.icmp.is_some() || r.not_icmp.is_some() {
        match r.protocol {
            Some(proto::ICMP) | Some(proto::ICMPV6) => {}
            _ => c.err(&format!("{field}.protocol"), "icmp/notICMP need protocol ICMP or ICMPv6"),
        }
    }
    match (r.ip_version, r.protocol) {
        (Some(6), Some(proto::ICMP)) => c.err(&format!("{field}.ipVersion"), "protocol ICMP needs ipVersion 4"),
        (Some(4), Some(proto::ICMPV6)) => c.err(&format!("{field}.ipVersion"), "protocol ICMPv6 needs ipVersion 6"),
        _ => {}
    }
    if let Some(v) = r.ip_version {
        for (side, e) in [("source", &r.src), ("destination", &r.dst)] {
            for (name, nets) in [("nets", &e.nets), ("notNets", &e.not_nets)] {
                if nets.iter().any(|n| net_version(n) != v) {
                    c.err(&format!("{field}.{side}.{name}"), format!("contains a CIDR that is not IPv{v}, but ipVersion is {v}"));
                }
            }
        }
    }
}

/// 4 or 6.
pub fn net_version(n: &IpNet) -> u8 {
    match n {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

fn rules(c: &mut Ctx, field: &str, list: &Option<Vec<CalicoRule>>) -> Vec<V3Rule> {
    let mut out = Vec::new();
    for (i, r) in list.iter().flatten().enumerate() {
        if let Some(r) = calico_rule(c, &format!("{field}[{i}]"), r) {
            out.push(r);
        }
    }
    out
}

fn order(c: &mut Ctx, o: Option<f64>) -> Option<f64> {
    match o {
        Some(x) if !x.is_finite() => {
            c.err("spec.order", "order must be a finite number");
            None
        }
        o => o,
    }
}

/// Calico's default for an unset `types`: Ingress unless there are only egress rules; both when
/// there are both.
fn types(c: &mut Ctx, t: &Option<Vec<String>>, n_ingress: usize, n_egress: usize) -> (bool, bool) {
    match t.as_deref() {
        Some(list) if !list.is_empty() => {
            let (mut i, mut e) = (false, false);
            for (idx, x) in list.iter().enumerate() {
                match x.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => c.err(&format!("spec.types[{idx}]"), format!("unknown policy type {other:?} (use Ingress or Egress)")),
                }
            }
            (i, e)
        }
        _ => {
            if n_egress == 0 {
                (true, false)
            } else if n_ingress == 0 {
                (false, true)
            } else {
                (true, true)
            }
        }
    }
}

fn k8s_selector(c: &mut Ctx, field: &str, s: &LabelSelector) -> Selector {
    let mut terms = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        if !valid_label_key(k) {
            c.err(&format!("{field}.matchLabels"), format!("invalid label key {k:?}"));
        }
        if !valid_label_value(v) {
            c.err(&format!("{field}.matchLabels.{k}"), format!("invalid label value {v:?}"));
        }
        terms.push(Selector::Eq(k.clone(), v.clone()));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if !valid_label_key(&e.key) {
            c.err(&format!("{f}.key"), format!("invalid label key {:?}", e.key));
        }
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    c.err(&format!("{f}.values"), format!("operator {} needs at least one value", e.operator));
                }
                let mut v = values;
                v.sort();
                v.dedup();
                terms.push(if e.operator == "In" { Selector::In(e.key.clone(), v) } else { Selector::NotIn(e.key.clone(), v) });
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    c.err(&format!("{f}.values"), format!("operator {} takes no values", e.operator));
                }
                let has = Selector::Has(e.key.clone());
                terms.push(if e.operator == "Exists" { has } else { Selector::Not(Box::new(has)) });
            }
            other => c.err(&format!("{f}.operator"), format!("unknown operator {other:?} (use In, NotIn, Exists or DoesNotExist)")),
        }
    }
    match terms.len() {
        0 => Selector::All,
        1 => terms.pop().unwrap(),
        _ => Selector::And(terms),
    }
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of up to 63 characters.
fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty() && name.len() <= 63 && valid_label_value(name);
    let prefix_ok = prefix
        .is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
    name_ok && prefix_ok
}

/// Kubernetes label value: up to 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends (or empty).
fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn orchestrator_k8s() -> Selector {
    Selector::Eq(LABEL_ORCHESTRATOR.into(), "k8s".into())
}

/// Kubernetes NetworkPolicy → Calico rules, one per (protocol × peer), as libcalico-go converts them.
fn k8s_rules(c: &mut Ctx, field: &str, peers: &Option<Vec<K8sPeer>>, ports: &Option<Vec<K8sPort>>, ingress: bool) -> Vec<V3Rule> {
    // Protocol → port criteria; `None` for "all ports". Key `None` means "any protocol".
    let mut by_proto: BTreeMap<Option<u8>, Option<Vec<PortSpec>>> = BTreeMap::new();
    let port_list = ports.as_deref().unwrap_or_default();
    if port_list.is_empty() {
        by_proto.insert(None, None);
    }
    for (i, p) in port_list.iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => proto::TCP,
            "UDP" => proto::UDP,
            "SCTP" => proto::SCTP,
            other => {
                c.err(&format!("{f}.protocol"), format!("unsupported protocol {other:?} (use TCP, UDP or SCTP)"));
                continue;
            }
        };
        let spec = match (&p.port, p.end_port) {
            (None, None) => None,
            (None, Some(_)) => {
                c.err(&format!("{f}.endPort"), "endPort needs a numeric port");
                continue;
            }
            (Some(NumOrString::Num(n)), end) => {
                if !(1..=65535).contains(n) {
                    c.err(&format!("{f}.port"), format!("port {n} is out of range 1-65535"));
                    continue;
                }
                let last = end.unwrap_or(*n);
                if !(1..=65535).contains(&last) || last < *n {
                    c.err(&format!("{f}.endPort"), format!("endPort {last} must be in 1-65535 and not below port {n}"));
                    continue;
                }
                Some(PortSpec::Range(PortRange { first: *n as u16, last: last as u16 }))
            }
            (Some(NumOrString::Str(name)), end) => {
                if end.is_some() {
                    c.err(&format!("{f}.endPort"), "endPort needs a numeric port, not a named port");
                    continue;
                }
                if !valid_port_name(name) {
                    c.err(&format!("{f}.port"), format!("{name:?} is not a valid port name"));
                    continue;
                }
                Some(PortSpec::Named(name.clone()))
            }
        };
        let entry = by_proto.entry(Some(proto)).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), spec) {
            (Some(list), Some(s)) => list.push(s),
            (_, None) => *entry = None,
            (None, Some(_)) => {}
        }
    }
    let peer_list: Vec<Option<&K8sPeer>> = match peers.as_deref() {
        Some(ps) if !ps.is_empty() => ps.iter().map(Some).collect(),
        _ => vec![None],
    };
    let peer_field = if ingress { "from" } else { "to" };
    let mut out = Vec::new();
    for (proto, ports) in by_proto {
        for (j, peer) in peer_list.iter().enumerate() {
            let mut entity = match peer {
                None => V3Entity::default(),
                Some(p) => k8s_peer(c, &format!("{field}.{peer_field}[{j}]"), p),
            };
            let mut other = V3Entity::default();
            let port_side = if ingress { &mut other } else { &mut entity };
            port_side.ports = ports
                .iter()
                .flatten()
                .map(|s| match s {
                    PortSpec::Range(r) => PortSpec::Range(*r),
                    PortSpec::Named(n) => PortSpec::Named(n.clone()),
                })
                .collect();
            let (src, dst) = if ingress { (entity, other) } else { (other, entity) };
            out.push(V3Rule { action: Action::Allow, ip_version: None, protocol: proto, not_protocol: None, icmp: None, not_icmp: None, src, dst });
        }
    }
    out
}

fn k8s_peer(c: &mut Ctx, field: &str, p: &K8sPeer) -> V3Entity {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            c.err(field, "ipBlock cannot be combined with podSelector or namespaceSelector");
        }
        let cidr = match b.cidr.parse::<IpNet>() {
            Ok(n) => Some(n.trunc()),
            Err(_) => {
                c.err(&format!("{field}.ipBlock.cidr"), format!("{:?} is not a CIDR", b.cidr));
                None
            }
        };
        let mut not_nets = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            match e.parse::<IpNet>() {
                Ok(n) => {
                    if cidr.is_some_and(|c| !(c.contains(&n) && n.prefix_len() > c.prefix_len())) {
                        c.err(&f, format!("{e:?} is not strictly inside {:?}", b.cidr));
                    }
                    not_nets.push(n.trunc());
                }
                Err(_) => c.err(&f, format!("{e:?} is not a CIDR")),
            }
        }
        return V3Entity { nets: cidr.into_iter().collect(), not_nets, ..V3Entity::default() };
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        c.err(field, "a peer needs podSelector, namespaceSelector or ipBlock");
    }
    let pod = p.pod_selector.as_ref().map(|s| k8s_selector(c, &format!("{field}.podSelector"), s));
    let selector = Some(orchestrator_k8s().and(pod.unwrap_or(Selector::All)));
    let namespace_selector = p.namespace_selector.as_ref().map(|s| k8s_selector(c, &format!("{field}.namespaceSelector"), s));
    V3Entity { selector, namespace_selector, ..V3Entity::default() }
}

impl Builder {
    /// A builder for `loaded`, with duplicates and namespaces checked.
    fn start(loaded: &[&Loaded]) -> Builder {
        let mut b = Builder::default();
        b.check_duplicates(loaded);
        b.collect_namespaces(loaded);
        b
    }

    fn ctx(&mut self, r: &Resource) -> Ctx<'_> {
        Ctx { id: r.display_id(), errors: &mut self.errors, file: self.current_file.clone() }
    }

    fn check_duplicates(&mut self, loaded: &[&Loaded]) {
        // (API version, kind, namespace, name) → the first file defining it.
        let mut seen: HashMap<(&str, &str, &str, &str), &Option<std::path::PathBuf>> = HashMap::with_capacity(loaded.len());
        for l in loaded {
            let r = &l.resource;
            let key = (r.api_version(), r.kind(), namespace_ref(r).unwrap_or_default(), r.metadata().name.as_str());
            if let Some(first) = seen.get(&key) {
                let at = first.as_ref().map(|f| format!(" (first defined in {})", f.display())).unwrap_or_default();
                let mut e = Error::field(r.display_id(), "metadata.name", format!("defined twice{at}"));
                e.file = l.file.clone();
                self.errors.push(e);
            } else {
                seen.insert(key, &l.file);
            }
        }
    }

    /// Namespaces: declared ones with their labels, plus any namespace a resource lives in.
    fn collect_namespaces(&mut self, loaded: &[&Loaded]) {
        for l in loaded {
            match &l.resource {
                Resource::Namespace(m) => {
                    let mut labels = m.labels.clone();
                    labels.insert("kubernetes.io/metadata.name".into(), m.name.clone()); // the API server always sets it
                    self.namespaces.insert(m.name.clone(), labels);
                }
                r => {
                    if let Some(ns) = namespace_ref(r).filter(|ns| !self.namespaces.contains_key(*ns)) {
                        self.namespaces.insert(ns.to_string(), BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]));
                    }
                }
            }
        }
    }

    fn resource(&mut self, r: &Resource) {
        match r {
            Resource::Namespace(_) => {}
            Resource::ServiceAccount(m) => {
                let ns = namespace_of(r).unwrap_or_default();
                self.service_accounts.insert((ns, m.name.clone()), m.labels.clone());
            }
            Resource::Pod(m, spec, status) => self.pod(r, m, spec, status),
            Resource::K8sNetworkPolicy(m, spec) => self.k8s_policy(r, m, spec, PolicyKind::KubernetesNetworkPolicy),
            Resource::StagedK8sNetworkPolicy(m, spec) => self.k8s_policy(r, m, spec, PolicyKind::StagedKubernetesNetworkPolicy),
            Resource::NetworkPolicy(m, spec) => self.calico_policy(r, m, spec, PolicyKind::NetworkPolicy),
            Resource::GlobalNetworkPolicy(m, spec) => self.calico_policy(r, m, spec, PolicyKind::GlobalNetworkPolicy),
            Resource::StagedNetworkPolicy(m, spec) => self.calico_policy(r, m, spec, PolicyKind::StagedNetworkPolicy),
            Resource::StagedGlobalNetworkPolicy(m, spec) => self.calico_policy(r, m, spec, PolicyKind::StagedGlobalNetworkPolicy),
            Resource::Tier(m, spec) => self.tier(r, m, spec),
            Resource::HostEndpoint(m, spec) => self.host_endpoint(r, m, spec),
            Resource::WorkloadEndpoint(m, spec) => self.workload_endpoint(r, m, spec),
            Resource::NetworkSet(m, spec) | Resource::GlobalNetworkSet(m, spec) => self.network_set(r, m, spec),
            Resource::Profile(m, spec) => self.profile(r, m, spec),
        }
    }

    fn pod(&mut self, r: &Resource, m: &Metadata, spec: &PodSpec, status: &PodStatus) {
        if spec.host_network {
            return; // host-networked pods are the host, not workload endpoints
        }
        let ns = namespace_of(r).unwrap_or_default();
        let sa = spec.service_account_name.clone().or_else(|| spec.service_account.clone()).unwrap_or_else(|| "default".into());
        let mut c = self.ctx(r);
        let mut ips = Vec::new();
        let mut ip_fields = Vec::new();
        let mut seen = BTreeSet::new();
        let listed = status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_string(), ip))
            .chain(status.pod_ips.iter().enumerate().map(|(i, p)| (format!("status.podIPs[{i}].ip"), &p.ip)));
        for (field, ip) in listed {
            match ip.parse::<IpAddr>() {
                Ok(a) => {
                    if seen.insert(a) {
                        ips.push(IpNet::from(a));
                        ip_fields.push(field);
                    }
                }
                Err(_) => c.err(&field, format!("{ip:?} is not an IP address")),
            }
        }
        let mut ports = Vec::new();
        for (ci, ctr) in spec.containers.iter().enumerate() {
            for (pi, p) in ctr.ports.iter().enumerate() {
                let f = format!("spec.containers[{ci}].ports[{pi}]");
                let Some(name) = &p.name else { continue };
                if let Some(np) = named_port(&mut c, &f, name, p.container_port, &NumOrString::Str(p.protocol.clone().unwrap_or("TCP".into()))) {
                    ports.push(np);
                }
            }
        }
        if ips.is_empty() {
            return; // not yet scheduled or no IP: not an active endpoint
        }
        let mut labels = m.labels.clone();
        labels.insert(LABEL_NAMESPACE.into(), ns.clone());
        labels.insert(LABEL_ORCHESTRATOR.into(), "k8s".into());
        labels.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
        self.push_endpoint(
            r,
            ip_fields,
            Some((ns.clone(), sa.clone())),
            Endpoint {
                name: format!("{ns}/{}", m.name),
                kind: EndpointKind::Workload,
                node: spec.node_name.clone(),
                interface: Some(workload_interface(&format!("{ns}/{}", m.name))),
                ips,
                labels,
                profiles: vec![format!("kns.{ns}"), format!("ksa.{ns}.{sa}")],
                ports,
            },
        );
    }

    fn workload_endpoint(&mut self, r: &Resource, m: &Metadata, spec: &WorkloadEndpointSpec) {
        let ns = namespace_of(r).unwrap_or_default();
        let mut c = self.ctx(r);
        let mut ips = Vec::new();
        let mut ip_fields = Vec::new();
        for (i, s) in spec.ip_networks.iter().enumerate() {
            let field = format!("spec.ipNetworks[{i}]");
            if let Some(n) = c.net(&field, s) {
                ips.push(n);
                ip_fields.push(field);
            }
        }
        let ports = endpoint_ports(&mut c, &spec.ports);
        let mut labels = m.labels.clone();
        labels.insert(LABEL_NAMESPACE.into(), ns.clone());
        if let Some(o) = &spec.orchestrator {
            labels.insert(LABEL_ORCHESTRATOR.into(), o.clone());
        }
        if let Some(sa) = &spec.service_account_name {
            labels.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
        }
        self.push_endpoint(
            r,
            ip_fields,
            None,
            Endpoint {
                name: format!("{ns}/{}", m.name),
                kind: EndpointKind::Workload,
                node: spec.node.clone(),
                interface: Some(spec.interface_name.clone().unwrap_or_else(|| workload_interface(&format!("{ns}/{}", m.name)))),
                ips,
                labels,
                profiles: spec.profiles.clone(),
                ports,
            },
        );
    }

    fn host_endpoint(&mut self, r: &Resource, m: &Metadata, spec: &HostEndpointSpec) {
        let mut c = self.ctx(r);
        if spec.interface_name.as_deref().unwrap_or("").is_empty() && spec.expected_ips.is_empty() {
            c.err("spec.interfaceName", "a HostEndpoint needs interfaceName or expectedIPs");
        }
        let mut ips = Vec::new();
        let mut ip_fields = Vec::new();
        for (i, s) in spec.expected_ips.iter().enumerate() {
            let field = format!("spec.expectedIPs[{i}]");
            match s.parse::<IpAddr>() {
                Ok(a) => {
                    ips.push(IpNet::from(a));
                    ip_fields.push(field);
                }
                Err(_) => c.err(&field, format!("{s:?} is not an IP address")),
            }
        }
        let ports = endpoint_ports(&mut c, &spec.ports);
        self.push_endpoint(
            r,
            ip_fields,
            None,
            Endpoint {
                name: m.name.clone(),
                kind: EndpointKind::Host,
                node: spec.node.clone(),
                interface: spec.interface_name.clone(),
                ips,
                labels: m.labels.clone(),
                profiles: spec.profiles.clone(),
                ports,
            },
        );
    }

    /// Adds an endpoint defined by `r`; `ip_fields` names the field of each of its addresses.
    fn push_endpoint(&mut self, r: &Resource, ip_fields: Vec<String>, service_account: Option<(String, String)>, ep: Endpoint) {
        self.endpoint_origins.push(EndpointOrigin { id: r.display_id(), file: self.current_file.clone(), ip_fields, service_account });
        self.endpoints.push(ep);
    }

    fn network_set(&mut self, r: &Resource, m: &Metadata, spec: &NetworkSetSpec) {
        let mut c = self.ctx(r);
        if spec.allowed_egress_domains.as_ref().is_some_and(|d| !d.is_empty()) {
            c.err("spec.allowedEgressDomains", "domain-based network sets are not supported by Palisade");
        }
        let nets = c.nets("spec.nets", &Some(spec.nets.clone()));
        let mut labels = m.labels.clone();
        let name = match namespace_of(r) {
            Some(ns) => {
                labels.insert(LABEL_NAMESPACE.into(), ns.clone());
                // Namespaced network sets inherit the namespace profile's labels, as in Felix.
                if let Some(ns_labels) = self.namespaces.get(&ns) {
                    for (k, v) in namespace_profile_labels(&ns, ns_labels) {
                        labels.entry(k).or_insert(v);
                    }
                }
                format!("{ns}/{}", m.name)
            }
            None => m.name.clone(),
        };
        self.network_sets.push(NetworkSet { name, labels, nets });
    }

    fn tier(&mut self, r: &Resource, m: &Metadata, spec: &TierSpec) {
        let mut c = self.ctx(r);
        let order = order(&mut c, spec.order);
        let default_action = match spec.default_action.as_deref() {
            None | Some("Deny") => TierDefault::Deny,
            Some("Pass") => TierDefault::Pass,
            Some(other) => {
                c.err("spec.defaultAction", format!("unknown default action {other:?} (use Deny or Pass)"));
                TierDefault::Deny
            }
        };
        if m.name == "default" && order.is_some_and(|o| o != DEFAULT_TIER_ORDER) {
            c.err("spec.order", format!("the default tier's order is fixed at {DEFAULT_TIER_ORDER}"));
        }
        let order = if m.name == "default" { Some(DEFAULT_TIER_ORDER) } else { order };
        self.tiers.push(Tier { name: m.name.clone(), order, default_action });
    }

    fn profile(&mut self, r: &Resource, m: &Metadata, spec: &ProfileSpec) {
        let mut c = self.ctx(r);
        if m.name.starts_with("kns.") || m.name.starts_with("ksa.") {
            c.err("metadata.name", "profile names starting kns. or ksa. are reserved for Kubernetes namespaces and service accounts");
        }
        let ingress = rules(&mut c, "spec.ingress", &spec.ingress).into_iter().map(|r| scope_rule(r, None)).collect();
        let egress = rules(&mut c, "spec.egress", &spec.egress).into_iter().map(|r| scope_rule(r, None)).collect();
        let labels = spec.labels_to_apply.clone().unwrap_or_default();
        self.user_profiles.push(Profile { name: m.name.clone(), ingress, egress, labels });
    }

    fn calico_policy(&mut self, r: &Resource, m: &Metadata, spec: &CalicoPolicySpec, kind: PolicyKind) {
        let namespaced = matches!(kind, PolicyKind::NetworkPolicy | PolicyKind::StagedNetworkPolicy);
        let ns = namespaced.then(|| namespace_of(r).unwrap_or_default());
        let file = self.current_file.clone();
        let mut c = self.ctx(r);
        let order = order(&mut c, spec.order);
        let tier = spec.tier.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| "default".into());
        let user_sel = c.selector("spec.selector", &spec.selector);
        let ns_sel = c.selector("spec.namespaceSelector", &spec.namespace_selector);
        let sa_sel = c.selector("spec.serviceAccountSelector", &spec.service_account_selector);
        if namespaced {
            for (set, f) in [
                (ns_sel.is_some(), "spec.namespaceSelector"),
                (spec.do_not_track, "spec.doNotTrack"),
                (spec.pre_dnat, "spec.preDNAT"),
                (spec.apply_on_forward, "spec.applyOnForward"),
            ] {
                if set {
                    c.err(f, "only GlobalNetworkPolicy has this field");
                }
            }
        }
        let ingress = rules(&mut c, "spec.ingress", &spec.ingress);
        let egress = rules(&mut c, "spec.egress", &spec.egress);
        let (applies_ingress, applies_egress) =
            types(&mut c, &spec.types, spec.ingress.as_ref().map_or(0, Vec::len), spec.egress.as_ref().map_or(0, Vec::len));
        if spec.pre_dnat {
            if spec.do_not_track {
                c.err("spec.preDNAT", "preDNAT and doNotTrack cannot both be set");
            }
            if !spec.egress.as_deref().unwrap_or_default().is_empty() || applies_egress {
                c.err("spec.egress", "preDNAT policies apply to ingress only");
            }
        }
        if (spec.pre_dnat || spec.do_not_track) && !spec.apply_on_forward {
            c.err("spec.applyOnForward", "preDNAT and doNotTrack policies need applyOnForward: true");
        }
        let Some(staged_action) = staged_action(&mut c, kind, &spec.staged_action) else { return };
        // Policy selector, as libcalico-go's update processors build it.
        let selector = match &ns {
            Some(ns) => {
                let base = match user_sel {
                    Some(s) => Selector::And(vec![s, ns_label_selector(ns)]),
                    None => ns_label_selector(ns),
                };
                match sa_sel {
                    Some(sa) => Selector::And(vec![base, sa.with_key_prefix(SERVICE_ACCOUNT_LABEL_PREFIX)]),
                    None => base,
                }
            }
            None => {
                let mut sel = user_sel;
                let append = |cur: Option<Selector>, s: Selector| {
                    Some(match cur {
                        Some(c) => Selector::And(vec![c, s]),
                        None => s,
                    })
                };
                if let Some(n) = ns_sel {
                    sel = append(sel, n.with_key_prefix(NAMESPACE_LABEL_PREFIX))
                        .map(|s| s.replace_all_global(&Selector::Has(LABEL_NAMESPACE.into()), &Selector::Global));
                }
                if let Some(sa) = sa_sel {
                    sel = append(sel, sa.with_key_prefix(SERVICE_ACCOUNT_LABEL_PREFIX))
                        .map(|s| s.replace_all_global(&Selector::Has(LABEL_SERVICE_ACCOUNT.into()), &Selector::Global));
                }
                sel.unwrap_or(Selector::All)
            }
        };
        let base_name = match &ns {
            Some(ns) => format!("{ns}/{}", m.name),
            None => m.name.clone(),
        };
        let name = if kind.is_staged() { format!("staged:{base_name}") } else { base_name };
        let scope = ns.as_deref();
        self.tier_refs.push((tier.clone(), r.display_id(), file));
        self.policies.push(Arc::new(Policy {
            name,
            kind,
            namespace: ns.clone(),
            tier,
            order,
            selector,
            applies_ingress,
            applies_egress,
            ingress: ingress.into_iter().map(|r| scope_rule(r, scope)).collect(),
            egress: egress.into_iter().map(|r| scope_rule(r, scope)).collect(),
            do_not_track: spec.do_not_track,
            pre_dnat: spec.pre_dnat,
            apply_on_forward: spec.apply_on_forward || namespaced,
            staged_action,
        }));
    }

    fn k8s_policy(&mut self, r: &Resource, m: &Metadata, spec: &K8sNetworkPolicySpec, kind: PolicyKind) {
        let ns = namespace_of(r).unwrap_or_default();
        let mut c = self.ctx(r);
        let Some(staged_action) = staged_action(&mut c, kind, &spec.staged_action) else { return };
        let pod_sel = match &spec.pod_selector {
            Some(s) => k8s_selector(&mut c, "spec.podSelector", s),
            None => {
                c.err("spec.podSelector", "missing (use {} to select every pod in the namespace)");
                Selector::All
            }
        };
        // The API server's defaulting: Ingress always, Egress when there are egress rules.
        let (mut applies_ingress, mut applies_egress) = (false, false);
        match spec.policy_types.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, t) in list.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => applies_ingress = true,
                        "Egress" => applies_egress = true,
                        other => c.err(&format!("spec.policyTypes[{i}]"), format!("unknown policy type {other:?} (use Ingress or Egress)")),
                    }
                }
            }
            _ => {
                applies_ingress = true;
                applies_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }
        let mut ingress = Vec::new();
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            ingress.extend(k8s_rules(&mut c, &format!("spec.ingress[{i}]"), &rule.from, &rule.ports, true));
        }
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            egress.extend(k8s_rules(&mut c, &format!("spec.egress[{i}]"), &rule.to, &rule.ports, false));
        }
        let selector = Selector::And(vec![orchestrator_k8s().and(pod_sel), ns_label_selector(&ns)]);
        let name = format!("{ns}/knp.default.{}", m.name);
        self.policies.push(Arc::new(Policy {
            name: if kind.is_staged() { format!("staged:{name}") } else { name },
            kind,
            namespace: Some(ns.clone()),
            tier: "default".into(),
            order: Some(K8S_POLICY_ORDER),
            selector,
            applies_ingress,
            applies_egress,
            ingress: ingress.into_iter().map(|r| scope_rule(r, Some(&ns))).collect(),
            egress: egress.into_iter().map(|r| scope_rule(r, Some(&ns))).collect(),
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: true,
            staged_action,
        }));
    }

    fn finish(mut self) -> Result<Cluster, Vec<Error>> {
        // Tiers: `default` always exists.
        if !self.tiers.iter().any(|t| t.name == "default") {
            self.tiers.push(Tier { name: "default".into(), order: Some(DEFAULT_TIER_ORDER), default_action: TierDefault::Deny });
        }
        let tier_names: BTreeSet<&str> = self.tiers.iter().map(|t| t.name.as_str()).collect();
        for (tier, id, file) in &self.tier_refs {
            if !tier_names.contains(tier.as_str()) {
                let mut e = Error::field(id.clone(), "spec.tier", format!("tier {tier:?} does not exist (define a Tier resource)"));
                e.file = file.clone();
                self.errors.push(e);
            }
        }
        // Profiles: generated for namespaces and service accounts, then the user's.
        let mut profiles = BTreeMap::new();
        let allow_all = || Rule {
            action: Action::Allow,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: EntityMatch::default(),
            dst: EntityMatch::default(),
        };
        for (ns, labels) in &self.namespaces {
            let name = format!("kns.{ns}");
            profiles.insert(
                name.clone(),
                Profile { name, ingress: vec![allow_all()], egress: vec![allow_all()], labels: namespace_profile_labels(ns, labels) },
            );
        }
        // Every service account a pod runs as has a profile, declared or not.
        for sa in self.endpoint_origins.iter().filter_map(|o| o.service_account.clone()) {
            self.service_accounts.entry(sa).or_default();
        }
        for ((ns, sa), labels) in &self.service_accounts {
            let name = format!("ksa.{ns}.{sa}");
            let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{k}"), v.clone())).collect();
            l.insert(format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{LABEL_NAME}"), sa.clone());
            profiles.insert(name.clone(), Profile { name, ingress: vec![], egress: vec![], labels: l });
        }
        for p in self.user_profiles {
            profiles.insert(p.name.clone(), p);
        }
        // Endpoints inherit their profiles' labels; their own labels win.
        for ep in &mut self.endpoints {
            for pname in &ep.profiles {
                if let Some(p) = profiles.get(pname) {
                    for (k, v) in &p.labels {
                        if !ep.labels.contains_key(k) {
                            ep.labels.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        // One address, one endpoint.
        let mut owner: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (ep, origin) in self.endpoints.iter().zip(&self.endpoint_origins) {
            for (n, field) in ep.ips.iter().zip(&origin.ip_fields) {
                if n.prefix_len() == n.max_prefix_len() {
                    if let Some(other) = owner.insert(n.addr(), &origin.id) {
                        let mut e = Error::field(origin.id.clone(), field.clone(), format!("address {} is also used by {other}", n.addr()));
                        e.file = origin.file.clone();
                        self.errors.push(e);
                    }
                }
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let key = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
        self.tiers.sort_by(|a, b| key(a.order).total_cmp(&key(b.order)).then_with(|| a.name.cmp(&b.name)));
        let tier_pos: BTreeMap<String, usize> = self.tiers.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        self.policies
            .sort_by(|a, b| tier_pos[&a.tier].cmp(&tier_pos[&b.tier]).then(key(a.order).total_cmp(&key(b.order))).then_with(|| a.name.cmp(&b.name)));
        Ok(Cluster {
            tiers: self.tiers,
            policies: self.policies,
            profiles,
            endpoints: self.endpoints,
            network_sets: self.network_sets,
            namespaces: self.namespaces,
            service_accounts: self.service_accounts.into_iter().fold(BTreeMap::new(), |mut by_ns, ((ns, name), labels)| {
                by_ns.entry(ns).or_insert_with(BTreeMap::new).insert(name, labels);
                by_ns
            }),
        })
    }
}

/// The staged action of a policy: `Some(None)` for enforced kinds, `Some(Some(..))` for staged
/// ones that propose a change, `None` for staged ones that propose nothing (Learn, Ignore).
fn staged_action(c: &mut Ctx, kind: PolicyKind, field: &Option<String>) -> Option<Option<StagedAction>> {
    if !kind.is_staged() {
        if field.is_some() {
            c.err("spec.stagedAction", "only staged policies have this field");
        }
        return Some(None);
    }
    match field.as_deref() {
        None | Some("Set") => Some(Some(StagedAction::Set)),
        Some("Delete") => Some(Some(StagedAction::Delete)),
        Some("Learn") | Some("Ignore") => None,
        Some(other) => {
            c.err("spec.stagedAction", format!("unknown staged action {other:?} (use Set, Delete, Learn or Ignore)"));
            Some(None)
        }
    }
}

/// Labels the `kns.<namespace>` profile gives its endpoints: the namespace's labels under `pcns.`,
/// plus `pcns.projectcalico.org/name`.
fn namespace_profile_labels(ns: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone())).collect();
    l.insert(format!("{NAMESPACE_LABEL_PREFIX}{LABEL_NAME}"), ns.to_string());
    l
}

fn named_port(c: &mut Ctx, field: &str, name: &str, port: i64, protocol: &NumOrString) -> Option<NamedPort> {
    if !valid_port_name(name) {
        c.err(&format!("{field}.name"), format!("{name:?} is not a valid port name"));
        return None;
    }
    let port = match u16::try_from(port) {
        Ok(p) if p > 0 => p,
        _ => {
            c.err(&format!("{field}.port"), format!("port {port} is out of range 1-65535"));
            return None;
        }
    };
    match protocol_number(protocol) {
        Ok(p) if proto::has_ports(p) => Some(NamedPort { name: name.to_string(), protocol: p, port }),
        Ok(_) => {
            c.err(&format!("{field}.protocol"), "named ports must be TCP, UDP or SCTP");
            None
        }
        Err(m) => {
            c.err(&format!("{field}.protocol"), m);
            None
        }
    }
}

fn endpoint_ports(c: &mut Ctx, ports: &[EndpointPort]) -> Vec<NamedPort> {
    ports.iter().enumerate().filter_map(|(i, p)| named_port(c, &format!("spec.ports[{i}]"), &p.name, p.port, &p.protocol)).collect()
}

/// The namespace of a namespaced resource (`default` when unset); `None` for global kinds.
fn namespace_of(r: &Resource) -> Option<String> {
    namespace_ref(r).map(str::to_string)
}

/// [`namespace_of`], borrowed.
fn namespace_ref(r: &Resource) -> Option<&str> {
    r.is_namespaced().then(|| r.metadata().namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(yaml: &str) -> Vec<Arc<Loaded>> {
        let docs = crate::load::parse_str(yaml).expect("parses");
        docs.into_iter().map(|resource| Arc::new(Loaded { resource, file: None })).collect()
    }

    const POLICIES: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\nspec:\n  selector: all()\n  ingress: [{action: Deny, protocol: TCP, destination: {ports: [22]}}]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n  selector: app == 'web'\n  egress: [{action: Allow, destination: {selector: app == 'db'}}]\n";

    #[test]
    fn cached_builds_equal_fresh_ones_and_convert_only_new_resources() {
        let mut cache = ConversionCache::default();
        let first = loaded(POLICIES);
        let a = build_cluster_cached(&first, &mut cache).expect("builds");
        assert_eq!(a, build_cluster(&first).expect("builds"));
        // `b` edited: a new resource; `a` the same shared one.
        let mut second = vec![first[0].clone()];
        second.extend(loaded(&POLICIES.replace("app == 'db'", "app == 'cache'"))[1..].iter().cloned());
        let b = build_cluster_cached(&second, &mut cache).expect("builds");
        assert_eq!(b, build_cluster(&second).expect("builds"));
        let by_name = |c: &Cluster, n: &str| c.policies.iter().find(|p| p.name == n).expect("policy").clone();
        assert!(Arc::ptr_eq(&by_name(&a, "a"), &by_name(&b, "a")), "the unchanged policy is reused");
        assert!(!Arc::ptr_eq(&by_name(&a, "x/b"), &by_name(&b, "x/b")), "the edited policy is converted again");
        assert_ne!(by_name(&a, "x/b"), by_name(&b, "x/b"));
    }

    #[test]
    fn cached_errors_are_reported_again() {
        let mut cache = ConversionCache::default();
        let bad = loaded(&POLICIES.replace("app == 'web'", "app == ("));
        let first = build_cluster_cached(&bad, &mut cache).expect_err("refused");
        let second = build_cluster_cached(&bad, &mut cache).expect_err("refused again");
        assert_eq!(first, second);
        assert!(first[0].to_string().contains("spec.selector"), "{}", first[0]);
        // A tier that does not exist is found at the end of every build, cached or not.
        let tiered = loaded(&POLICIES.replace("metadata: {name: a}\nspec:\n", "metadata: {name: a}\nspec:\n  tier: missing\n"));
        for _ in 0..2 {
            let errs = build_cluster_cached(&tiered, &mut cache).expect_err("refused");
            assert!(errs.iter().any(|e| e.to_string().contains("tier \"missing\" does not exist")), "{errs:?}");
        }
    }
}
