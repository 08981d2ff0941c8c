//! `/ws`: live events by subscription pattern, a replay from the journal for reconnecting clients, and a
//! `lagged` notice (never back-pressure on the supervisor) for clients that fall behind.
//!
//! Patterns: `*`, `chain:*`, `chain:<id>`, `chain:<event>` (e.g. `chain:complete`),
//! `session:output:<id>`, `session:output:*`, `orchestrator:*`. Clients send
//! `{"subscribe": [...], "unsubscribe": [...], "since": <event id>}`; the same can be given at
//! connect time as `?subscribe=a,b&since=N`.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiQuery;
use crate::events::Event;

/// Events replayed for one `since` request at most; past it the client is told it lagged and
/// should re-sync from the REST API.
pub const REPLAY_MAX: usize = 20_000;
/// A client that takes longer than this to accept one message is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// One subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    All,
    /// `chain:*`
    Chains,
    /// `chain:<x>`: events of chain `x`, or events of kind `chain:x`.
    Chain(String),
    /// `session:output:<id>`, or `*` for every session.
    Output(Option<String>),
    /// `orchestrator:*`
    Orchestrator,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Ok(match s {
            "*" => Self::All,
            "chain:*" => Self::Chains,
            "orchestrator:*" => Self::Orchestrator,
            "session:output:*" | "session:output" => Self::Output(None),
            _ => {
                if let Some(id) = s.strip_prefix("session:output:")
                    && crate::model::is_valid_chain_id(id)
                {
                    Self::Output(Some(id.to_string()))
                } else if let Some(x) = s.strip_prefix("chain:")
                    && crate::model::is_valid_chain_id(x)
                {
                    Self::Chain(x.to_string())
                } else {
                    return Err(format!(
                        "unknown pattern `{}` (use *, chain:*, chain:<id>, session:output:<id>, orchestrator:*)",
                        s.chars().take(80).collect::<String>()
                    ));
                }
            }
        })
    }
}

impl Pattern {
    pub fn matches(&self, kind: &str, chain_id: Option<&str>) -> bool {
        let output = kind == "session:output";
        match self {
            Self::All => true,
            Self::Chains => kind.starts_with("chain:"),
            Self::Chain(x) => {
                kind.strip_prefix("chain:") == Some(x.as_str())
                    || (kind.starts_with("chain:") && chain_id == Some(x.as_str()))
            }
            Self::Output(None) => output,
            Self::Output(Some(id)) => output && chain_id == Some(id.as_str()),
            Self::Orchestrator => kind.starts_with("orchestrator:"),
        }
    }
}

fn wanted(patterns: &[Pattern], ev: &Event) -> bool {
    patterns
        .iter()
        .any(|p| p.matches(ev.kind(), ev.chain_id.as_deref()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// Comma-separated patterns to subscribe to at once.
    subscribe: Option<String>,
    /// Replay journaled events after this id first.
    since: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMsg {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    unsubscribe: Vec<String>,
    since: Option<i64>,
}

/// Live events over a WebSocket. Each message is a JSON event (`id`, `kind`, `chainId`,
/// `sessionIndex`, `data`, `at`), or a notice: `subscribed`, `lagged`, `error`.
#[utoipa::path(get, path = "/ws", tag = "events", params(WsQuery),
    responses((status = 101, description = "switching to the WebSocket protocol")))]
pub async fn handler(
    ws: WebSocketUpgrade,
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<WsQuery>,
) -> Response {
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve(socket, st, q))
}

struct Conn {
    patterns: Vec<Pattern>,
    /// Live events with an id at or below this were already sent by a replay.
    replayed_to: i64,
}

async fn serve(socket: WebSocket, st: AppState, q: WsQuery) {
    let (mut tx, mut rx) = socket.split();
    // Subscribe before any replay, so nothing falls between the journal and the live feed.
    let mut live = st.bus.subscribe();
    let mut conn = Conn {
        patterns: Vec::new(),
        replayed_to: 0,
    };
    let first = ClientMsg {
        subscribe: q
            .subscribe
            .as_deref()
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        unsubscribe: Vec::new(),
        since: q.since,
    };
    if (!first.subscribe.is_empty() || first.since.is_some())
        && apply(&st, &mut conn, first, &mut tx).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let parsed = serde_json::from_str::<ClientMsg>(t.as_str());
                    let sent = match parsed {
                        Ok(m) => apply(&st, &mut conn, m, &mut tx).await,
                        Err(e) => send(&mut tx, json!({"kind": "error", "message": format!("bad message: {e}")})).await,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            ev = live.recv() => match ev {
                Ok(ev) => {
                    if ev.id.is_some_and(|id| id <= conn.replayed_to) || !wanted(&conn.patterns, &ev) {
                        continue;
                    }
                    if send_event(&mut tx, &ev).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let notice = json!({"kind": "lagged", "missed": missed,
                        "message": "events were dropped because this client fell behind; re-sync from the API or reconnect with since=<last id>"});
                    if send(&mut tx, notice).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;

async fn send(tx: &mut Tx, v: serde_json::Value) -> Result<(), ()> {
    let text = Utf8Bytes::from(v.to_string());
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Text(text))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send_event(tx: &mut Tx, ev: &Event) -> Result<(), ()> {
    send(tx, serde_json::to_value(ev).map_err(|_| ())?).await
}

async fn apply(st: &AppState, conn: &mut Conn, m: ClientMsg, tx: &mut Tx) -> Result<(), ()> {
    let mut errors = Vec::new();
    for s in &m.subscribe {
        match s.parse::<Pattern>() {
            Ok(p) if !conn.patterns.contains(&p) => conn.patterns.push(p),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    for s in &m.unsubscribe {
        if let Ok(p) = s.parse::<Pattern>() {
            conn.patterns.retain(|q| *q != p);
        }
    }
    for e in errors {
        send(tx, json!({"kind": "error", "message": e})).await?;
    }
    if let Some(since) = m.since {
        replay(st, conn, since, tx).await?;
    }
    let names: Vec<String> = m.subscribe.clone();
    send(
        tx,
        json!({"kind": "subscribed", "patterns": names, "count": conn.patterns.len(), "lastId": conn.replayed_to}),
    )
    .await
}

async fn replay(st: &AppState, conn: &mut Conn, since: i64, tx: &mut Tx) -> Result<(), ()> {
    let mut after = since.max(conn.replayed_to);
    let mut sent = 0usize;
    loop {
        let page = match st.store.events(None, after, 500).await {
            Ok(p) => p,
            Err(e) => {
                return send(
                    tx,
                    json!({"kind": "error", "message": format!("cannot read the journal: {e}")}),
                )
                .await;
            }
        };
        let n = page.len();
        for r in page {
            after = r.id;
            let ev = Event {
                id: Some(r.id),
                body: crate::events::Body::from_parts(&r.kind, r.data),
                chain_id: r.chain_id,
                session_index: r.session_index,
                at: r.at,
            };
            if wanted(&conn.patterns, &ev) {
                send_event(tx, &ev).await?;
                sent += 1;
            }
        }
        conn.replayed_to = after;
        if n < 500 {
            return Ok(());
        }
        if sent >= REPLAY_MAX {
            return send(
                tx,
                json!({"kind": "lagged", "missed": null, "lastId": after,
                "message": "too many events to replay; re-sync from the API"}),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = |s: &str| s.parse::<Pattern>().unwrap();
        assert!(p("chain:*").matches("chain:started", Some("c-1")));
        assert!(!p("chain:*").matches("session:output", Some("c-1")));
        assert!(p("chain:c-1").matches("chain:complete", Some("c-1")));
        assert!(!p("chain:c-1").matches("chain:complete", Some("c-2")));
        assert!(p("chain:complete").matches("chain:complete", Some("c-2")));
        assert!(p("session:output:c-1").matches("session:output", Some("c-1")));
        assert!(!p("session:output:c-1").matches("session:output", Some("c-2")));
        assert!(!p("session:output:c-1").matches("chain:started", Some("c-1")));
        assert!(p("orchestrator:*").matches("orchestrator:paused", None));
        assert!(p("*").matches("anything", None));
        assert!("bogus".parse::<Pattern>().is_err());
        assert!("chain:../x".parse::<Pattern>().is_err());
    }
}
