//! Baseline: tuple-space search (Srinivasan, Suri & Varghese, 1999) over (source prefix length,
//! destination prefix length) tuples, as Open vSwitch's classifier does: one hash table per tuple
//! keyed on the masked addresses, buckets checked for protocol and ports, tuples visited in order
//! of their best priority and skipped once they cannot beat the match found.

use crate::classbench::Filter;
use std::collections::HashMap;

struct Tuple {
    src_mask: u32,
    dst_mask: u32,
    best: u32,
    table: HashMap<(u32, u32), Vec<u32>>,
}

/// A tuple-space classifier over ClassBench filters (priority = position).
pub struct TupleSpace {
    filters: Vec<Filter>,
    tuples: Vec<Tuple>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

impl TupleSpace {
    /// Builds the tuple tables.
    pub fn build(filters: &[Filter]) -> Self {
        let mut by_tuple: HashMap<(u8, u8), Tuple> = HashMap::new();
        for (i, f) in filters.iter().enumerate() {
            let t = by_tuple.entry((f.src.1, f.dst.1)).or_insert_with(|| Tuple {
                src_mask: mask(f.src.1),
                dst_mask: mask(f.dst.1),
                best: i as u32,
                table: HashMap::new(),
            });
            t.table.entry((f.src.0 & t.src_mask, f.dst.0 & t.dst_mask)).or_default().push(i as u32);
        }
        let mut tuples: Vec<Tuple> = by_tuple.into_values().collect();
        tuples.sort_by_key(|t| t.best);
        TupleSpace { filters: filters.to_vec(), tuples }
    }

    /// The priority (position) of the first matching filter.
    pub fn lookup(&self, key: &[u32; 5]) -> Option<u32> {
        let mut best: Option<u32> = None;
        for t in &self.tuples {
            if best.is_some_and(|b| b <= t.best) {
                break;
            }
            let Some(bucket) = t.table.get(&(key[0] & t.src_mask, key[1] & t.dst_mask)) else { continue };
            for &i in bucket {
                if best.is_some_and(|b| b <= i) {
                    break;
                }
                let f = &self.filters[i as usize];
                let p = key[2];
                if f.proto.is_none_or(|fp| fp as u32 == p)
                    && (f.sport.0 as u32..=f.sport.1 as u32).contains(&key[3])
                    && (f.dport.0 as u32..=f.dport.1 as u32).contains(&key[4])
                {
                    best = Some(i);
                    break;
                }
            }
        }
        best
    }

    /// Number of tuples.
    pub fn tuples(&self) -> usize {
        self.tuples.len()
    }

    /// Approximate heap memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.filters.len() * std::mem::size_of::<Filter>()
            + self.tuples.iter().map(|t| t.table.capacity() * (8 + 24) + t.table.values().map(|b| b.capacity() * 4).sum::<usize>()).sum::<usize>()
    }
}
