//! The reference evaluator: a direct interpreter of the policy model.
//!
//! It is written to be obviously right rather than fast: it is the oracle that the compiled
//! classifier is tested against, and what `palisadectl eval` and `trace` run.
//!
//! A flow is allowed when the egress policy of its source endpoint (if the source address belongs
//! to one) and the ingress policy of its destination endpoint (likewise) both allow it. For one
//! endpoint and direction, host endpoints first go through untracked (`doNotTrack`) and, for
//! ingress, `preDNAT` policies, where an Allow or Deny decides and no match falls through; then
//! the normal tiers: within a tier, applicable policies in order, rules in order; Allow and Deny
//! decide, Log continues, Pass leaves the tier; a tier whose enforced policies decide nothing
//! applies its default action. After the tiers come the endpoint's profiles (first Allow/Deny
//! decides); an endpoint that nothing allows is denied. Staged policies are evaluated alongside
//! and reported, but never decide; a separate "staged verdict" shows what enforcing them would do.

use crate::model::*;
use serde::Serialize;
use std::net::IpAddr;

/// A flow to evaluate: the first packet's 5-tuple (or ICMP type/code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (same IP version as `src`).
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port (0 for protocols without ports).
    pub src_port: u16,
    /// Destination port (0 for protocols without ports).
    pub dst_port: u16,
    /// ICMP type, for ICMP/ICMPv6.
    pub icmp_type: Option<u8>,
    /// ICMP code, for ICMP/ICMPv6.
    pub icmp_code: Option<u8>,
}

impl Flow {
    /// The flow's IP version, 4 or 6.
    pub fn ip_version(&self) -> u8 {
        if self.src.is_ipv4() {
            4
        } else {
            6
        }
    }
}

/// Identifies one rule of one policy or profile.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    /// Tier name (`None` for profile rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Policy (or profile) name.
    pub policy: String,
    /// Index of the rule in the policy's rules for the direction.
    pub rule: usize,
    /// The rule's action.
    pub action: Action,
    /// Whether the policy is staged (never decides).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
}

/// What decided a direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Decision {
    /// An Allow or Deny rule of a policy.
    Rule(RuleRef),
    /// The end of a tier in which applicable policies decided nothing.
    TierDefault {
        /// The tier.
        tier: String,
    },
    /// An Allow or Deny rule of a profile.
    Profile(RuleRef),
    /// No profile rule allowed the flow (host endpoints with no profiles end here).
    NoProfileMatch,
    /// An untracked or pre-DNAT chain in which nothing decided (`allowed` is false; the next
    /// chain decides).
    FallThrough,
    /// Forwarded traffic through a host endpoint to which no `applyOnForward` policy applies:
    /// allowed.
    NoForwardPolicy,
}

/// The outcome for one endpoint in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionVerdict {
    /// The endpoint.
    pub endpoint: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Whether it allows the flow.
    pub allowed: bool,
    /// What decided.
    pub decided_by: Decision,
    /// Every matching Log and Pass rule and every matching staged rule on the way, in order.
    pub matched: Vec<RuleRef>,
}

/// The verdict for a flow, with the trail of what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Both directions allow.
    pub allowed: bool,
    /// The source endpoint's egress, if the source is an endpoint.
    pub egress: Option<DirectionVerdict>,
    /// The destination endpoint's ingress, if the destination is an endpoint.
    pub ingress: Option<DirectionVerdict>,
    /// What the verdict would be if staged policies were enforced (present when any applied).
    pub staged_allowed: Option<bool>,
}

/// Evaluates flows against a cluster.
pub struct Evaluator<'a> {
    cluster: &'a Cluster,
}

enum Outcome {
    Allow,
    Deny,
    /// Pass, or nothing matched: continue after this policy's tier.
    Pass,
    /// Nothing matched: continue with the next policy.
    NoMatch,
}

/// How a walk ends when no tier decided.
#[derive(Clone, Copy)]
enum End {
    /// With the endpoint's profiles (then default deny).
    Profiles,
    /// With the profiles if any enforced policy applied, else allowed (forwarded traffic).
    ProfilesIfEnforced,
    /// Undecided: the next chain decides.
    FallThrough,
}

impl<'a> Evaluator<'a> {
    /// An evaluator over `cluster`.
    pub fn new(cluster: &'a Cluster) -> Self {
        Evaluator { cluster }
    }

    /// Evaluates one flow.
    pub fn evaluate(&self, flow: &Flow) -> Verdict {
        let src_ep = self.cluster.endpoint_for_ip(flow.src);
        let dst_ep = self.cluster.endpoint_for_ip(flow.dst);
        let egress = src_ep.map(|ep| self.direction(ep, Direction::Egress, flow, false));
        let ingress = dst_ep.map(|ep| self.direction(ep, Direction::Ingress, flow, false));
        let allowed = egress.as_ref().is_none_or(|d| d.allowed) && ingress.as_ref().is_none_or(|d| d.allowed);
        let any_staged = [src_ep.map(|e| (e, Direction::Egress)), dst_ep.map(|e| (e, Direction::Ingress))]
            .into_iter()
            .flatten()
            .any(|(ep, dir)| self.cluster.tiers_for(ep, dir, Stage::Normal).iter().any(|t| t.policies.iter().any(|p| p.is_staged())));
        let staged_allowed = any_staged.then(|| {
            src_ep.is_none_or(|ep| self.direction(ep, Direction::Egress, flow, true).allowed)
                && dst_ep.is_none_or(|ep| self.direction(ep, Direction::Ingress, flow, true).allowed)
        });
        Verdict { allowed, egress, ingress, staged_allowed }
    }

    /// Evaluates one endpoint in one direction. With `enforce_staged`, staged policies replace
    /// (Set) or remove (Delete) the enforced policies of the same name, and decide.
    pub fn direction(&self, ep: &Endpoint, dir: Direction, flow: &Flow, enforce_staged: bool) -> DirectionVerdict {
        let stages = [Stage::Untracked, Stage::PreDnat, Stage::Normal].map(|s| (s == Stage::Normal, self.cluster.tiers_for(ep, dir, s)));
        self.walk(ep, dir, flow, enforce_staged, &stages, End::Profiles)
    }

    /// Evaluates one chain of a host endpoint (see [`HostChain`]). Untracked and pre-DNAT chains
    /// in which nothing decides end in [`Decision::FallThrough`]; a forward chain with no
    /// enforced policy allows ([`Decision::NoForwardPolicy`]).
    pub fn host_chain(&self, ep: &Endpoint, chain: HostChain, flow: &Flow, enforce_staged: bool) -> DirectionVerdict {
        let stages = [(!chain.falls_through(), self.cluster.host_tiers(ep, chain))];
        let end = match chain {
            HostChain::Untracked(_) | HostChain::PreDnat => End::FallThrough,
            HostChain::Normal(_) => End::Profiles,
            HostChain::Forward(_) => End::ProfilesIfEnforced,
        };
        self.walk(ep, chain.direction(), flow, enforce_staged, &stages, end)
    }

    /// Walks tiers (each stage with whether its tiers' default actions count), then ends as
    /// `end` says.
    fn walk(
        &self,
        ep: &Endpoint,
        dir: Direction,
        flow: &Flow,
        enforce_staged: bool,
        stages: &[(bool, Vec<TierView<'_>>)],
        end: End,
    ) -> DirectionVerdict {
        let mut matched = Vec::new();
        let done = |allowed: bool, decided_by: Decision, matched: Vec<RuleRef>| DirectionVerdict {
            endpoint: ep.name.clone(),
            direction: dir,
            allowed,
            decided_by,
            matched,
        };
        let mut enforced_anywhere = false;
        for (decisive, views) in stages {
            for view in views {
                let policies = if enforce_staged { self.with_staged_enforced(&view.policies) } else { view.policies.clone() };
                let mut passed = false;
                let mut enforced_any = false;
                for policy in policies {
                    let staged = policy.is_staged() && !enforce_staged;
                    enforced_any |= !staged;
                    let outcome = self.policy(policy, &view.tier.name, dir, flow, staged, &mut matched);
                    if staged {
                        continue;
                    }
                    match outcome {
                        Outcome::Allow | Outcome::Deny => {
                            let r = matched.pop().expect("deciding rule recorded");
                            let allowed = matches!(outcome, Outcome::Allow);
                            return done(allowed, Decision::Rule(r), matched);
                        }
                        Outcome::Pass => {
                            passed = true;
                            break;
                        }
                        Outcome::NoMatch => {}
                    }
                }
                enforced_anywhere |= enforced_any;
                // Untracked and pre-DNAT stages fall through when nothing decides.
                if *decisive && !passed && enforced_any && view.tier.default_action == TierDefault::Deny {
                    return done(false, Decision::TierDefault { tier: view.tier.name.clone() }, matched);
                }
            }
        }
        match end {
            End::FallThrough => return done(false, Decision::FallThrough, matched),
            End::ProfilesIfEnforced if !enforced_anywhere => return done(true, Decision::NoForwardPolicy, matched),
            End::Profiles | End::ProfilesIfEnforced => {}
        }
        for pname in &ep.profiles {
            let Some(profile) = self.cluster.profiles.get(pname) else { continue };
            for (i, rule) in profile.rules(dir).iter().enumerate() {
                if !self.rule_matches(rule, flow) {
                    continue;
                }
                let r = RuleRef { tier: None, policy: profile.name.clone(), rule: i, action: rule.action, staged: false };
                match rule.action {
                    Action::Allow => return done(true, Decision::Profile(r), matched),
                    Action::Deny => return done(false, Decision::Profile(r), matched),
                    Action::Log => matched.push(r),
                    Action::Pass => {
                        matched.push(r);
                        break;
                    }
                }
            }
        }
        done(false, Decision::NoProfileMatch, matched)
    }

    /// The tier's policies as they would be if its staged policies were enforced.
    fn with_staged_enforced<'p>(&self, policies: &[&'p Policy]) -> Vec<&'p Policy> {
        let staged: Vec<&&Policy> = policies.iter().filter(|p| p.is_staged()).collect();
        let mut out: Vec<&Policy> =
            policies.iter().filter(|p| !p.is_staged() && !staged.iter().any(|s| s.enforced_name() == p.name)).copied().collect();
        out.extend(staged.into_iter().filter(|s| s.staged_action == Some(StagedAction::Set)).copied());
        let key = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
        out.sort_by(|a, b| key(a.order).total_cmp(&key(b.order)).then_with(|| a.enforced_name().cmp(b.enforced_name())));
        out
    }

    /// Runs one policy's rules; records Log/Pass matches (and, for staged policies, every match)
    /// and the deciding rule in `matched`.
    fn policy(&self, p: &Policy, tier: &str, dir: Direction, flow: &Flow, staged: bool, matched: &mut Vec<RuleRef>) -> Outcome {
        for (i, rule) in p.rules(dir).iter().enumerate() {
            if !self.rule_matches(rule, flow) {
                continue;
            }
            matched.push(RuleRef { tier: Some(tier.to_string()), policy: p.name.clone(), rule: i, action: rule.action, staged });
            match rule.action {
                Action::Allow => return Outcome::Allow,
                Action::Deny => return Outcome::Deny,
                Action::Pass => return Outcome::Pass,
                Action::Log => {}
            }
        }
        Outcome::NoMatch
    }

    /// Whether a rule matches a flow.
    pub fn rule_matches(&self, r: &Rule, flow: &Flow) -> bool {
        let v = flow.ip_version();
        if r.ip_version.is_some_and(|rv| rv != v) {
            return false;
        }
        if r.protocol.is_some_and(|p| p != flow.protocol) || r.not_protocol == Some(flow.protocol) {
            return false;
        }
        if let Some(m) = r.icmp {
            if !icmp_matches(m, flow) {
                return false;
            }
        }
        if let Some(m) = r.not_icmp {
            if icmp_matches(m, flow) {
                return false;
            }
        }
        self.entity_matches(&r.src, flow.src, flow.src_port, flow) && self.entity_matches(&r.dst, flow.dst, flow.dst_port, flow)
    }

    fn entity_matches(&self, e: &EntityMatch, ip: IpAddr, port: u16, flow: &Flow) -> bool {
        let v = flow.ip_version();
        let same_version = |n: &&ipnet::IpNet| crate::convert::net_version(n) == v;
        if !e.nets.is_empty() && !e.nets.iter().filter(same_version).any(|n| n.contains(&ip)) {
            return false;
        }
        // As in Felix (`FilterRuleToIPVersion`), notNets all of the other version drop the rule
        // for this version instead of reading as "not in them", which would widen it.
        if !e.not_nets.is_empty() && !e.not_nets.iter().any(|n| same_version(&n)) {
            return false;
        }
        if e.not_nets.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if e.selector.as_ref().is_some_and(|s| !self.cluster.selector_has_ip(s, ip)) {
            return false;
        }
        if e.not_selector.as_ref().is_some_and(|s| self.cluster.selector_has_ip(s, ip)) {
            return false;
        }
        let named = |name: &String| self.cluster.named_port_has(e.selector.as_ref(), name, ip, flow.protocol, port);
        let ports_given = !e.ports.is_empty() || !e.named_ports.is_empty();
        if ports_given && !(e.ports.iter().any(|r| r.contains(port)) || e.named_ports.iter().any(named)) {
            return false;
        }
        !(e.not_ports.iter().any(|r| r.contains(port)) || e.not_named_ports.iter().any(named))
    }
}

fn icmp_matches(m: IcmpMatch, flow: &Flow) -> bool {
    flow.icmp_type == Some(m.icmp_type) && m.code.is_none_or(|c| flow.icmp_code == Some(c))
}
