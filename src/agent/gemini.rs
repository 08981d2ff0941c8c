//! The `gemini` backend: the Google Gemini CLI, one `gemini -p "" -o stream-json` process per turn,
//! its JSONL read into the same typed events as Claude's stream.
//!
//! Measured with `@google/gemini-cli` 0.61.0 against a local fake of the Gemini API (docs/agents.md):
//! stdout is `init {session_id, model}`, `message {role, content, delta}` (the assistant's text in
//! chunks to be joined as they come), `tool_use {tool_name, tool_id, parameters}`, `tool_result
//! {tool_id, status}`, and a last `result {status, error?, stats}`. The prompt comes on stdin
//! (`-p ""` makes the run headless; `-p` is appended to stdin); `--resume <session_id>` continues a
//! session in a new process.

use std::path::PathBuf;

use serde_json::Value;

use super::stream::{AgentEvent, ResultInfo, Usage};
use super::{Agent, AgentError, AgentKind, CommandLine, Protocol, SessionSpec};

/// The model the Gemini CLI's own default is priced as when no model is given to it.
pub const DEFAULT_PRICED_MODEL: &str = "gemini-2.5-pro";

/// Runs `gemini -p "" -o stream-json --approval-mode <mode> --skip-trust [-m model]`, the prompt
/// on stdin.
#[derive(Debug, Clone)]
pub struct GeminiAgent {
    bin: PathBuf,
}

impl GeminiAgent {
    /// `bin` from `--gemini-bin` / config / `OPERATOR_GEMINI_BIN`, else `gemini` on `PATH`.
    pub fn new(bin: Option<PathBuf>) -> Self {
        Self {
            bin: bin.unwrap_or_else(|| PathBuf::from("gemini")),
        }
    }

    fn args(spec: &SessionSpec, resume: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = ["-p", "", "-o", "stream-json", "--approval-mode"]
            .map(String::from)
            .to_vec();
        args.push(approval_mode(&spec.permission_mode).into());
        // The user chose to run the agent in this workdir: without trust, the CLI silently
        // forces the `default` approval mode, which offers no editing tool in a headless run.
        args.push("--skip-trust".into());
        if let Some(m) = super::foreign_model(&spec.model) {
            args.extend(["-m".into(), m.to_string()]);
        }
        if let Some(id) = resume {
            args.extend(["--resume".into(), id.to_string()]);
        }
        args
    }

    fn line(&self, spec: &SessionSpec, args: Vec<String>) -> CommandLine {
        CommandLine {
            program: self.bin.clone(),
            args,
            cwd: spec.workdir.clone(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }
}

/// The operator's permission mode as the CLI's `--approval-mode` (measured: a headless run
/// offers only the tools its mode approves):
/// - `bypassPermissions`: `yolo` — every tool, shell commands included, unconfined;
/// - `plan`: `plan` — read-only;
/// - anything else: `auto_edit` — reading, and editing files inside the workspace (the CLI
///   refuses paths outside it); no shell commands, which the CLI cannot confine.
pub fn approval_mode(permission_mode: &str) -> &'static str {
    match permission_mode {
        "bypassPermissions" => "yolo",
        "plan" => "plan",
        _ => "auto_edit",
    }
}

impl Agent for GeminiAgent {
    fn kind(&self) -> AgentKind {
        AgentKind::Gemini
    }

    fn protocol(&self) -> Protocol {
        Protocol::OneShot
    }

    fn command(&self, spec: &SessionSpec) -> CommandLine {
        self.line(spec, Self::args(spec, spec.resume_id.as_deref()))
    }

    fn follow_up(&self, spec: &SessionSpec, session_id: &str) -> Option<CommandLine> {
        Some(self.line(spec, Self::args(spec, Some(session_id))))
    }

    fn parse_line(&self, line: &str) -> Vec<AgentEvent> {
        parse_line(line)
    }

    fn priced_model(&self, configured: &str) -> String {
        super::foreign_model(configured)
            .unwrap_or(DEFAULT_PRICED_MODEL)
            .to_string()
    }

    /// The credentials the CLI will use, as a short hash (never the secret itself).
    fn account(&self) -> String {
        super::account_of(
            AgentKind::Gemini,
            &[
                "GEMINI_API_KEY",
                "GOOGLE_API_KEY",
                "GOOGLE_CLOUD_PROJECT",
                "HOME",
            ],
        )
    }

    fn credentials(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        credentials(env)
    }

    fn preflight(&self) -> Result<(), AgentError> {
        super::require_program(AgentKind::Gemini, &self.bin)
    }
}

/// Where the Gemini CLI's credentials come from: `GEMINI_API_KEY`, Vertex AI's variables, or a
/// Google login (`~/.gemini/oauth_creds.json`).
pub fn credentials(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    if set("GEMINI_API_KEY") {
        return Ok("GEMINI_API_KEY is set (not shown)".into());
    }
    if set("GOOGLE_API_KEY") || (set("GOOGLE_CLOUD_PROJECT") && set("GOOGLE_CLOUD_LOCATION")) {
        return Ok("Vertex AI credentials are set (not shown)".into());
    }
    if let Some(login) = env("HOME").map(|h| PathBuf::from(h).join(".gemini/oauth_creds.json"))
        && login.is_file()
    {
        return Ok(format!("logged in with Google ({})", login.display()));
    }
    Err(format!(
        "no GEMINI_API_KEY and no login: {}",
        AgentKind::Gemini.login_hint()
    ))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The HTTP status an error message carries (`"code":401` in the API's JSON the CLI quotes).
pub fn status_in(message: &str) -> Option<u16> {
    let at = message.find("\"code\":")? + "\"code\":".len();
    let digits: String = message[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.len() == 3).then(|| digits.parse().ok()).flatten()
}

/// The usage in a result's `stats` (`input_tokens` includes the `cached` ones).
fn usage_of(stats: &Value) -> Option<Usage> {
    let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    stats.get("input_tokens")?;
    Some(Usage {
        input_tokens: n("input_tokens").saturating_sub(n("cached")),
        output_tokens: n("output_tokens"),
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: n("cached"),
    })
}

/// Parses one line of `gemini -o stream-json` into typed events.
pub fn parse_line(line: &str) -> Vec<AgentEvent> {
    let line = line.trim();
    if line.is_empty() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return vec![AgentEvent::Garbage];
    };
    match str_of(&v, "type") {
        "init" => vec![AgentEvent::Init {
            session_id: str_of(&v, "session_id").to_string(),
            // `auto` names no model: the CLI routes each turn, and says at its end which
            // models ran.
            model: Some(str_of(&v, "model").to_string()).filter(|m| !m.is_empty() && m != "auto"),
            version: None,
        }],
        "message" if str_of(&v, "role") == "assistant" => {
            let text = str_of(&v, "content").to_string();
            if v.get("delta").and_then(Value::as_bool) == Some(true) {
                vec![AgentEvent::TextDelta(text)]
            } else {
                vec![AgentEvent::Text { text, usage: None }]
            }
        }
        // The prompt, echoed.
        "message" => vec![AgentEvent::Status("prompt".into())],
        "tool_use" => vec![AgentEvent::ToolUse {
            name: str_of(&v, "tool_name").to_string(),
            usage: None,
        }],
        "tool_result" => vec![AgentEvent::ToolResult {
            is_error: str_of(&v, "status") == "error",
        }],
        "result" => {
            let stats = v.get("stats").unwrap_or(&Value::Null);
            let usage = usage_of(stats);
            // Priced per model when the CLI says which ran (with `auto`, a router and a main
            // model), else as a whole.
            let mut out: Vec<AgentEvent> = match stats.get("models").and_then(Value::as_object) {
                Some(models) if !models.is_empty() => models
                    .iter()
                    .filter_map(|(model, s)| {
                        usage_of(s).map(|usage| AgentEvent::ModelUsage {
                            model: model.clone(),
                            usage,
                        })
                    })
                    .collect(),
                _ => vec![AgentEvent::Text {
                    text: String::new(),
                    usage,
                }],
            };
            if str_of(&v, "status") == "success" {
                out.push(AgentEvent::Result(ResultInfo {
                    subtype: "success".into(),
                    num_turns: 1,
                    usage,
                    ..Default::default()
                }));
            } else {
                let message = v
                    .get("error")
                    .map(|e| str_of(e, "message"))
                    .unwrap_or("")
                    .to_string();
                out.push(AgentEvent::Result(ResultInfo {
                    subtype: "error".into(),
                    is_error: true,
                    num_turns: 1,
                    api_error_status: status_in(&message),
                    result: Some(message),
                    usage,
                    ..Default::default()
                }));
            }
            out
        }
        other => vec![AgentEvent::Unknown(other.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SessionSpec {
        SessionSpec {
            chain_id: "c".into(),
            index: 1,
            prompt: "p".into(),
            system_prompt: "SYS".into(),
            model: "gemini-2.5-flash".into(),
            max_turns: 30,
            permission_mode: "default".into(),
            resume_id: None,
            workdir: "/w".into(),
            sim: Default::default(),
        }
    }

    #[test]
    fn a_first_turn_and_a_follow_up() {
        let a = GeminiAgent::new(Some("/opt/gemini".into()));
        let c = a.command(&spec());
        assert_eq!(
            c.args,
            [
                "-p",
                "",
                "-o",
                "stream-json",
                "--approval-mode",
                "auto_edit",
                "--skip-trust",
                "-m",
                "gemini-2.5-flash"
            ]
        );
        let f = a.follow_up(&spec(), "s-1").unwrap().args.join(" ");
        assert!(f.ends_with("--resume s-1"), "{f}");
        let mut s = spec();
        s.model = "opus".into();
        s.permission_mode = "bypassPermissions".into();
        let line = a.command(&s).args.join(" ");
        assert!(line.contains("--approval-mode yolo") && !line.contains("-m "));
        assert_eq!(approval_mode("plan"), "plan");
        assert_eq!(a.priced_model("opus"), DEFAULT_PRICED_MODEL);
    }

    #[test]
    fn the_stream_as_measured() {
        let ev = parse_line(
            r#"{"type":"init","timestamp":"t","session_id":"f0e3","model":"gemini-2.5-pro"}"#,
        );
        assert_eq!(
            ev,
            vec![AgentEvent::Init {
                session_id: "f0e3".into(),
                model: Some("gemini-2.5-pro".into()),
                version: None
            }]
        );
        assert_eq!(
            parse_line(
                r###"{"type":"message","role":"assistant","content":"## HAND","delta":true}"###
            ),
            vec![AgentEvent::TextDelta("## HAND".into())]
        );
        assert_eq!(
            parse_line(r#"{"type":"message","role":"user","content":"the prompt"}"#),
            vec![AgentEvent::Status("prompt".into())]
        );
        let ev = parse_line(
            r#"{"type":"tool_use","tool_name":"write_file","tool_id":"w1","parameters":{"file_path":"/w/a"}}"#,
        );
        assert!(matches!(&ev[0], AgentEvent::ToolUse { name, .. } if name == "write_file"));
        assert_eq!(
            parse_line(
                r#"{"type":"tool_result","tool_id":"w1","status":"error","output":"Path not in workspace"}"#
            ),
            vec![AgentEvent::ToolResult { is_error: true }]
        );
        let ev = parse_line(
            r#"{"type":"result","status":"success","stats":{"total_tokens":3150,"input_tokens":3000,"output_tokens":150,"cached":600,"input":2400,"duration_ms":260,"tool_calls":2}}"#,
        );
        let want = Usage {
            input_tokens: 2400,
            output_tokens: 150,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 600,
        };
        assert!(matches!(&ev[0], AgentEvent::Text { usage: Some(u), .. } if *u == want));
        assert!(matches!(&ev[1], AgentEvent::Result(r) if !r.is_error));
        // With `auto`, each model's usage is priced as that model.
        let ev = parse_line(
            r#"{"type":"result","status":"success","stats":{"input_tokens":7000,"output_tokens":400,"cached":0,"models":{"gemini-3.5-flash-lite":{"input_tokens":5000,"output_tokens":250,"cached":0},"gemini-3.1-pro-preview":{"input_tokens":2000,"output_tokens":150,"cached":500}}}}"#,
        );
        assert_eq!(ev.len(), 3);
        assert!(ev.iter().any(|e| matches!(e, AgentEvent::ModelUsage { model, usage } if model == "gemini-3.1-pro-preview" && usage.cache_read_input_tokens == 500 && usage.input_tokens == 1500)));
        assert!(
            parse_line(r#"{"type":"init","session_id":"s","model":"auto"}"#)
                == vec![AgentEvent::Init {
                    session_id: "s".into(),
                    model: None,
                    version: None
                }]
        );
    }

    #[test]
    fn errors_as_measured() {
        let ev = parse_line(
            r#"{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":401,\"message\":\"API key not valid. Please pass a valid API key.\",\"status\":\"UNAUTHENTICATED\"}}]"},"stats":{"total_tokens":0,"input_tokens":0,"output_tokens":0,"cached":0}}"#,
        );
        let AgentEvent::Result(r) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert!(r.is_error);
        assert_eq!(r.api_error_status, Some(401));
        assert!(r.result.as_deref().unwrap().contains("API key not valid"));
        assert_eq!(
            status_in("[API Error: You have exhausted your daily quota on this model.]"),
            None
        );
        assert_eq!(parse_line("{"), vec![AgentEvent::Garbage]);
    }

    #[test]
    fn credentials_from_a_key_or_a_login() {
        assert!(
            credentials(&|_| None)
                .unwrap_err()
                .contains("GEMINI_API_KEY")
        );
        let key = |k: &str| (k == "GEMINI_API_KEY").then(|| "k-secret".to_string());
        let ok = credentials(&key).unwrap();
        assert!(!ok.contains("k-secret"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".gemini")).unwrap();
        std::fs::write(dir.path().join(".gemini/oauth_creds.json"), "{}").unwrap();
        let d = dir.path().display().to_string();
        let login = move |k: &str| (k == "HOME").then(|| d.clone());
        assert!(credentials(&login).unwrap().starts_with("logged in"));
    }
}
