//! A first-match packet classifier: HyperSplit-style binary decision trees over rule partitions.
//!
//! Why this algorithm. Calico rules are not prefixes: port ranges, lists of CIDRs, negated CIDRs
//! and ports all turn into arbitrary sets of intervals per field. Tuple-space schemes (TSS,
//! TupleMerge) need prefixes and pay a hash probe per tuple; bit-vector schemes need N bits per
//! elementary interval and per field (gigabytes at 100K rules); RFC-style cross-producting explodes
//! in memory. Decision trees work on intervals directly and look up in a few tens of comparisons.
//! Among them HyperSplit (Qi et al., 2009) splits one field at one point per node, which keeps
//! nodes tiny and the tree shallow; its weakness, rule replication when wide rules are split, is
//! handled as in CutSplit (Li et al., 2018): rules are first partitioned by which address fields
//! are specific ("small"), and each partition gets its own tree, split mostly along its small
//! fields. A lookup visits the trees in order of their best priority and stops early when no
//! remaining tree can hold a better match.
//!
//! Updates do not rebuild: a classifier is an immutable base (the trees) plus a small overlay of
//! added rules and removed priorities, both behind `Arc`s. Changing one rule copies only the
//! overlay, so it costs microseconds and the old classifier stays valid for readers still using
//! it; once the overlay holds more than [`OVERLAY_LIMIT`] changes the next update rebuilds.
//!
//! Every lookup takes a lower bound on the priority (`from`), which is how the caller continues
//! after a Pass rule. Rules carry extra checks the tree cannot see (IP-set membership, named
//! ports): a leaf calls `accept` on each candidate that matches every interval field.

use std::sync::Arc;

/// Number of fields: source address, destination address, protocol, source port, destination port.
pub const FIELDS: usize = 5;

/// A field value type: `u32` for IPv4 classifiers, `u128` for IPv6.
pub trait Key: Copy + Ord + std::fmt::Debug + Send + Sync + 'static {
    /// Smallest value.
    const MIN: Self;
    /// Largest address value.
    const MAX: Self;
    /// `self - 1` (never called on MIN).
    fn dec(self) -> Self;
    /// `self + 1` (never called on MAX).
    fn inc(self) -> Self;
    /// Width of an address interval in bits (log2 of its size, rounded down).
    fn width_bits(lo: Self, hi: Self) -> u32;
    /// Bits in an address.
    const BITS: u32;
}

impl Key for u32 {
    const MIN: Self = 0;
    const MAX: Self = u32::MAX;
    const BITS: u32 = 32;
    fn dec(self) -> Self {
        self - 1
    }
    fn inc(self) -> Self {
        self + 1
    }
    fn width_bits(lo: Self, hi: Self) -> u32 {
        32 - (hi - lo).leading_zeros()
    }
}

impl Key for u128 {
    const MIN: Self = 0;
    const MAX: Self = u128::MAX;
    const BITS: u32 = 128;
    fn dec(self) -> Self {
        self - 1
    }
    fn inc(self) -> Self {
        self + 1
    }
    fn width_bits(lo: Self, hi: Self) -> u32 {
        128 - (hi - lo).leading_zeros()
    }
}

/// A set of values of one field: sorted, disjoint, inclusive intervals. Empty means "nothing".
pub type Intervals<K> = Vec<(K, K)>;

/// A rule as the tree sees it: per-field interval sets and a priority (lower wins).
#[derive(Clone, Debug, PartialEq)]
pub struct TreeRule<K> {
    /// Lower is checked first.
    pub priority: u32,
    /// Allowed values per field.
    pub fields: [Intervals<K>; FIELDS],
}

impl<K: Key> TreeRule<K> {
    /// Whether every field of `key` is in the rule's intervals.
    #[inline]
    pub fn matches(&self, key: &[K; FIELDS]) -> bool {
        self.fields.iter().zip(key).all(|(iv, &k)| contains(iv, k))
    }

    fn hull(&self, f: usize) -> (K, K) {
        let iv = &self.fields[f];
        (iv[0].0, iv[iv.len() - 1].1)
    }
}

/// Whether `k` is in the interval set.
#[inline]
pub fn contains<K: Key>(iv: &[(K, K)], k: K) -> bool {
    match iv.len() {
        1 => iv[0].0 <= k && k <= iv[0].1,
        0 => false,
        _ => {
            let i = iv.partition_point(|&(_, hi)| hi < k);
            i < iv.len() && iv[i].0 <= k
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Node<K> {
    /// Keys with `key[field] <= at` go to `left`, the others to `right`.
    Split { field: u8, at: K, left: u32, right: u32 },
    /// Candidates `leaf_rules[start..start + len]`, in priority order.
    Leaf { start: u32, len: u32 },
}

/// One tree over one partition of the rules.
#[derive(Clone, Debug)]
struct Tree<K> {
    nodes: Vec<Node<K>>,
    leaf_rules: Vec<u32>,
    /// Best (lowest) priority of any rule in the tree.
    best: u32,
}

/// Rules per leaf below which a node is not split.
const LEAF_SIZE: usize = 8;
/// Depth limit (guards against pathological rule sets).
const MAX_DEPTH: usize = 48;
/// An address interval at most this many bits wide counts as "small" for partitioning.
const SMALL_BITS_V4: u32 = 16;

/// Changes kept beside the trees before an update rebuilds them.
pub const OVERLAY_LIMIT: usize = 64;

/// The immutable part: rules and trees.
#[derive(Debug)]
struct Base<K> {
    rules: Vec<TreeRule<K>>,
    trees: Vec<Tree<K>>,
}

/// Changes since the base was built.
#[derive(Debug)]
struct Overlay<K> {
    /// Added rules, by priority.
    added: Vec<TreeRule<K>>,
    /// Priorities of base rules that no longer count, sorted.
    removed: Vec<u32>,
}

/// A first-match classifier (priorities are unique; lower wins).
#[derive(Clone, Debug)]
pub struct TreeClassifier<K> {
    base: Arc<Base<K>>,
    overlay: Arc<Overlay<K>>,
}

impl<K: Key> TreeClassifier<K> {
    /// Builds the classifier. Rules need not be sorted; a rule with an empty field never matches
    /// and is dropped.
    pub fn build(mut rules: Vec<TreeRule<K>>) -> Self {
        rules.retain(|r| r.fields.iter().all(|f| !f.is_empty()));
        rules.sort_by_key(|r| r.priority);
        // Partition by which address fields are small (CutSplit).
        let small_bits = K::BITS - (32 - SMALL_BITS_V4);
        let mut parts: [Vec<u32>; 4] = Default::default();
        for (i, r) in rules.iter().enumerate() {
            let small = |f: usize| {
                let (lo, hi) = r.hull(f);
                K::width_bits(lo, hi) <= small_bits
            };
            let p = match (small(0), small(1)) {
                (true, true) => 0,
                (true, false) => 1,
                (false, true) => 2,
                (false, false) => 3,
            };
            parts[p].push(i as u32);
        }
        let mut trees: Vec<Tree<K>> = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let best = rules[p[0] as usize].priority;
                let mut t = Tree { nodes: Vec::new(), leaf_rules: Vec::new(), best };
                let region = [(K::MIN, K::MAX); FIELDS];
                build_node(&rules, &mut t, p, region, 0);
                t
            })
            .collect();
        trees.sort_by_key(|t| t.best);
        TreeClassifier { base: Arc::new(Base { rules, trees }), overlay: Arc::new(Overlay { added: Vec::new(), removed: Vec::new() }) }
    }

    /// All rules in force, by priority.
    pub fn rules(&self) -> Vec<TreeRule<K>> {
        let mut out: Vec<TreeRule<K>> =
            self.base.rules.iter().filter(|r| self.overlay.removed.binary_search(&r.priority).is_err()).cloned().collect();
        out.extend(self.overlay.added.iter().cloned());
        out.sort_by_key(|r| r.priority);
        out
    }

    /// A classifier with `rule` added, replacing any rule of the same priority.
    pub fn insert(&self, rule: TreeRule<K>) -> Self {
        let next = self.without(rule.priority);
        let mut ov = Overlay { added: next.overlay.added.clone(), removed: next.overlay.removed.clone() };
        let at = ov.added.partition_point(|r| r.priority < rule.priority);
        ov.added.insert(at, rule);
        TreeClassifier { base: next.base, overlay: Arc::new(ov) }.settle()
    }

    /// A classifier without the rule of this priority (if there is one).
    pub fn remove(&self, priority: u32) -> Self {
        self.without(priority).settle()
    }

    fn without(&self, priority: u32) -> Self {
        let mut ov = Overlay { added: self.overlay.added.clone(), removed: self.overlay.removed.clone() };
        ov.added.retain(|r| r.priority != priority);
        if self.base.rules.binary_search_by_key(&priority, |r| r.priority).is_ok() {
            if let Err(at) = ov.removed.binary_search(&priority) {
                ov.removed.insert(at, priority);
            }
        }
        TreeClassifier { base: self.base.clone(), overlay: Arc::new(ov) }
    }

    /// Rebuilds once the overlay is too large to scan cheaply.
    fn settle(self) -> Self {
        if self.overlay.added.len() + self.overlay.removed.len() > OVERLAY_LIMIT {
            TreeClassifier::build(self.rules())
        } else {
            self
        }
    }

    /// The priority of the first rule with priority `>= from` that matches `key` and that
    /// `accept` (given the priority) accepts.
    #[inline]
    pub fn lookup(&self, key: &[K; FIELDS], from: u32, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let removed = &self.overlay.removed;
        let mut best = if removed.is_empty() {
            self.base.lookup(key, from, &mut accept)
        } else {
            self.base.lookup(key, from, |p| removed.binary_search(&p).is_err() && accept(p))
        };
        for r in &self.overlay.added {
            if best.is_some_and(|b| b <= r.priority) {
                break;
            }
            if r.priority >= from && r.matches(key) && accept(r.priority) {
                best = Some(r.priority);
                break;
            }
        }
        best
    }

    /// Approximate heap memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        let rule_bytes = |r: &TreeRule<K>| {
            std::mem::size_of::<TreeRule<K>>() + r.fields.iter().map(|f| f.len() * std::mem::size_of::<(K, K)>()).sum::<usize>()
        };
        let rules: usize = self.base.rules.iter().chain(&self.overlay.added).map(rule_bytes).sum();
        let trees: usize =
            self.base.trees.iter().map(|t| t.nodes.len() * std::mem::size_of::<Node<K>>() + t.leaf_rules.len() * 4).sum();
        rules + trees
    }
}

impl<K: Key> Base<K> {
    #[inline]
    fn lookup(&self, key: &[K; FIELDS], from: u32, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut best: Option<u32> = None;
        for t in &self.trees {
            if best.is_some_and(|p| p <= t.best) {
                break;
            }
            let mut n = 0usize;
            loop {
                match t.nodes[n] {
                    Node::Split { field, at, left, right } => {
                        n = if key[field as usize] <= at { left } else { right } as usize;
                    }
                    Node::Leaf { start, len } => {
                        for &ri in &t.leaf_rules[start as usize..(start + len) as usize] {
                            let r = &self.rules[ri as usize];
                            if best.is_some_and(|p| p <= r.priority) {
                                break;
                            }
                            if r.priority >= from && r.matches(key) && accept(r.priority) {
                                best = Some(r.priority);
                                break;
                            }
                        }
                        break;
                    }
                }
            }
        }
        best
    }
}

/// Builds the subtree for `cands` (rule indices in priority order) within `region`; returns its
/// node index.
fn build_node<K: Key>(rules: &[TreeRule<K>], t: &mut Tree<K>, cands: Vec<u32>, region: [(K, K); FIELDS], depth: usize) -> u32 {
    let me = t.nodes.len() as u32;
    t.nodes.push(Node::Leaf { start: 0, len: 0 });
    let split = if cands.len() > LEAF_SIZE && depth < MAX_DEPTH { choose_split(rules, &cands, &region) } else { None };
    match split {
        None => {
            let start = t.leaf_rules.len() as u32;
            t.leaf_rules.extend_from_slice(&cands);
            t.nodes[me as usize] = Node::Leaf { start, len: cands.len() as u32 };
        }
        Some((field, at)) => {
            let (mut l, mut r) = (Vec::new(), Vec::new());
            for &c in &cands {
                let iv = &rules[c as usize].fields[field];
                let (rlo, rhi) = region[field];
                if iv.iter().any(|&(lo, hi)| lo <= at && hi >= rlo) {
                    l.push(c);
                }
                if iv.iter().any(|&(lo, hi)| hi > at && lo <= rhi) {
                    r.push(c);
                }
            }
            drop(cands);
            let mut lreg = region;
            lreg[field].1 = at;
            let mut rreg = region;
            rreg[field].0 = at.inc();
            let left = build_node(rules, t, l, lreg, depth + 1);
            let right = build_node(rules, t, r, rreg, depth + 1);
            t.nodes[me as usize] = Node::Split { field: field as u8, at, left, right };
        }
    }
    me
}

/// Picks the field and point that best balance the candidates while replicating few of them.
fn choose_split<K: Key>(rules: &[TreeRule<K>], cands: &[u32], region: &[(K, K); FIELDS]) -> Option<(usize, K)> {
    let n = cands.len();
    let mut best: Option<(usize, usize, usize, K)> = None; // (max side, total, field, at)
    let mut points: Vec<K> = Vec::with_capacity(2 * n);
    for f in 0..FIELDS {
        let (rlo, rhi) = region[f];
        if rlo == rhi {
            continue;
        }
        points.clear();
        for &c in cands {
            for &(lo, hi) in &rules[c as usize].fields[f] {
                if hi < rlo || lo > rhi {
                    continue;
                }
                if lo > rlo {
                    points.push(lo.dec());
                }
                if hi < rhi {
                    points.push(hi);
                }
            }
        }
        if points.is_empty() {
            continue;
        }
        points.sort_unstable();
        points.dedup();
        for q in [points.len() / 2, points.len() / 4, 3 * points.len() / 4] {
            let at = points[q];
            let (mut l, mut r) = (0, 0);
            for &c in cands {
                let iv = &rules[c as usize].fields[f];
                l += iv.iter().any(|&(lo, hi)| lo <= at && hi >= rlo) as usize;
                r += iv.iter().any(|&(lo, hi)| hi > at && lo <= rhi) as usize;
            }
            let cand = (l.max(r), l + r, f, at);
            if l.max(r) < n && best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                best = Some(cand);
            }
        }
    }
    best.map(|(_, _, f, at)| (f, at))
}

#[cfg(test)]
mod tests;
