//! `palisade-control`: the resource store and the sync service for node agents.

use clap::Parser;

/// mimalloc: building cluster models and views allocates and frees millions of small objects,
/// which glibc's allocator handles at about half the speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use palisade_control::store::{Datastore, DirStore, EtcdStore};
use palisade_control::tls::Security;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Hold the cluster's resources (Kubernetes and Calico manifests) in a datastore, validate every
/// change against the whole state, and stream the state to palisade-dataplane node agents.
#[derive(Parser)]
#[command(name = "palisade-control", version)]
struct Args {
    /// Address to serve the store (palisadectl) and sync (agents) APIs on.
    #[arg(long, default_value = palisade_control::DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Datastore: a directory of manifests, watched for edits (read-only through the API).
    #[arg(long, conflicts_with = "etcd_endpoints", required_unless_present = "etcd_endpoints")]
    manifests: Option<PathBuf>,
    /// Datastore: etcd v3 endpoints (http://127.0.0.1:2379), comma-separated.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/palisade/v1/")]
    etcd_prefix: String,
    /// Mutual TLS with the PEM files of this directory (ca.pem, server.pem, server-key.pem;
    /// make one with `palisadectl certs DIR`). Agents and palisadectl need the CA's client
    /// certificate.
    #[arg(long, required_unless_present = "insecure")]
    tls_dir: Option<PathBuf>,
    /// Serve in plaintext, without TLS (tests, or a network you trust).
    #[arg(long, conflicts_with = "tls_dir")]
    insecure: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ds: Arc<dyn Datastore> = match args.manifests {
        Some(dir) => Arc::new(DirStore::new(dir)),
        None => Arc::new(EtcdStore::new(args.etcd_endpoints, &args.etcd_prefix)),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade-control: {e}");
            return ExitCode::FAILURE;
        }
    };
    let security = match args.tls_dir {
        Some(dir) => Security::Tls(dir),
        None => Security::Plaintext,
    };
    match runtime.block_on(palisade_control::server::run(args.listen, ds, &security)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-control: {e}");
            ExitCode::FAILURE
        }
    }
}
