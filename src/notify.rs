//! Webhook notifications (reqwest): a JSON chain summary (or a Slack / Discord message) on a chain's end,
//! and optionally on failed sessions, usage-limit waits and budget warnings; signed with HMAC-SHA256
//! when a secret is set; a timeout and retries per delivery; every delivery journaled. A delivery
//! never blocks or fails a chain: it runs in its own task.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinSet;

use crate::config::{NotifyFormat, NotifyOn, Webhook};
use crate::events::{Bus, Event, is_final};
use crate::model::{ChainRecord, mask_url};
use crate::store::SharedStore;

/// Pauses before the 2nd and 3rd attempt of a delivery.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// Operator-wide webhook settings.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// `notify_webhook`, heard by every chain.
    pub global: Option<Webhook>,
    pub secret: Option<String>,
    pub timeout: Duration,
}

pub struct Notifier {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// What an event means to webhooks, if anything.
pub fn trigger(ev: &Event) -> Option<NotifyOn> {
    match ev.kind.as_str() {
        k if is_final(k) => Some(NotifyOn::End),
        "chain:session-complete" if ev.data["session"]["status"] == "failed" => {
            Some(NotifyOn::Failure)
        }
        "chain:waiting" => Some(NotifyOn::Waiting),
        "chain:budget-warning" => Some(NotifyOn::Budget),
        "chain:approval-requested" => Some(NotifyOn::Approval),
        _ => None,
    }
}

/// One line for people: what happened to which chain.
pub fn summary_text(kind: &str, chain: &ChainRecord, data: &Value) -> String {
    let what = match kind {
        "chain:session-complete" => format!(
            "session {} failed: {}",
            data["session"]["index"],
            data["session"]["error"].as_str().unwrap_or("unknown error")
        ),
        "chain:waiting" => format!(
            "is waiting for a usage limit until {}",
            data["until"].as_str().unwrap_or("its reset")
        ),
        "chain:approval-requested" => format!(
            "holds a tool call for a person: {} `{}` ({}). Approve or deny it on {} or with `operator approve|deny {} {}`; without an answer it is denied at {}",
            data["tool"].as_str().unwrap_or("?"),
            data["input"].as_str().unwrap_or(""),
            data["rule"].as_str().unwrap_or(""),
            data["url"].as_str().unwrap_or("the chain's page"),
            chain.id,
            data["approvalId"].as_str().unwrap_or(""),
            data["deadline"].as_str().unwrap_or("its timeout")
        ),
        "chain:budget-warning" => format!(
            "has spent ${:.2} of its ${:.2} budget",
            data["spentUsd"].as_f64().unwrap_or(0.0),
            data["budgetUsd"].as_f64().unwrap_or(0.0)
        ),
        _ => format!(
            "ended {}{} after {} session(s), {} turns, ${:.2}",
            data["status"].as_str().unwrap_or(chain.status.as_str()),
            data["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            chain.totals.sessions,
            chain.totals.turns,
            chain.totals.cost_usd
        ),
    };
    let task: String = chain.task.chars().take(200).collect();
    format!(
        "operator: chain `{}` ({}) {what}. Task: {task}",
        chain.name, chain.id
    )
}

/// The body for a webhook of `format`.
pub fn payload(format: NotifyFormat, kind: &str, chain: &ChainRecord, data: &Value) -> Value {
    let text = summary_text(kind, chain, data);
    match format {
        NotifyFormat::Json => json!({"event": kind, "summary": text, "chain": chain, "data": data}),
        NotifyFormat::Slack => json!({"text": text}),
        // Discord caps a message at 2,000 characters.
        NotifyFormat::Discord => json!({"content": text.chars().take(1990).collect::<String>()}),
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the `X-Operator-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The chain's own webhooks, from its stored settings.
fn chain_hooks(chain: &ChainRecord) -> Vec<Webhook> {
    serde_json::from_value(chain.config["webhooks"].clone()).unwrap_or_default()
}

/// Starts delivering. The HTTP client is built on the first delivery, so an operator without
/// webhooks never loads a TLS stack.
pub fn spawn(cfg: NotifyConfig, store: SharedStore, bus: Bus) -> Notifier {
    let mut rx = bus.subscribe();
    let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut router = Router {
            cfg,
            store,
            bus,
            client: None,
            deliveries: JoinSet::new(),
        };
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => router.route(&ev).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the notifier fell behind the event bus");
                    }
                    Err(_) => break,
                },
                _ = &mut stop_rx => {
                    // Events published before the stop are still delivered.
                    while let Ok(ev) = rx.try_recv() {
                        router.route(&ev).await;
                    }
                    break;
                }
            }
        }
        while router.deliveries.join_next().await.is_some() {}
    });
    Notifier { task, stop }
}

/// Turns bus events into deliveries.
struct Router {
    cfg: NotifyConfig,
    store: SharedStore,
    bus: Bus,
    client: Option<reqwest::Client>,
    deliveries: JoinSet<()>,
}

impl Router {
    async fn route(&mut self, ev: &Event) {
        let Some(on) = trigger(ev) else { return };
        let Some(id) = ev.chain_id.clone() else {
            return;
        };
        let Ok(Some(chain)) = self.store.get_chain(&id).await else {
            return;
        };
        let mut hooks = chain_hooks(&chain);
        hooks.extend(self.cfg.global.clone());
        hooks.retain(|h| h.on.contains(&on));
        if hooks.is_empty() {
            return;
        }
        let timeout = self.cfg.timeout;
        let client = self
            .client
            .get_or_insert_with(|| {
                reqwest::Client::builder()
                    .timeout(timeout)
                    .user_agent(concat!("operator/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .unwrap_or_default()
            })
            .clone();
        let chain = chain.public();
        for hook in hooks {
            let body = payload(hook.format, &ev.kind, &chain, &ev.data);
            let (client, bus, secret) = (client.clone(), self.bus.clone(), self.cfg.secret.clone());
            let (id, kind) = (id.clone(), ev.kind.clone());
            self.deliveries.spawn(async move {
                deliver(
                    &client,
                    &hook.url,
                    secret.as_deref(),
                    &body,
                    &bus,
                    &id,
                    &kind,
                )
                .await
            });
        }
    }
}

impl Notifier {
    /// Delivers what is already on the bus, then waits (at most `limit`) for deliveries in flight.
    pub async fn finish(self, limit: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("webhook deliveries still running at exit were abandoned");
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    body: &Value,
    bus: &Bus,
    chain_id: &str,
    kind: &str,
) {
    let bytes = body.to_string().into_bytes();
    let shown = mask_url(url);
    let mut last_error = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[attempt - 1]).await;
        }
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-operator-event", kind)
            .body(bytes.clone());
        if let Some(s) = secret {
            req = req.header("x-operator-signature", signature(s, &bytes));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                bus.emit(
                    "notify:delivered",
                    Some(chain_id),
                    None,
                    json!({"url": shown, "event": kind, "attempts": attempt + 1, "status": r.status().as_u16()}),
                )
                .await;
                return;
            }
            Ok(r) => last_error = format!("HTTP {}", r.status()),
            Err(e) if e.is_timeout() => last_error = "timed out".into(),
            Err(e) => last_error = e.without_url().to_string(),
        }
    }
    tracing::warn!(chain.id = chain_id, url = %shown, error = %last_error, "webhook delivery failed");
    bus.emit(
        "notify:failed",
        Some(chain_id),
        None,
        json!({"url": shown, "event": kind, "attempts": BACKOFF.len() + 1, "error": last_error}),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainRecord {
        serde_json::from_value(json!({
            "id": "c-1", "name": "parser", "mission": null, "task": "Port it", "status": "complete",
            "reason": null, "startedAt": "", "updatedAt": "", "sessions": [], "archived": false,
            "config": {"webhooks": [{"url": "https://hooks.slack.com/services/T/B/secret"}]},
            "totals": {"sessions": 3, "turns": 12, "costUsd": 0.5, "durationMs": 1}
        }))
        .unwrap()
    }

    #[test]
    fn presets_shape_the_body() {
        let c = chain().public();
        let data = json!({"status": "complete", "reason": null});
        let j = payload(NotifyFormat::Json, "chain:complete", &c, &data);
        assert_eq!(j["event"], "chain:complete");
        assert_eq!(j["chain"]["totals"]["sessions"], 3);
        assert!(
            !j.to_string().contains("secret"),
            "a webhook URL leaked: {j}"
        );
        let s = payload(NotifyFormat::Slack, "chain:complete", &c, &data);
        assert_eq!(
            s["text"],
            "operator: chain `parser` (c-1) ended complete after 3 session(s), 12 turns, $0.50. Task: Port it"
        );
        let d = payload(NotifyFormat::Discord, "chain:complete", &c, &data);
        assert!(
            d["content"]
                .as_str()
                .unwrap()
                .starts_with("operator: chain `parser`")
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_map_to_triggers() {
        let ev = |kind: &str, data: Value| Event {
            id: None,
            kind: kind.into(),
            chain_id: Some("c".into()),
            session_index: None,
            data,
            at: String::new(),
        };
        assert_eq!(
            trigger(&ev("chain:aborted", json!({}))),
            Some(NotifyOn::End)
        );
        assert_eq!(
            trigger(&ev(
                "chain:session-complete",
                json!({"session": {"status": "failed"}})
            )),
            Some(NotifyOn::Failure)
        );
        assert_eq!(
            trigger(&ev(
                "chain:session-complete",
                json!({"session": {"status": "completed"}})
            )),
            None
        );
        assert_eq!(
            trigger(&ev("chain:budget-warning", json!({}))),
            Some(NotifyOn::Budget)
        );
    }
}
