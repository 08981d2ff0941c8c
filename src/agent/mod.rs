//! Agents: the `Agent` trait that turns a session's spec into a command line and its output into
//! typed events, and its backends (`claude`, the real Claude Code CLI; `codex`, the OpenAI Codex
//! CLI; `gemini`, the Google Gemini CLI; `sim`, the built-in simulated agent).
//!
//! Claude and sim speak the two-way stream-json protocol ([`stream`]): one process per session,
//! follow-ups on stdin. Codex and Gemini run one process per turn ([`Protocol::OneShot`]): the prompt on
//! stdin, then stdin closed; a follow-up is a new process resuming the agent's own thread. Each
//! backend's stdout lines become the same [`stream::AgentEvent`]s, so the session code is one
//! code path for all of them.

pub mod claude;
pub mod codex;
pub mod gemini;
pub mod sim;
pub mod stream;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which agent runs a chain's sessions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// The default: real work needs a real agent.
    #[default]
    Claude,
    /// The OpenAI Codex CLI (`codex exec --json`).
    Codex,
    /// The Google Gemini CLI (`gemini -o stream-json`).
    Gemini,
    /// The built-in simulated agent (demos and tests; it changes nothing real).
    Sim,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
            AgentKind::Gemini => "gemini",
            AgentKind::Sim => "sim",
        }
    }

    /// How to get the agent's CLI, and how to point the operator at it.
    pub fn install_hint(self) -> &'static str {
        match self {
            AgentKind::Claude => {
                "install it with `npm install -g @anthropic-ai/claude-code`, or set --claude-bin / OPERATOR_CLAUDE_BIN"
            }
            AgentKind::Codex => {
                "install it with `npm install -g @openai/codex`, or set --codex-bin / OPERATOR_CODEX_BIN"
            }
            AgentKind::Gemini => {
                "install it with `npm install -g @google/gemini-cli`, or set --gemini-bin / OPERATOR_GEMINI_BIN"
            }
            AgentKind::Sim => "the operator binary itself could not be found",
        }
    }

    /// What a user does about refused or missing credentials.
    pub fn login_hint(self) -> &'static str {
        match self {
            AgentKind::Claude | AgentKind::Sim => {
                "log in with `claude` (then `/login`), or set ANTHROPIC_API_KEY"
            }
            AgentKind::Codex => "log in with `codex login`, or set OPENAI_API_KEY",
            AgentKind::Gemini => "log in with `gemini` (Login with Google), or set GEMINI_API_KEY",
        }
    }
}

/// How a backend's process takes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// One process per session: control and user messages on stdin, as stream-json lines.
    TwoWay,
    /// One process per turn: the prompt on stdin, then EOF; the process ends with its turn.
    /// A follow-up is a new process that resumes the agent's own thread
    /// ([`Agent::follow_up`]).
    OneShot,
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a backend needs to start one session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub chain_id: String,
    pub index: u32,
    pub prompt: String,
    pub system_prompt: String,
    pub model: String,
    pub max_turns: u32,
    pub permission_mode: String,
    /// Continue the agent's own session instead of starting fresh.
    pub resume_id: Option<String>,
    pub workdir: PathBuf,
    pub sim: sim::SimConfig,
}

/// A program to run: what a backend produces, what `--dry-run` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Variables to set on top of the operator's own environment.
    pub env: Vec<(String, String)>,
    /// Variables to remove from the inherited environment.
    pub env_remove: Vec<String>,
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(cd {} && ", shell_quote(&self.cwd.to_string_lossy()))?;
        for k in &self.env_remove {
            write!(f, "env -u {k} ")?;
        }
        for (k, v) in &self.env {
            write!(f, "{k}={} ", shell_quote(v))?;
        }
        write!(f, "{}", shell_quote(&self.program.to_string_lossy()))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        write!(f, ")")
    }
}

/// Errors found before a session starts.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the {agent} agent binary `{bin}` was not found ({hint})")]
    MissingBinary {
        agent: AgentKind,
        bin: String,
        hint: String,
    },
}

/// A backend: how to start a session of one kind of agent.
pub trait Agent: Send + Sync + fmt::Debug + 'static {
    fn kind(&self) -> AgentKind;
    /// Which account's quota the sessions use (usage limits hold every chain of an account).
    fn account(&self) -> String {
        self.kind().to_string()
    }
    /// The command line for one session.
    fn command(&self, spec: &SessionSpec) -> CommandLine;
    /// Checks made once before any chain starts (the binary exists…).
    fn preflight(&self) -> Result<(), AgentError>;
    /// How long a closed agent gets to exit before its process group is killed.
    fn exit_grace(&self) -> Duration {
        Duration::from_secs(5)
    }
    /// How the process takes its messages.
    fn protocol(&self) -> Protocol {
        Protocol::TwoWay
    }
    /// One stdout line as typed events (never fails: unknown lines are kept as such).
    fn parse_line(&self, line: &str) -> Vec<stream::AgentEvent> {
        stream::parse_line(line)
    }
    /// For a [`Protocol::OneShot`] backend: the process that sends `text` to the agent's own
    /// session `session_id` (the prompt goes on stdin).
    fn follow_up(&self, _spec: &SessionSpec, _session_id: &str) -> Option<CommandLine> {
        None
    }
    /// The model the session's usage is priced by when the stream does not name one.
    fn priced_model(&self, configured: &str) -> String {
        configured.to_string()
    }
    /// Where the agent's credentials come from, or what is missing (checked before a run starts;
    /// `env` reads the environment). Never returns a secret.
    fn credentials(&self, _env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        Ok("none needed".into())
    }
}

/// Settings a backend is built from.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    pub claude_bin: Option<PathBuf>,
    pub codex_bin: Option<PathBuf>,
    pub gemini_bin: Option<PathBuf>,
}

/// Builds the backend for `kind`.
pub fn backend(kind: AgentKind, opts: &BackendOptions) -> Arc<dyn Agent> {
    match kind {
        AgentKind::Sim => Arc::new(sim::SimAgent::current_exe()),
        AgentKind::Claude => Arc::new(claude::ClaudeAgent::new(opts.claude_bin.clone())),
        AgentKind::Codex => Arc::new(codex::CodexAgent::new(opts.codex_bin.clone())),
        AgentKind::Gemini => Arc::new(gemini::GeminiAgent::new(opts.gemini_bin.clone())),
    }
}

/// An account as a short hash of the first credential set among `vars` (never the secret
/// itself), prefixed with the agent's name: chains on the same credentials share usage limits.
pub fn account_of(agent: AgentKind, vars: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let creds = vars
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    creds.hash(&mut h);
    format!("{agent}:{:016x}", h.finish())
}

/// The model given to another agent's CLI: none for a Claude name (a mission's `model = "opus"`
/// meant for its claude chains), so that CLI runs its own default.
pub fn foreign_model(model: &str) -> Option<&str> {
    (!model.is_empty() && !is_claude_model(model)).then_some(model)
}

/// Is `model` one of Claude's names (`sonnet`, `opus`, `claude-…`)? Another agent is not
/// given it: it runs its own default model instead.
pub fn is_claude_model(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    m.starts_with("claude")
        || ["sonnet", "opus", "haiku", "opusplan", "default"].contains(&m.as_str())
}

/// The agent CLI `bin` exists (on `PATH`, or as a path), or the error saying how to install it.
pub fn require_program(kind: AgentKind, bin: &std::path::Path) -> Result<(), AgentError> {
    find_program(bin)
        .map(|_| ())
        .ok_or_else(|| AgentError::MissingBinary {
            agent: kind,
            bin: bin.display().to_string(),
            hint: kind.install_hint().into(),
        })
}

/// Finds `name` on `PATH` (or accepts a path that exists).
pub fn find_program(name: &std::path::Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain-word"), "plain-word");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn command_line_display_is_a_shell_line() {
        let c = CommandLine {
            program: "/bin/echo".into(),
            args: vec!["a b".into(), "c".into()],
            cwd: "/tmp".into(),
            env: vec![("X".into(), "1".into())],
            env_remove: vec!["CLAUDECODE".into()],
        };
        assert_eq!(
            c.to_string(),
            "(cd /tmp && env -u CLAUDECODE X=1 /bin/echo 'a b' c)"
        );
    }

    #[test]
    fn find_program_on_path_and_by_path() {
        assert!(find_program(std::path::Path::new("sh")).is_some());
        assert!(find_program(std::path::Path::new("/bin/sh")).is_some());
        assert!(find_program(std::path::Path::new("no-such-program-xyz")).is_none());
        assert!(find_program(std::path::Path::new("/no/such/dir/claude")).is_none());
    }
}
