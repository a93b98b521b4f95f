//! Palisade's dataplane library: policy compiled into classifiers.
//!
//! [`compile`] turns the policy model into one [`compile::Program`] per endpoint and direction;
//! [`classifier`] holds the lookup structures; [`ipset`] the selector and named-port sets that
//! programs share and that change without recompiling.

pub mod classifier;
pub mod compile;
pub mod ipset;
