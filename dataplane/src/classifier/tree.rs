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
//! Rules hidden behind others are pruned while building (the "redundancy removal" of HyperCuts
//! and CutSplit): in a node whose region a rule covers in every field, no later rule of the same
//! lookup segment can match first, so they are dropped from that subtree. This is what keeps wide
//! low-priority rules (the default rule, `any`-address firewall rules) from being copied into
//! every leaf. Two facts make pruning safe and the caller states them: rules marked `checked`
//! (IP-set or named-port checks, which `accept` may refuse) never hide others, and a lookup only
//! starts at 0 or at one of the `restarts` given to [`TreeClassifier::build`] (the ends of tiers,
//! where a Pass continues), so a rule hides only rules before the next restart point.
//!
//! Updates do not rebuild: a classifier is an immutable base (the trees) plus a small overlay of
//! added rules and removed priorities, both behind `Arc`s. Changing one rule copies only the
//! overlay, so it costs microseconds and the old classifier stays valid for readers still using
//! it. Once the overlay holds more than [`OVERLAY_LIMIT`] changes, a new base is built on a
//! background thread; a later update takes it in, keeping only the changes made since.
//!
//! Every lookup takes a lower bound on the priority (`from`), which is how the caller continues
//! after a Pass rule. Rules carry extra checks the tree cannot see (IP-set membership, named
//! ports): a leaf calls `accept` on each candidate that matches every interval field.

use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};

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
    /// A protocol or port value.
    fn small(v: u16) -> Self;
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
    fn small(v: u16) -> Self {
        v.into()
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
    fn small(v: u16) -> Self {
        v.into()
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
    /// The lookup's `accept` may refuse this rule (it has checks the tree cannot see), so it
    /// never hides the rules after it.
    pub checked: bool,
}

/// The values a key can take per field: addresses, protocol, source and destination port.
fn domain<K: Key>() -> [(K, K); FIELDS] {
    [(K::MIN, K::MAX), (K::MIN, K::MAX), (K::small(0), K::small(255)), (K::small(0), K::small(u16::MAX)), (K::small(0), K::small(u16::MAX))]
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
enum Node {
    /// `points[start..start + n]` (ascending) cut `field` into `n + 1` children
    /// `children[start + i]`: child `i` takes keys above point `i - 1` and up to point `i`.
    /// `best`: the best priority below (a lookup that has a match as good stops here).
    Cut { field: u8, n: u8, start: u32, best: u32 },
    /// Candidates `leaf_rules[start..start + len]`, in priority order.
    Leaf { start: u32, len: u32 },
}

/// A rule as the leaves store it: its per-field hulls, densely (one per rule, shared by every leaf
/// that holds the rule) so that leaf scans stay in cache. Most rules are one interval per field
/// and are wholly described by their hulls; the others keep their full interval sets in
/// `Base::multi`, checked after the hulls.
#[derive(Clone, Copy, Debug)]
struct LeafEntry<K> {
    lo: [K; FIELDS],
    hi: [K; FIELDS],
    priority: u32,
    /// Flags ([`MULTI`], [`CHECKED`], [`HIDES`]) and, with `MULTI`, the index into `Base::multi`.
    rule: u32,
}

/// The rule has several intervals in some field; the low bits index `Base::multi`.
const MULTI: u32 = 1 << 31;
/// The rule is `checked`.
const CHECKED: u32 = 1 << 30;
/// Building pruned rules hidden behind this one somewhere: removing it needs a full scan.
const HIDES: u32 = 1 << 29;
const INDEX: u32 = HIDES - 1;

impl<K: Key> LeafEntry<K> {
    #[inline(always)]
    fn matches(&self, multi: &[TreeRule<K>], key: &[K; FIELDS]) -> bool {
        (0..FIELDS).all(|f| self.lo[f] <= key[f] && key[f] <= self.hi[f])
            && (self.rule & MULTI == 0 || multi[(self.rule & INDEX) as usize].matches(key))
    }
}

/// One tree over one partition of the rules.
#[derive(Clone, Debug)]
struct Tree<K> {
    root: Node,
    /// Cut points of all nodes; a node's `n` points are followed by one unused slot so that
    /// `children` can share the indexing.
    points: Vec<K>,
    /// The children of all cut nodes, stored in place (a lookup step reads the cut points and
    /// the chosen child, nothing else).
    children: Vec<Node>,
    /// Indices into the base's entries.
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

/// Changes kept beside the trees before a new base is built in the background.
pub const OVERLAY_LIMIT: usize = 32;
/// Changes past which an update waits for the running rebuild (a burst of changes faster than
/// rebuilds): bounds the overlay that lookups scan.
const OVERLAY_WAIT: usize = 16 * OVERLAY_LIMIT;

/// The immutable part: rules and trees.
#[derive(Debug)]
struct Base<K> {
    /// Every rule, by priority.
    entries: Vec<LeafEntry<K>>,
    /// The full interval sets of rules with several intervals in a field.
    multi: Vec<TreeRule<K>>,
    trees: Vec<Tree<K>>,
    /// Where lookups may start besides 0, sorted; `None`: anywhere (nothing was pruned).
    restarts: Option<Vec<u32>>,
}

/// Changes since the base was built.
#[derive(Debug)]
struct Overlay<K> {
    /// Added rules, by priority.
    added: Vec<Arc<TreeRule<K>>>,
    /// Priorities of base rules that no longer count, sorted.
    removed: Vec<u32>,
}

/// A first-match classifier (priorities are unique; lower wins).
#[derive(Clone, Debug)]
pub struct TreeClassifier<K> {
    base: Arc<Base<K>>,
    overlay: Arc<Overlay<K>>,
    /// A new base being built in the background, if one is.
    rebuild: Option<Arc<Rebuild<K>>>,
}

/// A base being built in the background from the rules of `base` with `folded` applied.
#[derive(Debug)]
struct Rebuild<K> {
    /// The changes the new base includes.
    folded: Arc<Overlay<K>>,
    done: Mutex<Option<Arc<Base<K>>>>,
    finished: Condvar,
}

impl<K: Key> Rebuild<K> {
    /// Starts building the base of `base` ⊕ `folded` on the rebuild thread.
    fn start(base: Arc<Base<K>>, folded: Arc<Overlay<K>>) -> Arc<Self> {
        let job = Arc::new(Rebuild { folded, done: Mutex::new(None), finished: Condvar::new() });
        let j = job.clone();
        let run = move || {
            let built = Arc::new(Base::build(rules_of(&base, &j.folded), base.restarts.clone()));
            *j.done.lock().expect("rebuild lock") = Some(built);
            j.finished.notify_all();
        };
        if rebuild_thread().send(Box::new(run)).is_err() {
            unreachable!("the rebuild thread never exits");
        }
        job
    }

    /// The new base, if it is built (waiting for it if `wait`).
    fn result(&self, wait: bool) -> Option<Arc<Base<K>>> {
        let mut done = self.done.lock().expect("rebuild lock");
        while wait && done.is_none() {
            done = self.finished.wait(done).expect("rebuild lock");
        }
        done.clone()
    }
}

/// A job for the rebuild thread.
type Job = Box<dyn FnOnce() + Send>;

/// The process's rebuild thread (started on first use): builds new bases off the update path.
fn rebuild_thread() -> &'static mpsc::Sender<Job> {
    static THREAD: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    THREAD.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("palisade-rebuild".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("starting the classifier rebuild thread");
        tx
    })
}

/// The rules of `base` with `overlay` applied, by priority.
fn rules_of<K: Key>(base: &Base<K>, overlay: &Overlay<K>) -> Vec<TreeRule<K>> {
    let mut out: Vec<TreeRule<K>> =
        base.entries.iter().filter(|e| overlay.removed.binary_search(&e.priority).is_err()).map(|e| base.rule(e)).collect();
    out.extend(overlay.added.iter().map(|r| (**r).clone()));
    out.sort_by_key(|r| r.priority);
    out
}

/// What one priority holds under a base and an overlay.
enum Held<'a, K> {
    /// No rule.
    Nothing,
    /// The base's rule.
    Base,
    /// A rule the overlay added.
    Added(&'a Arc<TreeRule<K>>),
}

impl<K> Overlay<K> {
    /// What `priority` holds over `base`.
    fn holds(&self, base: &Base<K>, priority: u32) -> Held<'_, K> {
        if let Ok(i) = self.added.binary_search_by_key(&priority, |r| r.priority) {
            Held::Added(&self.added[i])
        } else if self.removed.binary_search(&priority).is_err() && base.entries.binary_search_by_key(&priority, |e| e.priority).is_ok() {
            Held::Base
        } else {
            Held::Nothing
        }
    }

    /// Rules changed (a replaced rule is both removed and added).
    fn len(&self) -> usize {
        self.added.len().max(self.removed.len())
    }
}

/// What the trees found: the best match, or that a removed rule hid rules only a scan can check.
enum Found {
    Match(Option<u32>),
    Hidden,
}

impl<K: Key> TreeClassifier<K> {
    /// Builds the classifier. Rules need not be sorted; a rule with an empty field never matches
    /// and is dropped. [`lookup`](Self::lookup) may then start at 0 or at any of `restarts`.
    pub fn build(rules: Vec<TreeRule<K>>, restarts: &[u32]) -> Self {
        let mut restarts = restarts.to_vec();
        restarts.sort_unstable();
        restarts.dedup();
        Self::build_with(rules, Some(restarts))
    }

    /// Builds a classifier that prunes nothing, for [`all_matches`](Self::all_matches) (and
    /// lookups starting anywhere).
    pub fn build_unpruned(rules: Vec<TreeRule<K>>) -> Self {
        Self::build_with(rules, None)
    }

    fn build_with(rules: Vec<TreeRule<K>>, restarts: Option<Vec<u32>>) -> Self {
        TreeClassifier {
            base: Arc::new(Base::build(rules, restarts)),
            overlay: Arc::new(Overlay { added: Vec::new(), removed: Vec::new() }),
            rebuild: None,
        }
    }

    /// All rules in force, by priority.
    pub fn rules(&self) -> Vec<TreeRule<K>> {
        rules_of(&self.base, &self.overlay)
    }

    /// Whether no rule is in force.
    pub fn is_empty(&self) -> bool {
        self.overlay.added.is_empty() && self.base.entries.len() == self.overlay.removed.len()
    }

    /// A classifier with `rule` added, replacing any rule of the same priority.
    pub fn insert(&self, rule: TreeRule<K>) -> Self {
        let mut ov = self.overlay_without(rule.priority);
        let at = ov.added.partition_point(|r| r.priority < rule.priority);
        ov.added.insert(at, Arc::new(rule));
        self.with_overlay(ov).settle()
    }

    /// A classifier without the rule of this priority (if there is one).
    pub fn remove(&self, priority: u32) -> Self {
        self.with_overlay(self.overlay_without(priority)).settle()
    }

    /// A copy of the overlay in which no rule of this priority is in force.
    fn overlay_without(&self, priority: u32) -> Overlay<K> {
        let mut ov = Overlay { added: self.overlay.added.clone(), removed: self.overlay.removed.clone() };
        ov.added.retain(|r| r.priority != priority);
        if self.base.entries.binary_search_by_key(&priority, |e| e.priority).is_ok() {
            if let Err(at) = ov.removed.binary_search(&priority) {
                ov.removed.insert(at, priority);
            }
        }
        ov
    }

    fn with_overlay(&self, overlay: Overlay<K>) -> Self {
        TreeClassifier { base: self.base.clone(), overlay: Arc::new(overlay), rebuild: self.rebuild.clone() }
    }

    /// Takes in a finished background rebuild, and starts one once the overlay passes
    /// [`OVERLAY_LIMIT`]: updates wait for a rebuild only when changes come faster than rebuilds
    /// and the overlay passes [`OVERLAY_WAIT`].
    fn settle(self) -> Self {
        let over = self.overlay.len() > OVERLAY_WAIT;
        let mut next = match &self.rebuild {
            Some(r) => match r.result(over) {
                Some(base) => self.adopt(base, &r.folded),
                None => return self,
            },
            None => self,
        };
        if next.overlay.len() > OVERLAY_LIMIT {
            next.rebuild = Some(Rebuild::start(next.base.clone(), next.overlay.clone()));
        }
        next
    }

    /// The same rules over `base`, the rebuild of this classifier's base with `folded` applied:
    /// the new overlay holds the changes made since the rebuild started.
    fn adopt(&self, base: Arc<Base<K>>, folded: &Overlay<K>) -> Self {
        let mut touched: Vec<u32> = (self.overlay.added.iter().chain(&folded.added).map(|r| r.priority))
            .chain(self.overlay.removed.iter().chain(&folded.removed).copied())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut ov = Overlay { added: Vec::new(), removed: Vec::new() };
        for p in touched {
            let now = self.overlay.holds(&self.base, p);
            let built = folded.holds(&self.base, p);
            let rule = match (&now, &built) {
                (Held::Nothing, Held::Nothing) | (Held::Base, Held::Base) => continue,
                (Held::Added(a), Held::Added(b)) if Arc::ptr_eq(a, b) => continue,
                (Held::Added(a), _) => Some(Arc::clone(a)),
                // A priority the rebuild's changes touched stays touched: overlays only grow.
                (Held::Base, _) => unreachable!("priority {p} was changed before the rebuild and is untouched now"),
                (Held::Nothing, _) => None,
            };
            if !matches!(built, Held::Nothing) {
                ov.removed.push(p);
            }
            ov.added.extend(rule);
        }
        TreeClassifier { base, overlay: Arc::new(ov), rebuild: None }
    }

    /// This classifier with any background rebuild finished and taken in (for callers that
    /// want the fastest lookups now, and for tests).
    pub fn settled(&self) -> Self {
        match &self.rebuild {
            Some(r) => self.adopt(r.result(true).expect("waited for the rebuild"), &r.folded),
            None => self.clone(),
        }
    }

    /// The priority of the first rule with priority `>= from` that matches `key` and that
    /// `accept` (given the priority) accepts. `from` is 0 or one of the build's `restarts`;
    /// `accept` refuses only `checked` rules.
    #[inline]
    pub fn lookup(&self, key: &[K; FIELDS], from: u32, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let removed = &self.overlay.removed;
        let mut best = match self.base.lookup(key, from, removed, &mut accept) {
            Found::Match(best) => best,
            Found::Hidden => self.base.scan(key, from, removed, &mut accept),
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

    /// Every rule in force with priority below `below` that matches `key` and that `accept`
    /// accepts, by priority. Only for classifiers from [`build_unpruned`](Self::build_unpruned).
    pub fn all_matches(&self, key: &[K; FIELDS], below: u32, mut accept: impl FnMut(u32) -> bool) -> Vec<u32> {
        debug_assert!(self.base.restarts.is_none(), "a pruned classifier cannot list every match");
        let removed = &self.overlay.removed;
        let mut out = Vec::new();
        for t in self.base.trees.iter().take_while(|t| t.best < below) {
            let mut n = t.root;
            while let Node::Cut { field, start, n: cuts, .. } = n {
                n = t.child(key[field as usize], start, cuts);
            }
            let Node::Leaf { start, len } = n else { unreachable!("the walk stops at a leaf") };
            for &ri in &t.leaf_rules[start as usize..(start + len) as usize] {
                let e = &self.base.entries[ri as usize];
                if e.priority >= below {
                    break;
                }
                if e.matches(&self.base.multi, key) && removed.binary_search(&e.priority).is_err() && accept(e.priority) {
                    out.push(e.priority);
                }
            }
        }
        out.extend(self.overlay.added.iter().filter(|r| r.priority < below && r.matches(key) && accept(r.priority)).map(|r| r.priority));
        out.sort_unstable();
        out
    }

    /// Looks up a batch of keys at once, like [`lookup`](Self::lookup) for each (with `accept`
    /// given the key's index and the priority). The keys walk each tree in lockstep, so their
    /// memory accesses overlap instead of waiting on each other.
    pub fn lookup_batch(&self, keys: &[[K; FIELDS]], from: u32, out: &mut [Option<u32>], mut accept: impl FnMut(usize, u32) -> bool) {
        assert_eq!(keys.len(), out.len());
        if !self.overlay.added.is_empty() || !self.overlay.removed.is_empty() {
            for (i, k) in keys.iter().enumerate() {
                out[i] = self.lookup(k, from, |p| accept(i, p));
            }
            return;
        }
        out.fill(None);
        let mut cursor = vec![Node::Leaf { start: 0, len: 0 }; keys.len()];
        for t in &self.base.trees {
            cursor.fill(t.root);
            let mut moving = true;
            while moving {
                moving = false;
                for (c, k) in cursor.iter_mut().zip(keys) {
                    if let Node::Cut { field, start, n, .. } = *c {
                        *c = t.child(k[field as usize], start, n);
                        moving = true;
                    }
                }
            }
            for (i, &c) in cursor.iter().enumerate() {
                if out[i].is_some_and(|p| p <= t.best) {
                    continue;
                }
                let Node::Leaf { start, len } = c else { unreachable!("cursor stops at leaves") };
                for &ri in &t.leaf_rules[start as usize..(start + len) as usize] {
                    let e = &self.base.entries[ri as usize];
                    if out[i].is_some_and(|p| p <= e.priority) {
                        break;
                    }
                    if e.priority >= from && e.matches(&self.base.multi, &keys[i]) && accept(i, e.priority) {
                        out[i] = Some(e.priority);
                        break;
                    }
                }
            }
        }
    }

    /// Approximate heap memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        let rule_bytes =
            |r: &TreeRule<K>| std::mem::size_of::<TreeRule<K>>() + r.fields.iter().map(|f| f.len() * std::mem::size_of::<(K, K)>()).sum::<usize>();
        let entries = self.base.entries.len() * std::mem::size_of::<LeafEntry<K>>();
        let rules: usize = entries + self.base.multi.iter().chain(self.overlay.added.iter().map(|r| &**r)).map(rule_bytes).sum::<usize>();
        let trees: usize =
            self.base.trees.iter().map(|t| t.points.len() * (std::mem::size_of::<K>() + std::mem::size_of::<Node>()) + t.leaf_rules.len() * 4).sum();
        rules + trees
    }
}

impl<K: Key> Tree<K> {
    /// The child of a cut node that takes value `v`.
    #[inline(always)]
    fn child(&self, v: K, start: u32, n: u8) -> Node {
        let pts = &self.points[start as usize..start as usize + n as usize];
        self.children[start as usize + pts.partition_point(|&p| p < v)]
    }
}

impl<K: Key> Base<K> {
    /// Builds the trees over `rules` (any order); `restarts`: see [`TreeClassifier::build`].
    fn build(mut rules: Vec<TreeRule<K>>, restarts: Option<Vec<u32>>) -> Self {
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
        let mut builder = Builder {
            rules: &rules,
            hulls: rules.iter().map(|r| std::array::from_fn(|f| r.hull(f))).collect(),
            single: rules.iter().map(|r| r.fields.iter().all(|iv| iv.len() == 1)).collect(),
            restarts: restarts.as_deref(),
            hides: vec![false; rules.len()],
        };
        let mut trees: Vec<Tree<K>> = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let best = rules[p[0] as usize].priority;
                let mut t = Tree { root: Node::Leaf { start: 0, len: 0 }, points: Vec::new(), children: Vec::new(), leaf_rules: Vec::new(), best };
                let mut budget = LEAF_BUDGET * p.len() + 4 * LEAF_SIZE;
                t.root = builder.node(&mut t, p, domain(), 0, &mut budget);
                t
            })
            .collect();
        trees.sort_by_key(|t| t.best);
        let hides = builder.hides;
        let mut multi = Vec::new();
        let entries = rules
            .into_iter()
            .zip(hides)
            .map(|(r, hides)| {
                let mut lo = [K::MIN; FIELDS];
                let mut hi = [K::MIN; FIELDS];
                for f in 0..FIELDS {
                    (lo[f], hi[f]) = r.hull(f);
                }
                let mut flags = if r.checked { CHECKED } else { 0 } | if hides { HIDES } else { 0 };
                if r.fields.iter().any(|iv| iv.len() > 1) {
                    flags |= MULTI | multi.len() as u32;
                    multi.push(TreeRule { priority: r.priority, fields: r.fields, checked: r.checked });
                }
                LeafEntry { lo, hi, priority: r.priority, rule: flags }
            })
            .collect();
        Base { entries, multi, trees, restarts }
    }

    /// The rule an entry stands for.
    fn rule(&self, e: &LeafEntry<K>) -> TreeRule<K> {
        if e.rule & MULTI != 0 {
            self.multi[(e.rule & INDEX) as usize].clone()
        } else {
            TreeRule { priority: e.priority, fields: std::array::from_fn(|f| vec![(e.lo[f], e.hi[f])]), checked: e.rule & CHECKED != 0 }
        }
    }

    #[inline]
    fn lookup(&self, key: &[K; FIELDS], from: u32, removed: &[u32], mut accept: impl FnMut(u32) -> bool) -> Found {
        let mut best: Option<u32> = None;
        for t in &self.trees {
            if best.is_some_and(|p| p <= t.best) {
                break;
            }
            let mut n = t.root;
            loop {
                match n {
                    Node::Cut { field, start, n: cuts, best: below } => {
                        if best.is_some_and(|p| p <= below) {
                            break;
                        }
                        n = t.child(key[field as usize], start, cuts);
                    }
                    Node::Leaf { start, len } => {
                        for &ri in &t.leaf_rules[start as usize..(start + len) as usize] {
                            let e = &self.entries[ri as usize];
                            if best.is_some_and(|p| p <= e.priority) {
                                break;
                            }
                            if e.priority < from || !e.matches(&self.multi, key) {
                                continue;
                            }
                            if !removed.is_empty() && removed.binary_search(&e.priority).is_ok() {
                                if e.rule & HIDES != 0 {
                                    return Found::Hidden;
                                }
                                continue;
                            }
                            if accept(e.priority) {
                                best = Some(e.priority);
                                break;
                            }
                        }
                        break;
                    }
                }
            }
        }
        Found::Match(best)
    }

    /// The first match by scanning every rule: the answer when a removed rule hid others from the
    /// trees, until the next rebuild.
    #[cold]
    fn scan(&self, key: &[K; FIELDS], from: u32, removed: &[u32], mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let start = self.entries.partition_point(|e| e.priority < from);
        self.entries[start..]
            .iter()
            .find(|e| e.matches(&self.multi, key) && removed.binary_search(&e.priority).is_err() && accept(e.priority))
            .map(|e| e.priority)
    }
}

/// Leaf entries a tree may hold per rule: bounds replication, which otherwise compounds with depth
/// (rules whose addresses are checked through IP sets span whole address ranges and are copied by
/// every port or protocol cut). Once spent, nodes become leaves.
const LEAF_BUDGET: usize = 16;

/// The state of one build: the rules (by priority) and what pruning found.
struct Builder<'a, K> {
    rules: &'a [TreeRule<K>],
    /// Per rule, its hull in every field, densely (the build reads these far more than anything).
    hulls: Vec<[(K, K); FIELDS]>,
    /// Per rule, whether it is one interval in every field (its hulls are the whole rule).
    single: Vec<bool>,
    /// `None`: prune nothing.
    restarts: Option<&'a [u32]>,
    /// `hides[i]`: rules were pruned behind rule `i`.
    hides: Vec<bool>,
}

impl<K: Key> Builder<'_, K> {
    /// Rule `c`'s intervals in field `f`.
    #[inline]
    fn intervals(&self, c: u32, f: usize) -> &[(K, K)] {
        let c = c as usize;
        if self.single[c] {
            std::slice::from_ref(&self.hulls[c][f])
        } else {
            &self.rules[c].fields[f]
        }
    }

    /// Whether rule `c` matches every key in `region`.
    fn covers(&self, c: u32, region: &[(K, K); FIELDS]) -> bool {
        region.iter().enumerate().all(|(f, &(lo, hi))| self.intervals(c, f).iter().any(|&(a, b)| a <= lo && hi <= b))
    }

    /// The candidates (rule indices in priority order) that can still match first somewhere in
    /// `region`: a rule that covers the region and is not `checked` hides the later rules up to
    /// the next restart point.
    fn visible(&mut self, cands: Vec<u32>, region: &[(K, K); FIELDS]) -> Vec<u32> {
        let Some(restarts) = self.restarts else { return cands };
        let mut out = Vec::with_capacity(cands.len());
        // (hiding rule, priority where its segment ends)
        let mut hiding: Option<(u32, u64)> = None;
        for c in cands {
            let r = &self.rules[c as usize];
            if let Some((by, end)) = hiding {
                if u64::from(r.priority) < end {
                    self.hides[by as usize] = true;
                    continue;
                }
                hiding = None;
            }
            out.push(c);
            if !r.checked && self.covers(c, region) {
                let next = restarts.partition_point(|&x| x <= r.priority);
                hiding = Some((c, restarts.get(next).map_or(u64::MAX, |&x| u64::from(x))));
            }
        }
        out
    }

    /// Builds the subtree for `cands` (rule indices in priority order) within `region`; returns
    /// its root. `budget` is the number of leaf entries the rest of the tree may still use.
    fn node(&mut self, t: &mut Tree<K>, cands: Vec<u32>, region: [(K, K); FIELDS], depth: usize, budget: &mut usize) -> Node {
        let cands = self.visible(cands, &region);
        let splittable = cands.len() > LEAF_SIZE && depth < MAX_DEPTH && *budget >= 2 * cands.len();
        let cut = if splittable { self.choose_cut(&cands, &region) } else { None };
        match cut {
            None => {
                let start = t.leaf_rules.len() as u32;
                *budget = budget.saturating_sub(cands.len());
                t.leaf_rules.extend_from_slice(&cands);
                Node::Leaf { start, len: cands.len() as u32 }
            }
            Some((field, points)) => {
                let start = t.points.len() as u32;
                t.points.extend_from_slice(&points);
                t.points.push(K::MIN);
                t.children.resize(t.points.len(), Node::Leaf { start: 0, len: 0 });
                let ranges = slices(&points, region[field]);
                // Deal the candidates (in priority order) to the children their intervals meet.
                let mut subs: Vec<Vec<u32>> = vec![Vec::new(); ranges.len()];
                for &c in &cands {
                    for &(lo, hi) in self.intervals(c, field) {
                        let (lo, hi) = (lo.max(region[field].0), hi.min(region[field].1));
                        if lo > hi {
                            continue;
                        }
                        for sub in &mut subs[slice_of(&points, lo)..=slice_of(&points, hi)] {
                            if sub.last() != Some(&c) {
                                sub.push(c);
                            }
                        }
                    }
                }
                for (i, ((lo, hi), sub)) in ranges.into_iter().zip(subs).enumerate() {
                    let mut reg = region;
                    reg[field] = (lo, hi);
                    let child = self.node(t, sub, reg, depth + 1, budget);
                    t.children[start as usize + i] = child;
                }
                Node::Cut { field: field as u8, n: points.len() as u8, start, best: self.rules[cands[0] as usize].priority }
            }
        }
    }

    /// Picks the field and cut points (up to [`MAX_FANOUT`] children) that leave the fullest child
    /// smallest, within the replication bound (counting each rule's hull); `None` when no cut makes
    /// progress.
    fn choose_cut(&self, cands: &[u32], region: &[(K, K); FIELDS]) -> Option<(usize, Vec<K>)> {
        let n = cands.len();
        let mut best: Option<(usize, usize, usize, Vec<K>)> = None; // (fullest child, total, field, points)
        let mut ends: Vec<K> = Vec::with_capacity(2 * n);
        let mut spans: Vec<(K, K)> = Vec::with_capacity(n);
        for (f, &(rlo, rhi)) in region.iter().enumerate() {
            if rlo == rhi {
                continue;
            }
            ends.clear();
            for &c in cands {
                for &(lo, hi) in self.intervals(c, f) {
                    if hi < rlo || lo > rhi {
                        continue;
                    }
                    if lo > rlo {
                        ends.push(lo.dec());
                    }
                    if hi < rhi {
                        ends.push(hi);
                    }
                }
            }
            if ends.is_empty() {
                continue;
            }
            ends.sort_unstable();
            ends.dedup();
            // Each candidate's span in this field (its hull within the region): the slices it
            // falls in are consecutive, so a difference array counts every slice in one pass.
            spans.clear();
            spans.extend(cands.iter().map(|&c| {
                let (lo, hi) = self.hulls[c as usize][f];
                (lo.max(rlo), hi.min(rhi))
            }));
            let mut fanout = MAX_FANOUT.min(ends.len() + 1);
            while fanout >= 2 {
                let mut points: Vec<K> = (1..fanout).map(|i| ends[i * ends.len() / fanout]).collect();
                points.dedup();
                let mut diff = vec![0isize; points.len() + 2];
                for &(lo, hi) in &spans {
                    diff[slice_of(&points, lo)] += 1;
                    diff[slice_of(&points, hi) + 1] -= 1;
                }
                let (mut max, mut total, mut running) = (0usize, 0usize, 0isize);
                for d in &diff[..=points.len()] {
                    running += d;
                    max = max.max(running as usize);
                    total += running as usize;
                }
                if max < n && (total as f64) <= MAX_REPLICATION * n as f64 {
                    if best.as_ref().is_none_or(|b| (max, total) < (b.0, b.1)) {
                        best = Some((max, total, f, points));
                    }
                    break;
                }
                fanout /= 2;
            }
        }
        best.map(|(_, _, f, p)| (f, p))
    }
}

/// The child ranges that cut points make of a region's field range.
fn slices<K: Key>(points: &[K], (rlo, rhi): (K, K)) -> Vec<(K, K)> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut lo = rlo;
    for &p in points {
        out.push((lo, p));
        lo = p.inc();
    }
    out.push((lo, rhi));
    out
}

/// Most children a node may have (a node's cut points stay within a few cache lines).
const MAX_FANOUT: usize = 64;
/// How much a cut may replicate rules: the children together hold at most this many times the
/// node's rules.
const MAX_REPLICATION: f64 = 2.0;

/// The index of the slice (child) that takes value `v`: the number of cut points below it.
#[inline]
fn slice_of<K: Key>(points: &[K], v: K) -> usize {
    points.partition_point(|&p| p < v)
}

/// The shape of one tree, for benchmark reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TreeShape {
    /// Distinct rules in the tree.
    pub rules: usize,
    /// Nodes (cuts and leaves).
    pub nodes: usize,
    /// Leaf entries (rules counted once per leaf holding them).
    pub leaf_entries: usize,
    /// Largest leaf.
    pub max_leaf: usize,
    /// Deepest leaf.
    pub depth: usize,
}

impl<K: Key> TreeClassifier<K> {
    /// The shape of each tree (one per rule partition).
    pub fn shape(&self) -> Vec<TreeShape> {
        self.base
            .trees
            .iter()
            .map(|t| {
                let mut shape = TreeShape { rules: 0, nodes: 0, leaf_entries: t.leaf_rules.len(), max_leaf: 0, depth: 0 };
                let mut stack = vec![(t.root, 0usize)];
                while let Some((n, d)) = stack.pop() {
                    shape.nodes += 1;
                    match n {
                        Node::Cut { start, n: cuts, .. } => stack.extend((0..=cuts as usize).map(|i| (t.children[start as usize + i], d + 1))),
                        Node::Leaf { len, .. } => {
                            shape.max_leaf = shape.max_leaf.max(len as usize);
                            shape.depth = shape.depth.max(d);
                        }
                    }
                }
                shape.rules = t.leaf_rules.iter().collect::<std::collections::HashSet<_>>().len();
                shape
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
