//! The `claude` backend: the real Claude Code CLI in two-way stream-json mode, as the Agent SDK drives it.

use std::path::PathBuf;

use super::{Agent, AgentError, AgentKind, CommandLine, SessionSpec, find_program};

/// CLI settings (`--settings`, the CLI's "flag settings") that send every call of these tools to
/// the operator: without them the CLI settles reads inside the workdir itself (measured with
/// 2.1.328: a Read of `<workdir>/.operator/api-token` never reached the operator), and allow
/// rules in the user's own settings would pass the operator's deny rules by.
pub const OPERATOR_DECIDES: &str = r#"{"permissions":{"ask":["Read","Edit","Write","MultiEdit","NotebookEdit","Bash","WebFetch"]}}"#;

/// Runs `claude --input-format stream-json --output-format stream-json --verbose …`.
#[derive(Debug, Clone)]
pub struct ClaudeAgent {
    bin: PathBuf,
}

impl ClaudeAgent {
    /// `bin` from `--claude-bin` / config / `OPERATOR_CLAUDE_BIN`, else `claude` on `PATH`.
    pub fn new(bin: Option<PathBuf>) -> Self {
        Self {
            bin: bin.unwrap_or_else(|| PathBuf::from("claude")),
        }
    }
}

impl Agent for ClaudeAgent {
    fn kind(&self) -> AgentKind {
        AgentKind::Claude
    }

    fn command(&self, spec: &SessionSpec) -> CommandLine {
        let mut args: Vec<String> = [
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--max-turns".into(),
            spec.max_turns.to_string(),
            "--model".into(),
            spec.model.clone(),
            "--permission-mode".into(),
            spec.permission_mode.clone(),
            "--append-system-prompt".into(),
            spec.system_prompt.clone(),
        ]);
        if spec.permission_mode != "bypassPermissions" {
            // The operator is the permission authority: the CLI asks it (a `can_use_tool`
            // control request) about every call its own rules do not settle.
            args.extend(["--permission-prompt-tool".into(), "stdio".into()]);
            args.extend(["--settings".into(), OPERATOR_DECIDES.into()]);
        }
        if let Some(id) = &spec.resume_id {
            args.extend(["--resume".into(), id.clone()]);
        }
        CommandLine {
            program: self.bin.clone(),
            args,
            cwd: spec.workdir.clone(),
            env: Vec::new(),
            // A session started from inside another Claude Code session must not be
            // treated as nested; nothing else is removed.
            env_remove: vec!["CLAUDECODE".into()],
        }
    }

    /// The credentials the CLI will use, as a short hash (never the secret itself).
    fn account(&self) -> String {
        super::account_of(
            AgentKind::Claude,
            &[
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_AUTH_TOKEN",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "CLAUDE_CONFIG_DIR",
                "HOME",
            ],
        )
    }

    fn credentials(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        credentials(env)
    }

    fn preflight(&self) -> Result<(), AgentError> {
        find_program(&self.bin).map(|_| ()).ok_or_else(|| AgentError::MissingBinary {
            agent: AgentKind::Claude,
            bin: self.bin.display().to_string(),
            hint: format!(
                "{}; to try the operator without it, `--agent sim` runs the built-in simulated agent",
                AgentKind::Claude.install_hint()
            ),
        })
    }
}

/// Where the Claude Code CLI will find credentials, as far as the operator can see (never the
/// secret itself), or what is missing and what to do.
pub fn credentials(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    if set("ANTHROPIC_API_KEY") {
        return Ok("ANTHROPIC_API_KEY is set (not shown)".into());
    }
    if set("ANTHROPIC_AUTH_TOKEN") || set("CLAUDE_CODE_OAUTH_TOKEN") {
        return Ok("an auth token is set (not shown)".into());
    }
    for k in ["CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX"] {
        if set(k) {
            return Ok(format!(
                "{k} is set: the cloud provider's credentials apply"
            ));
        }
    }
    let dir = env("CLAUDE_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".claude")));
    if let Some(dir) = dir {
        let login = dir.join(".credentials.json");
        if login.is_file() {
            return Ok(format!("logged in ({})", login.display()));
        }
        let settings = dir.join("settings.json");
        if std::fs::read_to_string(&settings).is_ok_and(|s| s.contains("apiKeyHelper")) {
            return Ok(format!("an apiKeyHelper in {}", settings.display()));
        }
    }
    Err("no ANTHROPIC_API_KEY, no auth token and no login: log in with `claude` (then `/login`), or set ANTHROPIC_API_KEY".into())
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
            model: "sonnet".into(),
            max_turns: 30,
            permission_mode: "acceptEdits".into(),
            resume_id: Some("abc".into()),
            workdir: "/w".into(),
            sim: Default::default(),
        }
    }

    #[test]
    fn command_line_is_the_two_way_mode() {
        let c = ClaudeAgent::new(Some("/opt/claude".into())).command(&spec());
        let line = c.args.join(" ");
        assert!(
            line.starts_with("--input-format stream-json --output-format stream-json --verbose")
        );
        assert!(line.contains("--max-turns 30"));
        assert!(line.contains("--model sonnet"));
        assert!(line.contains("--permission-mode acceptEdits"));
        assert!(line.contains("--append-system-prompt SYS"));
        assert!(line.contains("--permission-prompt-tool stdio --settings {"));
        assert!(line.ends_with("--resume abc"));
        let settings: serde_json::Value = serde_json::from_str(OPERATOR_DECIDES).unwrap();
        assert_eq!(settings["permissions"]["ask"][0], "Read");
        assert_eq!(c.cwd, PathBuf::from("/w"));
        assert_eq!(c.env_remove, vec!["CLAUDECODE".to_string()]);
        assert!(!line.contains(" -p "), "the prompt goes on stdin");
    }

    #[test]
    fn bypass_permissions_asks_nothing() {
        let mut s = spec();
        s.permission_mode = "bypassPermissions".into();
        let line = ClaudeAgent::new(None).command(&s).args.join(" ");
        assert!(!line.contains("--permission-prompt-tool"));
        assert!(!line.contains("--settings"));
    }

    #[test]
    fn missing_binary_is_reported() {
        let err = ClaudeAgent::new(Some("/no/such/claude".into()))
            .preflight()
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/claude"));
    }
}
