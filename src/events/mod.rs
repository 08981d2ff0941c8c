//! The event bus: typed events broadcast to the terminal, webhooks, the API's WebSocket and the
//! listeners, and persisted to the store's append-only journal when they record a state change.

mod body;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::ser::SerializeStruct;
use serde_json::Value;
use tokio::sync::broadcast;

pub use body::Body;

use crate::model::now_rfc3339;
use crate::store::SharedStore;

/// One event, as subscribers see it. On the wire: `{id, kind, chainId, sessionIndex, data, at}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The journal id; `None` for live-only events (`session:output`).
    pub id: Option<i64>,
    pub chain_id: Option<String>,
    pub session_index: Option<u32>,
    /// What it says.
    pub body: Body,
    pub at: String,
}

impl Event {
    /// `chain:started`, `chain:session-complete`, `chain:complete`, `session:output`, …
    pub fn kind(&self) -> &str {
        self.body.kind()
    }

    /// Its data as on the wire.
    pub fn data(&self) -> Value {
        self.body.data()
    }
}

impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 6)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("chainId", &self.chain_id)?;
        st.serialize_field("sessionIndex", &self.session_index)?;
        st.serialize_field("data", &self.data())?;
        st.serialize_field("at", &self.at)?;
        st.end()
    }
}

/// Does an event of this kind announce a chain's end? (For journaled records; a live event
/// says it with [`Body::ending`].)
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
    pub async fn emit(&self, chain_id: Option<&str>, session_index: Option<u32>, body: Body) {
        let kind = body.kind();
        let id = match self
            .store
            .append_event(chain_id, session_index, kind, &body.data())
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
            chain_id: chain_id.map(str::to_string),
            session_index,
            body,
            at: now_rfc3339(),
        });
    }

    /// Broadcasts without journaling (live output, activity).
    pub fn live(&self, chain_id: &str, session_index: u32, body: Body) {
        self.send(Event {
            id: None,
            chain_id: Some(chain_id.to_string()),
            session_index: Some(session_index),
            body,
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
            chain_id: rec.chain_id.clone(),
            session_index: rec.session_index,
            body: Body::from_parts(&rec.kind, rec.data.clone()),
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
    use crate::model::ChainStatus;

    #[test]
    fn every_terminal_status_has_a_final_event() {
        for st in ChainStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(is_final(Body::ended(st, None).kind()), "{st}");
        }
        assert!(!is_final("chain:session-complete"));
    }
}
