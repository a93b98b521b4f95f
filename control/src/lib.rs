//! Palisade's control plane.
//!
//! Data flows one way: a [`store::Datastore`] (a manifests directory or etcd v3) publishes the
//! stored [`store::State`]; the [`server`] validates writes against it and streams it to node
//! agents; [`client`] is what `palisadectl` and the agents use; [`tls`] secures them (mutual TLS).

pub mod client;
pub mod server;
pub mod store;
pub mod tls;

/// The gRPC messages and services of `proto/palisade.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("palisade.v1");
}

/// The control plane's default address (Typha's port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:5473";
