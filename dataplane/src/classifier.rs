//! Packet classifiers: a first-match decision-tree classifier and, as baselines for benchmarks
//! and tests, a linear scan.

pub mod linear;
pub mod tree;
