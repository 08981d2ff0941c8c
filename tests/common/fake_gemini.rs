//! A fake Gemini API (axum on 127.0.0.1:0) that the real Gemini CLI talks to in tests (through
//! `GOOGLE_GEMINI_BASE_URL`): scripted streaming answers (text, function calls), API errors with
//! their real bodies, quota exhaustion, and every request recorded.
//!
//! Shapes measured with Gemini CLI 0.61.0: with a fixed `-m` it POSTs
//! `/v1beta/models/<model>:streamGenerateContent?alt=sse`; one SSE `data:` event carrying
//! `candidates[0].content.parts` (text or a `functionCall`), `finishReason: STOP` and
//! `usageMetadata` is a whole answer. A function's result comes back in the next request's
//! `contents` as a `functionResponse`.

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
    /// Model text; the turn ends.
    Text(String),
    /// A function call (`write_file`, `replace`, `run_shell_command`, …) with its arguments.
    Call { name: String, args: Value },
    /// Starts the stream, then sends nothing more.
    Hang,
    /// An HTTP error with the API's JSON body.
    Error { status: u16, body: Value },
}

impl Step {
    pub fn text(t: impl Into<String>) -> Self {
        Step::Text(t.into())
    }
    /// `write_file` of `content` at `path` (absolute, as the model writes it).
    pub fn write_file(path: &std::path::Path, content: &str) -> Self {
        Step::Call {
            name: "write_file".into(),
            args: json!({"file_path": path.display().to_string(), "content": content}),
        }
    }
    /// 401, as the API answers a wrong key.
    pub fn unauthorized() -> Self {
        Step::Error {
            status: 401,
            body: json!({"error": {"code": 401, "message": "API key not valid. Please pass a valid API key.", "status": "UNAUTHENTICATED"}}),
        }
    }
    /// 429 for a per-minute quota, with the retry delay the API suggests (retryable).
    pub fn rate_limited() -> Self {
        Step::Error {
            status: 429,
            body: json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}}),
        }
    }
    /// 429 for the free tier's daily quota (the CLI ends the turn at once).
    pub fn daily_quota() -> Self {
        Step::Error {
            status: 429,
            body: json!({"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}),
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

pub struct FakeGemini {
    /// The base URL the CLI is given (`GOOGLE_GEMINI_BASE_URL`).
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGemini {
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
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// The bodies of the content-generating requests, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// Prepares `home` as the CLI's `$HOME`: with `GOOGLE_GEMINI_BASE_URL` set the CLI would
    /// pick its "gateway" auth, so the settings select the API key (measured; a user without a
    /// base URL needs nothing of the kind).
    pub fn prepare_home(home: &std::path::Path) {
        let dir = home.join(".gemini");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("settings.json"),
            r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
        )
        .unwrap();
    }
}

/// All the text a request carries (system instruction and contents), for assertions.
pub fn request_text(body: &Value) -> String {
    let mut s = body["systemInstruction"].to_string();
    s.push_str(&body["contents"].to_string());
    s
}

async fn handle(State(shared): State<Shared>, uri: Uri, body: String) -> Response {
    let path = uri.path().to_string();
    if path.ends_with(":countTokens") {
        return json_response(200, json!({"totalTokens": 1000}));
    }
    if !path.contains(":streamGenerateContent") && !path.contains(":generateContent") {
        return json_response(
            404,
            json!({"error": {"code": 404, "message": "not here", "status": "NOT_FOUND"}}),
        );
    }
    let model = path
        .rsplit('/')
        .next()
        .and_then(|m| m.split(':').next())
        .unwrap_or("gemini-2.5-pro")
        .to_string();
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    // With the default model (`auto`) the CLI first asks a small model how complex the turn is
    // (a JSON answer): answered here, outside the script and the recorded requests.
    if body["generationConfig"]["responseMimeType"] == "application/json" {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": json!({"complexity_reasoning": "a test", "complexity_score": 80}).to_string()}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 20, "totalTokenCount": 320},
            "modelVersion": model,
        });
        return json_response(200, answer);
    }
    let step = {
        let mut inner = shared.0.lock().unwrap();
        inner.requests.push(body);
        inner
            .script
            .pop_front()
            .or_else(|| inner.fallback.clone())
            .unwrap_or_else(|| Step::text("ok"))
    };
    let parts = match step {
        Step::Error { status, body } => return json_response(status, body),
        Step::Hang => {
            let stream = futures_util::stream::unfold((), |_| async {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                None::<(Result<String, std::io::Error>, ())>
            });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap();
        }
        Step::Text(t) => json!([{"text": t}]),
        Step::Call { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
    };
    let answer = json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 2000, "candidatesTokenCount": 100, "totalTokenCount": 2100, "cachedContentTokenCount": 500},
        "modelVersion": model,
    });
    if path.contains(":streamGenerateContent") {
        Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from(format!("data: {answer}\r\n\r\n")))
            .unwrap()
    } else {
        json_response(200, answer)
    }
}

fn json_response(status: u16, v: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}
