//! The Calico / Kubernetes policy model shared by every part of Palisade.
//!
//! Data flows one way: manifests are [`load`]ed into raw [`resources`], [`convert`]ed (validated
//! and normalized) into a [`model::Cluster`], which the reference evaluator ([`eval`]) interprets
//! and the dataplane's compiler turns into classifiers; [`host`] is the host-endpoint pipeline
//! (failsafes, untracked, pre-DNAT, normal and forward chains). [`selector`] is Calico's label-selector
//! language; [`flows`] reads the flow descriptions `palisadectl eval` takes.

pub mod calc;
pub mod convert;
pub mod eval;
pub mod flows;
pub mod host;
pub mod load;
pub mod model;
pub mod resources;
pub mod selector;

pub use load::Error;

/// Loads manifests from files and directories and builds the validated cluster model.
pub fn load_cluster<P: AsRef<std::path::Path>>(paths: &[P]) -> Result<model::Cluster, Vec<Error>> {
    let loaded = load::load_paths(paths)?;
    convert::build_cluster(&loaded)
}
