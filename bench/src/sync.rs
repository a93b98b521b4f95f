//! The control-plane benchmark: how fast a policy change reaches enforcement, and how the sync
//! stream fans out to many agents.
//!
//! Everything runs in a network namespace of its own, on its loopback: a real etcd, a
//! `palisade-control` on it, and either one `palisade-dataplane --control` (change → enforced:
//! from the `apply` call to the agent's stats showing the new revision, the classifiers recompiled
//! and swapped) or many simulated agents, gRPC subscribers in this process (fan-out: from the
//! `apply` call to each subscriber receiving the new state).

use crate::forward;
use palisade_control::proto::felix::to_dataplane::Payload;
use palisade_control::proto::sync_client::SyncClient;
use palisade_control::proto::{ApplyRequest, SubscribeRequest};
use palisade_control::tls::Security;
use palisade_lab::dataplane::read_stats;
use palisade_lab::etcd::Etcd;
use palisade_lab::{ip_in, run_in, Netns};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The namespace with etcd and a control plane.
pub struct SyncRig {
    // Field order is drop order: processes before the namespace.
    control: Child,
    _etcd: Etcd,
    ns: Netns,
    url: String,
}

/// Fan-out figures.
#[derive(Debug)]
pub struct FanOut {
    /// From the first subscription to every subscriber holding the snapshot, ms.
    pub initial_sync_ms: f64,
    /// From `apply` to each subscriber holding the new state: median, 99th percentile and last, ms.
    pub delta_p50_ms: f64,
    /// 99th percentile.
    pub delta_p99_ms: f64,
    /// The last subscriber.
    pub delta_max_ms: f64,
    /// Resident memory of `palisade-control` after the change, MiB.
    pub server_rss_mib: f64,
    /// Bytes of one agent's snapshot (its messages up to InSync).
    pub state_bytes: usize,
    /// From `apply` of one pod's new labels to its node's agent receiving the change, ms.
    pub pod_change_ms: f64,
    /// Agents that were sent that change (those whose views it touches).
    pub pod_change_agents: usize,
}

/// The timed changes: edits of an existing policy, and new policies.
#[derive(Debug, Default)]
pub struct Timed {
    /// Edits of a policy's rule (same number of rules).
    pub edits: Vec<Change>,
    /// New policies.
    pub adds: Vec<Change>,
}

/// One timed change.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// Until `palisadectl apply`'s call returned (validated, written to etcd, seen back).
    pub applied: Duration,
    /// Until the agent enforced it.
    pub enforced: Duration,
}

impl SyncRig {
    /// Creates the namespace `name`, etcd and `control` (the palisade-control binary) in it.
    pub fn up(name: &str, control: &Path) -> Result<SyncRig, String> {
        let _ = palisade_lab::ip(&["netns", "del", name]);
        let ns = Netns::create(name).map_err(|e| e.to_string())?;
        ip_in(ns.name(), &["link", "set", "lo", "up"]).map_err(|e| e.to_string())?;
        let etcd = Etcd::start_in(Some(ns.name()))?;
        let url = "http://127.0.0.1:5473".to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(control)
            .args(["--etcd-endpoints", &etcd.url(), "--listen", "127.0.0.1:5473", "--insecure"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", control.display()))?;
        Ok(SyncRig { control: child, _etcd: etcd, ns, url })
    }

    /// Runs `f` on a tokio runtime in the namespace.
    fn in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
    ) -> Result<T, String> {
        let url = self.url.clone();
        run_in(self.ns.name(), move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(f(url))
        })
        .map_err(|e| e.to_string())
    }

    /// Applies manifests (retrying while the control plane starts); returns the revision.
    pub fn apply(&self, manifests: String) -> Result<i64, String> {
        self.in_ns(move |url| {
            Box::pin(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let tried = async {
                        let mut c = palisade_control::client::store(&url, &Security::Plaintext).await?;
                        let req = ApplyRequest { manifests: manifests.clone(), source: "bench".into() };
                        c.apply(req).await.map(|r| r.into_inner().revision).map_err(|e| e.message().to_string())
                    }
                    .await;
                    match tried {
                        Ok(r) => return Ok(r),
                        Err(e) if Instant::now() > deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })?
    }

    /// Loads a policy of `rules` rules, starts `dataplane` following the control plane, then
    /// times `edits` edits of a one-rule policy (created before timing) and `adds` new one-rule
    /// policies, from `apply` (on one connection, as a controller keeps it) to enforcement.
    pub fn change_to_enforced(&self, dataplane: &Path, rules: usize, edits: usize, adds: usize) -> Result<Timed, String> {
        self.apply(forward::cluster(rules))?;
        let stats = PathBuf::from(format!("/run/palisade/{}.sock", self.ns.name()));
        let mut agent = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(dataplane)
            .args(["--control", &self.url, "--node", "node1", "--queues", "1", "--stats-socket"])
            .arg(&stats)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", dataplane.display()))?;
        let result = self.in_ns(move |url| {
            Box::pin(async move {
                // The datastore revision the agent enforces, once in sync.
                let applied = || {
                    read_stats(&stats)
                        .ok()
                        .filter(|v| v["status"]["in_sync"].as_bool() == Some(true))
                        .and_then(|v| v["status"]["applied_revision"].as_i64())
                        .unwrap_or(0)
                };
                let wait = |revision: i64, limit: Duration| -> Result<(), String> {
                    let deadline = Instant::now() + limit;
                    while applied() < revision {
                        if Instant::now() > deadline {
                            return Err(format!("the agent did not apply revision {revision} within {limit:?}"));
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Ok(())
                };
                wait(1, Duration::from_secs(60))?;
                let mut client = palisade_control::client::store(&url, &Security::Plaintext).await?;
                let policy = |name: &str, port: usize| {
                    format!(
                        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: app == 'sink'\n  order: 1\n  types: [Ingress]\n  ingress:\n    - {{action: Deny, protocol: TCP, destination: {{ports: [{port}]}}}}\n"
                    )
                };
                // The first creates the edited policy, untimed.
                let changes = std::iter::once((None, policy("toggle", 999)))
                    .chain((0..edits).map(|i| (Some(false), policy("toggle", 1000 + i))))
                    .chain((0..adds).map(|i| (Some(true), policy(&format!("added-{i}"), 2000 + i))));
                let mut out = Timed::default();
                for (added, manifest) in changes {
                    let t = Instant::now();
                    let req = ApplyRequest { manifests: manifest, source: "bench".into() };
                    let revision = client.apply(req).await.map_err(|e| e.message().to_string())?.into_inner().revision;
                    let applied = t.elapsed();
                    wait(revision, Duration::from_secs(30))?;
                    let change = Change { applied, enforced: t.elapsed() };
                    match added {
                        Some(false) => out.edits.push(change),
                        Some(true) => out.adds.push(change),
                        None => {}
                    }
                }
                Ok(out)
            })
        });
        let _ = agent.kill();
        let _ = agent.wait();
        result?
    }

    /// Loads `pods` pods and `policies` policies, subscribes `agents` simulated agents, then
    /// applies one change and times its delivery to each.
    pub fn fan_out(&self, agents: usize, pods: usize, policies: usize) -> Result<FanOut, String> {
        self.apply(big_cluster(pods, policies))?;
        let control_pid = self.control.id();
        self.in_ns(move |url| {
            Box::pin(async move {
                let start = Instant::now();
                // (agent, revision, arrival, bytes, whether it is the snapshot's InSync)
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, i64, Instant, usize, bool)>();
                let mut tasks = Vec::new();
                for a in 0..agents {
                    let (url, tx) = (url.clone(), tx.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut client = SyncClient::connect(url).await.map_err(|e| e.to_string())?.max_decoding_message_size(1 << 30);
                        let mut stream = client.subscribe(SubscribeRequest { node: format!("node{a}") }).await.map_err(|e| e.to_string())?.into_inner();
                        while let Some(m) = stream.message().await.map_err(|e| e.to_string())? {
                            let bytes = prost::Message::encoded_len(&m);
                            let in_sync = matches!(m.payload, Some(Payload::InSync(_)));
                            if tx.send((a, m.palisade_revision, Instant::now(), bytes, in_sync)).is_err() {
                                break;
                            }
                        }
                        Ok::<(), String>(())
                    }));
                }
                drop(tx);
                // Everyone holds the snapshot.
                let mut snapshot_bytes = vec![0usize; agents];
                let mut synced = 0;
                let mut initial = 0.0;
                while synced < agents {
                    let next = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
                    let Ok(Some((a, _, at, bytes, in_sync))) = next else {
                        return Err(format!("{synced} of {agents} subscribers were in sync when the stream stopped (ended or silent for 60 s)"));
                    };
                    snapshot_bytes[a] += bytes;
                    if in_sync {
                        synced += 1;
                        initial = (at - start).as_secs_f64() * 1e3;
                    }
                }
                let state_bytes = snapshot_bytes.iter().sum::<usize>() / agents;
                let change = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: fan-out-change}\nspec:\n  selector: all()\n  types: [Ingress]\n  ingress: [{action: Allow}]\n";
                let mut c = palisade_control::client::store(&url, &Security::Plaintext).await?;
                let t = Instant::now();
                let revision = c.apply(ApplyRequest { manifests: change.into(), source: "bench".into() }).await.map_err(|e| e.message().to_string())?.into_inner().revision;
                let mut latency = vec![None; agents];
                let mut done = 0;
                while done < agents {
                    let next = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
                    let Ok(Some((a, rev, at, _, _))) = next else {
                        return Err(format!("{done} of {agents} subscribers had the change when the stream stopped (ended or silent for 60 s)"));
                    };
                    if rev >= revision && latency[a].is_none() {
                        latency[a] = Some((at - t).as_secs_f64() * 1e3);
                        done += 1;
                    }
                }
                // One pod relabelled: only the agents whose views it touches hear of it.
                let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p0, namespace: ns0, labels: {app: relabelled}}\nspec: {nodeName: node0, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.100.0.0}\n";
                let t = Instant::now();
                let revision = c.apply(ApplyRequest { manifests: pod.into(), source: "bench".into() }).await.map_err(|e| e.message().to_string())?.into_inner().revision;
                let mut touched = std::collections::BTreeSet::new();
                let mut own = None;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while own.is_none() || tokio::time::Instant::now() < deadline.min(tokio::time::Instant::from_std(t + Duration::from_secs(1))) {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some((a, rev, at, _, _))) if rev >= revision => {
                            touched.insert(a);
                            if a == 0 {
                                own = Some((at - t).as_secs_f64() * 1e3);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let pod_change_ms = own.ok_or("the relabelled pod's node did not hear of it within 10 s")?;
                for task in tasks {
                    task.abort();
                }
                let mut l: Vec<f64> = latency.into_iter().flatten().collect();
                l.sort_by(f64::total_cmp);
                let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize];
                let rss = std::fs::read_to_string(format!("/proc/{control_pid}/status"))
                    .ok()
                    .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
                    .unwrap_or(0.0);
                Ok(FanOut {
                    initial_sync_ms: initial,
                    delta_p50_ms: pct(0.5),
                    delta_p99_ms: pct(0.99),
                    delta_max_ms: pct(1.0),
                    server_rss_mib: rss / 1024.0,
                    state_bytes,
                    pod_change_ms,
                    pod_change_agents: touched.len(),
                })
            })
        })?
    }
}

impl Drop for SyncRig {
    fn drop(&mut self) {
        let _ = self.control.kill();
        let _ = self.control.wait();
    }
}

/// A cluster of `pods` pods in 10 namespaces and `policies` namespaced policies selecting them.
fn big_cluster(pods: usize, policies: usize) -> String {
    let mut s = String::new();
    for n in 0..10 {
        s += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{n}}}}}\n---\n");
    }
    for p in 0..pods {
        let ip = format!("10.{}.{}.{}", 100 + p / 65536, (p / 256) % 256, p % 256);
        s += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{}, labels: {{app: a{}}}}}\nspec: {{nodeName: node{}, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{podIP: {ip}}}\n---\n",
            p % 10,
            p % 50,
            p % 1000
        );
    }
    for q in 0..policies {
        s += &format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: pol{q}, namespace: ns{}}}\nspec:\n  selector: app == 'a{}'\n  ingress:\n    - {{action: Allow, protocol: TCP, source: {{selector: app == 'a{}'}}, destination: {{ports: [80]}}}}\n---\n",
            q % 10,
            q % 50,
            (q + 1) % 50
        );
    }
    s
}
