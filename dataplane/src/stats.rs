//! Counters: each worker writes its own (relaxed atomics, no sharing on the hot path); readers
//! sum them while traffic runs.

use crate::compile::{Classification, Program};
use ahash::AHashMap as HashMap;
use palisade_policy::eval::{Decision, RuleRef};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Unparseable or truncated; the parser's reason.
    Malformed(&'static str),
    /// Rejected by connection tracking (e.g. a TCP packet that fits no connection).
    Invalid(&'static str),
    /// Denied by policy.
    Policy,
    /// No local endpoint and no uplink for the destination.
    NoRoute,
    /// Received on an interface the dataplane does not manage.
    UnknownInterface,
    /// A workload sent with a source address that is not its own.
    Spoofed,
    /// TTL or hop limit ran out.
    TtlExceeded,
    /// The connection table is full.
    ConntrackFull,
    /// No transmit frame or socket for the output interface.
    TxFull,
    /// Writing to the TAP device (to the host) or to a host interface failed.
    HostDelivery,
    /// A pod's new flow to the host itself, refused by the endpoint-to-host action.
    EndpointToHost,
}

impl Drop {
    /// The counter name.
    pub fn name(&self) -> String {
        match self {
            Drop::Malformed(why) => format!("malformed_{why}"),
            Drop::Invalid(why) => format!("invalid_{why}"),
            Drop::Policy => "policy".into(),
            Drop::NoRoute => "no_route".into(),
            Drop::UnknownInterface => "unknown_interface".into(),
            Drop::Spoofed => "spoofed".into(),
            Drop::TtlExceeded => "ttl_exceeded".into(),
            Drop::ConntrackFull => "conntrack_full".into(),
            Drop::TxFull => "tx_full".into(),
            Drop::HostDelivery => "host_delivery".into(),
            Drop::EndpointToHost => "endpoint_to_host".into(),
        }
    }
}

/// Identity of a compiled program, for per-rule counters (programs live as long as a key does).
#[derive(Clone)]
struct ProgramKey(Arc<Program>);

impl PartialEq for ProgramKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ProgramKey {}
impl std::hash::Hash for ProgramKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        Arc::as_ptr(&self.0).hash(h)
    }
}

/// One worker's counters. Each is written by its worker thread only, so a count is a plain load
/// and store (no locked read-modify-write on the packet path); readers see whole values.
#[derive(Default)]
pub struct WorkerStats {
    rx: AtomicU64,
    tx: AtomicU64,
    allowed_new: AtomicU64,
    tracked: AtomicU64,
    drops: Mutex<HashMap<Drop, u64>>,
    rules: Mutex<HashMap<(ProgramKey, u32, Tally), u64>>,
}

impl WorkerStats {
    /// Counts received frames.
    pub fn count_rx(&self, n: usize) {
        bump(&self.rx, n as u64);
    }

    /// Counts a transmitted frame.
    pub fn count_tx(&self) {
        bump(&self.tx, 1);
    }

    /// Counts a packet of a tracked (established or related) flow.
    pub fn count_tracked(&self) {
        bump(&self.tracked, 1);
    }

    /// Counts a dropped frame. Drops are the exceptional path; a mutex held by one writer is
    /// uncontended but for readers.
    pub fn count_drop(&self, why: Drop) {
        *self.drops.lock().expect("stats lock").entry(why).or_default() += 1;
    }

    /// Counts a new flow's classification by one program: under its deciding rule, and under
    /// each Log, Pass and staged rule it matched on the way.
    pub fn count_rule(&self, program: &Arc<Program>, c: &Classification) {
        if c.allowed {
            bump(&self.allowed_new, 1);
        }
        let decided = if c.allowed { Tally::Allowed } else { Tally::Denied };
        let mut rules = self.rules.lock().expect("stats lock");
        *rules.entry((ProgramKey(program.clone()), c.decided_by, decided)).or_default() += 1;
        for &entry in &c.matched {
            *rules.entry((ProgramKey(program.clone()), entry, Tally::Matched)).or_default() += 1;
        }
    }
}

/// Adds `n` to a counter that only the calling worker writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// How a rule took part in a classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tally {
    /// It decided, allowing.
    Allowed,
    /// It decided, denying.
    Denied,
    /// It matched without deciding (Log, Pass, or a staged policy's rule).
    Matched,
}

/// A readable summary of all workers' counters.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Frames received from AF_XDP sockets.
    pub rx: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Packets of tracked flows (no policy lookup).
    pub tracked: u64,
    /// New flows allowed by a program (counted per program: source egress and destination ingress).
    pub allowed_new: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// New flows per rule: `"<rule> allow"` and `"<rule> deny"` for the deciding rule, `"<rule> log"`,
    /// `"<rule> pass"` and `"<rule> staged <action>"` for the rules matched on the way.
    pub rules: BTreeMap<String, u64>,
}

/// Sums the counters of `workers`.
pub fn report(workers: &[Arc<WorkerStats>]) -> Report {
    let mut r = Report::default();
    for w in workers {
        r.rx += w.rx.load(Relaxed);
        r.tx += w.tx.load(Relaxed);
        r.tracked += w.tracked.load(Relaxed);
        r.allowed_new += w.allowed_new.load(Relaxed);
        for (d, n) in w.drops.lock().expect("stats lock").iter() {
            *r.drops.entry(d.name()).or_default() += n;
        }
        for ((p, entry, tally), n) in w.rules.lock().expect("stats lock").iter() {
            let c = Classification { allowed: *tally == Tally::Allowed, decided_by: *entry, matched: Vec::new() };
            let decision = p.0.decision(&c);
            let how = match (tally, &decision) {
                (Tally::Allowed, _) => "allow".to_string(),
                (Tally::Denied, _) => "deny".to_string(),
                (Tally::Matched, Decision::Rule(rule) | Decision::Profile(rule)) if rule.staged => {
                    format!("staged {}", rule.action.to_string().to_lowercase())
                }
                (Tally::Matched, Decision::Rule(rule) | Decision::Profile(rule)) => rule.action.to_string().to_lowercase(),
                (Tally::Matched, _) => "matched".to_string(),
            };
            *r.rules.entry(format!("{} {how}", describe(&decision))).or_default() += n;
        }
    }
    r
}

/// A decision in one line: `tier/policy rule N`, `tier T default`, `profile P rule N`.
pub fn describe(d: &Decision) -> String {
    match d {
        Decision::Rule(r) | Decision::Profile(r) => describe_rule(r),
        Decision::TierDefault { tier } => format!("tier {tier} default"),
        Decision::NoProfileMatch => "no profile match".into(),
        Decision::FallThrough => "no untracked or pre-DNAT rule matched".into(),
        Decision::NoForwardPolicy => "no applyOnForward policy".into(),
    }
}

/// A rule in one line: `tier/policy rule N`, or `profile P rule N`.
pub fn describe_rule(r: &RuleRef) -> String {
    match &r.tier {
        Some(tier) => format!("{tier}/{} rule {}", r.policy, r.rule),
        None => format!("profile {} rule {}", r.policy, r.rule),
    }
}
