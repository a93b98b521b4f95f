//! Palisade's control plane.
//!
//! Data flows one way: a [`store::Datastore`] (a manifests directory or etcd v3) publishes the
//! stored [`store::State`]; the [`server`] validates writes against it, computes each subscribed
//! node's view (`palisade_policy::calc`) and streams the differences as Felix's dataplane
//! messages ([`felix`]); [`client`] is what `palisadectl` and the agents use; [`tls`] secures
//! them (mutual TLS).

pub mod client;
pub mod felix;
pub mod server;
pub mod store;
pub mod tls;

/// The gRPC messages and services: Palisade's own (`proto/palisade.proto`, re-exported here) and
/// Felix's dataplane protocol (`proto/felixbackend.proto`, in [`proto::felix`]).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    /// Felix's dataplane messages.
    pub mod felix {
        tonic::include_proto!("felix");
    }
    /// Palisade's store and sync services.
    pub mod palisade {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("palisade.v1");
        }
    }
    pub use palisade::v1::*;
}

/// The control plane's default address (Typha's port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:5473";
