//! The gRPC services: `Store` (apply, get, delete, as `palisadectl` uses them) and `Sync` (the
//! stream each node agent follows).
//!
//! A write is validated against the whole state it would produce — every manifest must load and
//! the result must build a cluster — and refused whole otherwise, with the errors naming the
//! resource and field; the datastore is never left holding a state agents cannot enforce.
//! `Sync` sends each agent its node's view (`palisade_policy::calc`) as Felix's dataplane
//! messages: a snapshot, `InSync`, then the differences after every change. A slow subscriber
//! skips intermediate states and is sent the difference to the latest.

use crate::felix;
use crate::proto::felix::{from_dataplane, to_dataplane::Payload, InSync, ToDataplane};
use crate::proto::store_server::{Store, StoreServer};
use crate::proto::sync_server::{Sync, SyncServer};
use crate::proto::{
    self, ApplyReply, ApplyRequest, DeleteReply, DeleteRequest, EndpointState, GetReply, GetRequest, NodeReport, NodeStatus, ReportReply,
    StatusReply, StatusRequest, SubscribeRequest,
};
use crate::store::{Change, Datastore, Key, State};
use crate::tls::{self, Peer, Security};
use palisade_policy::calc::{Changes, NodeView, PolicyRules, Shared};
use palisade_policy::convert::ConversionCache;
use palisade_policy::load::parse_documents;
use palisade_policy::model::Cluster;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The control plane: a datastore, the state it publishes, and that state's cluster model.
#[derive(Clone)]
pub struct Control {
    ds: Arc<dyn Datastore>,
    state: watch::Receiver<Arc<State>>,
    clusters: Arc<Clusters>,
    /// What each node's agent last reported.
    statuses: Arc<std::sync::Mutex<BTreeMap<String, NodeStatus>>>,
}

/// The cluster model of the latest state, built once per revision for every subscriber. A write
/// through this server already built the model of the state it produces (to validate it): that
/// model is kept and used for the revision the datastore gives the write, if the state published
/// at that revision holds exactly those manifests.
#[derive(Default)]
struct Clusters {
    cache: tokio::sync::Mutex<ClusterCache>,
    /// Policies converted by earlier builds (of writes to validate and of published states).
    converted: Arc<std::sync::Mutex<ConversionCache>>,
    /// Policies in IP-set form, converted for earlier revisions' views.
    rules: Arc<PolicyRules>,
}

#[derive(Default)]
struct ClusterCache {
    /// The model of the latest revision asked for.
    built: Option<Built>,
    /// The last write's revision, the state it validated, and that state's model.
    written: Option<(i64, State, Arc<Cluster>)>,
}

/// The model of one revision, with what its nodes' views share and what changed since the
/// revision built before it.
#[derive(Clone)]
struct Built {
    revision: i64,
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    /// The revision built before, and which views the change from it can touch.
    changes: Option<(i64, Arc<Changes>)>,
}

impl Clusters {
    async fn of(&self, state: Arc<State>) -> Result<Built, String> {
        let mut cache = self.cache.lock().await;
        if let Some(b) = cache.built.as_ref().filter(|b| b.revision == state.revision) {
            return Ok(b.clone());
        }
        let validated = cache.written.as_ref().filter(|(r, v, _)| *r == state.revision && same_manifests(v, &state)).map(|(_, _, c)| c.clone());
        let cluster = match validated {
            Some(c) => c,
            None => Arc::new(model_of((*state).clone(), self.converted.clone()).await?),
        };
        let changes = match cache.built.take() {
            Some(before) => {
                let (new, rules) = (cluster.clone(), self.rules.clone());
                let changes = tokio::task::spawn_blocking(move || Changes::between(&before.cluster, &new, &rules)).await.map_err(|e| e.to_string())?;
                Some((before.revision, Arc::new(changes)))
            }
            None => None,
        };
        let shared = Arc::new(Shared::reusing(&cluster, &self.rules));
        let built = Built { revision: state.revision, cluster, shared, changes };
        cache.built = Some(built.clone());
        Ok(built)
    }
}

/// The cluster model of `state`, built on a blocking thread (converting only the policies not in
/// `converted`), or the errors that keep it from loading, one per line.
async fn model_of(state: State, converted: Arc<std::sync::Mutex<ConversionCache>>) -> Result<Cluster, String> {
    let build = move || state.cluster(&mut converted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let built = tokio::task::spawn_blocking(build).await.map_err(|e| e.to_string())?;
    built.map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
}

/// Whether two states hold the same manifests under the same keys (revisions aside).
fn same_manifests(a: &State, b: &State) -> bool {
    a.resources.len() == b.resources.len()
        && a.resources.iter().zip(&b.resources).all(|((ka, sa), (kb, sb))| ka == kb && (Arc::ptr_eq(&sa.doc, &sb.doc) || sa.doc == sb.doc))
}

/// Messages buffered for one subscriber; a subscriber that falls further behind holds back only
/// its own stream, and is sent the difference to the latest state when it catches up.
const SUBSCRIBER_BUFFER: usize = 1024;

impl Control {
    /// Starts following `ds` (on the current tokio runtime).
    pub fn start(ds: Arc<dyn Datastore>) -> Control {
        let (tx, state) = watch::channel(Arc::new(State::default()));
        tokio::spawn(ds.clone().run(tx));
        Control { ds, state, clusters: Arc::default(), statuses: Arc::default() }
    }

    /// Serves both services on `listener` until the future is dropped, with mutual TLS when
    /// `tls` is given.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Result<(), tonic::transport::Error> {
        // Small messages go out at once (without it, Nagle's algorithm and delayed ACKs add
        // 40 ms to a request's reply).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder.add_service(StoreServer::new(self.clone())).add_service(SyncServer::new(self)).serve_with_incoming(incoming).await
    }

    /// Waits (up to 5 s) until the datastore has been read once.
    async fn ready(&self) -> Result<(), Status> {
        let mut rx = self.state.clone();
        let loaded = matches!(tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.revision > 0)).await, Ok(Ok(_)));
        if loaded {
            Ok(())
        } else {
            Err(Status::unavailable("the datastore has not been read yet"))
        }
    }

    /// Writes the changes if the state they produce loads; waits until the state shows them.
    async fn commit(&self, changes: Vec<Change>) -> Result<i64, Status> {
        self.ready().await?;
        let mut next = (**self.state.borrow()).clone();
        for (key, doc) in &changes {
            match doc {
                Some(d) => {
                    next.resources.insert(key.clone(), crate::store::Stored::new(key, d.clone(), 0));
                }
                None => {
                    next.resources.remove(key);
                }
            }
        }
        let cluster = model_of(next.clone(), self.clusters.converted.clone())
            .await
            .map_err(|msg| Status::invalid_argument(format!("the change was refused whole, the stored state is unchanged:\n{msg}")))?;
        let cluster = Arc::new(cluster);
        // Subscribers wait for the cache while the write is under way, so that the state it
        // produces is not built a second time.
        let revision = {
            let mut cache = self.clusters.cache.lock().await;
            let revision = self.ds.write(changes).await.map_err(Status::unavailable)?;
            cache.written = Some((revision, next, cluster));
            revision
        };
        let mut rx = self.state.clone();
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.revision >= revision)).await;
        if !matches!(seen, Ok(Ok(_))) {
            return Err(Status::unavailable(format!("revision {revision} was written but not seen back from the datastore")));
        }
        Ok(revision)
    }

    fn matching(&self, kind: &str, name: &str, namespace: &str) -> Vec<proto::Resource> {
        let state = self.state.borrow();
        state
            .resources
            .iter()
            .filter(|(k, _)| kind.is_empty() || k.kind.eq_ignore_ascii_case(kind))
            .filter(|(k, _)| name.is_empty() || k.name == name)
            .filter(|(k, _)| namespace.is_empty() || k.namespace == namespace || k.namespace.is_empty())
            .map(|(k, s)| to_proto(k, &s.doc, s.revision))
            .collect()
    }
}

fn to_proto(k: &Key, doc: &serde_json::Value, revision: i64) -> proto::Resource {
    proto::Resource { kind: k.kind.clone(), namespace: k.namespace.clone(), name: k.name.clone(), json: doc.to_string(), revision }
}

#[tonic::async_trait]
impl Store for Control {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        administrator(&req)?;
        let req = req.into_inner();
        let docs = parse_documents(&req.manifests).map_err(|errs| {
            let msg: Vec<String> = errs.iter().map(|e| format!("{}: {e}", req.source)).collect();
            Status::invalid_argument(msg.join("\n"))
        })?;
        if docs.is_empty() {
            return Err(Status::invalid_argument(format!("{}: no resources", req.source)));
        }
        let changes: Vec<Change> = docs.iter().map(|(r, doc)| (Key::of(r), Some(doc.clone()))).collect();
        let revision = self.commit(changes.clone()).await?;
        let applied = changes.iter().map(|(k, d)| to_proto(k, d.as_ref().expect("puts"), revision)).collect();
        Ok(Response::new(ApplyReply { applied, revision }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        administrator(&req)?;
        self.ready().await?;
        let r = req.into_inner();
        let resources = self.matching(&r.kind, &r.name, &r.namespace);
        if !r.name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!("{} {} not found", r.kind, r.name)));
        }
        Ok(Response::new(GetReply { resources, revision: self.state.borrow().revision }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        administrator(&req)?;
        let node = req.into_inner().node;
        let statuses = self.statuses.lock().expect("lock");
        let nodes = statuses.values().filter(|s| node.is_empty() || s.node == node).cloned().collect();
        Ok(Response::new(StatusReply { nodes }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        administrator(&req)?;
        let r = req.into_inner();
        if r.kind.is_empty() || r.name.is_empty() {
            return Err(Status::invalid_argument("delete needs a kind and a name"));
        }
        self.ready().await?;
        let deleted = self.matching(&r.kind, &r.name, &r.namespace);
        if deleted.is_empty() {
            return Err(Status::not_found(format!("{} {} not found", r.kind, r.name)));
        }
        let changes = deleted.iter().map(|d| (Key { kind: d.kind.clone(), namespace: d.namespace.clone(), name: d.name.clone() }, None)).collect();
        let revision = self.commit(changes).await?;
        Ok(Response::new(DeleteReply { deleted, revision }))
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ToDataplane, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for Control {
    type SubscribeStream = UpdateStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<UpdateStream>, Status> {
        let peer = tls::peer(&req);
        let node = req.into_inner().node;
        if node.is_empty() {
            return Err(Status::invalid_argument("subscribe needs the agent's node name"));
        }
        match peer {
            Peer::Plaintext | Peer::Admin => {}
            Peer::Node(n) if n == node => {}
            Peer::Node(n) => return Err(Status::permission_denied(format!("the certificate of node {n:?} may not follow node {node:?}"))),
            Peer::Other(cn) => return Err(Status::permission_denied(format!("certificate {cn:?} is not a node's"))),
        }
        eprintln!("palisade-control: node {node:?} subscribed");
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(follow_node(node, self.state.clone(), self.clusters.clone(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn report(&self, req: Request<tonic::Streaming<NodeReport>>) -> Result<Response<ReportReply>, Status> {
        let peer = tls::peer(&req);
        let mut reports = req.into_inner();
        let mut node: Option<String> = None;
        let result = async {
            while let Some(r) = reports.message().await? {
                match &peer {
                    Peer::Plaintext | Peer::Admin => {}
                    Peer::Node(n) if *n == r.node => {}
                    Peer::Node(n) => {
                        return Err(Status::permission_denied(format!("the certificate of node {n:?} may not report for node {:?}", r.node)))
                    }
                    Peer::Other(cn) => return Err(Status::permission_denied(format!("certificate {cn:?} is not a node's"))),
                }
                if node.as_ref().is_some_and(|n| *n != r.node) {
                    return Err(Status::invalid_argument("one report stream is one node's"));
                }
                let mut statuses = self.statuses.lock().expect("lock");
                if node.is_none() {
                    // A new stream starts with everything the agent knows.
                    statuses.insert(r.node.clone(), NodeStatus { node: r.node.clone(), connected: true, ..NodeStatus::default() });
                    node = Some(r.node.clone());
                }
                record(statuses.get_mut(&r.node).expect("inserted"), r.report.and_then(|m| m.payload));
            }
            Ok(())
        }
        .await;
        if let Some(n) = node {
            if let Some(st) = self.statuses.lock().expect("lock").get_mut(&n) {
                st.connected = false;
            }
        }
        result.map(|()| Response::new(ReportReply {}))
    }
}

/// Records one report in a node's status.
fn record(st: &mut NodeStatus, payload: Option<from_dataplane::Payload>) {
    use from_dataplane::Payload as P;
    let mut set = |endpoint: String, kind: &str, status: Option<String>| {
        st.endpoints.retain(|e| !(e.endpoint == endpoint && e.kind == kind));
        if let Some(status) = status {
            st.endpoints.push(EndpointState { endpoint, kind: kind.into(), status });
            st.endpoints.sort_by(|a, b| (&a.kind, &a.endpoint).cmp(&(&b.kind, &b.endpoint)));
        }
    };
    match payload {
        Some(P::DataplaneInSync(_)) => st.in_sync = true,
        Some(P::ProcessStatusUpdate(u)) => {
            st.last_heartbeat = u.iso_timestamp;
            st.uptime = u.uptime;
        }
        Some(P::WorkloadEndpointStatusUpdate(u)) => set(u.id.unwrap_or_default().workload_id, "workload", Some(u.status.unwrap_or_default().status)),
        Some(P::WorkloadEndpointStatusRemove(u)) => set(u.id.unwrap_or_default().workload_id, "workload", None),
        Some(P::HostEndpointStatusUpdate(u)) => set(u.id.unwrap_or_default().endpoint_id, "host", Some(u.status.unwrap_or_default().status)),
        Some(P::HostEndpointStatusRemove(u)) => set(u.id.unwrap_or_default().endpoint_id, "host", None),
        None => {}
    }
}

/// Refuses node agents' certificates (and any but the administrators') the store's services.
fn administrator<T>(req: &Request<T>) -> Result<(), Status> {
    match tls::peer(req) {
        Peer::Plaintext | Peer::Admin => Ok(()),
        Peer::Node(n) => Err(Status::permission_denied(format!("the certificate of node {n:?} may only follow its node's view"))),
        Peer::Other(cn) => Err(Status::permission_denied(format!("certificate {cn:?} is not the administrators'"))),
    }
}

/// Streams `node`'s view: the snapshot and `InSync`, then after every change of state the
/// messages that turn the view sent last into the new one (none when the change does not touch
/// the node; a view that [`Changes`] says the change cannot touch is not even computed again).
/// Ends when the subscriber goes away.
async fn follow_node(
    node: String,
    mut state: watch::Receiver<Arc<State>>,
    clusters: Arc<Clusters>,
    tx: tokio::sync::mpsc::Sender<Result<ToDataplane, Status>>,
) {
    let mut sent = NodeView::default();
    // The revision `sent` is the view of.
    let mut sent_revision = 0;
    let mut sequence = 0u64;
    let mut synced = false;
    loop {
        let current = state.borrow_and_update().clone();
        if current.revision > 0 {
            let revision = current.revision;
            match clusters.of(current).await {
                // A change that cannot touch this node's view sends nothing.
                Ok(b) if synced && b.changes.as_ref().is_some_and(|(from, c)| *from == sent_revision && !c.may_change(&node, &sent, &b.cluster, &b.shared)) => {
                    sent_revision = revision;
                }
                Ok(b) => {
                    let n = node.clone();
                    let Ok(view) = tokio::task::spawn_blocking(move || NodeView::compute_shared(&b.cluster, Some(&n), &b.shared)).await else { return };
                    let mut payloads = felix::diff(&sent, &view);
                    if !synced {
                        payloads.push(Payload::InSync(InSync {}));
                        synced = true;
                    }
                    let last = payloads.len();
                    for (i, payload) in payloads.into_iter().enumerate() {
                        sequence += 1;
                        // The revision marks the end of its batch: the view is then complete.
                        let palisade_revision = if i + 1 == last { revision } else { 0 };
                        let msg = ToDataplane { sequence_number: sequence, payload: Some(payload), palisade_revision };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    sent = view;
                    sent_revision = revision;
                }
                // Stored states were validated when written; a directory edited by hand is
                // validated before it is published. Keep the last view.
                Err(e) => eprintln!("palisade-control: revision {revision} does not build, node {node:?} keeps the last one: {e}"),
            }
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a control plane on `addr` with `ds` until the process ends (the binary's main loop).
pub async fn run(addr: SocketAddr, ds: Arc<dyn Datastore>, security: &Security) -> Result<(), String> {
    let tls = match security {
        Security::Tls(dir) => Some(crate::tls::server_config(dir)?),
        Security::Plaintext => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listening on {addr}: {e}"))?;
    let how = if tls.is_some() { "mutual TLS" } else { "plaintext" };
    eprintln!("palisade-control: serving on {} ({how})", listener.local_addr().map_err(|e| e.to_string())?);
    Control::start(ds).serve(listener, tls).await.map_err(|e| e.to_string())
}
