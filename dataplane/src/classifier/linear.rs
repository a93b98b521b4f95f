//! The baseline: check every rule in priority order.

use super::tree::{Key, TreeRule, FIELDS};

/// A linear-scan first-match classifier over the same rules as the tree.
#[derive(Clone, Debug)]
pub struct LinearClassifier<K> {
    rules: Vec<TreeRule<K>>,
}

impl<K: Key> LinearClassifier<K> {
    /// Builds from rules in any order.
    pub fn build(mut rules: Vec<TreeRule<K>>) -> Self {
        rules.sort_by_key(|r| r.priority);
        LinearClassifier { rules }
    }

    /// The priority of the first rule with priority `>= from` that matches and is accepted.
    pub fn lookup(&self, key: &[K; FIELDS], from: u32, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        self.rules.iter().find(|r| r.priority >= from && r.matches(key) && accept(r.priority)).map(|r| r.priority)
    }

    /// The rules, sorted by priority.
    pub fn rules(&self) -> &[TreeRule<K>] {
        &self.rules
    }
}
