//! The policy compiler: a node's view (see `palisade_policy::calc`) → one classifier per
//! endpoint and direction.
//!
//! Each endpoint-direction's chain (untracked, pre-DNAT and normal tiers, their policies and
//! rules, the end-of-tier defaults, then the profiles) is laid out as one ordered list of entries.
//! Allow, Deny and Pass rules, every tier's default Deny and a final "no profile allowed it" are
//! *terminal* entries, found by a first-match lookup in a [`TreeClassifier`]; a Pass restarts the
//! lookup at the end of its tier (or profile). Log rules and staged-policy rules are *side*
//! entries: all of them that match are collected and kept if they come before the decision and
//! outside the parts a Pass skipped. The result equals the reference evaluator's, rule for rule;
//! the property tests check that.
//!
//! Rules refer to the view's IP sets by ID: each becomes a shared [`IpSet`] or [`NamedPortSet`],
//! checked when a candidate rule is reached, so a change of members recompiles nothing. Endpoints whose chains
//! are the same share one compiled [`Program`].

use crate::classifier::tree::{Intervals, Key, TreeClassifier, TreeRule, FIELDS};
use crate::ipset::{v4_range, v6_range, IpSet, IpSetMembers, NamedPortSet, Ranges};
use ipnet::IpNet;
use palisade_policy::calc::{EndpointView, NodeView, SetMatch, SetMembers, SetRule, TierInfo};
use palisade_policy::eval::{Decision, Flow, RuleRef};
use palisade_policy::model::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// What an entry of a program is.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryKind {
    /// A policy or profile rule.
    Rule(RuleRef),
    /// A tier's default Deny.
    TierEnd {
        /// The tier.
        tier: String,
    },
    /// Nothing allowed the flow.
    NoProfileMatch,
    /// Nothing decided in an untracked or pre-DNAT chain: the next chain decides.
    FallThrough,
    /// No `applyOnForward` policy applies to forwarded traffic: allowed.
    NoForwardPolicy,
}

#[derive(Clone, Debug)]
struct Entry {
    kind: EntryKind,
    /// First entry after this entry's tier or profile (where a Pass continues).
    segment_end: u32,
    /// For staged rules: the policy they belong to (its matches stop at its first terminal rule).
    staged_group: Option<u32>,
}

/// Checks on an address and port that the tree cannot see: selector and named-port sets.
#[derive(Clone, Debug, Default)]
struct SideChecks {
    /// Sets that must all contain the address.
    sets: Vec<Arc<IpSet>>,
    /// Sets none of which may contain it.
    not_sets: Vec<Arc<IpSet>>,
    /// Numeric ranges OR these named ports (only when the rule has named ports).
    named: Option<(Vec<PortRange>, Vec<Arc<NamedPortSet>>)>,
    not_named: Vec<Arc<NamedPortSet>>,
}

impl SideChecks {
    fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.not_sets.is_empty() && self.named.is_none() && self.not_named.is_empty()
    }

    #[inline]
    fn accept(&self, ip: IpAddr, protocol: u8, port: u16) -> bool {
        self.sets.iter().all(|s| s.contains(ip))
            && !self.not_sets.iter().any(|s| s.contains(ip))
            && self
                .named
                .as_ref()
                .is_none_or(|(ranges, sets)| ranges.iter().any(|r| r.contains(port)) || sets.iter().any(|s| s.contains(ip, protocol, port)))
            && !self.not_named.iter().any(|s| s.contains(ip, protocol, port))
    }
}

#[derive(Clone, Debug, Default)]
struct Checks {
    src: SideChecks,
    dst: SideChecks,
}

impl Checks {
    #[inline]
    fn accept(&self, flow: &Flow) -> bool {
        self.src.accept(flow.src, flow.protocol, flow.src_port) && self.dst.accept(flow.dst, flow.protocol, flow.dst_port)
    }
}

/// The compiled rules of one IP version.
#[derive(Clone, Debug)]
struct VersionClassifier<K> {
    terminal: TreeClassifier<K>,
    /// Log and staged rules (all that match count).
    side: TreeClassifier<K>,
}

/// The result of classifying a flow for one endpoint and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// Whether the flow is allowed.
    pub allowed: bool,
    /// The deciding entry.
    pub decided_by: u32,
    /// Log, Pass and staged entries matched on the way, in order.
    pub matched: Vec<u32>,
}

/// The compiled classifier of one endpoint and direction.
#[derive(Debug)]
pub struct Program {
    entries: Vec<Entry>,
    checks: Vec<Option<Box<Checks>>>,
    v4: VersionClassifier<u32>,
    v6: VersionClassifier<u128>,
}

/// The classification key: source, destination, protocol, source port, destination port; ICMP
/// type and code travel in the destination port as `type << 8 | code`.
fn ports_of(flow: &Flow) -> (u16, u16) {
    match flow.protocol {
        proto::ICMP | proto::ICMPV6 => (0, (u16::from(flow.icmp_type.unwrap_or(0)) << 8) | u16::from(flow.icmp_code.unwrap_or(0))),
        _ => (flow.src_port, flow.dst_port),
    }
}

impl Program {
    /// Classifies a flow (the first packet of a connection).
    pub fn classify(&self, flow: &Flow) -> Classification {
        let (sp, dp) = ports_of(flow);
        match (flow.src, flow.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.run(&self.v4, &[u32::from(s), u32::from(d), flow.protocol.into(), sp.into(), dp.into()], flow),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.run(&self.v6, &[u128::from(s), u128::from(d), flow.protocol.into(), sp.into(), dp.into()], flow),
            _ => Classification { allowed: false, decided_by: (self.entries.len() - 1) as u32, matched: Vec::new() },
        }
    }

    fn accept(&self, entry: u32, flow: &Flow) -> bool {
        self.checks[entry as usize].as_ref().is_none_or(|c| c.accept(flow))
    }

    fn run<K: Key>(&self, vc: &VersionClassifier<K>, key: &[K; FIELDS], flow: &Flow) -> Classification {
        let mut from = 0u32;
        let mut passes: Vec<u32> = Vec::new();
        let mut skipped: Vec<(u32, u32)> = Vec::new();
        let decided = loop {
            let e = vc.terminal.lookup(key, from, |e| self.accept(e, flow)).expect("the final no-profile-match entry matches everything");
            let entry = &self.entries[e as usize];
            match &entry.kind {
                EntryKind::Rule(r) if r.action == Action::Pass => {
                    passes.push(e);
                    skipped.push((e + 1, entry.segment_end));
                    from = entry.segment_end;
                }
                _ => break e,
            }
        };
        let allowed = match &self.entries[decided as usize].kind {
            EntryKind::Rule(r) => r.action == Action::Allow,
            EntryKind::NoForwardPolicy => true,
            EntryKind::TierEnd { .. } | EntryKind::NoProfileMatch | EntryKind::FallThrough => false,
        };
        let mut matched = passes;
        if !vc.side.is_empty() {
            let mut stopped_groups: Vec<u32> = Vec::new();
            for e in vc.side.all_matches(key, decided, |e| self.accept(e, flow)) {
                if skipped.iter().any(|&(a, b)| a <= e && e < b) {
                    continue;
                }
                let entry = &self.entries[e as usize];
                if let Some(g) = entry.staged_group {
                    if stopped_groups.contains(&g) {
                        continue;
                    }
                    if matches!(&entry.kind, EntryKind::Rule(r) if r.action != Action::Log) {
                        stopped_groups.push(g);
                    }
                }
                matched.push(e);
            }
            matched.sort_unstable();
        }
        Classification { allowed, decided_by: decided, matched }
    }

    /// The deciding rule or default of a classification, in the evaluator's terms.
    pub fn decision(&self, c: &Classification) -> Decision {
        match &self.entries[c.decided_by as usize].kind {
            EntryKind::Rule(r) if r.tier.is_some() => Decision::Rule(r.clone()),
            EntryKind::Rule(r) => Decision::Profile(r.clone()),
            EntryKind::TierEnd { tier } => Decision::TierDefault { tier: tier.clone() },
            EntryKind::NoProfileMatch => Decision::NoProfileMatch,
            EntryKind::FallThrough => Decision::FallThrough,
            EntryKind::NoForwardPolicy => Decision::NoForwardPolicy,
        }
    }

    /// Whether a classification left the decision to the next chain (untracked and pre-DNAT).
    pub fn fell_through(&self, c: &Classification) -> bool {
        matches!(self.entries[c.decided_by as usize].kind, EntryKind::FallThrough)
    }

    /// The matched Log, Pass and staged rules of a classification, in the evaluator's terms.
    pub fn matched(&self, c: &Classification) -> Vec<RuleRef> {
        self.matched_rules(c).cloned().collect()
    }

    /// [`Program::matched`] without copies, for the packet path.
    pub fn matched_rules<'a>(&'a self, c: &'a Classification) -> impl Iterator<Item = &'a RuleRef> + 'a {
        c.matched.iter().filter_map(|&e| match &self.entries[e as usize].kind {
            EntryKind::Rule(r) => Some(r),
            _ => None,
        })
    }

    /// Number of entries (rules and defaults).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the program has no entries (never: the final default is always there).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Approximate heap memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.v4.terminal.memory_bytes()
            + self.v4.side.memory_bytes()
            + self.v6.terminal.memory_bytes()
            + self.v6.side.memory_bytes()
            + self.entries.len() * std::mem::size_of::<Entry>()
    }
}

/// Compiles node views into programs, sharing sets and identical chains.
#[derive(Default)]
pub struct Compiler {
    /// Selector sets by ID, with the members they were last given.
    ip_sets: HashMap<String, (Arc<SetMembers>, Arc<IpSet>)>,
    /// Named-port sets by ID, likewise.
    named_sets: HashMap<String, (Arc<SetMembers>, Arc<NamedPortSet>)>,
    /// Compiled programs by chain signature, with the last compile cycle that used them.
    programs: HashMap<Vec<String>, (Arc<Program>, u64)>,
    /// Compile cycles ([`Compiler::compile`] calls) so far.
    cycle: u64,
    /// Programs that use a changed policy or profile (named in the set), kept to be patched: a
    /// chain with the same signature has the same layout, so only the changed rules are replaced.
    stale: HashMap<Vec<String>, (Arc<Program>, Arc<HashSet<String>>)>,
    /// The cycle in which `stale` was set aside.
    stale_cycle: u64,
}

/// The programs of every endpoint, by endpoint name and direction.
pub type Programs = HashMap<(String, Direction), Arc<Program>>;

impl Compiler {
    /// A compiler with no cached sets or programs.
    pub fn new() -> Self {
        Compiler::default()
    }

    /// Compiles both directions of every endpoint of `view`. Programs of chains compiled by the
    /// last call (or by [`Compiler::compile_host`] since) are reused, and programs set aside by
    /// [`Compiler::invalidate`] patched; sets whose members changed are updated in place.
    pub fn compile(&mut self, view: &NodeView) -> Programs {
        self.cycle += 1;
        let cycle = self.cycle;
        self.programs.retain(|_, (_, used)| *used + 1 >= cycle);
        self.refresh_sets(view);
        let mut out = HashMap::new();
        for ep in view.endpoints.values() {
            for dir in [Direction::Ingress, Direction::Egress] {
                out.insert((ep.name.clone(), dir), self.program(&Chain::of(view, ep, dir)));
            }
        }
        out
    }

    /// Compiles one chain of a host endpoint, sharing a program with any endpoint whose chain is
    /// the same. Call after [`Compiler::compile`] for the same view (which refreshes the sets).
    pub fn compile_host(&mut self, view: &NodeView, ep: &EndpointView, chain: HostChain) -> Arc<Program> {
        self.program(&Chain::of_host(view, ep, chain))
    }

    /// The program of `chain`: compiled before, patched from a set-aside one, or new.
    fn program(&mut self, chain: &Chain<'_>) -> Arc<Program> {
        let sig = chain.signature();
        if let Some((p, used)) = self.programs.get_mut(&sig) {
            *used = self.cycle;
            return p.clone();
        }
        let p = match self.stale.get(&sig).cloned() {
            Some((old, changed)) => Arc::new(self.patch(&old, chain, &changed)),
            None => Arc::new(self.build(chain)),
        };
        self.programs.insert(sig, (p.clone(), self.cycle));
        p
    }

    /// Prepares for compiling `new` after `old`: forgets the programs that use a policy or profile
    /// that is new or differs, so the next [`compile`](Self::compile) rebuilds only those and
    /// reuses the rest.
    pub fn forget_changed(&mut self, old: &NodeView, new: &NodeView) {
        let mut changed: Vec<String> =
            new.policies.iter().filter(|(id, p)| differs(old.policies.get(*id), p)).map(|(id, _)| id.name.clone()).collect();
        changed.extend(new.profiles.iter().filter(|(name, p)| differs(old.profiles.get(*name), p)).map(|(n, _)| n.clone()));
        if !changed.is_empty() {
            self.invalidate(&changed);
        }
    }

    /// Sets aside compiled programs that use any of these policies or profiles (whose rules
    /// changed): the next compile of the same chain replaces only those rules in a copy.
    pub fn invalidate(&mut self, names: &[String]) {
        if self.stale_cycle != self.cycle {
            // Set aside before the last compile: later changes are not patched into these.
            self.stale.clear();
            self.stale_cycle = self.cycle;
        }
        let suffixes: Vec<String> = names.iter().map(|n| format!("|{n}")).collect();
        let changed = Arc::new(names.iter().cloned().collect::<HashSet<String>>());
        let uses = |sig: &Vec<String>| sig.iter().any(|s| suffixes.iter().any(|n| s.ends_with(n.as_str())));
        let affected: Vec<Vec<String>> = self.programs.keys().filter(|sig| uses(sig)).cloned().collect();
        for sig in affected {
            let (program, _) = self.programs.remove(&sig).expect("listed");
            self.stale.insert(sig, (program, changed.clone()));
        }
        // Set aside by an earlier call since the last compile: both changes are patched.
        for (_, (_, earlier)) in self.stale.iter_mut().filter(|(sig, _)| uses(sig)) {
            if !Arc::ptr_eq(earlier, &changed) {
                *earlier = Arc::new(earlier.union(&changed).cloned().collect());
            }
        }
    }

    /// Gives every set of `view` its members (only sets whose members are a new value are
    /// touched) and forgets sets the view no longer has.
    fn refresh_sets(&mut self, view: &NodeView) {
        self.ip_sets.retain(|id, _| view.ip_sets.contains_key(id));
        self.named_sets.retain(|id, _| view.ip_sets.contains_key(id));
        for (id, members) in &view.ip_sets {
            match &**members {
                SetMembers::Nets(nets) => {
                    let (seen, set) = self.ip_sets.entry(id.clone()).or_insert_with(unseen);
                    if !Arc::ptr_eq(seen, members) {
                        set.set(IpSetMembers::from_nets(nets));
                        *seen = members.clone();
                    }
                }
                SetMembers::NamedPorts(ports) => {
                    let (seen, set) = self.named_sets.entry(id.clone()).or_insert_with(unseen);
                    if !Arc::ptr_eq(seen, members) {
                        set.set(ports.iter().copied().collect());
                        *seen = members.clone();
                    }
                }
            }
        }
    }

    /// A selector set by ID (empty until the view gives it members).
    fn ip_set(&mut self, id: &str) -> Arc<IpSet> {
        self.ip_sets.entry(id.to_string()).or_insert_with(unseen).1.clone()
    }

    /// A named-port set by ID (empty until the view gives it members).
    fn named_set(&mut self, id: &str) -> Arc<NamedPortSet> {
        self.named_sets.entry(id.to_string()).or_insert_with(unseen).1.clone()
    }

    fn side_checks(&mut self, m: &SetMatch) -> SideChecks {
        let named = (!m.named_port_sets.is_empty()).then(|| (m.ports.clone(), m.named_port_sets.iter().map(|id| self.named_set(id)).collect()));
        SideChecks {
            sets: m.ip_sets.iter().map(|id| self.ip_set(id)).collect(),
            not_sets: m.not_ip_sets.iter().map(|id| self.ip_set(id)).collect(),
            named,
            not_named: m.not_named_port_sets.iter().map(|id| self.named_set(id)).collect(),
        }
    }

    fn build(&mut self, chain: &Chain<'_>) -> Program {
        let mut entries = Vec::new();
        let mut checks = Vec::new();
        let mut v4 = (Vec::new(), Vec::new());
        let mut v6 = (Vec::new(), Vec::new());
        let mut group = 0u32;
        for seg in &chain.segments {
            let start = entries.len();
            for (policy, tier, rules, staged) in &seg.parts {
                group += 1;
                for (i, rule) in rules.iter().enumerate() {
                    let c = self.rule(entries.len() as u32, (tier, policy, i, *staged), rule, group);
                    entries.push(c.entry);
                    checks.push(c.checks);
                    if let Some(r) = c.v4 {
                        if c.terminal { &mut v4.0 } else { &mut v4.1 }.push(r);
                    }
                    if let Some(r) = c.v6 {
                        if c.terminal { &mut v6.0 } else { &mut v6.1 }.push(r);
                    }
                }
            }
            if let Some(tier) = &seg.default_deny {
                let e = entries.len() as u32;
                entries.push(Entry { kind: EntryKind::TierEnd { tier: tier.clone() }, segment_end: 0, staged_group: None });
                checks.push(None);
                v4.0.push(TreeRule { priority: e, fields: full_fields(), checked: false });
                v6.0.push(TreeRule { priority: e, fields: full_fields(), checked: false });
            }
            let end = entries.len() as u32;
            for en in &mut entries[start..] {
                en.segment_end = end;
            }
        }
        let e = entries.len() as u32;
        entries.push(Entry { kind: chain.end.clone(), segment_end: e + 1, staged_group: None });
        checks.push(None);
        v4.0.push(TreeRule { priority: e, fields: full_fields(), checked: false });
        v6.0.push(TreeRule { priority: e, fields: full_fields(), checked: false });
        // A Pass continues the lookup at the end of its tier.
        let restarts: Vec<u32> = entries.iter().map(|en| en.segment_end).collect();
        Program {
            entries,
            checks,
            v4: VersionClassifier { terminal: TreeClassifier::build(v4.0, &restarts), side: TreeClassifier::build_unpruned(v4.1) },
            v6: VersionClassifier { terminal: TreeClassifier::build(v6.0, &restarts), side: TreeClassifier::build_unpruned(v6.1) },
        }
    }
}

/// One rule compiled at its place in a program.
struct CompiledRule {
    entry: Entry,
    checks: Option<Box<Checks>>,
    /// Whether it decides (in the terminal trees) or is only collected (in the side trees).
    terminal: bool,
    v4: Option<TreeRule<u32>>,
    v6: Option<TreeRule<u128>>,
}

impl Compiler {
    /// Compiles rule `i` of `policy` (in `tier`; `staged`) as entry `e`, of staged group `group`.
    fn rule(&mut self, e: u32, (tier, policy, i, staged): (&Option<String>, &String, usize, bool), rule: &SetRule, group: u32) -> CompiledRule {
        let c = Checks { src: self.side_checks(&rule.src), dst: self.side_checks(&rule.dst) };
        let checked = !(c.src.is_empty() && c.dst.is_empty());
        CompiledRule {
            entry: Entry {
                kind: EntryKind::Rule(RuleRef { tier: tier.clone(), policy: policy.clone(), rule: i, action: rule.action, staged }),
                segment_end: 0,
                staged_group: staged.then_some(group),
            },
            checks: checked.then(|| Box::new(c)),
            // Allow/Deny/Pass of an enforced rule decide or redirect the lookup.
            terminal: !staged && rule.action != Action::Log,
            v4: rule_fields::<u32>(rule, 4).map(|fields| TreeRule { priority: e, fields, checked }),
            v6: rule_fields::<u128>(rule, 6).map(|fields| TreeRule { priority: e, fields, checked }),
        }
    }

    /// `old` (compiled from a chain of the same signature, so with the same layout) with the
    /// rules of the `changed` policies and profiles compiled from `chain` in their places: each
    /// is removed from and inserted into the trees, which take single-rule updates in
    /// microseconds, instead of building every tree again.
    fn patch(&mut self, old: &Program, chain: &Chain<'_>, changed: &HashSet<String>) -> Program {
        let mut p = Program { entries: old.entries.clone(), checks: old.checks.clone(), v4: old.v4.clone(), v6: old.v6.clone() };
        let mut e = 0u32;
        let mut group = 0u32;
        for seg in &chain.segments {
            for (policy, tier, rules, staged) in &seg.parts {
                group += 1;
                if !changed.contains(policy) {
                    e += rules.len() as u32;
                    continue;
                }
                for (i, rule) in rules.iter().enumerate() {
                    let c = self.rule(e, (tier, policy, i, *staged), rule, group);
                    let slot = &mut p.entries[e as usize];
                    *slot = Entry { segment_end: slot.segment_end, ..c.entry };
                    p.checks[e as usize] = c.checks;
                    p.v4.replace(e, c.v4, c.terminal);
                    p.v6.replace(e, c.v6, c.terminal);
                    e += 1;
                }
            }
            e += u32::from(seg.default_deny.is_some());
        }
        p
    }
}

impl<K: Key> VersionClassifier<K> {
    /// Puts `rule` (or nothing) at `priority`, in the terminal or the side trees.
    fn replace(&mut self, priority: u32, rule: Option<TreeRule<K>>, terminal: bool) {
        self.terminal = self.terminal.remove(priority);
        self.side = self.side.remove(priority);
        if let Some(r) = rule {
            let trees = if terminal { &mut self.terminal } else { &mut self.side };
            *trees = trees.insert(r);
        }
    }
}

/// One tier (or profile) of a chain: its policies' rules for the direction.
struct Segment<'a> {
    /// (policy or profile name, tier, rules, staged)
    parts: Vec<(String, Option<String>, &'a [SetRule], bool)>,
    /// The tier whose default Deny ends the segment, if it has one.
    default_deny: Option<String>,
}

/// An endpoint-direction's chain, as the evaluator walks it.
struct Chain<'a> {
    segments: Vec<Segment<'a>>,
    /// The direction whose rules the segments hold.
    dir: Direction,
    /// The final entry: `NoProfileMatch`, `FallThrough` or `NoForwardPolicy`.
    end: EntryKind,
}

impl<'a> Chain<'a> {
    /// An endpoint's chain in one direction: untracked and pre-DNAT tiers (host endpoints, which
    /// fall through), normal tiers, then profiles.
    fn of(view: &'a NodeView, ep: &EndpointView, dir: Direction) -> Chain<'a> {
        let mut segments = Vec::new();
        for (tiers, decisive) in [(&ep.untracked_tiers, false), (&ep.pre_dnat_tiers, false), (&ep.tiers, true)] {
            segments.extend(tiers.iter().filter_map(|t| Segment::of(view, t, dir, decisive)));
        }
        let mut chain = Chain { segments, dir, end: EntryKind::NoProfileMatch };
        chain.push_profiles(view, ep, dir);
        chain
    }

    /// A host endpoint's chain: its tiers; then, as the evaluator ends it, nothing (untracked
    /// and pre-DNAT fall through), allow (forward chains without enforced policy), or profiles.
    fn of_host(view: &'a NodeView, ep: &EndpointView, chain: HostChain) -> Chain<'a> {
        let dir = chain.direction();
        let tiers = ep.chain_tiers(chain);
        let enforced = tiers.iter().any(|t| t.policies(dir).iter().any(|p| !is_staged(p)));
        let segments = tiers.iter().filter_map(|t| Segment::of(view, t, dir, !chain.falls_through())).collect();
        let end = match chain {
            HostChain::Untracked(_) | HostChain::PreDnat => EntryKind::FallThrough,
            HostChain::Forward(_) if !enforced => EntryKind::NoForwardPolicy,
            HostChain::Normal(_) | HostChain::Forward(_) => EntryKind::NoProfileMatch,
        };
        let mut c = Chain { segments, dir, end };
        if c.end == EntryKind::NoProfileMatch {
            c.push_profiles(view, ep, dir);
        }
        c
    }

    fn push_profiles(&mut self, view: &'a NodeView, ep: &EndpointView, dir: Direction) {
        for pname in &ep.profiles {
            if let Some(p) = view.profiles.get(pname) {
                self.segments.push(Segment { parts: vec![(pname.clone(), None, p.rules(dir), false)], default_deny: None });
            }
        }
    }

    /// Identifies the chain by the names of what it contains; equal signatures compile equally.
    fn signature(&self) -> Vec<String> {
        // The direction matters: a policy's ingress and egress rules differ under the same name.
        let mut sig = vec![format!("{}|end|{:?}", self.dir, self.end)];
        for s in &self.segments {
            sig.push(format!("segment|{}", s.default_deny.as_deref().unwrap_or("")));
            for (name, tier, rules, staged) in &s.parts {
                sig.push(format!("{}|{}|{}|{name}", tier.as_deref().unwrap_or("profile"), rules.len(), staged));
            }
        }
        sig
    }
}

impl<'a> Segment<'a> {
    /// A tier's policies for `dir` (none: no segment); its default Deny counts when `decisive`,
    /// the default is Deny and an enforced policy applies. A policy the view lacks has no rules.
    fn of(view: &'a NodeView, t: &TierInfo, dir: Direction, decisive: bool) -> Option<Segment<'a>> {
        let names = t.policies(dir);
        if names.is_empty() {
            return None;
        }
        let parts = names
            .iter()
            .map(|n| (n.clone(), Some(t.name.clone()), view.policy(&t.name, n).map_or(&[][..], |p| p.rules(dir)), is_staged(n)))
            .collect();
        let enforced = names.iter().any(|n| !is_staged(n));
        let default_deny = (decisive && enforced && t.default_action == TierDefault::Deny).then(|| t.name.clone());
        Some(Segment { parts, default_deny })
    }
}

/// Whether `new` is new or differs from `old`.
fn differs<T: PartialEq>(old: Option<&Arc<T>>, new: &Arc<T>) -> bool {
    old.is_none_or(|o| !Arc::ptr_eq(o, new) && **o != **new)
}

/// A new, empty set whose members have not been given yet.
fn unseen<S: Default>() -> (Arc<SetMembers>, Arc<S>) {
    (Arc::new(SetMembers::Nets(Default::default())), Arc::default())
}

fn is_staged(policy: &str) -> bool {
    policy.starts_with("staged:")
}

fn full_fields<K: Key>() -> [Intervals<K>; FIELDS] {
    [vec![(K::MIN, K::MAX)], vec![(K::MIN, K::MAX)], vec![(K::MIN, K::MAX)], vec![(K::MIN, K::MAX)], vec![(K::MIN, K::MAX)]]
}

/// Address intervals of the CIDRs of one version.
trait VersionKey: Key {
    fn ranges(nets: &[IpNet]) -> Vec<(Self, Self)>;
    fn from_u16(v: u16) -> Self;
}

impl VersionKey for u32 {
    fn ranges(nets: &[IpNet]) -> Vec<(u32, u32)> {
        nets.iter().filter_map(|n| if let IpNet::V4(n) = n { Some(v4_range(n)) } else { None }).collect()
    }
    fn from_u16(v: u16) -> Self {
        v.into()
    }
}

impl VersionKey for u128 {
    fn ranges(nets: &[IpNet]) -> Vec<(u128, u128)> {
        nets.iter().filter_map(|n| if let IpNet::V6(n) = n { Some(v6_range(n)) } else { None }).collect()
    }
    fn from_u16(v: u16) -> Self {
        v.into()
    }
}

fn normalize<K: Key>(v: Vec<(K, K)>) -> Intervals<K> {
    Ranges::from_unsorted(v, |x: K| (x != K::MAX).then(|| x.inc())).intervals().to_vec()
}

/// `a` minus `b`, both sorted and disjoint.
fn subtract<K: Key>(a: &[(K, K)], b: &[(K, K)]) -> Intervals<K> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut cur = lo;
        let mut done = false;
        for &(blo, bhi) in b {
            if bhi < cur || blo > hi {
                continue;
            }
            if blo > cur {
                out.push((cur, blo.dec()));
            }
            if bhi >= hi {
                done = true;
                break;
            }
            cur = bhi.inc();
        }
        if !done {
            out.push((cur, hi));
        }
    }
    out
}

/// The address field of an entity for one version: `None` when the rule cannot match it (as in
/// Felix, nets or notNets that are all of the other version drop the rule for this version).
fn addr_field<K: VersionKey>(m: &SetMatch) -> Option<Intervals<K>> {
    if (!m.nets.is_empty() && K::ranges(&m.nets).is_empty()) || (!m.not_nets.is_empty() && K::ranges(&m.not_nets).is_empty()) {
        return None;
    }
    let pos = if m.nets.is_empty() { vec![(K::MIN, K::MAX)] } else { normalize(K::ranges(&m.nets)) };
    let f = subtract(&pos, &normalize(K::ranges(&m.not_nets)));
    (!f.is_empty()).then_some(f)
}

fn port_field<K: VersionKey>(m: &SetMatch) -> Intervals<K> {
    let pos = if m.ports.is_empty() || !m.named_port_sets.is_empty() {
        vec![(K::MIN, K::from_u16(u16::MAX))]
    } else {
        normalize(m.ports.iter().map(|r| (K::from_u16(r.first), K::from_u16(r.last))).collect())
    };
    subtract(&pos, &normalize(m.not_ports.iter().map(|r| (K::from_u16(r.first), K::from_u16(r.last))).collect()))
}

fn icmp_range<K: VersionKey>(m: IcmpMatch) -> (K, K) {
    let t = u16::from(m.icmp_type) << 8;
    match m.code {
        Some(c) => (K::from_u16(t | u16::from(c)), K::from_u16(t | u16::from(c))),
        None => (K::from_u16(t), K::from_u16(t | 0xff)),
    }
}

/// The interval fields of a rule for IP version `v`, or `None` if it cannot match that version.
fn rule_fields<K: VersionKey>(r: &SetRule, v: u8) -> Option<[Intervals<K>; FIELDS]> {
    if r.ip_version.is_some_and(|x| x != v) {
        return None;
    }
    let src = addr_field::<K>(&r.src)?;
    let dst = addr_field::<K>(&r.dst)?;
    let proto_full = vec![(K::MIN, K::from_u16(255))];
    let proto_pos = match r.protocol {
        Some(p) => vec![(K::from_u16(p.into()), K::from_u16(p.into()))],
        None => proto_full,
    };
    let proto = match r.not_protocol {
        Some(p) => subtract(&proto_pos, &[(K::from_u16(p.into()), K::from_u16(p.into()))]),
        None => proto_pos,
    };
    let sport = port_field::<K>(&r.src);
    let mut dport = port_field::<K>(&r.dst);
    if let Some(m) = r.icmp {
        dport = vec![icmp_range(m)];
    }
    if let Some(m) = r.not_icmp {
        dport = subtract(&dport, &[icmp_range(m)]);
    }
    let fields = [src, dst, proto, sport, dport];
    fields.iter().all(|f| !f.is_empty()).then_some(fields)
}
