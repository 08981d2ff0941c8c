//! The `codex` backend: the OpenAI Codex CLI, one `codex exec --json` process per turn, its JSONL
//! events read into the same typed events as Claude's stream.
//!
//! Measured with `@openai/codex` 0.169.0 against a local fake of the Responses API (docs/agents.md):
//! stdout is `thread.started {thread_id}`, `turn.started`, `item.started` / `item.completed`
//! (`agent_message`, `command_execution`, `file_change`, `mcp_tool_call`, `error`, …),
//! `turn.completed {usage}` or `turn.failed {error}`; `error {message}` lines report the CLI's own
//! retries (`Reconnecting... 2/5 (unexpected status 401 Unauthorized: …)`). The CLI retries every
//! status, 401 included, five times; a usage limit ends the turn at once with `You've hit your
//! usage limit. … try again at 7:33 PM.`

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::stream::{AgentEvent, ResultInfo, Usage};
use super::{Agent, AgentError, AgentKind, CommandLine, Protocol, SessionSpec};

/// The model the Codex CLI's own default is priced as when no model is given to it.
pub const DEFAULT_PRICED_MODEL: &str = "gpt-5";

/// Runs `codex exec --json --skip-git-repo-check <sandbox> [-m model] -`, the prompt on stdin.
#[derive(Debug, Clone)]
pub struct CodexAgent {
    bin: PathBuf,
}

impl CodexAgent {
    /// `bin` from `--codex-bin` / config / `OPERATOR_CODEX_BIN`, else `codex` on `PATH`.
    pub fn new(bin: Option<PathBuf>) -> Self {
        Self {
            bin: bin.unwrap_or_else(|| PathBuf::from("codex")),
        }
    }

    /// The options shared by a first turn and a resumed one: JSONL out, the sandbox the
    /// permission mode maps to, the model.
    fn common_args(spec: &SessionSpec) -> Vec<String> {
        let mut args: Vec<String> = ["exec", "--json", "--skip-git-repo-check"]
            .map(String::from)
            .to_vec();
        args.extend(sandbox_args(&spec.permission_mode));
        if let Some(m) = super::foreign_model(&spec.model) {
            args.extend(["-m".into(), m.to_string()]);
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

/// The operator's permission mode in the CLI's own terms (`-c` keys, accepted by `exec` and by
/// `exec resume` alike):
/// - `bypassPermissions`: no sandbox, no approvals (`--dangerously-bypass-approvals-and-sandbox`);
/// - `plan`: `read-only`;
/// - anything else: `workspace-write` — commands and patches may write in the workdir only
///   (not `/tmp`, not `$TMPDIR`, not `.git`, which the CLI keeps read-only), no network; `exec`
///   never asks for approval, a refused write fails the command and the agent sees it.
pub fn sandbox_args(permission_mode: &str) -> Vec<String> {
    match permission_mode {
        "bypassPermissions" => vec!["--dangerously-bypass-approvals-and-sandbox".into()],
        "plan" => vec!["-c".into(), r#"sandbox_mode="read-only""#.into()],
        _ => [
            r#"sandbox_mode="workspace-write""#,
            "sandbox_workspace_write.exclude_slash_tmp=true",
            "sandbox_workspace_write.exclude_tmpdir_env_var=true",
        ]
        .iter()
        .flat_map(|kv| ["-c".to_string(), kv.to_string()])
        .collect(),
    }
}

impl Agent for CodexAgent {
    fn kind(&self) -> AgentKind {
        AgentKind::Codex
    }

    fn protocol(&self) -> Protocol {
        Protocol::OneShot
    }

    fn command(&self, spec: &SessionSpec) -> CommandLine {
        let mut args = Self::common_args(spec);
        if let Some(id) = &spec.resume_id {
            args.extend(["resume".into(), id.clone()]);
        }
        args.push("-".into());
        self.line(spec, args)
    }

    fn follow_up(&self, spec: &SessionSpec, session_id: &str) -> Option<CommandLine> {
        let mut args = Self::common_args(spec);
        args.extend(["resume".into(), session_id.to_string(), "-".into()]);
        Some(self.line(spec, args))
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
            AgentKind::Codex,
            &["CODEX_API_KEY", "OPENAI_API_KEY", "CODEX_HOME", "HOME"],
        )
    }

    fn credentials(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        credentials(env)
    }

    fn preflight(&self) -> Result<(), AgentError> {
        super::require_program(AgentKind::Codex, &self.bin)
    }
}

/// Where the Codex CLI's credentials come from: `CODEX_API_KEY` / `OPENAI_API_KEY`, or a login
/// (`$CODEX_HOME/auth.json`, `~/.codex` by default).
pub fn credentials(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    for k in ["CODEX_API_KEY", "OPENAI_API_KEY"] {
        if set(k) {
            return Ok(format!("{k} is set (not shown)"));
        }
    }
    let home = env("CODEX_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".codex")));
    if let Some(login) = home.map(|h| h.join("auth.json"))
        && login.is_file()
    {
        return Ok(format!("logged in ({})", login.display()));
    }
    Err(format!(
        "no OPENAI_API_KEY and no login: {}",
        AgentKind::Codex.login_hint()
    ))
}

/// Usage as `turn.completed` reports it: `input_tokens` includes the cached ones.
#[derive(Debug, Default, Deserialize)]
struct CodexUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    cached_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

impl From<CodexUsage> for Usage {
    fn from(u: CodexUsage) -> Self {
        Usage {
            input_tokens: u
                .input_tokens
                .saturating_sub(u.cached_input_tokens + u.cache_write_input_tokens),
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_write_input_tokens,
            cache_read_input_tokens: u.cached_input_tokens,
        }
    }
}

/// The HTTP status an error message names (`unexpected status 401 Unauthorized`,
/// `last status: 429 Too Many Requests`).
pub fn status_in(message: &str) -> Option<u16> {
    let at = message.find("status")? + "status".len();
    let rest = message[at..].trim_start_matches([':', ' ']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (digits.len() == 3).then(|| digits.parse().ok()).flatten()
}

/// `Reconnecting... 2/5 (inner)`: the attempt, the most there will be, and the inner message.
fn reconnecting(message: &str) -> Option<(u32, u32, &str)> {
    let rest = message.strip_prefix("Reconnecting... ")?;
    let (count, inner) = rest.split_once(' ').unwrap_or((rest, ""));
    let (n, m) = count.split_once('/')?;
    let inner = inner.trim().trim_start_matches('(').trim_end_matches(')');
    Some((n.parse().ok()?, m.parse().ok()?, inner))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The name a tool-like item is shown and counted under.
fn tool_name(item: &Value) -> Option<String> {
    Some(match str_of(item, "type") {
        "command_execution" => format!("shell: {}", str_of(item, "command")),
        "file_change" => "apply_patch".into(),
        "mcp_tool_call" => format!("{}/{}", str_of(item, "server"), str_of(item, "tool")),
        "web_search" => "web_search".into(),
        _ => return None,
    })
}

/// Parses one line of `codex exec --json` into typed events.
pub fn parse_line(line: &str) -> Vec<AgentEvent> {
    let line = line.trim();
    if line.is_empty() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return vec![AgentEvent::Garbage];
    };
    match str_of(&v, "type") {
        "thread.started" => vec![AgentEvent::Init {
            session_id: str_of(&v, "thread_id").to_string(),
            model: None,
            version: None,
        }],
        "turn.started" => vec![AgentEvent::Status("turn started".into())],
        "item.started" => {
            let item = v.get("item").unwrap_or(&Value::Null);
            tool_name(item)
                .map(|name| AgentEvent::ToolUse { name, usage: None })
                .into_iter()
                .collect()
        }
        "item.completed" => {
            let item = v.get("item").unwrap_or(&Value::Null);
            match str_of(item, "type") {
                "agent_message" => vec![AgentEvent::Text {
                    text: str_of(item, "text").to_string(),
                    usage: None,
                }],
                "command_execution" => vec![AgentEvent::ToolResult {
                    is_error: item
                        .get("exit_code")
                        .and_then(Value::as_i64)
                        .is_some_and(|c| c != 0),
                }],
                "file_change" | "mcp_tool_call" => vec![AgentEvent::ToolResult {
                    is_error: str_of(item, "status") == "failed",
                }],
                "error" => vec![AgentEvent::Status(str_of(item, "message").to_string())],
                other => vec![AgentEvent::Unknown(format!("item/{other}"))],
            }
        }
        "turn.completed" => {
            let usage = v
                .get("usage")
                .and_then(|u| CodexUsage::deserialize(u).ok())
                .map(Usage::from);
            vec![
                // The turn's usage, priced like an assistant message's.
                AgentEvent::Text {
                    text: String::new(),
                    usage,
                },
                AgentEvent::Result(ResultInfo {
                    subtype: "success".into(),
                    num_turns: 1,
                    usage,
                    ..Default::default()
                }),
            ]
        }
        "turn.failed" => {
            let message = v
                .get("error")
                .map(|e| str_of(e, "message"))
                .unwrap_or("")
                .to_string();
            vec![AgentEvent::Result(ResultInfo {
                subtype: "error".into(),
                is_error: true,
                num_turns: 1,
                api_error_status: status_in(&message),
                result: Some(message),
                ..Default::default()
            })]
        }
        "error" => {
            let message = str_of(&v, "message");
            match reconnecting(message) {
                Some((attempt, max_retries, inner)) => vec![AgentEvent::ApiRetry {
                    attempt,
                    max_retries,
                    retry_delay_ms: 0,
                    error_status: status_in(inner),
                    error: inner.to_string(),
                }],
                // The turn's end follows with the same message.
                None => vec![AgentEvent::Status(message.to_string())],
            }
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
            index: 2,
            prompt: "p".into(),
            system_prompt: "SYS".into(),
            model: "gpt-5.5".into(),
            max_turns: 30,
            permission_mode: "default".into(),
            resume_id: None,
            workdir: "/w".into(),
            sim: Default::default(),
        }
    }

    #[test]
    fn a_first_turn_and_a_follow_up() {
        let a = CodexAgent::new(Some("/opt/codex".into()));
        let c = a.command(&spec());
        let line = c.args.join(" ");
        assert!(
            line.starts_with(
                "exec --json --skip-git-repo-check -c sandbox_mode=\"workspace-write\""
            ),
            "{line}"
        );
        assert!(line.contains("sandbox_workspace_write.exclude_slash_tmp=true"));
        assert!(
            line.ends_with("-m gpt-5.5 -"),
            "the prompt goes on stdin: {line}"
        );
        assert_eq!(c.cwd, PathBuf::from("/w"));
        let f = a.follow_up(&spec(), "th-1").unwrap().args.join(" ");
        assert!(f.ends_with("-m gpt-5.5 resume th-1 -"), "{f}");
        let mut s = spec();
        s.resume_id = Some("th-0".into());
        assert!(a.command(&s).args.join(" ").ends_with("resume th-0 -"));
    }

    #[test]
    fn claude_models_are_not_passed_and_modes_map_to_sandboxes() {
        let mut s = spec();
        s.model = "sonnet".into();
        let a = CodexAgent::new(None);
        assert!(!a.command(&s).args.contains(&"-m".to_string()));
        assert_eq!(a.priced_model("sonnet"), DEFAULT_PRICED_MODEL);
        assert_eq!(a.priced_model("gpt-5-mini"), "gpt-5-mini");
        assert_eq!(
            sandbox_args("bypassPermissions"),
            vec!["--dangerously-bypass-approvals-and-sandbox"]
        );
        assert_eq!(sandbox_args("plan")[1], r#"sandbox_mode="read-only""#);
        assert!(
            sandbox_args("acceptEdits")
                .join(" ")
                .contains("workspace-write")
        );
    }

    #[test]
    fn the_stream_as_measured() {
        assert_eq!(
            parse_line(r#"{"type":"thread.started","thread_id":"01a2"}"#),
            vec![AgentEvent::Init {
                session_id: "01a2".into(),
                model: None,
                version: None
            }]
        );
        let ev = parse_line(
            r#"{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc 'ls'","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
        );
        assert!(
            matches!(&ev[0], AgentEvent::ToolUse { name, .. } if name == "shell: /bin/bash -lc 'ls'")
        );
        let ev = parse_line(
            r#"{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"x","exit_code":1,"status":"completed"}}"#,
        );
        assert_eq!(ev, vec![AgentEvent::ToolResult { is_error: true }]);
        let ev = parse_line(
            r###"{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"## HANDOFF"}}"###,
        );
        assert!(matches!(&ev[0], AgentEvent::Text { text, usage: None } if text == "## HANDOFF"));
        let ev = parse_line(
            r#"{"type":"turn.completed","usage":{"input_tokens":5000,"cached_input_tokens":1000,"cache_write_input_tokens":0,"output_tokens":250,"reasoning_output_tokens":50}}"#,
        );
        let want = Usage {
            input_tokens: 4000,
            output_tokens: 250,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 1000,
        };
        assert!(matches!(&ev[0], AgentEvent::Text { usage: Some(u), .. } if *u == want));
        assert!(matches!(&ev[1], AgentEvent::Result(r) if !r.is_error && r.num_turns == 1));
    }

    #[test]
    fn errors_as_measured() {
        let ev = parse_line(
            r#"{"type":"error","message":"Reconnecting... 1/5 (unexpected status 401 Unauthorized: Incorrect API key provided: sk-test., url: http://127.0.0.1:1/v1/responses)"}"#,
        );
        assert!(
            matches!(&ev[0], AgentEvent::ApiRetry { attempt: 1, max_retries: 5, error_status: Some(401), error, .. } if error.starts_with("unexpected status 401"))
        );
        let ev = parse_line(
            r#"{"type":"turn.failed","error":{"message":"exceeded retry limit, last status: 429 Too Many Requests"}}"#,
        );
        let AgentEvent::Result(r) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert!(r.is_error);
        assert_eq!(r.api_error_status, Some(429));
        let ev = parse_line(
            r#"{"type":"error","message":"You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit https://chatgpt.com/settings/usage to purchase more credits or try again at 7:33 PM."}"#,
        );
        assert!(matches!(&ev[0], AgentEvent::Status(_)));
        assert_eq!(status_in("Quota exceeded. Check your plan"), None);
        assert_eq!(parse_line("nope"), vec![AgentEvent::Garbage]);
        assert_eq!(
            parse_line(r#"{"type":"future.thing"}"#),
            vec![AgentEvent::Unknown("future.thing".into())]
        );
    }

    #[test]
    fn credentials_from_a_key_or_a_login() {
        let none = |_: &str| None;
        assert!(credentials(&none).unwrap_err().contains("codex login"));
        let key = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-x".to_string());
        let ok = credentials(&key).unwrap();
        assert!(ok.contains("OPENAI_API_KEY") && !ok.contains("sk-x"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
        let d = dir.path().display().to_string();
        let login = move |k: &str| (k == "CODEX_HOME").then(|| d.clone());
        assert!(credentials(&login).unwrap().starts_with("logged in"));
    }
}
