//! A fake OpenAI Responses API (axum on 127.0.0.1:0) that the real Codex CLI talks to in tests:
//! scripted streaming answers (text, shell commands, patches), API errors with their real bodies,
//! usage limits with reset times, and every request recorded.
//!
//! Shapes measured with Codex CLI 0.169.0: it POSTs `/v1/responses` with `stream: true`; an SSE
//! answer of `response.created`, `response.output_item.done` items and `response.completed` (with
//! `usage`) is enough. A `function_call` of `exec_command` runs a shell command, a
//! `custom_tool_call` of `apply_patch` edits files; their results come back in the next request's
//! `input` as `function_call_output` / `custom_tool_call_output`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

/// One answer of the agent loop.
#[derive(Debug, Clone)]
pub enum Step {
    /// An assistant message; the turn ends.
    Text(String),
    /// A shell command (`exec_command`).
    Shell(String),
    /// An `apply_patch` call with the patch text.
    Patch(String),
    /// Starts the stream, then sends nothing more.
    Hang,
    /// An HTTP error with the API's JSON body.
    Error {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
}

impl Step {
    pub fn text(t: impl Into<String>) -> Self {
        Step::Text(t.into())
    }
    pub fn shell(cmd: impl Into<String>) -> Self {
        Step::Shell(cmd.into())
    }
    /// A patch adding `path` with `content` (one line).
    pub fn add_file(path: &str, content: &str) -> Self {
        Step::Patch(format!(
            "*** Begin Patch\n*** Add File: {path}\n+{content}\n*** End Patch\n"
        ))
    }
    /// 401, as the API answers a wrong key.
    pub fn unauthorized() -> Self {
        Step::Error {
            status: 401,
            body: json!({"error": {"message": "Incorrect API key provided: sk-test.", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            headers: Vec::new(),
        }
    }
    /// 429, the per-minute rate limit (retryable).
    pub fn rate_limited() -> Self {
        Step::Error {
            status: 429,
            body: json!({"error": {"message": "Rate limit reached for requests. Please try again in 1s.", "type": "requests", "code": "rate_limit_exceeded"}}),
            headers: vec![("retry-after", "0".into())],
        }
    }
    /// A ChatGPT plan's usage limit, with its reset time (Unix seconds).
    pub fn usage_limit(resets_at: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Step::Error {
            status: 429,
            body: json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "plan_type": "plus", "resets_at": resets_at, "resets_in_seconds": resets_at.saturating_sub(now)}}),
            headers: Vec::new(),
        }
    }
    /// 500, as the API answers an internal error.
    pub fn server_error() -> Self {
        Step::Error {
            status: 500,
            body: json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}),
            headers: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    fallback: Option<Step>,
    requests: Vec<Value>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

pub struct FakeOpenAi {
    /// The base URL the CLI is given (`…/v1`).
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOpenAi {
    /// Serves `script` in order, then `fallback` for ever.
    pub async fn start(script: Vec<Step>, fallback: Step) -> Self {
        let shared = Shared(Arc::new(Mutex::new(Inner {
            script: script.into(),
            fallback: Some(fallback),
            ..Default::default()
        })));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// The bodies of the `/v1/responses` requests, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// A `$CODEX_HOME/config.toml` that points the CLI at this fake (the way a user points it at
    /// any Responses-compatible endpoint); the key comes from `OPENAI_API_KEY`.
    pub fn codex_config(&self) -> String {
        format!(
            "model_provider = \"fake\"\n\n[model_providers.fake]\nname = \"fake\"\nbase_url = \"{}\"\nwire_api = \"responses\"\nenv_key = \"OPENAI_API_KEY\"\n",
            self.url
        )
    }
}

/// All the text a request carries (instructions and input), for assertions.
pub fn request_text(body: &Value) -> String {
    let mut s = body["instructions"].to_string();
    s.push_str(&body["input"].to_string());
    s
}

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

async fn handle(State(shared): State<Shared>, uri: Uri, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if !uri.path().ends_with("/responses") {
        return json_response(
            404,
            json!({"error": {"message": "not here", "type": "invalid_request_error"}}),
        );
    }
    let (step, n) = {
        let mut inner = shared.0.lock().unwrap();
        inner.requests.push(body);
        let n = inner.requests.len();
        let step = inner
            .script
            .pop_front()
            .or_else(|| inner.fallback.clone())
            .unwrap_or_else(|| Step::text("ok"));
        (step, n)
    };
    let id = format!("resp_{n:04}");
    let item = match step {
        Step::Error {
            status,
            body,
            headers,
        } => {
            let mut r = json_response(status, body);
            for (k, v) in headers {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            return r;
        }
        Step::Hang => {
            let first = sse(&[json!({"type": "response.created", "response": {"id": id}})]);
            let stream = futures_util::stream::unfold(Some(first), |state| async move {
                match state {
                    Some(first) => Some((Ok::<_, std::io::Error>(first), None)),
                    None => {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        None
                    }
                }
            });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap();
        }
        Step::Text(t) => json!({"type": "message", "role": "assistant", "id": format!("msg_{n}"),
            "content": [{"type": "output_text", "text": t, "annotations": []}]}),
        Step::Shell(cmd) => json!({"type": "function_call", "id": format!("fc_{n}"),
            "call_id": format!("call_{n}"), "name": "exec_command",
            "arguments": json!({"cmd": cmd}).to_string()}),
        Step::Patch(patch) => json!({"type": "custom_tool_call", "id": format!("ct_{n}"),
            "call_id": format!("call_{n}"), "name": "apply_patch", "input": patch}),
    };
    let events = [
        json!({"type": "response.created", "response": {"id": id}}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "usage": {
            "input_tokens": 2000, "input_tokens_details": {"cached_tokens": 500},
            "output_tokens": 100, "output_tokens_details": {"reasoning_tokens": 20},
            "total_tokens": 2100}}}),
    ];
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from(sse(&events)))
        .unwrap()
}

fn json_response(status: u16, v: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}
