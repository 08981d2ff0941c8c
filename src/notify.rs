//! Webhook notifications (reqwest): POST a JSON summary of each chain when it ends, with a timeout and
//! retries; every delivery is journaled, and a failed one never touches the chain.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use crate::events::{Bus, is_final};
use crate::store::SharedStore;

/// Attempts per delivery, and the pause before each retry.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

pub struct Notifier {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts delivering summaries to `url`.
pub fn spawn(url: String, store: SharedStore, bus: Bus) -> Notifier {
    let mut rx = bus.subscribe();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default();
    let task = tokio::spawn(async move {
        let mut deliveries = JoinSet::new();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) if is_final(&ev.kind) => {
                        let Some(id) = ev.chain_id.clone() else { continue };
                        let (client, url, store, bus) = (client.clone(), url.clone(), store.clone(), bus.clone());
                        deliveries.spawn(async move { deliver(&client, &url, &store, &bus, &id, &ev.kind).await });
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the notifier fell behind the event bus");
                    }
                    Err(_) => break,
                },
                _ = &mut stop_rx => break,
            }
        }
        while deliveries.join_next().await.is_some() {}
    });
    Notifier { task, stop }
}

impl Notifier {
    /// Waits (at most `limit`) for deliveries in flight.
    pub async fn finish(self, limit: Duration) {
        // Let events already on the bus reach the notifier first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.stop.send(());
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("webhook deliveries still running at exit were abandoned");
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    store: &SharedStore,
    bus: &Bus,
    chain_id: &str,
    kind: &str,
) {
    let Ok(Some(chain)) = store.get_chain(chain_id).await else {
        return;
    };
    let payload = json!({"event": kind, "chain": chain});
    let mut last_error = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[attempt - 1]).await;
        }
        match client.post(url).json(&payload).send().await {
            Ok(r) if r.status().is_success() => {
                bus.emit(
                    "notify:delivered",
                    Some(chain_id),
                    None,
                    json!({"attempts": attempt + 1, "status": r.status().as_u16()}),
                )
                .await;
                return;
            }
            Ok(r) => last_error = format!("HTTP {}", r.status()),
            Err(e) => last_error = e.without_url().to_string(),
        }
    }
    tracing::warn!(chain.id = chain_id, error = %last_error, "webhook delivery failed");
    bus.emit(
        "notify:failed",
        Some(chain_id),
        None,
        json!({"attempts": BACKOFF.len() + 1, "error": last_error}),
    )
    .await;
}
