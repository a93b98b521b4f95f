//! Benchmark building blocks: ClassBench rule sets and traces, a Kubernetes-shaped cluster
//! generator, the tuple-space-search baseline, the packet-rate rigs (forwarding, local delivery)
//! and the result plot. The `palisade-bench` binary
//! and the criterion benches use them.

pub mod classbench;
pub mod forward;
pub mod k8s;
pub mod local;
pub mod plot;
pub mod sync;
mod traffic;
pub mod tss;
