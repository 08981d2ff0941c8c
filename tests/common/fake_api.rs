//! A fake Anthropic Messages API (axum on 127.0.0.1:0) that the real Claude Code CLI talks to in tests:
//! scripted streaming answers (text, tool use), API errors, hangs, usage limits and huge token counts,
//! with every request recorded so tests can check what the CLI sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

/// One answer of the agent loop.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A text answer (`end_turn`).
    Text(String),
    /// A Bash tool call (`tool_use`): the CLI runs the command and sends the result back.
    Bash(String),
    /// Any tool call (`Write`, `Read`, …) with its input.
    Tool { name: String, input: Value },
    /// An HTTP error with the API's error body.
    Error {
        status: u16,
        kind: &'static str,
        message: String,
        retry_after: Option<u64>,
        /// More response headers.
        headers: Vec<(&'static str, String)>,
    },
    /// Starts the stream, then sends nothing more.
    Hang,
}

/// A reply and the input tokens the answer reports (a huge count makes the CLI compact).
#[derive(Debug, Clone)]
pub struct Step {
    pub reply: Reply,
    pub input_tokens: u64,
}

impl Step {
    pub fn text(t: impl Into<String>) -> Self {
        Self {
            reply: Reply::Text(t.into()),
            input_tokens: 1500,
        }
    }
    pub fn bash(cmd: impl Into<String>) -> Self {
        Self {
            reply: Reply::Bash(cmd.into()),
            input_tokens: 1500,
        }
    }
    /// A call of `name` with `input` (e.g. `Write` with `file_path` and `content`).
    pub fn tool(name: &str, input: Value) -> Self {
        Self {
            reply: Reply::Tool {
                name: name.to_string(),
                input,
            },
            input_tokens: 1500,
        }
    }
    pub fn error(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            reply: Reply::Error {
                status,
                kind,
                message: message.into(),
                retry_after: Some(0),
                headers: Vec::new(),
            },
            input_tokens: 0,
        }
    }
    /// A subscription usage limit, as the API words it (the older wording other tools parse:
    /// `Claude AI usage limit reached|<epoch seconds>`).
    pub fn usage_limit(resets_at: u64) -> Self {
        Self {
            reply: Reply::Error {
                status: 429,
                kind: "rate_limit_error",
                message: format!("Claude AI usage limit reached|{resets_at}"),
                retry_after: None,
                headers: vec![
                    ("anthropic-ratelimit-unified-status", "rejected".into()),
                    ("anthropic-ratelimit-unified-reset", resets_at.to_string()),
                ],
            },
            input_tokens: 0,
        }
    }
    /// A subscription's limit as the API signals it to an OAuth login: a 429 with the unified
    /// rate-limit headers (the CLI turns them into a `rate_limit_event` and its own wording).
    pub fn subscription_limit(resets_at: u64) -> Self {
        Self {
            reply: Reply::Error {
                status: 429,
                kind: "rate_limit_error",
                message:
                    "This request would exceed your account's rate limit. Please try again later."
                        .into(),
                retry_after: None,
                headers: vec![
                    ("anthropic-ratelimit-unified-status", "rejected".into()),
                    ("anthropic-ratelimit-unified-reset", resets_at.to_string()),
                    ("anthropic-ratelimit-unified-5h-status", "rejected".into()),
                    (
                        "anthropic-ratelimit-unified-5h-reset",
                        resets_at.to_string(),
                    ),
                    (
                        "anthropic-ratelimit-unified-representative-claim",
                        "five_hour".into(),
                    ),
                ],
            },
            input_tokens: 0,
        }
    }
    pub fn hang() -> Self {
        Self {
            reply: Reply::Hang,
            input_tokens: 1500,
        }
    }
    pub fn tokens(mut self, n: u64) -> Self {
        self.input_tokens = n;
        self
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
    /// It consumed a step of the script (an agent-loop request).
    pub scripted: bool,
    /// The CLI asked for a compaction summary.
    pub compaction: bool,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    fallback: Option<Step>,
    requests: Vec<Recorded>,
    serial: u64,
    summary: Option<String>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

pub struct FakeApi {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// A handle that counts the agent-loop requests the fake has received, usable from another
/// thread (to wait for "the CLI is now waiting on its answer" instead of sleeping).
#[derive(Clone)]
pub struct Seen(Shared);

impl Seen {
    pub fn scripted(&self) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.scripted)
            .count()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// Serves `script` in order to agent-loop requests, then `fallback` for ever.
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
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// What the model "writes" when the CLI asks for a compaction summary.
    pub fn set_compaction_summary(&self, text: impl Into<String>) {
        self.shared.0.lock().unwrap().summary = Some(text.into());
    }

    pub fn seen(&self) -> Seen {
        Seen(self.shared.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// The agent-loop requests (those that consumed script steps).
    pub fn scripted(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.scripted)
            .map(|r| r.body)
            .collect()
    }
}

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "output_tokens": output,
           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
}

fn message_start(id: &str, model: &str, input: u64) -> Value {
    json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": usage(input, 1)}})
}

fn text_events(id: &str, model: &str, input: u64, text: &str) -> Vec<Value> {
    let mut ev = vec![
        message_start(id, model, input),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ];
    // A few deltas, as a real stream has.
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(200) {
        let t: String = chunk.iter().collect();
        ev.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}));
    }
    ev.push(json!({"type": "content_block_stop", "index": 0}));
    ev.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": 40 + text.len() as u64 / 4}}),
    );
    ev.push(json!({"type": "message_stop"}));
    ev
}

fn bash_events(id: &str, model: &str, input: u64, cmd: &str, n: u64) -> Vec<Value> {
    let input_json = json!({"command": cmd, "description": "run a command"});
    tool_events(id, model, input, "Bash", &input_json, n)
}

fn tool_events(
    id: &str,
    model: &str,
    input: u64,
    name: &str,
    tool_input: &Value,
    n: u64,
) -> Vec<Value> {
    let input_json = tool_input.to_string();
    vec![
        message_start(id, model, input),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("Running step {n}.")}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": format!("toolu_{n:04}"), "name": name, "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": input_json}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 60}}),
        json!({"type": "message_stop"}),
    ]
}

/// Is this a request of the agent loop (as opposed to a side request such as a title)?
fn is_agent_loop(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
}

/// Is the CLI asking for a compaction summary? (Measured with 2.1.328: the last user
/// message asks for "TEXT ONLY" with an <analysis> and a <summary> block.)
fn is_compaction(body: &Value) -> bool {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["content"].to_string())
        .unwrap_or_default();
    last.contains("Respond with TEXT ONLY") && last.contains("<summary>")
}

async fn handle(
    State(shared): State<Shared>,
    uri: Uri,
    _headers: HeaderMap,
    body: String,
) -> Response {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if path.ends_with("/count_tokens") {
        record(&shared, &path, &body, false);
        return json_response(200, json!({"input_tokens": 1200}));
    }
    if !path.ends_with("/v1/messages") {
        record(&shared, &path, &body, false);
        return json_response(
            404,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "not here"}}),
        );
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let compaction = is_compaction(&body);
    let scripted = is_agent_loop(&body) && !compaction;
    let (step, n) = {
        let mut inner = shared.0.lock().unwrap();
        inner.serial += 1;
        let n = inner.serial;
        inner.requests.push(Recorded {
            path: path.clone(),
            body: body.clone(),
            scripted,
            compaction,
        });
        let step = if compaction {
            let summary = inner
                .summary
                .clone()
                .unwrap_or_else(|| "The conversation so far.".into());
            Some(Step::text(format!(
                "<analysis>Summarising.</analysis>\n<summary>\n{summary}\n</summary>"
            )))
        } else if scripted {
            inner.script.pop_front().or_else(|| inner.fallback.clone())
        } else {
            None
        };
        (step.unwrap_or_else(|| Step::text("ok")), n)
    };
    let id = format!("msg_{n:06}");
    if !stream {
        let text = match &step.reply {
            Reply::Text(t) => t.clone(),
            _ => "ok".into(),
        };
        return json_response(
            200,
            json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": usage(step.input_tokens, 20)}),
        );
    }
    match step.reply {
        Reply::Text(t) => sse_response(sse(&text_events(&id, &model, step.input_tokens, &t))),
        Reply::Bash(cmd) => {
            sse_response(sse(&bash_events(&id, &model, step.input_tokens, &cmd, n)))
        }
        Reply::Tool { name, input } => sse_response(sse(&tool_events(
            &id,
            &model,
            step.input_tokens,
            &name,
            &input,
            n,
        ))),
        Reply::Error {
            status,
            kind,
            message,
            retry_after,
            headers,
        } => {
            let mut r = json_response(
                status,
                json!({"type": "error", "error": {"type": kind, "message": message}}),
            );
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            for (k, v) in headers {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            r
        }
        Reply::Hang => {
            let first = sse(&[message_start(&id, &model, step.input_tokens)]);
            let stream = futures_util::stream::unfold(Some(first), |state| async move {
                match state {
                    Some(first) => Some((Ok::<_, std::io::Error>(first), None)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        None
                    }
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

fn record(shared: &Shared, path: &str, body: &Value, scripted: bool) {
    shared.0.lock().unwrap().requests.push(Recorded {
        path: path.into(),
        body: body.clone(),
        scripted,
        compaction: false,
    });
}

fn json_response(status: u16, v: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .header("request-id", "req_fake")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn sse_response(body: String) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", "req_fake")
        .body(Body::from(body))
        .unwrap()
}
