//! The resource store: what is stored ([`State`], a revisioned map of manifests by [`Key`]) and
//! where ([`Datastore`]: a manifests directory, read-only and watched, or etcd v3).
//!
//! A datastore publishes its whole state on a `watch` channel, at start and after every change;
//! writes go to the datastore and come back through that channel, so the channel is the one
//! source of truth for the server and its subscribers.

use palisade_policy::convert::ConversionCache;
use palisade_policy::load::{load_documents, resource_from_value, Error, Loaded};
use palisade_policy::model::Cluster;
use palisade_policy::resources::Resource;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Identifies a stored resource: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Kind, as in manifests.
    pub kind: String,
    /// Namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of a resource (a namespaced resource without a namespace is in `default`, as
    /// kubectl puts it).
    pub fn of(r: &Resource) -> Key {
        let m = r.metadata();
        let namespace = if r.is_namespaced() { m.namespace.clone().unwrap_or_else(|| "default".into()) } else { String::new() };
        Key { kind: r.kind().to_string(), namespace, name: m.name.clone() }
    }

    /// `kind/namespace/name`, `_` for no namespace: the etcd key suffix.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.kind, if self.namespace.is_empty() { "_" } else { &self.namespace }, self.name)
    }

    /// Reads [`Key::path`].
    pub fn parse(path: &str) -> Option<Key> {
        let mut it = path.splitn(3, '/');
        let (kind, ns, name) = (it.next()?, it.next()?, it.next()?);
        Some(Key { kind: kind.into(), namespace: if ns == "_" { String::new() } else { ns.into() }, name: name.into() })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A stored resource: its manifest, read once into the typed resource (or why it does not read),
/// shared by every state that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Its manifest.
    pub doc: Arc<Value>,
    /// The manifest as a typed resource, shared by every state holding this version of it (which
    /// lets a build reuse what it converted, see [`State::cluster`]).
    pub parsed: Result<Arc<Loaded>, Error>,
    /// The store revision that last changed it.
    pub revision: i64,
}

impl Stored {
    /// Reads `doc`, stored under `key` at `revision`.
    pub fn new(key: &Key, doc: Value, revision: i64) -> Stored {
        let parsed = resource_from_value(doc.clone(), &key.to_string()).map(|resource| Arc::new(Loaded { resource, file: None }));
        Stored { doc: Arc::new(doc), parsed, revision }
    }
}

/// Everything stored, at a revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The store's revision.
    pub revision: i64,
    /// The resources.
    pub resources: BTreeMap<Key, Stored>,
}

impl State {
    /// The cluster model of the state, or every error that keeps it from loading (each naming
    /// the resource and field). Policies that `cache` converted before are not converted again.
    pub fn cluster(&self, cache: &mut ConversionCache) -> Result<Cluster, Vec<Error>> {
        let mut loaded: Vec<Arc<Loaded>> = Vec::with_capacity(self.resources.len());
        let mut errors = Vec::new();
        for s in self.resources.values() {
            match &s.parsed {
                Ok(l) => loaded.push(l.clone()),
                Err(e) => errors.push(e.clone()),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        palisade_policy::convert::build_cluster_cached(&loaded, cache)
    }
}

/// A change to write: a manifest to store under its key, or `None` to delete the key.
pub type Change = (Key, Option<Value>);

/// Where resources are stored.
#[tonic::async_trait]
pub trait Datastore: Send + Sync + 'static {
    /// Writes the changes atomically; returns the new revision.
    async fn write(&self, changes: Vec<Change>) -> Result<i64, String>;

    /// Publishes the stored state on `tx` now and after every change, until `tx` has no
    /// receivers; reconnects by itself when the backend goes away.
    async fn run(self: Arc<Self>, tx: watch::Sender<Arc<State>>);
}

/// A directory of manifests (YAML or JSON files, recursively): read-only through the API, watched
/// for edits. A change that does not load is reported and skipped: the last good state stays.
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The store of `dir`.
    pub fn new(dir: PathBuf) -> DirStore {
        DirStore { dir }
    }

    fn load(&self, revision: i64) -> Result<State, Vec<Error>> {
        let docs = load_documents(&[&self.dir])?;
        let stored = |(l, doc): (Loaded, Value)| (Key::of(&l.resource), Stored { doc: Arc::new(doc), parsed: Ok(Arc::new(l)), revision });
        let state = State { revision, resources: docs.into_iter().map(stored).collect() };
        state.cluster(&mut ConversionCache::default())?;
        Ok(state)
    }
}

#[tonic::async_trait]
impl Datastore for DirStore {
    async fn write(&self, _changes: Vec<Change>) -> Result<i64, String> {
        Err(format!("the datastore is the manifests directory {}: edit its files instead", self.dir.display()))
    }

    async fn run(self: Arc<Self>, tx: watch::Sender<Arc<State>>) {
        let mut last = None;
        let mut revision = 0;
        while !tx.is_closed() {
            let now = palisade_policy::load::stamp(std::slice::from_ref(&self.dir));
            if last.as_ref() != Some(&now) {
                last = Some(now);
                match self.load(revision + 1) {
                    Ok(state) => {
                        revision += 1;
                        tx.send_replace(Arc::new(state));
                    }
                    Err(errs) => {
                        let msg: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                        eprintln!(
                            "palisade-control: rejected the manifests in {}, keeping revision {revision}:\n{}",
                            self.dir.display(),
                            msg.join("\n")
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Operations per etcd transaction (etcd's default limit).
const MAX_TXN_OPS: usize = 128;

/// etcd v3: each resource a key `<prefix><kind>/<namespace or _>/<name>` holding its manifest as
/// JSON; etcd's revisions are the store's. The state is read whole, then followed with a watch
/// from the next revision; after a disconnect or a compaction it is read whole again.
pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

impl EtcdStore {
    /// A store on these etcd endpoints (`http://127.0.0.1:2379`) under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
        EtcdStore { endpoints, prefix: prefix.to_string(), client: tokio::sync::Mutex::new(None) }
    }

    async fn client(&self) -> Result<etcd_client::Client, String> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
        let client = etcd_client::Client::connect(&self.endpoints, Some(opts)).await.map_err(|e| format!("etcd {:?}: {e}", self.endpoints))?;
        *c = Some(client.clone());
        Ok(client)
    }

    async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    /// Reads the whole state.
    async fn list(&self, client: &mut etcd_client::Client) -> Result<State, String> {
        let resp = client.get(self.prefix.as_str(), Some(etcd_client::GetOptions::new().with_prefix())).await.map_err(|e| e.to_string())?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut resources = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some((key, stored)) = self.decode(kv) {
                resources.insert(key, stored);
            }
        }
        Ok(State { revision, resources })
    }

    fn decode(&self, kv: &etcd_client::KeyValue) -> Option<(Key, Stored)> {
        let key = Key::parse(kv.key_str().ok()?.strip_prefix(&self.prefix)?)?;
        let doc = serde_json::from_slice(kv.value()).ok()?;
        let stored = Stored::new(&key, doc, kv.mod_revision());
        Some((key, stored))
    }

    /// Follows the state from `state` until the watch breaks or is compacted away (or nobody
    /// listens any more: `Ok`).
    async fn follow(&self, client: &mut etcd_client::Client, mut state: State, tx: &watch::Sender<Arc<State>>) -> Result<(), Broken> {
        let opts = etcd_client::WatchOptions::new().with_prefix().with_start_revision(state.revision + 1);
        let mut stream = match client.watch(self.prefix.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return Err(Broken::Lost(e.to_string(), Some(state))),
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(Broken::Lost("watch stream closed".into(), Some(state))),
                Err(e) => return Err(Broken::Lost(e.to_string(), Some(state))),
            };
            if resp.compact_revision() > 0 {
                return Err(Broken::Compacted(format!("revision {} was compacted (to {})", state.revision + 1, resp.compact_revision())));
            }
            if resp.canceled() {
                return Err(Broken::Lost("watch canceled".into(), Some(state)));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    etcd_client::EventType::Put => {
                        if let Some((key, stored)) = self.decode(kv) {
                            state.resources.insert(key, stored);
                        }
                    }
                    etcd_client::EventType::Delete => {
                        if let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)).and_then(Key::parse) {
                            state.resources.remove(&key);
                        }
                    }
                }
                state.revision = state.revision.max(kv.mod_revision());
            }
            if !resp.events().is_empty() {
                tx.send_replace(Arc::new(state.clone()));
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
    }
}

#[tonic::async_trait]
impl Datastore for EtcdStore {
    /// One transaction per 128 changes (etcd's default `--max-txn-ops`): a larger write reaches
    /// watchers in several revisions, each a state that was validated as a whole with the rest.
    async fn write(&self, changes: Vec<Change>) -> Result<i64, String> {
        let mut client = self.client().await?;
        let mut revision = 0;
        for chunk in changes.chunks(MAX_TXN_OPS) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|(key, doc)| {
                    let k = format!("{}{}", self.prefix, key.path());
                    match doc {
                        Some(d) => etcd_client::TxnOp::put(k, d.to_string(), None),
                        None => etcd_client::TxnOp::delete(k, None),
                    }
                })
                .collect();
            match client.txn(etcd_client::Txn::new().and_then(ops)).await {
                Ok(resp) => revision = resp.header().map_or(0, |h| h.revision()),
                Err(e) => {
                    self.forget_client().await;
                    return Err(format!("writing to etcd: {e}"));
                }
            }
        }
        Ok(revision)
    }

    async fn run(self: Arc<Self>, tx: watch::Sender<Arc<State>>) {
        let mut backoff = Duration::from_millis(100);
        // After a disconnect the watch resumes from the last revision seen; only when etcd has
        // compacted that revision away is the state read whole again.
        let mut known: Option<State> = None;
        while !tx.is_closed() {
            let result = async {
                let mut client = self.client().await?;
                let state = match known.take() {
                    Some(s) => s,
                    None => {
                        let s = self.list(&mut client).await?;
                        tx.send_replace(Arc::new(s.clone()));
                        s
                    }
                };
                self.follow(&mut client, state, &tx).await
            }
            .await;
            match result {
                Ok(()) => return,
                Err(Broken::Compacted(e)) => eprintln!("palisade-control: etcd: {e}; reading the whole state again"),
                Err(Broken::Lost(e, state)) => {
                    eprintln!("palisade-control: etcd: {e}; retrying in {backoff:?}");
                    known = state;
                    self.forget_client().await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
        }
    }
}

/// Why following etcd stopped.
enum Broken {
    /// The watch's start revision was compacted: read the whole state again.
    Compacted(String),
    /// The connection broke; the state seen so far, to resume from.
    Lost(String, Option<State>),
}

impl From<String> for Broken {
    fn from(e: String) -> Broken {
        Broken::Lost(e, None)
    }
}
