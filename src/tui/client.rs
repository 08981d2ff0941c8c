//! The view's link to an operator: its HTTP API (reads, and the writes a key asks for) and its
//! WebSocket (live events), reconnected with backoff when the operator goes away.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::state::{Link, Mission, Pending, Screen};
use crate::api::OperatorStatus;
use crate::model::ChainRecord;
use crate::store::Fleet;

/// Where the operator is, and the token for its writes (or none: a loopback server then takes
/// its CSRF token).
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:3100`
    pub url: String,
    pub token: Option<String>,
}

/// Everything one refresh reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub chains: Vec<ChainRecord>,
    pub status: OperatorStatus,
    pub fleet: Fleet,
    /// The open chain, with its sessions, and its held tool calls.
    pub detail: Option<(ChainRecord, Vec<Pending>)>,
    /// The open chain's last handoff.
    pub handoff: Option<crate::model::HandoffRecord>,
    /// The open chain's permission decisions so far (read once, when it is opened).
    pub decisions: Option<Vec<Value>>,
    /// The cost report, for the costs screen.
    pub costs: Option<crate::store::CostReport>,
    /// The missions folder, for the missions screen.
    pub missions: Option<Vec<Mission>>,
}

#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    http: reqwest::Client,
}

impl Client {
    pub fn new(target: Target) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self { target, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url.trim_end_matches('/'))
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, self.url(path));
        match &self.target.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(short)?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        resp.json::<T>().await.map_err(short)
    }

    /// Reads the lists, and what the screen shows: the open chain (its decisions so far when
    /// `first`), or the costs.
    pub async fn snapshot(&self, screen: &Screen, first: bool) -> Result<Snapshot, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            chains: Vec<ChainRecord>,
        }
        let page: Page = self.get("/api/chains?limit=200").await?;
        let status: OperatorStatus = self.get("/api/orchestrator/status").await?;
        let fleet: Fleet = self.get("/api/fleet").await.unwrap_or_default();
        let mut snap = Snapshot {
            chains: page.chains,
            status,
            fleet,
            detail: None,
            handoff: None,
            decisions: None,
            costs: None,
            missions: None,
        };
        match screen {
            Screen::Chain(id) => {
                let chain: ChainRecord = self.get(&format!("/api/chains/{id}")).await?;
                let approvals: Vec<Value> =
                    self.get(&format!("/api/chains/{id}/approvals")).await?;
                if let Some(last) = chain
                    .sessions
                    .iter()
                    .rev()
                    .find(|s| s.handoff_file.is_some())
                {
                    let detail: Value = self
                        .get(&format!("/api/chains/{id}/sessions/{}", last.index))
                        .await?;
                    snap.handoff = serde_json::from_value(detail["handoff"].clone()).ok();
                }
                if first {
                    let events: Vec<Value> = self
                        .get(&format!("/api/chains/{id}/events?limit=1000"))
                        .await?;
                    snap.decisions = Some(
                        events
                            .into_iter()
                            .filter(|e| e["kind"] == "session:permission")
                            .collect(),
                    );
                }
                snap.detail = Some((chain, pending(&approvals)));
            }
            Screen::Costs => snap.costs = Some(self.get("/api/costs?limit=10").await?),
            Screen::Missions => {
                let list: Vec<Value> = self.get("/api/missions").await?;
                snap.missions = Some(
                    list.iter()
                        .map(|m| Mission {
                            name: m["name"].as_str().unwrap_or_default().to_string(),
                            chains: m["chains"].as_u64().unwrap_or(0),
                            readable: m["error"].is_null(),
                            note: crate::progress::printable(
                                m["error"]
                                    .as_str()
                                    .or(m["description"].as_str())
                                    .unwrap_or_default(),
                            )
                            .into_owned(),
                        })
                        .collect(),
                );
            }
            Screen::Chains | Screen::Fleet => {}
        }
        Ok(snap)
    }

    /// A mission's plan, from a dry run.
    pub async fn plan(&self, mission: &str) -> Result<Value, String> {
        let v = self
            .post_json(
                "/api/orchestrator/start",
                serde_json::json!({"mission": mission, "dryRun": true}),
            )
            .await?;
        Ok(v["plan"].clone())
    }

    /// A write; what to tell the user.
    pub async fn post(&self, path: &str, body: Value) -> Result<(), String> {
        self.post_json(path, body).await.map(|_| ())
    }

    /// A write and its answer.
    async fn post_json(&self, path: &str, body: Value) -> Result<Value, String> {
        let mut r = self.req(reqwest::Method::POST, path).json(&body);
        if self.target.token.is_none() {
            let csrf: Value = self.get("/api/csrf").await?;
            r = r.header(
                "X-CSRF-Token",
                csrf["csrfToken"].as_str().unwrap_or_default(),
            );
        }
        let resp = r.send().await.map_err(short)?;
        if resp.status().is_success() {
            Ok(resp.json().await.unwrap_or_default())
        } else {
            Err(error_of(resp).await)
        }
    }

    /// The WebSocket's address with the subscriptions of the view.
    fn ws_url(&self) -> String {
        let base = self.target.url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", base.trim_start_matches("http://"))
        };
        format!("{ws}/ws?subscribe=chain:*,orchestrator:*")
    }

    /// Keeps a WebSocket open: its events go to `events`, the link's state to `links`; each
    /// chain id from `follow` subscribes to that chain's output and its other events (its
    /// permission decisions). Tries again after 1, 2, 4 … 10 s.
    pub async fn follow(
        self,
        events: mpsc::Sender<Value>,
        links: mpsc::Sender<Link>,
        mut follow: tokio::sync::watch::Receiver<Option<String>>,
    ) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
        let mut attempt = 0u32;
        loop {
            let mut request = match self.ws_url().into_client_request() {
                Ok(r) => r,
                Err(e) => {
                    let _ = links
                        .send(Link::Down {
                            why: short(e),
                            retry_s: 0,
                        })
                        .await;
                    return;
                }
            };
            if let Some(t) = &self.target.token
                && let Ok(v) = format!("Bearer {t}").parse()
            {
                request.headers_mut().insert("authorization", v);
            }
            let why = match tokio_tungstenite::connect_async(request).await {
                Ok((ws, _)) => {
                    attempt = 0;
                    if links.send(Link::Up).await.is_err() {
                        return;
                    }
                    let (mut tx, mut rx) = ws.split();
                    let mut subscribed: Option<String> = None;
                    loop {
                        let want = follow.borrow_and_update().clone();
                        if want != subscribed {
                            let mut msg = serde_json::json!({});
                            if let Some(old) = &subscribed {
                                msg["unsubscribe"] = serde_json::json!([
                                    format!("session:output:{old}"),
                                    format!("chain:{old}")
                                ]);
                            }
                            if let Some(new) = &want {
                                msg["subscribe"] = serde_json::json!([
                                    format!("session:output:{new}"),
                                    format!("chain:{new}")
                                ]);
                            }
                            if tx.send(Message::text(msg.to_string())).await.is_err() {
                                break "the connection closed".to_string();
                            }
                            subscribed = want;
                        }
                        tokio::select! {
                            m = rx.next() => match m {
                                Some(Ok(Message::Text(t))) => {
                                    if let Ok(v) = serde_json::from_str::<Value>(&t)
                                        && events.send(v).await.is_err()
                                    {
                                        return;
                                    }
                                }
                                Some(Ok(Message::Close(_))) | None => break "the operator closed the connection".to_string(),
                                Some(Err(e)) => break short(e),
                                Some(Ok(_)) => {}
                            },
                            changed = follow.changed() => if changed.is_err() { return },
                        }
                    }
                }
                Err(e) => short(e),
            };
            let retry_s = [1, 2, 4, 8, 10][attempt.min(4) as usize];
            attempt += 1;
            if links.send(Link::Down { why, retry_s }).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(retry_s)).await;
        }
    }
}

/// The pending calls of `GET /api/chains/{id}/approvals`.
fn pending(approvals: &[Value]) -> Vec<Pending> {
    approvals
        .iter()
        .filter(|a| a["status"] == "pending")
        .map(|a| Pending {
            id: a["id"].as_str().unwrap_or_default().to_string(),
            summary: crate::progress::printable(
                a["summary"]
                    .as_str()
                    .or(a["tool"].as_str())
                    .unwrap_or_default(),
            )
            .into_owned(),
        })
        .collect()
}

/// The API's error message (`{"error": {"message"}}`), else the status.
async fn error_of(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the operator answered {status}"))
}

/// An error in one line, short enough for the header.
fn short(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.lines().next().unwrap_or_default();
    crate::progress::truncate(s, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_addresses_follow_the_api_scheme() {
        let c = |url: &str| {
            Client::new(Target {
                url: url.into(),
                token: None,
            })
            .ws_url()
        };
        assert_eq!(
            c("http://127.0.0.1:3100/"),
            "ws://127.0.0.1:3100/ws?subscribe=chain:*,orchestrator:*"
        );
        assert!(c("https://op.lan").starts_with("wss://op.lan/ws?"));
    }

    #[test]
    fn only_pending_calls_are_offered() {
        let v = [
            serde_json::json!({"id": "ap-1", "status": "approved", "summary": "Bash: ls"}),
            serde_json::json!({"id": "ap-2", "status": "pending", "summary": "Bash: git push"}),
        ];
        assert_eq!(
            pending(&v),
            [Pending {
                id: "ap-2".into(),
                summary: "Bash: git push".into()
            }]
        );
    }
}
