//! Palisade's dataplane: policy compiled into classifiers, and the AF_XDP packet path.
//!
//! Policy side: [`compile`] turns the policy model into one [`compile::Program`] per endpoint and
//! direction; [`classifier`] holds the lookup structures; [`ipset`] the selector and named-port
//! sets that programs share and that change without recompiling.
//!
//! Packet side, in the order a packet meets it: [`afxdp`] (one socket per interface and RX
//! queue), [`worker`] (one thread per queue), [`packet`] (parsing), [`conntrack`], [`datapath`]
//! (the per-packet decision and route), [`host`] (host endpoints: the decision, delivery to the
//! host through a TAP device, the host's own traffic), [`stats`]. [`agent`] turns manifests into the
//! [`datapath::Snapshot`] the workers read, and attaches XDP where endpoints appear.

pub mod afxdp;
pub mod agent;
pub mod classifier;
pub mod compile;
pub mod conntrack;
pub mod datapath;
pub mod felix_driver;
pub mod host;
pub mod ipset;
pub mod packet;
pub mod report;
pub mod stats;
pub mod worker;
