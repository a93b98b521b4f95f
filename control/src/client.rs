//! Clients of the control plane: `palisadectl` (the store) and the node agent (its node's sync
//! stream, followed from a thread of its own with reconnection).

use crate::proto::felix::{FromDataplane, ToDataplane};
use crate::proto::store_client::StoreClient;
use crate::proto::sync_client::SyncClient;
use crate::proto::{NodeReport, SubscribeRequest};
use crate::tls::{self, Security};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A channel to the control plane at `url` (`http://…` in plaintext, `https://…` with TLS).
pub async fn channel(url: &str, security: &Security) -> Result<Channel, String> {
    let context = |e: &dyn std::fmt::Display| format!("connecting to the control plane at {url}: {e}");
    let mut endpoint = Channel::from_shared(url.to_string()).map_err(|e| context(&e))?;
    if let Security::Tls(dir) = security {
        endpoint = endpoint.tls_config(tls::client_config(dir)?).map_err(|e| context(&e))?;
    }
    endpoint.connect().await.map_err(|e| context(&e))
}

/// Connects to the store service at `url`.
pub async fn store(url: &str, security: &Security) -> Result<StoreClient<Channel>, String> {
    Ok(StoreClient::new(channel(url, security).await?))
}

/// What the sync thread passes on to the agent.
#[derive(Debug)]
pub enum Event {
    /// A new stream began: a fresh snapshot follows (the agent stages it from scratch and keeps
    /// enforcing what it has until that snapshot's `InSync`).
    Restarted,
    /// A message of the stream.
    Message(Box<ToDataplane>),
}

/// Follows `node`'s view from the control plane at `url` in a thread of its own: every message
/// is sent on the returned channel, each new stream announced by [`Event::Restarted`]. It
/// reconnects (backing off from 100 ms to 2 s) whenever the stream breaks, and stops when `stop`
/// is set or the receiver is dropped.
pub fn follow(url: String, node: String, security: Security, stop: Arc<AtomicBool>) -> std::io::Result<mpsc::Receiver<Event>> {
    let (tx, rx) = mpsc::channel();
    let what = format!("control plane {url}");
    let stop2 = stop.clone();
    reconnecting("palisade-sync", what, stop, async move |backoff: &mut Duration| stream(&url, &node, &security, &tx, &stop2, backoff).await)?;
    Ok(rx)
}

/// Runs `once` in a thread of its own (on a runtime of its own) until it returns `Ok` or `stop`
/// is set, again after each `Err`, backing off from 100 ms to 2 s (`once` may reset the backoff
/// once it is connected).
fn reconnecting(
    thread: &str,
    what: String,
    stop: Arc<AtomicBool>,
    mut once: impl AsyncFnMut(&mut Duration) -> Result<(), String> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(thread.into()).spawn(move || {
        runtime.block_on(async move {
            let mut backoff = Duration::from_millis(100);
            while !stop.load(Ordering::Relaxed) {
                match once(&mut backoff).await {
                    Ok(()) => return,
                    Err(e) => eprintln!("palisade-dataplane: {what}: {e}; retrying in {backoff:?}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })
    })?;
    Ok(())
}

/// One subscription: `Ok` when told to stop, `Err` when the stream broke.
async fn stream(
    url: &str,
    node: &str,
    security: &Security,
    tx: &mpsc::Sender<Event>,
    stop: &AtomicBool,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut client = SyncClient::new(channel(url, security).await?).max_decoding_message_size(1 << 30);
    let mut updates = client.subscribe(SubscribeRequest { node: node.to_string() }).await.map_err(|e| e.to_string())?.into_inner();
    if tx.send(Event::Restarted).is_err() {
        return Ok(());
    }
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), updates.message()).await;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Ok(next) = next else { continue };
        let Some(msg) = next.map_err(|e| e.to_string())? else { return Err("the stream ended".into()) };
        *backoff = Duration::from_millis(100);
        if tx.send(Event::Message(Box::new(msg))).is_err() {
            return Ok(());
        }
    }
}

/// Sends the agent's reports for `node` to the control plane at `url` from a thread of its own:
/// what is sent on the returned channel goes out on a `Report` stream. Each new stream (after a
/// reconnection, backing off from 100 ms to 2 s) starts with the latest report of every kind
/// (in sync, heartbeat, each endpoint's status), so the control plane always holds the whole
/// picture. Stops when `stop` is set or the sender is dropped.
pub fn report(
    url: String,
    node: String,
    security: Security,
    stop: Arc<AtomicBool>,
) -> std::io::Result<tokio::sync::mpsc::UnboundedSender<FromDataplane>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<FromDataplane>();
    let mut latest = Latest::default();
    let what = format!("reporting to {url}");
    let stop2 = stop.clone();
    reconnecting("palisade-report", what, stop, async move |_: &mut Duration| {
        send_reports(&url, &node, &security, &mut rx, &mut latest, &stop2).await
    })?;
    Ok(tx)
}

/// The latest report of each kind, by a key naming what it is about.
#[derive(Default)]
struct Latest(std::collections::BTreeMap<String, FromDataplane>);

impl Latest {
    fn record(&mut self, m: &FromDataplane) {
        use crate::proto::felix::from_dataplane::Payload as P;
        let key = |kind: &str, id: &str| format!("{kind}/{id}");
        match &m.payload {
            Some(P::DataplaneInSync(_)) => {
                self.0.insert("in-sync".into(), m.clone());
            }
            Some(P::ProcessStatusUpdate(_)) => {
                self.0.insert("process".into(), m.clone());
            }
            Some(P::WorkloadEndpointStatusUpdate(u)) => {
                self.0.insert(key("workload", &u.id.clone().unwrap_or_default().workload_id), m.clone());
            }
            Some(P::WorkloadEndpointStatusRemove(u)) => {
                self.0.remove(&key("workload", &u.id.clone().unwrap_or_default().workload_id));
            }
            Some(P::HostEndpointStatusUpdate(u)) => {
                self.0.insert(key("host", &u.id.clone().unwrap_or_default().endpoint_id), m.clone());
            }
            Some(P::HostEndpointStatusRemove(u)) => {
                self.0.remove(&key("host", &u.id.clone().unwrap_or_default().endpoint_id));
            }
            None => {}
        }
    }
}

/// One report stream: `Ok` when told to stop, `Err` when it broke.
async fn send_reports(
    url: &str,
    node: &str,
    security: &Security,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<FromDataplane>,
    latest: &mut Latest,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut client = SyncClient::new(channel(url, security).await?);
    let (out, stream) = tokio::sync::mpsc::channel::<NodeReport>(1024);
    let wrap = |m: FromDataplane| NodeReport { node: node.to_string(), report: Some(m) };
    for m in latest.0.values() {
        out.send(wrap(m.clone())).await.map_err(|e| e.to_string())?;
    }
    let call = client.report(tokio_stream::wrappers::ReceiverStream::new(stream));
    tokio::pin!(call);
    loop {
        tokio::select! {
            ended = &mut call => return Err(match ended {
                Ok(_) => "the control plane ended the report stream".to_string(),
                Err(e) => e.message().to_string(),
            }),
            m = rx.recv() => {
                let Some(m) = m else { return Ok(()) };
                latest.record(&m);
                out.send(wrap(m)).await.map_err(|e| e.to_string())?;
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    }
}
