//! Clients of the control plane: `palisadectl` (the store) and the node agent (its node's sync
//! stream, followed from a thread of its own with reconnection).

use crate::proto::felix::ToDataplane;
use crate::proto::store_client::StoreClient;
use crate::proto::sync_client::SyncClient;
use crate::proto::SubscribeRequest;
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
    Message(ToDataplane),
}

/// Follows `node`'s view from the control plane at `url` in a thread of its own: every message
/// is sent on the returned channel, each new stream announced by [`Event::Restarted`]. It
/// reconnects (backing off from 100 ms to 2 s) whenever the stream breaks, and stops when `stop`
/// is set or the receiver is dropped.
pub fn follow(url: String, node: String, security: Security, stop: Arc<AtomicBool>) -> std::io::Result<mpsc::Receiver<Event>> {
    let (tx, rx) = mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("palisade-sync".into()).spawn(move || {
        runtime.block_on(async move {
            let mut backoff = Duration::from_millis(100);
            while !stop.load(Ordering::Relaxed) {
                match stream(&url, &node, &security, &tx, &stop, &mut backoff).await {
                    Ok(()) => return,
                    Err(e) => eprintln!("palisade-dataplane: control plane {url}: {e}; retrying in {backoff:?}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })
    })?;
    Ok(rx)
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
        if tx.send(Event::Message(msg)).is_err() {
            return Ok(());
        }
    }
}
