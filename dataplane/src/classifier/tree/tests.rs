use super::*;
use crate::classifier::linear::LinearClassifier;
use proptest::prelude::*;

/// Small field domains so that random keys hit rules often.
const DOMAIN: u32 = 64;

fn intervals() -> impl Strategy<Value = Intervals<u32>> {
    prop_oneof![
        Just(vec![(0, u32::MAX)]),
        (0..DOMAIN, 0..8u32).prop_map(|(lo, w)| vec![(lo, lo + w)]),
        (0..DOMAIN / 2, 0..4u32, 1..8u32).prop_map(|(lo, w, gap)| vec![(lo, lo + w), (lo + w + gap + 1, lo + w + gap + 3)]),
    ]
}

/// Rules whose priority is a multiple of 3 are `checked` (the lookup's `accept` may refuse them).
fn rule() -> impl Strategy<Value = TreeRule<u32>> {
    (0..500u32, [intervals(), intervals(), intervals(), intervals(), intervals()]).prop_map(|(priority, fields)| TreeRule {
        priority,
        fields,
        checked: priority.is_multiple_of(3),
    })
}

fn rules() -> impl Strategy<Value = Vec<TreeRule<u32>>> {
    prop::collection::vec(rule(), 0..120).prop_map(|mut v| {
        v.sort_by_key(|r| r.priority);
        v.dedup_by_key(|r| r.priority);
        v
    })
}

#[derive(Clone, Debug)]
enum Update {
    Insert(TreeRule<u32>),
    Remove(u32),
    /// Wait for the background rebuild and take it in.
    Settle,
}

fn update() -> impl Strategy<Value = Update> {
    prop_oneof![10 => rule().prop_map(Update::Insert), 10 => (0..500u32).prop_map(Update::Remove), 1 => Just(Update::Settle)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// After any sequence of updates, the tree finds exactly what a linear scan of the same
    /// rules finds, for any key, restart point and accept filter (refusing only checked rules).
    #[test]
    fn tree_equals_linear_scan(
        initial in rules(),
        updates in prop::collection::vec(update(), 0..200),
        keys in prop::collection::vec([0..DOMAIN + 4, 0..DOMAIN + 4, 0..DOMAIN + 4, 0..DOMAIN + 4, 0..DOMAIN + 4], 40),
        restarts in prop::collection::vec(0..520u32, 0..12),
        picks in prop::collection::vec(0..13usize, 40),
        reject in 0..7u32,
    ) {
        let mut tree = TreeClassifier::build(initial.clone(), &restarts);
        // Lookups start at 0 or at a restart point.
        let froms: Vec<u32> = picks.iter().map(|&i| restarts.get(i).copied().unwrap_or(0)).collect();
        let mut reference: std::collections::BTreeMap<u32, TreeRule<u32>> = initial.into_iter().map(|r| (r.priority, r)).collect();
        for u in updates {
            match u {
                Update::Insert(r) => {
                    reference.insert(r.priority, r.clone());
                    tree = tree.insert(r);
                }
                Update::Remove(p) => {
                    reference.remove(&p);
                    tree = tree.remove(p);
                }
                Update::Settle => tree = tree.settled(),
            }
        }
        let linear = LinearClassifier::build(reference.into_values().collect());
        prop_assert_eq!(tree.rules(), linear.rules().to_vec());
        // Rejecting checked rules whose priority is divisible by `reject` stands in for IP-set checks.
        let accept = |p: u32| reject == 0 || !p.is_multiple_of(3) || !p.is_multiple_of(reject + 1);
        for (key, &from) in keys.iter().zip(&froms) {
            prop_assert_eq!(tree.lookup(key, from, accept), linear.lookup(key, from, accept), "key {:?} from {}", key, from);
        }
        let single: Vec<Option<u32>> = keys.iter().map(|k| linear.lookup(k, froms[0], accept)).collect();
        for t in [&tree, &TreeClassifier::build(linear.rules().to_vec(), &restarts)] {
            let mut batch = vec![None; keys.len()];
            t.lookup_batch(&keys, froms[0], &mut batch, |_, p| accept(p));
            prop_assert_eq!(&batch, &single);
        }
    }
}

#[test]
fn empty_field_rules_never_match() {
    let t = TreeClassifier::<u32>::build(
        vec![TreeRule { priority: 1, fields: [vec![], vec![(0, 9)], vec![(0, 9)], vec![(0, 9)], vec![(0, 9)]], checked: false }],
        &[],
    );
    assert_eq!(t.lookup(&[0; FIELDS], 0, |_| true), None);
    assert!(t.rules().is_empty());
}

#[test]
fn large_overlays_are_rebuilt_into_the_trees() {
    let mut t = TreeClassifier::build(Vec::new(), &[]);
    for p in 0..(2 * OVERLAY_LIMIT as u32 + 5) {
        t = t.insert(TreeRule {
            priority: p,
            fields: [vec![(p, p)], vec![(0, u32::MAX)], vec![(6, 6)], vec![(0, 65535)], vec![(80, 80)]],
            checked: false,
        });
    }
    assert!(t.rebuild.is_some(), "no background rebuild started");
    assert_eq!(t.lookup(&[7, 1, 6, 1234, 80], 0, |_| true), Some(7), "found in the overlay");
    let before = t.overlay.len();
    let t = t.settled();
    assert!(t.base.entries.len() > OVERLAY_LIMIT, "the rebuild did not fold the overlay into the base");
    assert!(t.overlay.len() < before, "settling kept every change in the overlay");
    assert_eq!(t.lookup(&[7, 1, 6, 1234, 80], 0, |_| true), Some(7));
    assert_eq!(t.lookup(&[68, 1, 6, 1234, 80], 0, |_| true), Some(68));
    assert_eq!(t.lookup(&[7, 1, 17, 1234, 80], 0, |_| true), None);
}

fn everything(priority: u32) -> TreeRule<u32> {
    TreeRule { priority, fields: [vec![(0, u32::MAX)], vec![(0, u32::MAX)], vec![(0, 255)], vec![(0, 65535)], vec![(0, 65535)]], checked: false }
}

#[test]
fn rules_hidden_behind_a_removed_rule_are_found_again() {
    let t = TreeClassifier::build(vec![everything(1), everything(2)], &[]);
    assert_eq!(t.base.trees[0].leaf_rules.len(), 1, "rule 2 is hidden behind rule 1 in the tree");
    assert_eq!(t.lookup(&[1, 2, 6, 3, 4], 0, |_| true), Some(1));
    assert_eq!(t.remove(1).lookup(&[1, 2, 6, 3, 4], 0, |_| true), Some(2));
}

#[test]
fn rules_hide_others_only_up_to_the_next_restart_point() {
    let t = TreeClassifier::build(vec![everything(1), everything(2), everything(5)], &[3]);
    assert_eq!(t.base.trees[0].leaf_rules.len(), 2, "rule 1 hides rule 2 but not rule 5");
    assert_eq!(t.lookup(&[1, 2, 6, 3, 4], 3, |_| true), Some(5));
    let checked = TreeRule { checked: true, ..everything(1) };
    let t = TreeClassifier::build(vec![checked, everything(2)], &[]);
    assert_eq!(t.lookup(&[1, 2, 6, 3, 4], 0, |p| p != 1), Some(2), "a checked rule hides nothing");
}
