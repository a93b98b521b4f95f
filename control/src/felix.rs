//! Felix's dataplane protocol over a node's view: [`diff`] turns one [`NodeView`] into the next
//! as `ToDataplane` payloads in dependency order, and a [`Receiver`] rebuilds the view from
//! them (staging a snapshot until `InSync`). The control plane streams what `diff` yields; the
//! agent, whether it follows a control plane or is driven by a Felix, applies what it receives.

use crate::proto::felix as fx;
use fx::to_dataplane::Payload;
use ipnet::IpNet;
use palisade_policy::calc::{ActivePolicy, ActiveProfile, EndpointView, NodeView, PolicyId, SetMatch, SetMembers, SetRule, TierInfo};
use palisade_policy::model::{parse_mac, proto as ipproto, Action, EndpointKind, IcmpMatch, PortRange, TierDefault};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// The orchestrator ID of workload endpoints.
const ORCHESTRATOR: &str = "k8s";
/// The endpoint ID of a workload's (only) interface.
const WORKLOAD_INTERFACE: &str = "eth0";

/// The payloads that turn `old` into `new`, in dependency order: IP sets, profiles, policies and
/// endpoints that are new or changed, then removed endpoints, policies, profiles and IP sets. A
/// receiver that applies any prefix of them holds a consistent view.
pub fn diff(old: &NodeView, new: &NodeView) -> Vec<Payload> {
    let mut out = Vec::new();
    let namespaces_differ = !Arc::ptr_eq(&old.namespaces, &new.namespaces) && old.namespaces != new.namespaces;
    let accounts_differ = !Arc::ptr_eq(&old.service_accounts, &new.service_accounts) && old.service_accounts != new.service_accounts;
    if namespaces_differ {
        for (name, labels) in new.namespaces.iter().filter(|(n, l)| old.namespaces.get(*n) != Some(*l)) {
            out.push(Payload::NamespaceUpdate(fx::NamespaceUpdate { id: Some(fx::NamespaceId { name: name.clone() }), labels: to_hash(labels) }));
        }
    }
    if accounts_differ {
        for (ns, name, labels) in accounts(&new.service_accounts).filter(|(ns, n, l)| account(&old.service_accounts, ns, n) != Some(*l)) {
            out.push(Payload::ServiceAccountUpdate(fx::ServiceAccountUpdate { id: Some(account_id(ns, name)), labels: to_hash(labels) }));
        }
    }
    for (id, members) in &new.ip_sets {
        match old.ip_sets.get(id) {
            None => out.push(Payload::IpsetUpdate(set_update(id, members))),
            Some(o) if Arc::ptr_eq(o, members) || o == members => {}
            Some(o) => out.push(Payload::IpsetDeltaUpdate(set_delta(id, o, members))),
        }
    }
    for (name, p) in changed(&old.profiles, &new.profiles) {
        out.push(Payload::ActiveProfileUpdate(fx::ActiveProfileUpdate {
            id: Some(fx::ProfileId { name: name.clone() }),
            profile: Some(profile_msg(p)),
        }));
    }
    for (id, p) in changed(&old.policies, &new.policies) {
        out.push(Payload::ActivePolicyUpdate(fx::ActivePolicyUpdate { id: Some(policy_id(id)), policy: Some(policy_msg(p)) }));
    }
    for (_, ep) in changed(&old.endpoints, &new.endpoints) {
        out.push(endpoint_update(ep));
    }
    for (name, ep) in old.endpoints.iter().filter(|(n, _)| !new.endpoints.contains_key(*n)) {
        out.push(match ep.kind {
            EndpointKind::Workload => Payload::WorkloadEndpointRemove(fx::WorkloadEndpointRemove { id: Some(workload_id(name)) }),
            EndpointKind::Host => Payload::HostEndpointRemove(fx::HostEndpointRemove { id: Some(fx::HostEndpointId { endpoint_id: name.clone() }) }),
        });
    }
    for id in old.policies.keys().filter(|k| !new.policies.contains_key(*k)) {
        out.push(Payload::ActivePolicyRemove(fx::ActivePolicyRemove { id: Some(policy_id(id)) }));
    }
    for name in old.profiles.keys().filter(|k| !new.profiles.contains_key(*k)) {
        out.push(Payload::ActiveProfileRemove(fx::ActiveProfileRemove { id: Some(fx::ProfileId { name: name.clone() }) }));
    }
    for id in old.ip_sets.keys().filter(|k| !new.ip_sets.contains_key(*k)) {
        out.push(Payload::IpsetRemove(fx::IpSetRemove { id: id.clone() }));
    }
    if accounts_differ {
        for (ns, name, _) in accounts(&old.service_accounts).filter(|(ns, n, _)| account(&new.service_accounts, ns, n).is_none()) {
            out.push(Payload::ServiceAccountRemove(fx::ServiceAccountRemove { id: Some(account_id(ns, name)) }));
        }
    }
    if namespaces_differ {
        for name in old.namespaces.keys().filter(|n| !new.namespaces.contains_key(*n)) {
            out.push(Payload::NamespaceRemove(fx::NamespaceRemove { id: Some(fx::NamespaceId { name: name.clone() }) }));
        }
    }
    out
}

/// Labels by namespace and name, as the view holds service accounts.
type Accounts = BTreeMap<String, BTreeMap<String, Labels>>;
type Labels = BTreeMap<String, String>;

/// Every service account: (namespace, name, labels).
fn accounts(a: &Accounts) -> impl Iterator<Item = (&String, &String, &Labels)> {
    a.iter().flat_map(|(ns, names)| names.iter().map(move |(n, l)| (ns, n, l)))
}

fn account<'a>(a: &'a Accounts, ns: &str, name: &str) -> Option<&'a Labels> {
    a.get(ns).and_then(|names| names.get(name))
}

fn account_id(ns: &str, name: &str) -> fx::ServiceAccountId {
    fx::ServiceAccountId { namespace: ns.to_string(), name: name.to_string() }
}

fn to_hash(labels: &Labels) -> std::collections::HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Entries of `new` that `old` lacks or holds differently.
fn changed<'a, K: Ord, V: PartialEq>(
    old: &'a std::collections::BTreeMap<K, Arc<V>>,
    new: &'a std::collections::BTreeMap<K, Arc<V>>,
) -> impl Iterator<Item = (&'a K, &'a V)> + 'a {
    new.iter().filter(move |(k, v)| old.get(*k).is_none_or(|o| !Arc::ptr_eq(o, v) && **o != ***v)).map(|(k, v)| (k, &**v))
}

fn member_strings(m: &SetMembers) -> Vec<String> {
    match m {
        SetMembers::Nets(nets) => nets.iter().map(|n| n.to_string()).collect(),
        SetMembers::NamedPorts(ports) => ports.iter().map(named_member).collect(),
    }
}

fn named_member(&(ip, protocol, port): &(IpAddr, u8, u16)) -> String {
    match ipproto::name(protocol) {
        Some(name) => format!("{ip},{}:{port}", name.to_ascii_lowercase()),
        None => format!("{ip},{protocol}:{port}"),
    }
}

fn set_update(id: &str, m: &SetMembers) -> fx::IpSetUpdate {
    let kind = match m {
        SetMembers::Nets(_) => fx::ip_set_update::IpSetType::Net,
        SetMembers::NamedPorts(_) => fx::ip_set_update::IpSetType::IpAndPort,
    };
    fx::IpSetUpdate { id: id.to_string(), members: member_strings(m), r#type: kind as i32 }
}

fn set_delta(id: &str, old: &SetMembers, new: &SetMembers) -> fx::IpSetDeltaUpdate {
    let (o, n): (BTreeSet<String>, BTreeSet<String>) = (member_strings(old).into_iter().collect(), member_strings(new).into_iter().collect());
    fx::IpSetDeltaUpdate {
        id: id.to_string(),
        added_members: n.difference(&o).cloned().collect(),
        removed_members: o.difference(&n).cloned().collect(),
    }
}

fn policy_id(id: &PolicyId) -> fx::PolicyId {
    fx::PolicyId { tier: id.tier.clone(), name: id.name.clone() }
}

/// The ID of the workload endpoint named `name` (`namespace/pod`): orchestrator `k8s`, endpoint `eth0`.
pub fn workload_id(name: &str) -> fx::WorkloadEndpointId {
    fx::WorkloadEndpointId { orchestrator_id: ORCHESTRATOR.into(), workload_id: name.to_string(), endpoint_id: WORKLOAD_INTERFACE.into() }
}

fn policy_msg(p: &ActivePolicy) -> fx::Policy {
    fx::Policy {
        namespace: p.namespace.clone().unwrap_or_default(),
        inbound_rules: p.inbound.iter().map(rule_msg).collect(),
        outbound_rules: p.outbound.iter().map(rule_msg).collect(),
        untracked: p.untracked,
        pre_dnat: p.pre_dnat,
        original_selector: String::new(),
    }
}

fn profile_msg(p: &ActiveProfile) -> fx::Profile {
    fx::Profile { inbound_rules: p.inbound.iter().map(rule_msg).collect(), outbound_rules: p.outbound.iter().map(rule_msg).collect() }
}

fn tiers_msg(tiers: &[TierInfo]) -> Vec<fx::TierInfo> {
    tiers
        .iter()
        .map(|t| fx::TierInfo {
            name: t.name.clone(),
            ingress_policies: t.ingress.clone(),
            egress_policies: t.egress.clone(),
            default_action: match t.default_action {
                TierDefault::Deny => "Deny".into(),
                TierDefault::Pass => "Pass".into(),
            },
        })
        .collect()
}

fn endpoint_update(ep: &EndpointView) -> Payload {
    let nets = |v6: bool| ep.ips.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(|n| n.to_string()).collect();
    let addrs = |v6: bool| ep.ips.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(|n| n.addr().to_string()).collect();
    match ep.kind {
        EndpointKind::Workload => {
            let mac = ep.mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")).unwrap_or_default();
            Payload::WorkloadEndpointUpdate(fx::WorkloadEndpointUpdate {
                id: Some(workload_id(&ep.name)),
                endpoint: Some(fx::WorkloadEndpoint {
                    state: "active".into(),
                    name: ep.interface.clone().unwrap_or_default(),
                    mac,
                    profile_ids: ep.profiles.clone(),
                    ipv4_nets: nets(false),
                    ipv6_nets: nets(true),
                    tiers: tiers_msg(&ep.tiers),
                }),
            })
        }
        EndpointKind::Host => Payload::HostEndpointUpdate(fx::HostEndpointUpdate {
            id: Some(fx::HostEndpointId { endpoint_id: ep.name.clone() }),
            endpoint: Some(fx::HostEndpoint {
                name: ep.interface.clone().unwrap_or_default(),
                profile_ids: ep.profiles.clone(),
                tiers: tiers_msg(&ep.tiers),
                untracked_tiers: tiers_msg(&ep.untracked_tiers),
                pre_dnat_tiers: tiers_msg(&ep.pre_dnat_tiers),
                forward_tiers: tiers_msg(&ep.forward_tiers),
                expected_ipv4_addrs: addrs(false),
                expected_ipv6_addrs: addrs(true),
            }),
        }),
    }
}

fn protocol_msg(p: Option<u8>) -> Option<fx::Protocol> {
    p.map(|n| fx::Protocol { number_or_name: Some(fx::protocol::NumberOrName::Number(n.into())) })
}

fn ports_msg(ports: &[PortRange]) -> Vec<fx::PortRange> {
    ports.iter().map(|r| fx::PortRange { first: r.first.into(), last: r.last.into() }).collect()
}

fn strings(nets: &[IpNet]) -> Vec<String> {
    nets.iter().map(|n| n.to_string()).collect()
}

fn rule_msg(r: &SetRule) -> fx::Rule {
    use fx::rule::{Icmp, NotIcmp};
    let icmp = |m: IcmpMatch| match m.code {
        Some(code) => (None, Some(fx::IcmpTypeAndCode { r#type: m.icmp_type.into(), code: code.into() })),
        None => (Some(i32::from(m.icmp_type)), None),
    };
    fx::Rule {
        action: match r.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Pass => "next-tier",
            Action::Log => "log",
        }
        .into(),
        ip_version: match r.ip_version {
            Some(4) => fx::IpVersion::Ipv4,
            Some(6) => fx::IpVersion::Ipv6,
            _ => fx::IpVersion::Any,
        } as i32,
        protocol: protocol_msg(r.protocol),
        src_net: strings(&r.src.nets),
        src_ports: ports_msg(&r.src.ports),
        src_named_port_ip_set_ids: r.src.named_port_sets.clone(),
        dst_net: strings(&r.dst.nets),
        dst_ports: ports_msg(&r.dst.ports),
        dst_named_port_ip_set_ids: r.dst.named_port_sets.clone(),
        icmp: r.icmp.map(|m| match icmp(m) {
            (Some(t), _) => Icmp::IcmpType(t),
            (_, tc) => Icmp::IcmpTypeCode(tc.expect("type and code")),
        }),
        src_ip_set_ids: r.src.ip_sets.clone(),
        dst_ip_set_ids: r.dst.ip_sets.clone(),
        dst_ip_port_set_ids: Vec::new(),
        not_protocol: protocol_msg(r.not_protocol),
        not_src_net: strings(&r.src.not_nets),
        not_src_ports: ports_msg(&r.src.not_ports),
        not_dst_net: strings(&r.dst.not_nets),
        not_dst_ports: ports_msg(&r.dst.not_ports),
        not_icmp: r.not_icmp.map(|m| match icmp(m) {
            (Some(t), _) => NotIcmp::NotIcmpType(t),
            (_, tc) => NotIcmp::NotIcmpTypeCode(tc.expect("type and code")),
        }),
        not_src_ip_set_ids: r.src.not_ip_sets.clone(),
        not_dst_ip_set_ids: r.dst.not_ip_sets.clone(),
        not_src_named_port_ip_set_ids: r.src.not_named_port_sets.clone(),
        not_dst_named_port_ip_set_ids: r.dst.not_named_port_sets.clone(),
        rule_id: String::new(),
    }
}

/// Rebuilds a node's view from `ToDataplane` messages: a snapshot is staged until `InSync`
/// (while the previous view stays the one to enforce), then every message changes the view.
/// A message that does not read (a bad address, an unknown action, a delta to an unknown set)
/// is refused whole with an error naming the item and field, and changes nothing.
#[derive(Debug, Default)]
pub struct Receiver {
    live: Option<NodeView>,
    staging: Option<NodeView>,
    /// The datastore revision of the last message applied to the live view.
    revision: i64,
    staged_revision: i64,
    /// Whether the live view changed since [`Receiver::take_changed`] was last called.
    changed: bool,
}

impl Receiver {
    /// A receiver waiting for its first snapshot.
    pub fn new() -> Self {
        Receiver { staging: Some(NodeView::default()), ..Receiver::default() }
    }

    /// A new stream begins: its snapshot is staged from scratch.
    pub fn restart(&mut self) {
        self.staging = Some(NodeView::default());
        self.staged_revision = 0;
    }

    /// The view to enforce (none before the first `InSync`).
    pub fn view(&self) -> Option<&NodeView> {
        self.live.as_ref()
    }

    /// The datastore revision the enforced view is complete at: the last one whose batch's final
    /// message was applied (0 when the sender sets none, as Felix does).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether the view is complete: a first snapshot arrived and no new one is being staged.
    pub fn in_sync(&self) -> bool {
        self.live.is_some() && self.staging.is_none()
    }

    /// Whether the view to enforce changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Applies one message.
    pub fn apply(&mut self, msg: fx::ToDataplane) -> Result<(), String> {
        let Some(payload) = msg.payload else { return Ok(()) };
        if let Payload::InSync(_) = payload {
            if let Some(view) = self.staging.take() {
                // A reconnection's snapshot is most often what the view already was.
                self.changed |= self.live.as_ref() != Some(&view);
                self.live = Some(view);
                self.revision = self.staged_revision.max(msg.palisade_revision);
            }
            return Ok(());
        }
        let view = match (&mut self.staging, &mut self.live) {
            (Some(v), _) => {
                self.staged_revision = self.staged_revision.max(msg.palisade_revision);
                v
            }
            (None, Some(v)) => {
                self.revision = self.revision.max(msg.palisade_revision);
                self.changed = true;
                v
            }
            (None, None) => unreachable!("a receiver always stages or holds a view"),
        };
        apply_payload(view, payload)
    }
}

fn apply_payload(view: &mut NodeView, payload: Payload) -> Result<(), String> {
    match payload {
        Payload::IpsetUpdate(u) => {
            let members = match fx::ip_set_update::IpSetType::try_from(u.r#type) {
                Ok(fx::ip_set_update::IpSetType::IpAndPort) => SetMembers::NamedPorts(read_all(&u.members, read_named_member, &u.id)?),
                _ => SetMembers::Nets(read_all(&u.members, read_net, &u.id)?),
            };
            view.ip_sets.insert(u.id, Arc::new(members));
        }
        Payload::IpsetDeltaUpdate(d) => {
            let old = view.ip_sets.get(&d.id).ok_or_else(|| format!("IP set {}: a delta for a set that was never sent", d.id))?;
            let members = match &**old {
                SetMembers::Nets(nets) => {
                    let mut nets = nets.clone();
                    for n in read_all(&d.removed_members, read_net, &d.id)? {
                        nets.remove(&n);
                    }
                    nets.extend(read_all(&d.added_members, read_net, &d.id)?);
                    SetMembers::Nets(nets)
                }
                SetMembers::NamedPorts(ports) => {
                    let mut ports = ports.clone();
                    for m in read_all(&d.removed_members, read_named_member, &d.id)? {
                        ports.remove(&m);
                    }
                    ports.extend(read_all(&d.added_members, read_named_member, &d.id)?);
                    SetMembers::NamedPorts(ports)
                }
            };
            view.ip_sets.insert(d.id, Arc::new(members));
        }
        Payload::IpsetRemove(r) => {
            view.ip_sets.remove(&r.id);
        }
        Payload::ActiveProfileUpdate(u) => {
            let name = u.id.map(|i| i.name).unwrap_or_default();
            let p = u.profile.unwrap_or_default();
            let at = format!("profile {name}");
            let profile = ActiveProfile {
                inbound: read_rules(&p.inbound_rules, &at, "inbound_rules")?,
                outbound: read_rules(&p.outbound_rules, &at, "outbound_rules")?,
            };
            view.profiles.insert(name, Arc::new(profile));
        }
        Payload::ActiveProfileRemove(r) => {
            view.profiles.remove(&r.id.map(|i| i.name).unwrap_or_default());
        }
        Payload::ActivePolicyUpdate(u) => {
            let id = u.id.unwrap_or_default();
            let p = u.policy.unwrap_or_default();
            let at = format!("policy {}/{}", id.tier, id.name);
            let policy = ActivePolicy {
                namespace: (!p.namespace.is_empty()).then_some(p.namespace),
                inbound: read_rules(&p.inbound_rules, &at, "inbound_rules")?,
                outbound: read_rules(&p.outbound_rules, &at, "outbound_rules")?,
                untracked: p.untracked,
                pre_dnat: p.pre_dnat,
            };
            view.policies.insert(PolicyId { tier: id.tier, name: id.name }, Arc::new(policy));
        }
        Payload::ActivePolicyRemove(r) => {
            let id = r.id.unwrap_or_default();
            view.policies.remove(&PolicyId { tier: id.tier, name: id.name });
        }
        Payload::WorkloadEndpointUpdate(u) => {
            let name = u.id.map(|i| i.workload_id).unwrap_or_default();
            let e = u.endpoint.unwrap_or_default();
            let at = format!("workload endpoint {name}");
            let ips = e
                .ipv4_nets
                .iter()
                .chain(&e.ipv6_nets)
                .map(|s| read_net(s).map_err(|m| format!("{at}: ipv4_nets/ipv6_nets: {m}")))
                .collect::<Result<_, _>>()?;
            let mac = match e.mac.as_str() {
                "" => None,
                m => Some(parse_mac(m).ok_or_else(|| format!("{at}: mac: {m:?} is not aa:bb:cc:dd:ee:ff"))?),
            };
            let ep = EndpointView {
                name: name.clone(),
                kind: EndpointKind::Workload,
                interface: (!e.name.is_empty()).then_some(e.name),
                ips,
                mac,
                profiles: e.profile_ids,
                tiers: read_tiers(&e.tiers, &at, "tiers")?,
                untracked_tiers: Vec::new(),
                pre_dnat_tiers: Vec::new(),
                forward_tiers: Vec::new(),
            };
            view.endpoints.insert(name, Arc::new(ep));
        }
        Payload::WorkloadEndpointRemove(r) => {
            view.endpoints.remove(&r.id.map(|i| i.workload_id).unwrap_or_default());
        }
        Payload::HostEndpointUpdate(u) => {
            let name = u.id.map(|i| i.endpoint_id).unwrap_or_default();
            let e = u.endpoint.unwrap_or_default();
            let at = format!("host endpoint {name}");
            let ips = e
                .expected_ipv4_addrs
                .iter()
                .chain(&e.expected_ipv6_addrs)
                .map(|s| read_net(s).map_err(|m| format!("{at}: expected_ipv4_addrs/expected_ipv6_addrs: {m}")))
                .collect::<Result<_, _>>()?;
            let ep = EndpointView {
                name: name.clone(),
                kind: EndpointKind::Host,
                interface: (!e.name.is_empty()).then_some(e.name),
                ips,
                mac: None,
                profiles: e.profile_ids,
                tiers: read_tiers(&e.tiers, &at, "tiers")?,
                untracked_tiers: read_tiers(&e.untracked_tiers, &at, "untracked_tiers")?,
                pre_dnat_tiers: read_tiers(&e.pre_dnat_tiers, &at, "pre_dnat_tiers")?,
                forward_tiers: read_tiers(&e.forward_tiers, &at, "forward_tiers")?,
            };
            view.endpoints.insert(name, Arc::new(ep));
        }
        Payload::HostEndpointRemove(r) => {
            view.endpoints.remove(&r.id.map(|i| i.endpoint_id).unwrap_or_default());
        }
        // Configuration, namespaces and service accounts carry nothing a view needs: selectors
        // arrive already resolved into IP sets.
        Payload::NamespaceUpdate(u) => {
            let name = u.id.ok_or("NamespaceUpdate without an id")?.name;
            Arc::make_mut(&mut view.namespaces).insert(name, u.labels.into_iter().collect());
        }
        Payload::NamespaceRemove(r) => {
            Arc::make_mut(&mut view.namespaces).remove(&r.id.ok_or("NamespaceRemove without an id")?.name);
        }
        Payload::ServiceAccountUpdate(u) => {
            let id = u.id.ok_or("ServiceAccountUpdate without an id")?;
            Arc::make_mut(&mut view.service_accounts).entry(id.namespace).or_default().insert(id.name, u.labels.into_iter().collect());
        }
        Payload::ServiceAccountRemove(r) => {
            let id = r.id.ok_or("ServiceAccountRemove without an id")?;
            let accounts = Arc::make_mut(&mut view.service_accounts);
            if let Some(names) = accounts.get_mut(&id.namespace) {
                names.remove(&id.name);
                if names.is_empty() {
                    accounts.remove(&id.namespace);
                }
            }
        }
        Payload::InSync(_) | Payload::ConfigUpdate(_) => {}
    }
    Ok(())
}

fn read_all<T: Ord>(members: &[String], read: fn(&str) -> Result<T, String>, set: &str) -> Result<BTreeSet<T>, String> {
    members.iter().map(|m| read(m).map_err(|e| format!("IP set {set}: member {m:?}: {e}"))).collect()
}

/// An address (as a host-length CIDR) or a CIDR.
fn read_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| "not an address or CIDR".to_string())
}

/// `address,protocol:port`.
fn read_named_member(s: &str) -> Result<(IpAddr, u8, u16), String> {
    let err = || "not <address>,<protocol>:<port>".to_string();
    let (ip, rest) = s.rsplit_once(',').ok_or_else(err)?;
    let (proto, port) = rest.split_once(':').ok_or_else(err)?;
    let protocol = ipproto::from_name(proto).or_else(|| proto.parse().ok()).ok_or_else(err)?;
    Ok((ip.parse().map_err(|_| err())?, protocol, port.parse().map_err(|_| err())?))
}

fn read_tiers(tiers: &[fx::TierInfo], at: &str, field: &str) -> Result<Vec<TierInfo>, String> {
    tiers
        .iter()
        .map(|t| {
            let default_action = match t.default_action.as_str() {
                "" | "Deny" | "deny" => TierDefault::Deny,
                "Pass" | "pass" => TierDefault::Pass,
                other => return Err(format!("{at}: {field}: tier {}: default_action {other:?} is not Deny or Pass", t.name)),
            };
            Ok(TierInfo { name: t.name.clone(), default_action, ingress: t.ingress_policies.clone(), egress: t.egress_policies.clone() })
        })
        .collect()
}

fn read_rules(rules: &[fx::Rule], at: &str, field: &str) -> Result<Vec<SetRule>, String> {
    rules.iter().enumerate().map(|(i, r)| read_rule(r).map_err(|e| format!("{at}: {field}[{i}]: {e}"))).collect()
}

fn read_rule(r: &fx::Rule) -> Result<SetRule, String> {
    use fx::rule::{Icmp, NotIcmp};
    if !r.dst_ip_port_set_ids.is_empty() {
        return Err("dst_ip_port_set_ids: service matches are not supported by this dataplane".into());
    }
    let action = match r.action.as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "next-tier" | "pass" => Action::Pass,
        "log" => Action::Log,
        other => return Err(format!("action {other:?} is not allow, deny, next-tier or log")),
    };
    let ip_version = match fx::IpVersion::try_from(r.ip_version) {
        Ok(fx::IpVersion::Ipv4) => Some(4),
        Ok(fx::IpVersion::Ipv6) => Some(6),
        Ok(fx::IpVersion::Any) => None,
        Err(_) => return Err(format!("ip_version {} is not 0, 4 or 6", r.ip_version)),
    };
    let icmp = |t: i32, c: Option<i32>, field: &str| -> Result<IcmpMatch, String> {
        let byte = |v: i32| u8::try_from(v).map_err(|_| format!("{field}: {v} is not 0..255"));
        Ok(IcmpMatch { icmp_type: byte(t)?, code: c.map(byte).transpose()? })
    };
    Ok(SetRule {
        action,
        ip_version,
        protocol: read_protocol(r.protocol.as_ref(), "protocol")?,
        not_protocol: read_protocol(r.not_protocol.as_ref(), "not_protocol")?,
        icmp: match &r.icmp {
            Some(Icmp::IcmpType(t)) => Some(icmp(*t, None, "icmp_type")?),
            Some(Icmp::IcmpTypeCode(tc)) => Some(icmp(tc.r#type, Some(tc.code), "icmp_type_code")?),
            None => None,
        },
        not_icmp: match &r.not_icmp {
            Some(NotIcmp::NotIcmpType(t)) => Some(icmp(*t, None, "not_icmp_type")?),
            Some(NotIcmp::NotIcmpTypeCode(tc)) => Some(icmp(tc.r#type, Some(tc.code), "not_icmp_type_code")?),
            None => None,
        },
        src: SetMatch {
            nets: read_nets(&r.src_net, "src_net")?,
            not_nets: read_nets(&r.not_src_net, "not_src_net")?,
            ports: read_ports(&r.src_ports, "src_ports")?,
            not_ports: read_ports(&r.not_src_ports, "not_src_ports")?,
            ip_sets: r.src_ip_set_ids.clone(),
            not_ip_sets: r.not_src_ip_set_ids.clone(),
            named_port_sets: r.src_named_port_ip_set_ids.clone(),
            not_named_port_sets: r.not_src_named_port_ip_set_ids.clone(),
        },
        dst: SetMatch {
            nets: read_nets(&r.dst_net, "dst_net")?,
            not_nets: read_nets(&r.not_dst_net, "not_dst_net")?,
            ports: read_ports(&r.dst_ports, "dst_ports")?,
            not_ports: read_ports(&r.not_dst_ports, "not_dst_ports")?,
            ip_sets: r.dst_ip_set_ids.clone(),
            not_ip_sets: r.not_dst_ip_set_ids.clone(),
            named_port_sets: r.dst_named_port_ip_set_ids.clone(),
            not_named_port_sets: r.not_dst_named_port_ip_set_ids.clone(),
        },
    })
}

fn read_protocol(p: Option<&fx::Protocol>, field: &str) -> Result<Option<u8>, String> {
    use fx::protocol::NumberOrName;
    match p.and_then(|p| p.number_or_name.as_ref()) {
        None => Ok(None),
        Some(NumberOrName::Number(n)) => u8::try_from(*n).map(Some).map_err(|_| format!("{field}: {n} is not 0..255")),
        Some(NumberOrName::Name(s)) => ipproto::from_name(s).map(Some).ok_or_else(|| format!("{field}: unknown protocol {s:?}")),
    }
}

fn read_nets(nets: &[String], field: &str) -> Result<Vec<IpNet>, String> {
    nets.iter().map(|s| read_net(s).map_err(|e| format!("{field}: {s:?}: {e}"))).collect()
}

fn read_ports(ports: &[fx::PortRange], field: &str) -> Result<Vec<PortRange>, String> {
    ports
        .iter()
        .map(|r| match (u16::try_from(r.first), u16::try_from(r.last)) {
            (Ok(first), Ok(last)) if first <= last => Ok(PortRange { first, last }),
            _ => Err(format!("{field}: {}-{} is not a port range", r.first, r.last)),
        })
        .collect()
}

/// Writes one message as Felix frames them on its driver pipes: its length as a little-endian
/// u64, then its protobuf bytes.
pub fn write_frame<M: prost::Message>(out: &mut impl std::io::Write, msg: &M) -> std::io::Result<()> {
    let bytes = msg.encode_to_vec();
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(&bytes)?;
    out.flush()
}

/// Reads one framed message (see [`write_frame`]); `None` at the end of the stream.
pub fn read_frame<M: prost::Message + Default>(input: &mut impl std::io::Read) -> std::io::Result<Option<M>> {
    let mut len = [0u8; 8];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u64::from_le_bytes(len);
    if len > 1 << 30 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes is more than 1 GiB")));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    M::decode(&buf[..]).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::convert::build_cluster;
    use palisade_policy::load::parse_str;

    fn view(yaml: &str, node: &str) -> NodeView {
        let loaded =
            parse_str(yaml).expect("parses").into_iter().map(|resource| palisade_policy::load::Loaded { resource, file: None }).collect::<Vec<_>>();
        NodeView::compute(&build_cluster(&loaded).expect("builds"), Some(node))
    }

    fn replay(r: &mut Receiver, payloads: Vec<Payload>, revision: i64) {
        for p in payloads {
            r.apply(fx::ToDataplane { sequence_number: 0, payload: Some(p), palisade_revision: revision }).expect("applies");
        }
    }

    const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod, labels: {app: web}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}\nstatus: {podIP: 10.0.0.1}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: prod, labels: {app: db}}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.2}\n---
apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: web-in}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'db'}, destination: {ports: [http]}}]\n";

    #[test]
    fn a_snapshot_and_deltas_rebuild_the_view() {
        let v1 = view(BASE, "n1");
        assert_eq!(v1.endpoints.keys().collect::<Vec<_>>(), ["prod/web"], "only the node's workloads");
        assert_eq!(v1.ip_sets.len(), 2, "the source selector's set and the named port's set: {:?}", v1.ip_sets);
        let mut r = Receiver::new();
        replay(&mut r, diff(&NodeView::default(), &v1), 7);
        assert!(r.view().is_none(), "nothing to enforce before InSync");
        replay(&mut r, vec![Payload::InSync(fx::InSync {})], 7);
        assert_eq!(r.view(), Some(&v1));
        assert_eq!(r.revision(), 7);

        // The db pod gets a second address: one IP-set delta, nothing else.
        let v2 = view(&BASE.replace("podIP: 10.0.0.2}", "podIPs: [{ip: 10.0.0.2}, {ip: 10.0.0.3}]}"), "n1");
        let d = diff(&v1, &v2);
        assert!(matches!(&d[..], [Payload::IpsetDeltaUpdate(u)] if u.added_members == ["10.0.0.3/32"] && u.removed_members.is_empty()), "{d:?}");
        replay(&mut r, d, 8);
        assert_eq!(r.view(), Some(&v2));

        // The policy goes: endpoint update first, then the policy and its sets leave.
        let v3 = view(BASE.split("---\napiVersion: projectcalico.org/v3").next().expect("base"), "n1");
        let d = diff(&v2, &v3);
        let kinds: Vec<&str> = d
            .iter()
            .map(|p| match p {
                Payload::WorkloadEndpointUpdate(_) => "endpoint",
                Payload::ActivePolicyRemove(_) => "policy-remove",
                Payload::IpsetRemove(_) => "set-remove",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["endpoint", "policy-remove", "set-remove", "set-remove"]);
        replay(&mut r, d, 9);
        assert_eq!(r.view(), Some(&v3));
        assert_eq!(r.revision(), 9);
    }

    #[test]
    fn namespaces_and_service_accounts_reach_every_node() {
        let with_account = format!("{BASE}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: api, namespace: prod, labels: {{role: api}}}}\n");
        let v1 = view(&with_account, "n2");
        let d = diff(&NodeView::default(), &v1);
        let namespaces: Vec<&fx::NamespaceUpdate> = d.iter().filter_map(|p| if let Payload::NamespaceUpdate(u) = p { Some(u) } else { None }).collect();
        assert_eq!(namespaces.len(), 1, "{d:?}");
        assert_eq!(namespaces[0].labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("prod"));
        let mut accounts: Vec<(String, Option<String>)> = d
            .iter()
            .filter_map(|p| if let Payload::ServiceAccountUpdate(u) = p { Some(u) } else { None })
            .map(|u| (u.id.as_ref().expect("id").name.clone(), u.labels.get("role").cloned()))
            .collect();
        accounts.sort();
        assert_eq!(accounts, [("api".to_string(), Some("api".to_string())), ("default".to_string(), None)], "declared, and the one pods run as");
        let mut r = Receiver::new();
        replay(&mut r, d, 1);
        replay(&mut r, vec![Payload::InSync(fx::InSync {})], 1);
        assert_eq!(r.view(), Some(&v1));
        // The namespace gets a label and the service account goes.
        let v2 = view(&BASE.replace("metadata: {name: prod}", "metadata: {name: prod, labels: {env: live}}"), "n2");
        let d = diff(&v1, &v2);
        assert!(d.iter().any(|p| matches!(p, Payload::NamespaceUpdate(u) if u.labels.get("env").map(String::as_str) == Some("live"))), "{d:?}");
        assert!(matches!(d.last(), Some(Payload::ServiceAccountRemove(r)) if r.id.as_ref().expect("id").name == "api"), "{d:?}");
        replay(&mut r, d, 2);
        assert_eq!(r.view(), Some(&v2));
    }

    #[test]
    fn a_bad_message_is_refused_whole() {
        let mut r = Receiver::new();
        replay(&mut r, vec![Payload::InSync(fx::InSync {})], 1);
        let bad = fx::ActivePolicyUpdate {
            id: Some(fx::PolicyId { tier: "default".into(), name: "p".into() }),
            policy: Some(fx::Policy {
                inbound_rules: vec![fx::Rule { action: "allow".into(), src_net: vec!["10.0.0.0/33".into()], ..Default::default() }],
                ..Default::default()
            }),
        };
        let err = r.apply(fx::ToDataplane { payload: Some(Payload::ActivePolicyUpdate(bad)), ..Default::default() }).expect_err("refused");
        assert!(err.contains("policy default/p") && err.contains("inbound_rules[0]") && err.contains("src_net"), "{err}");
        assert!(r.view().expect("live").policies.is_empty(), "nothing of it was applied");
        let delta = fx::IpSetDeltaUpdate { id: "s:nope".into(), added_members: vec!["10.0.0.1".into()], removed_members: vec![] };
        assert!(r.apply(fx::ToDataplane { payload: Some(Payload::IpsetDeltaUpdate(delta)), ..Default::default() }).is_err());
    }
}
