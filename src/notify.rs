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
use crate::events::{Body, Bus, Event};
use crate::model::{ChainRecord, SessionStatus, mask_url};
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
    match &ev.body {
        b if b.ending().is_some() => Some(NotifyOn::End),
        Body::SessionComplete { session, .. } if session.status == SessionStatus::Failed => {
            Some(NotifyOn::Failure)
        }
        Body::Waiting { .. } => Some(NotifyOn::Waiting),
        Body::BudgetWarning { .. } => Some(NotifyOn::Budget),
        Body::ApprovalRequested { .. } => Some(NotifyOn::Approval),
        _ => None,
    }
}

/// One line for people: what happened to which chain.
pub fn summary_text(body: &Body, chain: &ChainRecord) -> String {
    let what = match body {
        Body::SessionComplete { session, .. } => format!(
            "session {} failed: {}",
            session.index,
            session.error.as_deref().unwrap_or("unknown error")
        ),
        Body::Waiting { until, .. } => format!("is waiting for a usage limit until {until}"),
        Body::ApprovalRequested {
            approval_id,
            tool,
            input,
            rule,
            deadline,
            url,
        } => format!(
            "holds a tool call for a person: {tool} `{input}` ({rule}). Approve or deny it on {url} or with `operator approve|deny {} {approval_id}`; without an answer it is denied at {deadline}",
            chain.id,
        ),
        Body::BudgetWarning {
            spent_usd,
            budget_usd,
        } => format!("has spent ${spent_usd:.2} of its ${budget_usd:.2} budget"),
        other => {
            let (status, reason) = other
                .ending()
                .map(|(s, r)| (s.as_str(), r))
                .unwrap_or((chain.status.as_str(), None));
            format!(
                "ended {status}{} after {} session(s), {} turns, ${:.2}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                chain.totals.sessions,
                chain.totals.turns,
                chain.totals.cost_usd
            )
        }
    };
    let task: String = chain.task.chars().take(200).collect();
    format!(
        "operator: chain `{}` ({}) {what}. Task: {task}",
        chain.name, chain.id
    )
}

/// The body for a webhook of `format`.
pub fn payload(format: NotifyFormat, body: &Body, chain: &ChainRecord) -> Value {
    let text = summary_text(body, chain);
    match format {
        NotifyFormat::Json => {
            json!({"event": body.kind(), "summary": text, "chain": chain, "data": body.data()})
        }
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
            let body = payload(hook.format, &ev.body, &chain);
            let (client, bus, secret) = (client.clone(), self.bus.clone(), self.cfg.secret.clone());
            let (id, kind) = (id.clone(), ev.kind().to_string());
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
                    Some(chain_id),
                    None,
                    Body::NotifyDelivered {
                        url: shown,
                        event: kind.to_string(),
                        attempts: attempt as u32 + 1,
                        status: r.status().as_u16(),
                    },
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
        Some(chain_id),
        None,
        Body::NotifyFailed {
            url: shown,
            event: kind.to_string(),
            attempts: BACKOFF.len() as u32 + 1,
            error: last_error,
        },
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
        let data = Body::ended(crate::model::ChainStatus::Complete, None);
        let j = payload(NotifyFormat::Json, &data, &c);
        assert_eq!(j["event"], "chain:complete");
        assert_eq!(j["chain"]["totals"]["sessions"], 3);
        assert!(
            !j.to_string().contains("secret"),
            "a webhook URL leaked: {j}"
        );
        let s = payload(NotifyFormat::Slack, &data, &c);
        assert_eq!(
            s["text"],
            "operator: chain `parser` (c-1) ended complete after 3 session(s), 12 turns, $0.50. Task: Port it"
        );
        let d = payload(NotifyFormat::Discord, &data, &c);
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

    fn record(status: &str) -> Value {
        json!({"index": 2, "sessionId": null, "status": status, "turns": 3, "costUsd": 0.1,
               "durationMs": 10, "hitMaxTurns": false, "preCompacted": false,
               "handoffComplete": false, "handoffFile": null, "error": null, "errorKind": null,
               "handoffSynthetic": false, "askedAgain": false, "attempts": 1,
               "startedAt": "", "endedAt": null})
    }

    #[test]
    fn events_map_to_triggers() {
        let ev = |kind: &str, data: Value| Event {
            id: None,
            chain_id: Some("c".into()),
            session_index: None,
            body: Body::from_parts(kind, data),
            at: String::new(),
        };
        assert_eq!(
            trigger(&ev(
                "chain:aborted",
                json!({"status": "aborted", "reason": null})
            )),
            Some(NotifyOn::End)
        );
        assert_eq!(
            trigger(&ev(
                "chain:session-complete",
                json!({"session": record("failed"), "transcriptTruncated": false})
            )),
            Some(NotifyOn::Failure)
        );
        assert_eq!(
            trigger(&ev(
                "chain:session-complete",
                json!({"session": record("completed"), "transcriptTruncated": false})
            )),
            None
        );
        assert_eq!(
            trigger(&ev(
                "chain:budget-warning",
                json!({"spentUsd": 4.0, "budgetUsd": 5.0})
            )),
            Some(NotifyOn::Budget)
        );
    }
}
