//! Where the MCP tools' requests go: the API of the operator serving the data dir (over HTTP,
//! like `operator tui`), or an API router in this process (`/mcp` of `operator serve`, or a
//! read-only one on the data dir when no operator runs). Every request goes through the API's
//! own validation and security guard, so a tool can do nothing the API would not let a client do.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, header};
use serde_json::Value;
use tokio::sync::OnceCell;
use tower::ServiceExt;

use crate::api::journal::CLIENT_HEADER;

/// The largest API answer a tool reads (an output page is at most 1 MiB).
const ANSWER_LIMIT: usize = 4 << 20;

/// Why a tool's request failed: the API's own message, or why the API could not be reached.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The API's status (0 when it could not be reached).
    pub status: u16,
    pub message: String,
}

impl Failure {
    fn unreachable(message: String) -> Self {
        Self { status: 0, message }
    }
}

/// Builds the read-only API on the data dir when no operator serves it.
pub type LocalApi =
    Box<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<Router, String>> + Send + Sync>;

/// Where requests go.
pub enum Backend {
    /// An operator's API at this URL (`--url`, or `operator mcp` on a data dir whose operator
    /// serves): over HTTP with the token.
    Remote {
        url: String,
        token: Option<String>,
        client: reqwest::Client,
    },
    /// The API router of this process (`/mcp`): requests carry the MCP request's own
    /// `Authorization` and `Host`, so the API's guard decides as for any client.
    InProcess { router: Router },
    /// `operator mcp` on a data dir: its operator's API when one serves it (read each call, so an
    /// operator started later is found), else a read-only API on the data dir.
    DataDir {
        data_dir: PathBuf,
        token: Option<String>,
        client: reqwest::Client,
        local: LocalApi,
        opened: OnceCell<Router>,
    },
}

/// The HTTP client of the remote backends: short connects, bounded answers.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// What an MCP request carried that the API's guard needs (`/mcp` only).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub authorization: Option<HeaderValue>,
    pub host: Option<HeaderValue>,
}

impl Backend {
    /// One API request: `path` with its query (already encoded); the answer's JSON, or the API's
    /// error message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        caller: &Caller,
    ) -> Result<Value, Failure> {
        match self {
            Backend::Remote { url, token, client } => {
                remote(client, url, token.as_deref(), method, path, body).await
            }
            Backend::InProcess { router } => {
                in_process(router, method, path, body, caller.clone()).await
            }
            Backend::DataDir {
                data_dir,
                token,
                client,
                local,
                opened,
            } => {
                let dir = crate::datadir::DataDir::new(data_dir);
                if let Some(url) = dir.api_url() {
                    match remote(
                        client,
                        &url,
                        token.as_deref(),
                        method.clone(),
                        path,
                        body.clone(),
                    )
                    .await
                    {
                        Err(f) if f.status == 0 => {
                            tracing::debug!(%url, cause = %f, "the operator's API does not answer; reading the data dir");
                        }
                        other => return other,
                    }
                }
                if method != Method::GET {
                    return Err(Failure::unreachable(format!(
                        "no operator runs on {}: this tool needs one. Start it with `operator serve` (it stays up and serves the API), then call the tool again",
                        std::path::absolute(data_dir)
                            .unwrap_or_else(|_| data_dir.clone())
                            .display()
                    )));
                }
                let router = opened
                    .get_or_try_init(local)
                    .await
                    .map_err(Failure::unreachable)?;
                let caller = Caller {
                    authorization: token
                        .as_deref()
                        .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
                    host: None,
                };
                in_process(router, method, path, body, caller).await
            }
        }
    }
}

async fn remote(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let mut req = client
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .header(CLIENT_HEADER, "mcp");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        Failure::unreachable(format!(
            "the operator's API at {url} does not answer ({e}); is the operator still running?"
        ))
    })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Failure::unreachable(format!("the API's answer was cut: {e}")))?;
    answer(status, &bytes)
}

async fn in_process(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
    caller: Caller,
) -> Result<Value, Failure> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(CLIENT_HEADER, "mcp")
        .header(
            header::HOST,
            caller
                .host
                .unwrap_or_else(|| HeaderValue::from_static("127.0.0.1")),
        );
    if let Some(a) = caller.authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .map_err(|e| Failure::unreachable(format!("cannot build the request: {e}")))?;
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| Failure::unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), ANSWER_LIMIT)
        .await
        .map_err(|e| Failure::unreachable(format!("the API's answer was cut: {e}")))?;
    answer(status, &bytes)
}

/// The JSON of a success, or the message of the API's error body (`{"error": {"message"}}`).
fn answer(status: u16, bytes: &[u8]) -> Result<Value, Failure> {
    let json: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(json);
    }
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the API answered {status}"));
    Err(Failure { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_apis_message() {
        let body = br#"{"error":{"code":"not_found","message":"no chain `c-1`"}}"#;
        assert_eq!(
            answer(404, body),
            Err(Failure {
                status: 404,
                message: "no chain `c-1`".into()
            })
        );
        assert_eq!(answer(200, br#"{"a":1}"#), Ok(serde_json::json!({"a":1})));
        assert_eq!(
            answer(502, b"<html>").unwrap_err().message,
            "the API answered 502"
        );
    }
}
