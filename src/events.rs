//! The event bus: typed events broadcast to the terminal, webhooks and (later) the API, and persisted
//! to the store's append-only journal when they record a state change.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::model::{ChainStatus, now_rfc3339};
use crate::store::SharedStore;

/// One event, as subscribers see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The journal id; `None` for live-only events (`session:output`).
    pub id: Option<i64>,
    /// `chain:started`, `chain:session-complete`, `chain:complete`, `session:output`, …
    pub kind: String,
    pub chain_id: Option<String>,
    pub session_index: Option<u32>,
    pub data: Value,
    pub at: String,
}

/// The event that announces a chain's end with `status`.
pub fn final_kind(status: ChainStatus) -> &'static str {
    match status {
        ChainStatus::Complete | ChainStatus::AssumedComplete | ChainStatus::MaxContinuations => {
            "chain:complete"
        }
        ChainStatus::Aborted => "chain:aborted",
        ChainStatus::Interrupted => "chain:interrupted",
        _ => "chain:error",
    }
}

/// Does this event announce a chain's end?
pub fn is_final(kind: &str) -> bool {
    matches!(
        kind,
        "chain:complete" | "chain:error" | "chain:aborted" | "chain:interrupted"
    )
}

/// Sender side of the bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
    store: SharedStore,
    /// Journal ids this process emitted lately, so [`Bus::relay`] does not send them twice.
    mine: Arc<Mutex<BTreeSet<i64>>>,
}

/// How many of its own journal ids a bus remembers for [`Bus::relay`].
const MINE: usize = 4096;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 1024;

impl Bus {
    pub fn new(store: SharedStore) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            tx,
            store,
            mine: Arc::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Records the event in the journal, then broadcasts it. A journal failure is
    /// logged and the event still goes out: observers must not stop the work.
    pub async fn emit(
        &self,
        kind: &str,
        chain_id: Option<&str>,
        session_index: Option<u32>,
        data: Value,
    ) {
        let id = match self
            .store
            .append_event(chain_id, session_index, kind, &data)
            .await
        {
            Ok(id) => {
                if let Ok(mut m) = self.mine.lock() {
                    m.insert(id);
                    while m.len() > MINE {
                        m.pop_first();
                    }
                }
                Some(id)
            }
            Err(e) => {
                tracing::warn!(cause = %e, kind, "could not journal an event");
                None
            }
        };
        self.send(Event {
            id,
            kind: kind.to_string(),
            chain_id: chain_id.map(str::to_string),
            session_index,
            data,
            at: now_rfc3339(),
        });
    }

    /// Broadcasts without journaling (live output, activity).
    pub fn live(&self, kind: &str, chain_id: &str, session_index: u32, data: Value) {
        self.send(Event {
            id: None,
            kind: kind.to_string(),
            chain_id: Some(chain_id.to_string()),
            session_index: Some(session_index),
            data,
            at: now_rfc3339(),
        });
    }

    /// Broadcasts an event another process journaled (a fleet worker's, read from the shared
    /// store); one this process emitted itself is not sent again.
    pub fn relay(&self, rec: &crate::model::EventRecord) {
        if self.mine.lock().is_ok_and(|mut m| m.remove(&rec.id)) {
            return;
        }
        self.send(Event {
            id: Some(rec.id),
            kind: rec.kind.clone(),
            chain_id: rec.chain_id.clone(),
            session_index: rec.session_index,
            data: rec.data.clone(),
            at: rec.at.clone(),
        });
    }

    fn send(&self, ev: Event) {
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }
}

/// How far behind the newest journal id the relay reads again: ids are taken before commit, so
/// a transaction may become visible after a later id.
const RELAY_WINDOW: i64 = 256;

/// Relays events other processes of the fleet journal (workers' chain events) to this process's
/// bus, so the API's WebSocket and the dashboard see them live: the shared journal is polled
/// every quarter second.
pub fn relay_journal(store: SharedStore, bus: Bus) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = store.last_event_id().await.unwrap_or(0);
        let mut seen = std::collections::BTreeSet::new();
        // What is already in the window is history, not news.
        if let Ok(old) = store.events(None, (last - RELAY_WINDOW).max(0), 1000).await {
            seen.extend(old.iter().map(|e| e.id));
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let from = (last - RELAY_WINDOW).max(0);
            let Ok(events) = store.events(None, from, 1000).await else {
                continue;
            };
            for e in &events {
                if seen.insert(e.id) {
                    bus.relay(e);
                }
                last = last.max(e.id);
            }
            let floor = last - RELAY_WINDOW;
            seen.retain(|id| *id > floor);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_terminal_status_has_a_final_event() {
        for st in ChainStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(is_final(final_kind(st)), "{st}");
        }
        assert!(!is_final("chain:session-complete"));
    }
}
