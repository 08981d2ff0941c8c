//! `operator sim-agent`: a simulated agent that speaks Claude Code's two-way stream-json protocol
//! with scripted scenarios, so demos and tests exercise the real session code without an API key.
//!
//! Like the CLI it reads an `initialize` control request and user messages on stdin, prints
//! `system/init`, `assistant`, `user` (tool results) and `result` lines, answers follow-up
//! messages in the same process with a cumulative `total_cost_usd`, honours `interrupt`,
//! and exits 0 when stdin closes.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::agent::sim::Scenario;
use crate::agent::stream::control_success;

/// The scripted behaviour, from the command line.
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub scenario: Scenario,
    pub complete_after: u32,
    pub session_index: u32,
    pub step: Duration,
    pub turns: u32,
    pub max_turns: u32,
    pub model: String,
    pub resume: Option<String>,
    /// Appends a line to this file (relative to the working directory) at the session's start.
    pub write: Option<String>,
    /// A shell command run (and waited for) at each tool turn.
    pub tool: Option<String>,
}

/// Counts (and records) the failures of the `flaky` scenario in the working directory.
fn flaky_failures() -> usize {
    const MARK: &str = ".sim-flaky";
    let n = std::fs::read_to_string(MARK)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if n < 3 {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(MARK)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"failed\n"));
    }
    n
}

/// The marker file of the `usage-limit` scenario, in the working directory.
const USAGE_LIMIT_MARK: &str = ".sim-usage-limit";

const STUCK_HANDOFF: &str = "Still looking.\n\n## HANDOFF\n\n### Accomplished\nRead the code again \
    and thought about the problem.\n\n### Remaining\n- the whole task\n\n### Context\nNothing changed.";

const LAZY_COMPLETE_HANDOFF: &str = "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nThe task \
    is finished, everything works.\n\n### Remaining\nNothing.\n\n### Context\nNothing to add.";

/// Sonnet-like prices, so the sim's costs look like real ones.
const USD_PER_INPUT_TOKEN: f64 = 3.0 / 1_000_000.0;
const USD_PER_OUTPUT_TOKEN: f64 = 15.0 / 1_000_000.0;

enum Input {
    User,
    Interrupt(String),
    Other(Value),
    Eof,
}

struct Sim {
    args: SimArgs,
    session_id: String,
    inbox: mpsc::UnboundedReceiver<Input>,
    cost: f64,
    /// Turns of the current query (the CLI reports `num_turns` per query).
    turns_in_process: u32,
    started_at: std::time::Instant,
    initialized: bool,
    follow_ups: u32,
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the operator is gone: nothing useful is left to do.
    if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn emit_raw(s: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{s}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Runs a tool command with `sh -c` in the working directory (in the sim's process group, as a
/// real agent's Bash tool runs): its output, and whether it failed.
async fn run_tool(command: &str) -> (String, bool) {
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .await
    {
        Ok(out) => (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            !out.status.success(),
        ),
        Err(e) => (format!("could not run the tool: {e}"), true),
    }
}

/// Why a turn stopped early.
enum Stop {
    Interrupted(String),
    Eof,
}

impl Sim {
    /// Waits one step, watching stdin for an interrupt.
    async fn step(&mut self) -> Result<(), Stop> {
        let sleep = tokio::time::sleep(self.args.step);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                msg = self.inbox.recv() => match msg {
                    Some(Input::Interrupt(id)) => return Err(Stop::Interrupted(id)),
                    Some(Input::Eof) | None => return Err(Stop::Eof),
                    Some(Input::Other(v)) => self.answer_control(&v),
                    // A user message during a turn is queued by the real CLI; the sim ignores it.
                    Some(Input::User) => {}
                }
            }
        }
    }

    fn answer_control(&mut self, v: &Value) {
        if v.get("type").and_then(Value::as_str) == Some("control_request") {
            let id = v.get("request_id").and_then(Value::as_str).unwrap_or("");
            emit_raw(&control_success(
                id,
                json!({"commands": [], "models": [self.args.model]}),
            ));
            self.initialized = true;
        }
    }

    /// Asks the operator something it does not handle (an MCP elicitation, which the CLI sends
    /// for MCP servers' questions) and waits for its answer, as the CLI would: an operator that
    /// stays silent would hang a real session.
    async fn ask_operator(&mut self) -> Result<String, Stop> {
        let id = "sim_ask_1";
        emit(&json!({"type": "control_request", "request_id": id,
            "request": {"subtype": "elicitation", "mcp_server_name": "sim", "message": "Which branch?"}}));
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok("no answer".into()),
                msg = self.inbox.recv() => match msg {
                    Some(Input::Other(v)) if v.get("type").and_then(Value::as_str) == Some("control_response")
                        && v.pointer("/response/request_id").and_then(Value::as_str) == Some(id) => {
                        return Ok(v.pointer("/response/subtype").and_then(Value::as_str).unwrap_or("?").to_string());
                    }
                    Some(Input::Other(v)) => self.answer_control(&v),
                    Some(Input::Interrupt(id)) => return Err(Stop::Interrupted(id)),
                    Some(Input::Eof) | None => return Err(Stop::Eof),
                    Some(Input::User) => {}
                }
            }
        }
    }

    fn usage(&self, turn: u32) -> Value {
        json!({"input_tokens": 1500 + 200 * turn, "output_tokens": 250,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    }

    fn add_cost(&mut self, turn: u32) {
        self.cost +=
            (1500 + 200 * turn) as f64 * USD_PER_INPUT_TOKEN + 250.0 * USD_PER_OUTPUT_TOKEN;
    }

    fn assistant_text(&mut self, turn: u32, text: &str) {
        self.add_cost(turn);
        emit(&json!({"type": "assistant", "session_id": self.session_id,
            "message": {"role": "assistant", "model": self.args.model,
                "content": [{"type": "text", "text": text}], "usage": self.usage(turn)}}));
    }

    async fn tool_round(&mut self, turn: u32) {
        self.add_cost(turn);
        let id = format!("toolu_{turn}");
        let command = self
            .args
            .tool
            .clone()
            .unwrap_or_else(|| format!("ls src # step {turn}"));
        emit(&json!({"type": "assistant", "session_id": self.session_id,
            "message": {"role": "assistant", "model": self.args.model,
                "content": [{"type": "text", "text": format!("Step {turn}: looking at the code.")},
                            {"type": "tool_use", "id": id, "name": "Bash",
                             "input": {"command": command}}],
                "usage": self.usage(turn)}}));
        let (content, is_error) = match &self.args.tool {
            Some(tool) => run_tool(tool).await,
            None => ("main.rs\nlib.rs".to_string(), false),
        };
        emit(&json!({"type": "user", "session_id": self.session_id,
            "message": {"role": "user", "content": [{"type": "tool_result",
                "tool_use_id": id, "content": content, "is_error": is_error}]}}));
    }

    fn result(&mut self, subtype: &str, is_error: bool, text: &str, extra: Value) {
        let mut v = json!({"type": "result", "subtype": subtype, "is_error": is_error,
            "num_turns": self.turns_in_process, "total_cost_usd": self.cost,
            "duration_ms": self.started_at.elapsed().as_millis() as u64,
            "duration_api_ms": self.started_at.elapsed().as_millis() as u64 / 2,
            "session_id": self.session_id, "result": text,
            "usage": {"input_tokens": 1500, "output_tokens": 250},
            "modelUsage": {self.args.model.clone(): {"costUSD": self.cost}},
            "permission_denials": [], "terminal_reason": "completed", "errors": []});
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        emit(&v);
    }

    fn handoff(&self, complete: bool) -> String {
        let n = self.args.session_index;
        if complete {
            format!(
                "All done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nSession {n} finished the \
                 last part of the task and checked the result.\n\n### Remaining\nNothing.\n\n\
                 ### Context\nThe work was simulated by the sim agent."
            )
        } else {
            format!(
                "Stopping here for now.\n\n## HANDOFF\n\n### Accomplished\nSession {n} did part \
                 {n} of the task (simulated).\n\n### Remaining\n- part {} of the task\n- final \
                 check\n\n### Context\nThe sim agent was told to finish after {} sessions.",
                n + 1,
                self.args.complete_after
            )
        }
    }

    fn completes_now(&self) -> bool {
        self.args.session_index > self.args.complete_after
    }

    fn init(&self) {
        emit(
            &json!({"type": "system", "subtype": "init", "session_id": self.session_id,
            "model": self.args.model, "claude_code_version": concat!("sim-", env!("CARGO_PKG_VERSION")),
            "tools": ["Bash", "Read", "Edit"], "permissionMode": "default", "cwd":
            std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default()}),
        );
    }

    /// One turn, answering the first prompt of the process.
    async fn first_turn(&mut self) -> Result<(), Stop> {
        let args = self.args.clone();
        match args.scenario {
            Scenario::Hang => {
                std::future::pending::<()>().await;
            }
            Scenario::Crash => {
                self.step().await?;
                self.assistant_text(1, "Starting work…");
                std::process::exit(3);
            }
            Scenario::Flaky if flaky_failures() < 3 => {
                self.step().await?;
                self.result(
                    "success",
                    true,
                    "API Error: 500 Internal server error",
                    json!({"terminal_reason": "api_error", "api_error_status": 500}),
                );
                std::process::exit(1);
            }
            Scenario::Error => {
                self.step().await?;
                self.assistant_text(1, "Starting work…");
                self.result(
                    "success",
                    true,
                    "API Error: 500 Internal server error",
                    json!({"terminal_reason": "api_error", "api_error_status": 500}),
                );
                std::process::exit(1);
            }
            Scenario::MaxTurns => {
                for turn in 1..=args.max_turns {
                    self.step().await?;
                    self.turns_in_process += 1;
                    self.tool_round(turn).await;
                }
                self.turns_in_process += 1;
                let msg = format!("Reached maximum number of turns ({})", args.max_turns);
                self.result(
                    "error_max_turns",
                    true,
                    "",
                    json!({"terminal_reason": "max_turns", "errors": [msg]}),
                );
                return Ok(());
            }
            // Exactly one session of the workdir hits it, however many start at once.
            Scenario::UsageLimit
                if std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(USAGE_LIMIT_MARK)
                    .is_ok() =>
            {
                self.step().await?;
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() + 2)
                    .unwrap_or(0);
                let text = format!("Claude AI usage limit reached|{reset}");
                self.result(
                    "success",
                    true,
                    &text,
                    json!({"terminal_reason": "api_error", "api_error_status": 429}),
                );
                std::process::exit(1);
            }
            _ => {}
        }
        if args.scenario == Scenario::Garbage {
            let answer = self.ask_operator().await?;
            self.assistant_text(
                1,
                &format!("The operator answered my elicitation request: {answer}."),
            );
        }
        for turn in 1..=args.turns {
            self.step().await?;
            self.turns_in_process += 1;
            if args.scenario == Scenario::Garbage {
                // Agents run `env` too: a leaked key must be masked by the operator.
                if let Ok(key) = std::env::var("ANTHROPIC_API_KEY") {
                    self.assistant_text(turn, &format!("$ env\nANTHROPIC_API_KEY={key}"));
                }
                emit_raw("this is not json {{{");
                emit_raw(r#"{"type":"mystery_event","payload":[1,2,3]}"#);
                emit_raw("\u{1b}[31mcolour codes and stray bytes\u{1b}[0m");
            }
            self.tool_round(turn).await;
        }
        if args.scenario == Scenario::Slow {
            for i in 1..=20 {
                self.step().await?;
                self.assistant_text(args.turns + 1, &format!("Thinking slowly, line {i} of 20…"));
            }
        }
        self.step().await?;
        self.turns_in_process += 1;
        let text = match args.scenario {
            Scenario::NoHandoff | Scenario::Forgetful => {
                "I changed a few files and I think it works now.".to_string()
            }
            Scenario::Incomplete | Scenario::UsageLimit => self.handoff(self.completes_now()),
            Scenario::Flaky => self.handoff(true),
            Scenario::Stuck => STUCK_HANDOFF.to_string(),
            Scenario::LazyComplete => LAZY_COMPLETE_HANDOFF.to_string(),
            _ => self.handoff(true),
        };
        self.assistant_text(args.turns + 1, &text);
        self.result("success", false, &text, json!({}));
        Ok(())
    }

    /// A later user message in the same process: the "write your HANDOFF now" follow-up.
    async fn follow_up_turn(&mut self) -> Result<(), Stop> {
        self.follow_ups += 1;
        self.step().await?;
        self.turns_in_process += 1;
        let text = match self.args.scenario {
            Scenario::NoHandoff => "Sorry, I am not sure what you mean.".to_string(),
            Scenario::MaxTurns => self.handoff(false),
            _ => self.handoff(self.completes_now()),
        };
        let turn = self.args.turns + 1 + self.follow_ups;
        self.assistant_text(turn, &text);
        self.result("success", false, &text, json!({}));
        Ok(())
    }

    fn interrupted(&mut self, id: &str) {
        emit_raw(&control_success(id, json!({})));
        self.result(
            "error_during_execution",
            true,
            "[Request interrupted by user]",
            json!({"terminal_reason": "aborted_streaming"}),
        );
    }
}

/// Runs the simulated agent on stdin/stdout; returns the process exit code.
pub async fn run(args: SimArgs) -> i32 {
    if let Some(w) = &args.write {
        let p = std::path::Path::new(w);
        let inside = p.is_relative()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            eprintln!("sim-agent: --write must be a relative path inside the workdir");
            return 2;
        }
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let line = format!("session {} was here\n", args.session_index);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = written {
            eprintln!("sim-agent: cannot write {w}: {e}");
            return 2;
        }
    }
    let (tx, inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
            let sub = v
                .pointer("/request/subtype")
                .and_then(Value::as_str)
                .unwrap_or("");
            let msg = match (ty, sub) {
                ("user", _) => Input::User,
                ("control_request", "interrupt") => Input::Interrupt(
                    v.get("request_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                _ => Input::Other(v),
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });
    let session_id = args
        .resume
        .clone()
        .unwrap_or_else(|| format!("sim-{:08x}-{:04x}", fastrand::u32(..), fastrand::u16(..)));
    let mut sim = Sim {
        args,
        session_id,
        inbox,
        cost: 0.0,
        turns_in_process: 0,
        started_at: std::time::Instant::now(),
        initialized: false,
        follow_ups: 0,
    };
    let mut prompts = 0u32;
    loop {
        let Some(msg) = sim.inbox.recv().await else {
            return 0;
        };
        let outcome = match msg {
            Input::Eof => return 0,
            Input::Other(v) => {
                sim.answer_control(&v);
                continue;
            }
            Input::Interrupt(id) => {
                // Nothing runs: acknowledge and carry on.
                emit_raw(&control_success(&id, json!({})));
                continue;
            }
            Input::User => {
                prompts += 1;
                sim.turns_in_process = 0;
                if prompts == 1 {
                    sim.init();
                    sim.first_turn().await
                } else {
                    sim.follow_up_turn().await
                }
            }
        };
        match outcome {
            Ok(()) => {}
            Err(Stop::Interrupted(id)) => sim.interrupted(&id),
            Err(Stop::Eof) => return 0,
        }
    }
}
