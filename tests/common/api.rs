//! Harness for API tests: `operator serve` on 127.0.0.1 with an ephemeral port, and a small HTTP client.
#![allow(dead_code)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{Op, eventually};

/// A running `operator serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub log: std::path::PathBuf,
}

impl Server {
    /// `operator serve --listen 127.0.0.1:0 --agent sim <extra>` in `op`'s root.
    pub fn start(op: &Op, extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--agent", "sim"];
        args.extend_from_slice(extra);
        Self::start_with(op, &args, &[])
    }

    pub fn start_with(op: &Op, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = op
            .root
            .path()
            .join(format!("serve-{}.log", fastrand::u32(..)));
        let addr_file = op.data_dir().join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = op.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn operator serve");
        assert!(
            eventually(Duration::from_secs(30), || addr_file.exists()),
            "the server did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let url = std::fs::read_to_string(&addr_file)
            .unwrap()
            .trim()
            .to_string();
        let token = std::fs::read_to_string(op.data_dir().join("api-token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        Self {
            child,
            url,
            token,
            http: reqwest::Client::new(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.url.replacen("http://", "ws://", 1))
    }

    /// A request with the bearer token.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = rb.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::send(self.req(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::send(self.req(Method::POST, path).json(&body)).await
    }

    /// Starts a chain on `task`; returns its id.
    pub async fn start_chain(&self, task: &str) -> String {
        let (st, v) = self
            .post("/api/chains", serde_json::json!({"task": task}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Polls the chain until `pred` holds on its JSON; returns it.
    pub async fn wait_chain(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, v) = self.get(&format!("/api/chains/{id}")).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "chain {id} never became {what}: {v}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_chain(id, status, |v| v["status"] == status).await
    }

    /// Stops the server through the API and waits for it to exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let _ = self.post("/api/orchestrator/stop", Value::Null).await;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < end,
                "the server did not stop:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts the one error shape and returns the code.
pub fn error_code(v: &Value) -> String {
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {v}"
    );
    code.to_string()
}
