//! The control plane against a real etcd (Debian's etcd-server, started on loopback by the test):
//! writes are validated whole, read back, deleted; a subscribing node gets its view (as Felix's
//! dataplane messages) after every change and reconnects after the control plane restarts; after etcd restarts the control plane resumes and
//! keeps serving. Also the manifests-directory datastore: read-only, watched, a bad file keeps
//! the last good state.

use palisade_control::client::{self, Event};
use palisade_control::felix;
use palisade_control::proto::{ApplyRequest, DeleteRequest, GetRequest};
use palisade_control::server::Control;
use palisade_control::store::{Datastore, DirStore, EtcdStore};
use palisade_control::tls::{self, Security};
use palisade_lab::etcd::Etcd;
use palisade_policy::calc::NodeView;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n---
apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod, labels: {app: web}}\nspec: {nodeName: node1}\nstatus: {podIP: 10.0.0.1}\n";
const POLICY: &str =
    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  selector: app == 'web'\n  types: [Ingress]\n";
const BAD: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: broken}\nspec:\n  selector: \"app == \"\n";

/// A control plane served from a runtime of its own (dropping it stops the server).
struct Server {
    runtime: tokio::runtime::Runtime,
    url: String,
}

fn serve(ds: Arc<dyn Datastore>, port: u16) -> Server {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(async move { Control::start(ds).serve(listener, None).await });
    Server { runtime, url }
}

impl Server {
    fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }

    fn apply(&self, manifests: &str) -> Result<i64, String> {
        self.runtime.block_on(async {
            let mut c = client::store(&self.url, &Security::Plaintext).await?;
            let r = c.apply(ApplyRequest { manifests: manifests.into(), source: "test.yaml".into() }).await.map_err(|e| e.message().to_string())?;
            Ok(r.into_inner().revision)
        })
    }

    fn names(&self, kind: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let mut c = client::store(&self.url, &Security::Plaintext).await.expect("connect");
            let r = c.get(GetRequest { kind: kind.into(), ..Default::default() }).await.expect("get").into_inner();
            r.resources.into_iter().map(|r| r.name).collect()
        })
    }

    fn delete(&self, kind: &str, name: &str) -> Result<i64, String> {
        self.runtime.block_on(async {
            let mut c = client::store(&self.url, &Security::Plaintext).await?;
            let r = c
                .delete(DeleteRequest { kind: kind.into(), name: name.into(), namespace: String::new() })
                .await
                .map_err(|e| e.message().to_string())?;
            Ok(r.into_inner().revision)
        })
    }
}

/// An agent's side of the sync stream: node1's view, rebuilt from the messages.
struct Follower {
    events: Receiver<Event>,
    view: felix::Receiver,
}

impl Follower {
    fn new(url: &str, stop: &Arc<AtomicBool>) -> Follower {
        let events = client::follow(url.to_string(), "node1".into(), Security::Plaintext, stop.clone()).expect("follow");
        Follower { events, view: felix::Receiver::new() }
    }

    /// Waits until the view is in sync at `revision` or later.
    fn at(&mut self, revision: i64) -> NodeView {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self.view.view().filter(|_| self.view.in_sync() && self.view.revision() >= revision) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left).unwrap_or_else(|e| panic!("no view at revision {revision}: {e}")) {
                Event::Restarted => self.view.restart(),
                Event::Message(m) => self.view.apply(*m).expect("the control plane sends valid messages"),
            }
        }
    }
}

fn policies(v: &NodeView) -> Vec<&str> {
    v.policies.keys().map(|id| id.name.as_str()).collect()
}

#[test]
fn etcd_store_validates_writes_streams_states_and_survives_restarts() {
    let mut etcd = Etcd::start().expect("etcd");
    let ds: Arc<dyn Datastore> = Arc::new(EtcdStore::new(vec![etcd.url()], "/palisade/v1/"));
    let server = serve(ds.clone(), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut follower = Follower::new(&server.url, &stop);

    let r1 = server.apply(&format!("{NS}---\n{POLICY}")).expect("valid manifests are stored");
    assert_eq!(server.names("GlobalNetworkPolicy"), ["deny-web"]);
    assert_eq!(server.names("namespace"), ["prod"], "kinds are case-insensitive");
    let v = follower.at(r1);
    assert_eq!(v.endpoints.keys().collect::<Vec<_>>(), ["prod/web"], "node1's pod: {v:?}");
    assert_eq!(policies(&v), ["deny-web"], "the policy selecting it: {v:?}");

    let err = server.apply(BAD).expect_err("an invalid policy is refused");
    assert!(err.contains("GlobalNetworkPolicy broken") && err.contains("spec.selector"), "the error names resource and field: {err}");
    assert_eq!(server.names("GlobalNetworkPolicy"), ["deny-web"], "the refused change stored nothing");

    // The control plane restarts on the same port: the state is still in etcd, and the
    // subscriber reconnects by itself.
    let port = server.port();
    drop(server);
    let server = serve(ds, port);
    assert_eq!(server.names("GlobalNetworkPolicy"), ["deny-web"], "the state survived the control plane's restart");
    let r2 = server.delete("GlobalNetworkPolicy", "deny-web").expect("delete");
    assert!(r2 > r1);
    let v = follower.at(r2);
    assert!(v.policies.is_empty() && v.endpoints[&"prod/web".to_string()].tiers.is_empty(), "the reconnected subscriber sees the deletion: {v:?}");

    // etcd goes away: writes fail cleanly; back on the same data, the control plane resumes.
    etcd.stop();
    assert!(server.apply(POLICY).is_err(), "no datastore, no write");
    etcd.restart().expect("etcd restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    let r3 = loop {
        match server.apply(POLICY) {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "the control plane never got etcd back: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(r3 > r2, "revisions keep growing across the restart");
    let v = follower.at(r3);
    assert_eq!(policies(&v), ["deny-web"], "the resumed watch delivered the new policy: {v:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn manifests_directory_is_watched_and_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ns.yaml"), NS).expect("write");
    let server = serve(Arc::new(DirStore::new(dir.path().to_path_buf())), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut follower = Follower::new(&server.url, &stop);
    let v = follower.at(1);
    assert_eq!((v.endpoints.len(), v.policies.len()), (1, 0), "{v:?}");

    let err = server.apply(POLICY).expect_err("read-only");
    assert!(err.contains("manifests directory"), "{err}");

    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write");
    let v = follower.at(2);
    assert_eq!(policies(&v), ["deny-web"], "an added file is picked up");

    std::fs::write(dir.path().join("broken.yaml"), BAD).expect("write");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(server.names("GlobalNetworkPolicy"), ["deny-web"], "a bad file keeps the last good state");
    std::fs::remove_file(dir.path().join("broken.yaml")).expect("rm");
    std::fs::write(dir.path().join("policy.yaml"), POLICY.replace("deny-web", "deny-web-2")).expect("write");
    let v = follower.at(3);
    assert_eq!(policies(&v), ["deny-web-2"], "edits apply: {v:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn mutual_tls_admits_only_clients_the_ca_signed_and_nodes_only_to_their_view() {
    let certs = tempfile::tempdir().expect("tempdir");
    tls::generate(certs.path(), &[], &["node1".to_string()]).expect("certificates");
    let strangers = tempfile::tempdir().expect("tempdir");
    tls::generate(strangers.path(), &[], &[]).expect("other certificates");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ns.yaml"), NS).expect("write");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).expect("bind");
    let url = format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let config = tls::server_config(certs.path()).expect("server TLS");
    let store = Arc::new(DirStore::new(dir.path().to_path_buf()));
    runtime.spawn(async move { Control::start(store).serve(listener, Some(config)).await });
    let get = |security: Security, url: String| {
        runtime.block_on(async move {
            let mut c = client::store(&url, &security).await?;
            c.get(GetRequest::default()).await.map(|r| r.into_inner().resources.len()).map_err(|e| e.to_string())
        })
    };
    assert_eq!(
        get(Security::Tls(certs.path().to_path_buf()), url.clone()),
        Ok(2),
        "a client with the CA's certificate is served (both stored resources)"
    );
    assert!(get(Security::Tls(strangers.path().to_path_buf()), url.clone()).is_err(), "a client of another CA is refused");
    assert!(get(Security::Plaintext, url.replace("https", "http")).is_err(), "plaintext is refused");

    // A node agent's certificate: its own node's view, nothing else.
    let node1 = Security::Tls(certs.path().join("nodes/node1"));
    let err = get(node1.clone(), url.clone()).expect_err("a node may not read the store");
    assert!(err.contains("PermissionDenied") || err.contains("may only follow"), "{err}");
    let subscribe = |security: Security, node: &str| {
        let (url, node) = (url.clone(), node.to_string());
        runtime.block_on(async move {
            let mut c = palisade_control::proto::sync_client::SyncClient::new(client::channel(&url, &security).await?);
            let mut stream = c.subscribe(palisade_control::proto::SubscribeRequest { node }).await.map_err(|e| e.message().to_string())?.into_inner();
            // The first message of the view arrives.
            stream.message().await.map_err(|e| e.message().to_string())?.ok_or("no message".to_string()).map(|_| ())
        })
    };
    assert_eq!(subscribe(node1.clone(), "node1"), Ok(()), "node1 follows its own view");
    let err = subscribe(node1, "node2").expect_err("node1 may not follow node2");
    assert!(err.contains("node \"node1\" may not follow node \"node2\""), "{err}");
    assert_eq!(subscribe(Security::Tls(certs.path().to_path_buf()), "node2"), Ok(()), "the administrators' certificate may follow any node");
}
