//! Configuration: `operator.toml`, mission files, `OPERATOR_*` variables and CLI flags, layered with the
//! `config` crate into typed settings for the operator and for each chain.
//!
//! Precedence, lowest first: built-in defaults < `operator.toml` < mission `[defaults]` <
//! the mission's `[[chain]]` entry < environment `OPERATOR_*` < command-line flags.
//! Errors are collected, not returned at the first one, and each names its file and key.

pub mod catalog;
pub mod explain;
pub mod keys;
pub mod stored;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Map, Source, Value, ValueKind};
use serde::{Deserialize, Serialize};

use crate::agent::AgentKind;
use crate::agent::sim::SimConfig;

pub use keys::suggest;

/// Settings of one chain, after layering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSettings {
    pub agent: AgentKind,
    pub model: String,
    pub max_turns: u32,
    /// Sessions after the first; the chain runs at most `1 + max_continuations` sessions per run.
    pub max_continuations: u32,
    pub max_budget_usd: f64,
    /// A session whose live cost crosses this is interrupted (and asked for its handoff).
    pub max_session_cost_usd: Option<f64>,
    pub workdir: PathBuf,
    pub permission_mode: String,
    /// Consecutive failed sessions that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How a session follows the one before it.
    pub continuation: Continuation,
    /// A session with no output for this long is stopped (a transient failure).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session running longer than this is stopped (a transient failure).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Attempts per session: a transient failure is retried until this many have failed.
    pub max_attempts: u32,
    /// Pauses before the 2nd, 3rd, … attempt (the last one repeats).
    pub retry_backoff: Vec<humantime_serde::Serde<Duration>>,
    /// Added to a usage limit's announced reset time before trying again.
    #[serde(with = "humantime_serde")]
    pub usage_limit_margin: Duration,
    /// How long to wait after a usage limit that gave no reset time.
    #[serde(with = "humantime_serde")]
    pub usage_limit_fallback: Duration,
    pub sim: SimConfig,
    /// Git: commit the working tree after each session that changed it (in a repository).
    #[serde(default = "yes")]
    pub auto_commit: bool,
    /// `Name <email>` for the commits (default: the repository's own identity).
    #[serde(default)]
    pub commit_author: Option<String>,
    /// Paths never committed: git pathspec globs; one without `/` matches at any depth.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// What to do when the working tree has uncommitted changes at the chain's start.
    #[serde(default)]
    pub dirty_start: DirtyStart,
    /// Push after `complete`, `assumed-complete` or `max-continuations`, when a remote exists.
    #[serde(default)]
    pub auto_push: bool,
    /// Work on a branch of its own, named after the task.
    #[serde(default)]
    pub branch: bool,
    /// Open a pull request with `gh` after a push (implies `branch`).
    #[serde(default)]
    pub pull_request: bool,
    /// A `git worktree` of its own: `auto` when chains of one mission share a repository.
    #[serde(default)]
    pub worktree: WorktreeMode,
    /// Keep the worktree after the chain ends (default: removed when clean; the branch stays).
    #[serde(default)]
    pub keep_worktree: bool,
    /// After a COMPLETE, wait for the pull request's checks (`gh pr checks`) and run another
    /// session on the failures (implies `pull_request`).
    #[serde(default)]
    pub wait_for_checks: bool,
    /// How long the checks may take before the chain ends `checks-timeout`.
    #[serde(with = "humantime_serde", default = "default_checks_timeout")]
    pub checks_timeout: Duration,
    /// The first pause between two looks at the checks (it doubles, up to 5 minutes).
    #[serde(with = "humantime_serde", default = "default_checks_poll")]
    pub checks_poll: Duration,
    /// `auto`: merge the pull request when its checks pass (or, without `wait_for_checks`,
    /// turn on the forge's auto-merge).
    #[serde(default)]
    pub merge: MergeMode,
    /// How a pull request is merged: squash, merge or rebase.
    #[serde(default)]
    pub merge_method: MergeMethod,
    /// A chain that ran in a worktree lands through the repository's local merge queue:
    /// rebased onto the target, verified, fast-forwarded, one at a time.
    #[serde(default)]
    pub merge_queue: bool,
    /// The branch the merge queue lands on (unset: the branch checked out in the repository).
    #[serde(default)]
    pub merge_target: Option<String>,
    /// Evictions from the merge queue (a conflict, a failing gate) before the chain ends
    /// `merge-failed`.
    #[serde(default = "default_max_evictions")]
    pub max_evictions: u32,
    /// The backlog item the chain works on (set by a mission's `backlog`, not by a file's
    /// key): checked off when the chain completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_item: Option<crate::backlog::BacklogItem>,
    /// Commands that must pass (exit 0, in the workdir) before a COMPLETE is believed.
    #[serde(default)]
    pub verify: Vec<String>,
    /// How long one verify command may run.
    #[serde(with = "humantime_serde", default = "default_verify_timeout")]
    pub verify_timeout: Duration,
    /// After the breaker opens, wait this long and run one probe session (half-open); off
    /// when absent (the breaker ends the chain).
    #[serde(default, with = "humantime_serde")]
    pub breaker_cooldown: Option<Duration>,
    /// On a usage limit, end the chain as `waiting-limit` instead of waiting for the reset.
    #[serde(default)]
    pub no_wait: bool,
    /// Agents that run the chain's sessions while its own agent's account is held by a usage
    /// limit, in order (the handoff carries over: it is plain text).
    #[serde(default)]
    pub fallback_agents: Vec<AgentKind>,
    /// Go back to the chain's own agent once its usage limit has reset (else stay on the
    /// fallback until its own limit).
    #[serde(default = "yes")]
    pub prefer_primary: bool,
    /// Sessions in a row without progress that stop the chain (`0`: never).
    #[serde(default = "default_no_progress")]
    pub no_progress_sessions: u32,
    /// Webhooks of this chain, besides the operator-wide `notify_webhook`.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// The operator's tool-permission rules (Claude Code syntax) over its safe default.
    #[serde(default)]
    pub permissions: crate::permissions::PermissionRules,
    /// How long a tool call held by an `ask` rule waits for a person before it is denied.
    #[serde(with = "humantime_serde", default = "default_approval_timeout")]
    pub approval_timeout: Duration,
}

impl ChainSettings {
    /// The chain opens a pull request: asked for, or needed to wait for checks or to merge.
    pub fn opens_pr(&self) -> bool {
        self.pull_request || self.wait_for_checks || self.merge == MergeMode::Auto
    }

    /// The chain works in a worktree of its own: asked for, or to land through the merge queue.
    pub fn in_worktree(&self) -> bool {
        self.worktree == WorktreeMode::Always
            || (self.merge_queue && self.worktree == WorktreeMode::Auto)
    }
}

fn default_checks_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_checks_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_max_evictions() -> u32 {
    3
}

fn default_approval_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_release_jitter() -> Duration {
    Duration::from_secs(10)
}

fn default_verify_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_no_progress() -> u32 {
    3
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}

/// A dirty working tree at a chain's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DirtyStart {
    /// Report it and go on (the first commit includes those changes).
    #[default]
    Continue,
    /// Fail the chain before any session.
    Refuse,
}

/// Whether a chain gets a worktree of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorktreeMode {
    /// When several chains of one mission run at once in the same repository.
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether a chain's pull request is merged by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// A person merges it.
    #[default]
    Off,
    /// Merged when its checks pass (or the forge's auto-merge is turned on).
    Auto,
}

/// How `gh pr merge` merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    #[default]
    Squash,
    Merge,
    Rebase,
}

impl MergeMethod {
    /// `gh pr merge`'s flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Squash => "--squash",
            Self::Merge => "--merge",
            Self::Rebase => "--rebase",
        }
    }
}

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{"event", "chain", "summary", "data"}`.
    #[default]
    Json,
    /// A Slack incoming webhook's `{"text"}`.
    Slack,
    /// A Discord webhook's `{"content"}`.
    Discord,
}

/// Which events a webhook hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// The chain ended (any outcome).
    End,
    /// A session failed.
    Failure,
    /// The chain waits for a usage limit.
    Waiting,
    /// The chain has spent 80 % of its budget.
    Budget,
    /// A tool call waits for a person's approval (an `ask` rule).
    Approval,
}

/// By default a webhook hears of a chain's end and of calls that wait for a person.
pub fn default_notify_on() -> Vec<NotifyOn> {
    vec![NotifyOn::End, NotifyOn::Approval]
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    #[serde(default)]
    pub format: NotifyFormat,
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
}

/// A secret setting: never shown by `Debug` (so never in a log line).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

/// How the next session of a chain continues (M3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Continuation {
    /// A new agent session that starts from the task and the handoff (the default).
    #[default]
    Fresh,
    /// The agent's own session continued in a new process (`--resume <id>`), keeping its
    /// context; after a compaction, a failure or an interruption the next one is fresh.
    Resume,
}

/// Operator-wide settings (top level of `operator.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorSettings {
    pub data_dir: PathBuf,
    pub claude_bin: Option<PathBuf>,
    #[serde(default)]
    pub codex_bin: Option<PathBuf>,
    #[serde(default)]
    pub gemini_bin: Option<PathBuf>,
    /// POST a JSON summary here when a chain ends.
    pub notify_webhook: Option<String>,
    /// Signs webhook bodies (`X-Operator-Signature: sha256=<HMAC-SHA256 hex>`).
    #[serde(default)]
    pub notify_secret: Option<Secret>,
    /// The body of `notify_webhook`: `json`, `slack` or `discord`.
    #[serde(default)]
    pub notify_format: NotifyFormat,
    /// What `notify_webhook` hears about (default: the chain's end).
    #[serde(default = "default_notify_on")]
    pub notify_on: Vec<NotifyOn>,
    /// How long one delivery attempt may take.
    #[serde(with = "humantime_serde", default = "default_notify_timeout")]
    pub notify_timeout: Duration,
    /// How long running sessions get to stop on a graceful shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Spending across all chains per UTC day; no session starts that would cross it.
    pub daily_cap_usd: Option<f64>,
    /// Prices per million tokens by model fragment (`[pricing.opus]`), over the built-in ones.
    #[serde(default)]
    pub pricing: std::collections::BTreeMap<String, crate::cost::Rates>,
    /// Sessions started per rolling hour, per account.
    #[serde(default)]
    pub max_sessions_per_hour: Option<u32>,
    /// Sessions running at once, per account.
    #[serde(default)]
    pub max_concurrent_sessions: Option<u32>,
    /// No session starts in this daily window, UTC (`"22:00-06:00"`).
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Chains released after a usage limit start spread over this long.
    #[serde(with = "humantime_serde", default = "default_release_jitter")]
    pub release_jitter: Duration,
    /// Where `operator serve` and `run --serve` listen (default 127.0.0.1:3100).
    pub listen: String,
    /// A PostgreSQL store shared by a fleet (`postgres://…`); unset: SQLite in `data_dir`.
    #[serde(default)]
    pub store_url: Option<Secret>,
    /// The API token (else `<data_dir>/api-token`); required to bind off loopback.
    #[serde(default)]
    pub api_token: Option<Secret>,
    /// Host names the API answers to besides IP literals and localhost (DNS rebinding guard).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl OperatorSettings {
    /// Where the agent CLIs are (unset: found on `PATH`).
    pub fn backend(&self) -> crate::agent::BackendOptions {
        crate::agent::BackendOptions {
            claude_bin: self.claude_bin.clone(),
            codex_bin: self.codex_bin.clone(),
            gemini_bin: self.gemini_bin.clone(),
        }
    }
}

/// One chain to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainPlan {
    pub name: String,
    pub task: String,
    /// Names of chains of the same mission that must complete first.
    pub after: Vec<String>,
    pub settings: ChainSettings,
}

/// What `operator run` will do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub mission: Option<String>,
    pub source: Option<PathBuf>,
    /// Chains running at once.
    pub concurrency: usize,
    pub chains: Vec<ChainPlan>,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, &self.key) {
            (Some(file), Some(key)) => write!(f, "{file}: `{key}`: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            (None, Some(key)) => write!(f, "`{key}`: {}", self.message),
            (None, None) => write!(f, "{}", self.message),
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Issue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(file: Option<&str>, key: Option<&str>, message: impl Into<String>) -> Self {
        Self(vec![Issue {
            file: file.map(str::to_string),
            key: key.map(str::to_string),
            message: message.into(),
        }])
    }
}

/// The process environment as seen by the configuration (`OPERATOR_*` only), so tests
/// can pass their own instead of calling `std::env::set_var`.
#[derive(Debug, Clone, Default)]
pub struct Env(pub BTreeMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(
            std::env::vars()
                .filter(|(k, _)| k.starts_with("OPERATOR_"))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn source(&self) -> EnvSource {
        let map: Map<String, String> = self
            .0
            .iter()
            // OPERATOR_CONFIG names the file itself; it is not a setting. OPERATOR_VERIFY is
            // read below: its list is not comma-separated.
            .filter(|(k, _)| !matches!(k.as_str(), "OPERATOR_CONFIG" | "OPERATOR_VERIFY"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let vars = Environment::with_prefix("OPERATOR")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("retry_backoff")
            .with_list_parse_key("allowed_hosts")
            .with_list_parse_key("exclude")
            .with_list_parse_key("fallback_agents")
            .with_list_parse_key("notify_on")
            .source(Some(map));
        let verify = self.get("OPERATOR_VERIFY").map(|v| {
            let commands = verify_commands(v)
                .into_iter()
                .map(|c| Value::new(None, c))
                .collect::<Vec<_>>();
            Value::new(
                Some(&"OPERATOR_VERIFY".to_string()),
                ValueKind::Array(commands),
            )
        });
        EnvSource { vars, verify }
    }
}

/// The commands of `OPERATOR_VERIFY`: one per line (a command may well contain a comma, as in
/// `cargo test --features a,b`), blank lines skipped.
fn verify_commands(value: &str) -> Vec<String> {
    value
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `OPERATOR_*` variables as a configuration layer.
#[derive(Debug, Clone)]
struct EnvSource {
    vars: Environment,
    verify: Option<Value>,
}

impl Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let mut map = self.vars.collect()?;
        if let Some(v) = &self.verify {
            map.insert("verify".into(), v.clone());
        }
        Ok(map)
    }
}

/// Values from the command line, the top layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides(pub Vec<(String, Value)>);

impl Overrides {
    pub fn set(&mut self, key: &str, value: impl Into<ValueKind>) {
        self.set_from(key, value, "the command line");
    }

    /// A value set by `origin` (named in error messages).
    pub fn set_from(&mut self, key: &str, value: impl Into<ValueKind>, origin: &str) {
        self.0.push((
            key.to_string(),
            Value::new(Some(&origin.to_string()), value),
        ));
    }

    /// A JSON scalar set by `origin`; other JSON values are ignored (callers check them first).
    pub fn set_json(&mut self, key: &str, value: &serde_json::Value, origin: &str) {
        use serde_json::Value as J;
        match value {
            J::String(s) => self.set_from(key, s.as_str(), origin),
            J::Bool(b) => self.set_from(key, *b, origin),
            J::Number(n) => match n.as_i64() {
                Some(i) => self.set_from(key, i, origin),
                None => self.set_from(key, n.as_f64().unwrap_or(0.0), origin),
            },
            _ => {}
        }
    }

    fn layer(&self) -> Layer {
        let mut map = Map::new();
        for (k, v) in &self.0 {
            // Nested keys (`sim.scenario`) become nested tables.
            insert_path(&mut map, k, v.clone());
        }
        Layer(map)
    }
}

fn insert_path(map: &mut Map<String, Value>, key: &str, v: Value) {
    match key.split_once('.') {
        None => {
            map.insert(key.to_string(), v);
        }
        Some((head, rest)) => {
            let entry = map
                .entry(head.to_string())
                .or_insert_with(|| Value::new(None, ValueKind::Table(Map::new())));
            if !matches!(entry.kind, ValueKind::Table(_)) {
                entry.kind = ValueKind::Table(Map::new());
            }
            if let ValueKind::Table(t) = &mut entry.kind {
                insert_path(t, rest, v);
            }
        }
    }
}

/// A table of values that keep their origin (file name) for error messages.
#[derive(Debug, Clone, Default)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn builtin_chain_defaults()
-> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    let sim = SimConfig::default();
    Config::builder()
        .set_default("agent", "claude")?
        .set_default("model", "sonnet")?
        .set_default("max_turns", 30)?
        .set_default("max_continuations", 5)?
        .set_default("max_budget_usd", 5.0)?
        .set_default("workdir", ".")?
        .set_default("permission_mode", "default")?
        .set_default("breaker_threshold", 3)?
        .set_default("continuation", "fresh")?
        .set_default("idle_timeout", "10m")?
        .set_default("session_timeout", "2h")?
        .set_default("max_attempts", 3)?
        .set_default("retry_backoff", vec!["1s", "4s", "16s"])?
        .set_default("usage_limit_margin", "1m")?
        .set_default("usage_limit_fallback", "30m")?
        .set_default("sim.scenario", sim.scenario.as_str())?
        .set_default("sim.complete_after", i64::from(sim.complete_after))?
        .set_default("sim.step", humantime::format_duration(sim.step).to_string())?
        .set_default("sim.turns", i64::from(sim.turns))
}

fn builtin_operator_defaults() -> Result<Base, config::ConfigError> {
    Config::builder()
        .set_default("data_dir", ".operator")?
        .set_default("shutdown_grace", "10s")?
        .set_default("listen", "127.0.0.1:3100")
}

/// The built-in value of every setting, operator-wide and per chain (`max_turns`, `sim.step`),
/// as TOML; a setting unset by default is absent.
pub fn builtin_values() -> &'static BTreeMap<String, String> {
    static VALUES: std::sync::LazyLock<BTreeMap<String, String>> = std::sync::LazyLock::new(|| {
        fn values<T: Serialize + serde::de::DeserializeOwned>(
            base: Result<Base, config::ConfigError>,
        ) -> Vec<explain::Explained> {
            match base
                .and_then(|b| b.build())
                .and_then(|c| c.try_deserialize::<T>())
            {
                Ok(settings) => explain::explain(&settings, &[]),
                Err(_) => Vec::new(),
            }
        }
        values::<OperatorSettings>(builtin_operator_defaults())
            .into_iter()
            .chain(values::<ChainSettings>(builtin_chain_defaults()))
            .filter_map(|e| Some((e.key, explain::toml_value(&e.value)?)))
            .collect()
    });
    &VALUES
}

/// A TOML file read through the `config` crate (values remember the file name).
struct LoadedFile {
    name: String,
    table: Map<String, Value>,
}

fn load_file(path: &Path) -> Result<LoadedFile, ConfigErrors> {
    let name = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigErrors::one(Some(&name), None, not_found(path)));
    }
    let text = read_text(path).map_err(|m| ConfigErrors::one(Some(&name), None, m))?;
    let cfg = Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .build()
        .map_err(|e| ConfigErrors::one(Some(&name), None, clean_error(&e, &name)))?;
    let table = Source::collect(&cfg)
        .map_err(|e| ConfigErrors::one(Some(&name), None, clean_error(&e, &name)))?;
    Ok(LoadedFile { name, table })
}

/// Why a file is missing, and what to do: a bare name is looked up in `config/missions/`.
fn not_found(path: &Path) -> String {
    let bare = path.extension().is_none() && path.components().count() == 1;
    if !bare {
        return "file not found (check the path)".into();
    }
    let mut names: Vec<String> = std::fs::read_dir("config/missions")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (p.extension()? == "toml").then_some(stem)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        "file not found, and there is no config/missions/ here (`operator init` writes a first mission)".into()
    } else {
        format!(
            "file not found, nor config/missions/{}.toml (missions there: {})",
            path.display(),
            names.join(", ")
        )
    }
}

/// A configuration file's text: at most [`crate::model::INPUT_LIMIT`] bytes (the API's limit
/// too), and UTF-8 (TOML is), or what is wrong and where.
fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let limit = crate::model::INPUT_LIMIT;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() > limit {
        return Err(format!(
            "larger than {} KiB, the most a configuration or mission file may be (put long instructions in a file in the workdir and name it in the task)",
            limit / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("is not UTF-8 text: line {line} holds a byte that is not (save the file as UTF-8)")
    })
}

/// The `config` crate appends ` in <file>`; we print the file first, so drop it.
fn clean_error(e: &config::ConfigError, file: &str) -> String {
    clean_error_str(&e.to_string(), file)
}

fn sub_table(table: &Map<String, Value>, key: &str) -> Map<String, Value> {
    match table.get(key).map(|v| &v.kind) {
        Some(ValueKind::Table(t)) => t.clone(),
        _ => Map::new(),
    }
}

/// Where the operator finds `operator.toml`: `--config`, else `OPERATOR_CONFIG`, else
/// `config/operator.toml` when it exists.
pub fn operator_file(explicit: Option<&Path>, env: &Env) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.get("OPERATOR_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("config/operator.toml");
    default.is_file().then_some(default)
}

/// Everything loaded from the files, ready to be layered per chain.
pub struct Loaded {
    operator_file: Option<LoadedFile>,
    pub operator: OperatorSettings,
    env: Env,
}

/// Loads `operator.toml` (if any) and resolves the operator-wide settings.
pub fn load_operator(
    file: Option<&Path>,
    env: &Env,
    overrides: &Overrides,
) -> Result<Loaded, ConfigErrors> {
    let mut issues = Vec::new();
    let operator_file = file.map(load_file).transpose()?;
    if let Some(f) = &operator_file {
        issues.extend(keys::check_operator(&f.name, &f.table));
    }
    let mut top = operator_file
        .as_ref()
        .map(|f| f.table.clone())
        .unwrap_or_default();
    top.remove("defaults");
    let base = builtin_operator_defaults;
    let built = base()
        .map(|b| {
            b.add_source(Layer(top))
                .add_source(env.source())
                .add_source(overrides.layer())
        })
        .and_then(|b| b.build())
        .map_err(|e| vec![e.to_string()])
        .and_then(|merged| read_all::<OperatorSettings>(&merged, base, |_| Vec::new()));
    let file_name = operator_file.as_ref().map(|f| f.name.clone());
    let operator = match built {
        Ok(o) => Some(o),
        Err(problems) => {
            issues.extend(problems.into_iter().map(|m| Issue {
                file: file_name.clone(),
                key: None,
                message: clean_error_str(&m, file_name.as_deref().unwrap_or("")),
            }));
            None
        }
    };
    match operator {
        Some(operator) if issues.is_empty() => Ok(Loaded {
            operator_file,
            operator,
            env: env.clone(),
        }),
        _ => Err(ConfigErrors(issues)),
    }
}

impl Loaded {
    /// The layers of a chain's settings over the built-in defaults, lowest first:
    /// `operator.toml`'s `[defaults]`, the mission's `[defaults]`, its `[[chain]]` entry (`at`),
    /// the environment and the flags.
    fn chain_layers(
        &self,
        mission_defaults: Option<(&str, &Map<String, Value>)>,
        chain_table: Option<(&str, Map<String, Value>)>,
        overrides: &Overrides,
    ) -> Result<Vec<(explain::From, Layer)>, config::ConfigError> {
        let mut layers = Vec::new();
        if let Some(f) = &self.operator_file {
            let from = explain::From::file(&f.name, "defaults");
            layers.push((from, Layer(sub_table(&f.table, "defaults"))));
        }
        if let Some((name, d)) = mission_defaults {
            layers.push((explain::From::file(name, "defaults"), Layer(d.clone())));
        }
        if let Some((at, t)) = chain_table {
            let name = mission_defaults.map(|(n, _)| n).unwrap_or_default();
            layers.push((explain::From::file(name, at), Layer(t)));
        }
        layers.push((explain::From::Env, Layer(self.env.source().collect()?)));
        layers.push((explain::From::Flags, overrides.layer()));
        Ok(layers)
    }

    fn chain_settings(
        &self,
        mission_defaults: Option<(&str, &Map<String, Value>)>,
        chain_table: Option<(&str, Map<String, Value>)>,
        overrides: &Overrides,
    ) -> Result<ChainSettings, Vec<String>> {
        let layers = self
            .chain_layers(mission_defaults, chain_table, overrides)
            .map_err(|e| vec![plain_error(&e.to_string())])?;
        let mut b = builtin_chain_defaults().map_err(|e| vec![e.to_string()])?;
        for (_, layer) in &layers {
            b = b.add_source(layer.clone());
        }
        let merged = b.build().map_err(|e| vec![plain_error(&e.to_string())])?;
        read_settings(&merged).map_err(|problems| {
            let tables: Vec<_> = layers.into_iter().map(|(f, l)| (f, l.0)).collect();
            problems
                .into_iter()
                .map(|m| explain::with_origin(m, &tables))
                .collect()
        })
    }

    /// The operator-wide settings, each with its origin.
    pub fn explain_operator(&self, overrides: &Overrides) -> Vec<explain::Explained> {
        let mut layers = Vec::new();
        if let Some(f) = &self.operator_file {
            let mut top = f.table.clone();
            top.remove("defaults");
            layers.push((explain::From::file(&f.name, ""), top));
        }
        if let Ok(env) = self.env.source().collect() {
            layers.push((explain::From::Env, env));
        }
        layers.push((explain::From::Flags, overrides.layer().0));
        explain::explain(&self.operator, &layers)
    }

    /// The settings of each chain of a plan (`--task`'s one chain without a mission), each
    /// with its origin.
    pub fn explain_plan(
        &self,
        plan: &Plan,
        overrides: &Overrides,
    ) -> Result<Vec<Vec<explain::Explained>>, ConfigErrors> {
        let file = plan.source.as_deref().map(load_file).transpose()?;
        let defaults = file
            .as_ref()
            .map(|f| (f.name.as_str(), sub_table(&f.table, "defaults")));
        let entries = file
            .as_ref()
            .and_then(|f| f.table.get("chain").cloned())
            .and_then(|v| v.into_array().ok())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, chain) in plan.chains.iter().enumerate() {
            let at = format!("chain[{i}]");
            let table = entries
                .get(i)
                .cloned()
                .and_then(|v| v.into_table().ok())
                .map(|mut t| {
                    for k in ["name", "task", "after"] {
                        t.remove(k);
                    }
                    (at.as_str(), t)
                });
            let layers = self
                .chain_layers(defaults.as_ref().map(|(n, d)| (*n, d)), table, overrides)
                .map_err(|e| ConfigErrors::one(None, None, plain_error(&e.to_string())))?;
            let layers: Vec<_> = layers.into_iter().map(|(f, l)| (f, l.0)).collect();
            out.push(explain::explain(&chain.settings, &layers));
        }
        Ok(out)
    }

    /// A plan of one chain from `--task`.
    pub fn plan_for_task(&self, task: &str, overrides: &Overrides) -> Result<Plan, ConfigErrors> {
        if task.trim().is_empty() {
            return Err(ConfigErrors::one(None, Some("--task"), "the task is empty"));
        }
        if task.len() > crate::model::INPUT_LIMIT {
            let m = format!(
                "the task is longer than {} KiB (put long instructions in a file in the workdir and name it in the task)",
                crate::model::INPUT_LIMIT / 1024
            );
            return Err(ConfigErrors::one(None, Some("--task"), m));
        }
        let settings = self.chain_settings(None, None, overrides).map_err(|ms| {
            ConfigErrors(
                ms.into_iter()
                    .map(|m| Issue {
                        file: None,
                        key: None,
                        message: m,
                    })
                    .collect(),
            )
        })?;
        Ok(Plan {
            mission: None,
            source: None,
            concurrency: 1,
            chains: vec![ChainPlan {
                name: "main".into(),
                task: task.trim().to_string(),
                after: Vec::new(),
                settings,
            }],
        })
    }

    /// A plan from a mission file; every error in it is reported at once.
    pub fn plan_for_mission(
        &self,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<Plan, ConfigErrors> {
        let file = load_file(path)?;
        let mut issues = keys::check_mission(&file.name, &file.table);
        let defaults = sub_table(&file.table, "defaults");
        let name = match file.table.get("name").map(|v| v.clone().into_string()) {
            Some(Ok(n)) => n,
            _ => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "mission".into()),
        };
        let concurrency = match file.table.get("concurrency").map(|v| v.clone().into_int()) {
            None => None,
            Some(Ok(n)) if n >= 1 => Some(n as usize),
            Some(_) => {
                issues.push(issue(
                    &file.name,
                    "concurrency",
                    "expected a whole number of at least 1",
                ));
                None
            }
        };
        let backlog = match file.table.get("backlog").map(|v| v.clone().into_string()) {
            None => None,
            Some(Ok(spec)) => match crate::backlog::Source::parse(&spec) {
                Ok(_) => Some(spec),
                Err(e) => {
                    issues.push(issue(&file.name, "backlog", &e));
                    None
                }
            },
            Some(Err(_)) => {
                issues.push(issue(
                    &file.name,
                    "backlog",
                    "expected a string: `TASKS.md`, `tasks/` or `gh:label=<label>`",
                ));
                None
            }
        };
        let entries = match file.table.get("chain").map(|v| v.clone().into_array()) {
            Some(Ok(a)) if !a.is_empty() => a,
            None if backlog.is_some() || file.table.contains_key("backlog") => Vec::new(),
            Some(Ok(_)) | None => {
                issues.push(issue(
                    &file.name,
                    "chain",
                    "the mission defines no [[chain]]",
                ));
                Vec::new()
            }
            Some(Err(_)) => {
                issues.push(issue(
                    &file.name,
                    "chain",
                    "expected an array of tables ([[chain]])",
                ));
                Vec::new()
            }
        };
        let mut chains = Vec::new();
        // (name, after) of every entry, valid or not, for the ordering checks.
        let mut order: Vec<(String, Vec<String>)> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let at = format!("chain[{i}]");
            let Ok(mut table) = entry.into_table() else {
                issues.push(issue(&file.name, &at, "expected a table"));
                continue;
            };
            let chain_name = match table.remove("name").map(Value::into_string) {
                Some(Ok(n)) if crate::model::is_valid_chain_id(&n) => n,
                Some(Ok(n)) => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.name"),
                        &format!("`{n}` is not a valid name (letters, digits, `-` and `_` only)"),
                    ));
                    continue;
                }
                Some(Err(_)) => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.name"),
                        "expected a string",
                    ));
                    continue;
                }
                None => format!("chain-{}", i + 1),
            };
            let task = match table.remove("task").map(Value::into_string) {
                Some(Ok(t)) if !t.trim().is_empty() => t.trim().to_string(),
                Some(Ok(_)) => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.task"),
                        "the task is empty",
                    ));
                    continue;
                }
                Some(Err(_)) => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.task"),
                        "expected a string",
                    ));
                    continue;
                }
                None => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.task"),
                        "missing: every chain needs a task",
                    ));
                    continue;
                }
            };
            let after = match table.remove("after").map(Value::into_array) {
                None => Vec::new(),
                Some(Ok(a)) => a.into_iter().filter_map(|v| v.into_string().ok()).collect(),
                Some(Err(_)) => {
                    issues.push(issue(
                        &file.name,
                        &format!("{at}.after"),
                        "expected a list of chain names",
                    ));
                    Vec::new()
                }
            };
            order.push((chain_name.clone(), after.clone()));
            match self.chain_settings(Some((&file.name, &defaults)), Some((&at, table)), overrides)
            {
                Ok(settings) => chains.push(ChainPlan {
                    name: chain_name,
                    task,
                    after,
                    settings,
                }),
                Err(ms) => issues.extend(ms.into_iter().map(|m| Issue {
                    file: Some(file.name.clone()),
                    key: Some(format!("{at} ({chain_name})")),
                    message: clean_error_str(&m, &file.name),
                })),
            }
        }
        if let Some(spec) = &backlog {
            self.backlog_chains(
                &file.name,
                &defaults,
                overrides,
                spec,
                &mut chains,
                &mut order,
                &mut issues,
            );
        }
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        for (i, (name, after)) in order.iter().enumerate() {
            if names[..i].contains(&name.as_str()) {
                issues.push(issue(
                    &file.name,
                    "chain",
                    &format!("two chains are named `{name}`"),
                ));
            }
            for dep in after {
                if !names.contains(&dep.as_str()) {
                    issues.push(issue(
                        &file.name,
                        &format!("{name}.after"),
                        &format!("no chain named `{dep}` in this mission"),
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&order) {
            issues.push(issue(
                &file.name,
                "after",
                &format!("the ordering has a cycle: {cycle}"),
            ));
        }
        if !issues.is_empty() {
            return Err(ConfigErrors(issues));
        }
        Ok(Plan {
            mission: Some(name),
            source: Some(path.to_path_buf()),
            concurrency: concurrency.unwrap_or(chains.len().max(1)),
            chains,
        })
    }
}

impl Loaded {
    /// A chain per open item of the mission's backlog, after its `[[chain]]`s.
    #[allow(clippy::too_many_arguments)]
    fn backlog_chains(
        &self,
        file: &str,
        defaults: &Map<String, Value>,
        overrides: &Overrides,
        spec: &str,
        chains: &mut Vec<ChainPlan>,
        order: &mut Vec<(String, Vec<String>)>,
        issues: &mut Vec<Issue>,
    ) {
        let base = match self.chain_settings(Some((file, defaults)), None, overrides) {
            Ok(s) => s,
            Err(ms) => {
                // With [[chain]]s the defaults' errors are reported with theirs already.
                if order.is_empty() {
                    issues.extend(ms.into_iter().map(|m| Issue {
                        file: Some(file.to_string()),
                        key: Some("defaults".into()),
                        message: clean_error_str(&m, file),
                    }));
                }
                return;
            }
        };
        let items = match crate::backlog::load(spec, &base.workdir) {
            Ok(items) => items,
            Err(e) => {
                issues.push(issue(file, "backlog", &e));
                return;
            }
        };
        for item in items.into_iter().filter(|i| !i.done) {
            if order.iter().any(|(n, _)| *n == item.name) {
                issues.push(issue(
                    file,
                    "backlog",
                    &format!(
                        "the backlog's item `{}` is named `{}`, as a [[chain]] of the mission is",
                        item.title, item.name
                    ),
                ));
                continue;
            }
            let mut settings = base.clone();
            settings.backlog_item = Some(crate::backlog::BacklogItem {
                spec: spec.to_string(),
                key: item.key.clone(),
                title: item.title.clone(),
            });
            order.push((item.name.clone(), item.after.clone()));
            chains.push(ChainPlan {
                name: item.name.clone(),
                task: item.task(),
                after: item.after,
                settings,
            });
        }
    }
}

/// Serde's wording for a value that is not one of an enum's says so in the user's terms:
/// `enum AgentKind does not have variant constructor codx for key `agent`` becomes
/// ``agent` is `codx`: it must be one of claude, codex, sim`.
fn plain_error(s: &str) -> String {
    let Some((head, rest)) = s.split_once(" does not have variant constructor ") else {
        return s.to_string();
    };
    let Some((value, key)) = rest.split_once(" for key ") else {
        return s.to_string();
    };
    let choices = match head.trim_start_matches("enum ") {
        "AgentKind" => "claude, codex, gemini, sim",
        "Continuation" => "fresh, resume",
        "DirtyStart" => "continue, refuse",
        "WorktreeMode" => "auto, always, never",
        "MergeMode" => "off, auto",
        "MergeMethod" => "squash, merge, rebase",
        _ => {
            return format!(
                "{key} is `{value}`, which is not one of its values (docs/configuration.md lists them)"
            );
        }
    };
    format!("{key} is `{value}`: it must be one of {choices}")
}

/// A chain's settings from their merged layers, or every problem with them at once: serde stops
/// at the first value it cannot read, so then each key is read alone over the built-in defaults
/// (each message names its key), and the checks run on the values that could be read.
fn read_settings(merged: &Config) -> Result<ChainSettings, Vec<String>> {
    read_all(merged, builtin_chain_defaults, check_chain_settings)
}

/// Defaults of a set of settings, as layers to build on.
type Base = config::ConfigBuilder<config::builder::DefaultState>;

/// Settings of type `T` from merged layers, or every problem with them: each value that cannot be
/// read (each key alone over `base`), then `check`'s findings on the values that could be read.
fn read_all<T: serde::de::DeserializeOwned>(
    merged: &Config,
    base: impl Fn() -> Result<Base, config::ConfigError>,
    check: impl Fn(&T) -> Vec<String>,
) -> Result<T, Vec<String>> {
    let first = match merged.clone().try_deserialize::<T>() {
        Ok(settings) => {
            let problems = check(&settings);
            return if problems.is_empty() {
                Ok(settings)
            } else {
                Err(problems)
            };
        }
        Err(e) => plain_error(&e.to_string()),
    };
    let Ok(table) = merged.collect() else {
        return Err(vec![first]);
    };
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    let mut problems = Vec::new();
    let mut readable = base();
    for key in keys {
        let alone = base()
            .and_then(|b| b.set_override(key.as_str(), table[key].clone()))
            .and_then(|b| b.build())
            .and_then(|c| c.try_deserialize::<T>());
        match alone {
            Ok(_) => {
                readable = readable.and_then(|b| b.set_override(key.as_str(), table[key].clone()))
            }
            Err(e) => {
                let m = plain_error(&e.to_string());
                problems.push(if m.contains(key.as_str()) {
                    m
                } else {
                    format!("`{key}`: {m}")
                });
            }
        }
    }
    if problems.is_empty() {
        return Err(vec![first]);
    }
    if let Ok(rest) = readable
        .and_then(|b| b.build())
        .and_then(|c| c.try_deserialize::<T>())
    {
        problems.extend(check(&rest));
    }
    Err(problems)
}

fn clean_error_str(s: &str, file: &str) -> String {
    // The origin may be spelled relative to the current directory: match on the file name.
    let base = Path::new(file)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    match s.rfind(" in ") {
        Some(pos) if !base.is_empty() && s[pos + 4..].trim_end().ends_with(&base) => {
            s[..pos].trim().to_string()
        }
        _ => s.trim().to_string(),
    }
}

fn issue(file: &str, key: &str, message: &str) -> Issue {
    Issue {
        file: Some(file.to_string()),
        key: Some(key.to_string()),
        message: message.to_string(),
    }
}

/// A model name or alias as the agent CLIs take them (`sonnet`, `claude-opus-4-5-20251101`,
/// `us.anthropic.claude-sonnet-4-5-v1:0`, `claude-sonnet-4-5@20250929`, `[1m]` suffixes): never an
/// option (`--dangerously-skip-permissions`), never spaces or control characters.
pub fn is_model_name(s: &str) -> bool {
    s.len() <= 100
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:@/[]".contains(c))
}

const PERMISSION_MODES: [&str; 5] = [
    "default",
    "acceptEdits",
    "plan",
    "bypassPermissions",
    "dontAsk",
];

/// Every problem of a chain's settings (empty: they are sound).
/// A branch name the operator accepts from settings: letters, digits and `-_./`, not starting
/// with `-` or `/`, no `..`, not ending with `/` or `.lock` (so it is never read as an option
/// and always a valid ref).
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn check_chain_settings(s: &ChainSettings) -> Vec<String> {
    let mut out = Vec::new();
    if s.max_turns == 0 {
        out.push("`max_turns` must be at least 1".into());
    }
    if s.model.trim().is_empty() {
        out.push("`model` is empty".into());
    }
    if !is_model_name(&s.model) {
        out.push(format!(
            "`model` is `{}`: a model name starts with a letter or digit and holds only letters, digits and `-._:@/[]` (it becomes the agent's `--model` argument)",
            s.model.escape_debug()
        ));
    }
    if !PERMISSION_MODES.contains(&s.permission_mode.as_str()) {
        out.push(format!(
            "`permission_mode` is `{}`; expected one of {}",
            s.permission_mode,
            PERMISSION_MODES.join(", ")
        ));
    }
    if !(s.max_budget_usd.is_finite() && s.max_budget_usd > 0.0) {
        out.push("`max_budget_usd` must be a positive number".into());
    }
    if s.idle_timeout.is_zero() || s.session_timeout.is_zero() {
        out.push("`idle_timeout` and `session_timeout` must be longer than zero".into());
    }
    if s.max_attempts == 0 {
        out.push("`max_attempts` must be at least 1".into());
    }
    if s.checks_timeout.is_zero() || s.checks_poll.is_zero() {
        out.push("`checks_timeout` and `checks_poll` must be longer than zero".into());
    }
    if s.merge_queue && s.worktree == WorktreeMode::Never {
        out.push("`merge_queue` lands branches from worktrees, and `worktree = \"never\"` forbids them: drop one".into());
    }
    if s.merge_queue && (s.wait_for_checks || s.merge == MergeMode::Auto) {
        out.push("`merge_queue` lands branches locally; `wait_for_checks` and `merge = \"auto\"` land them through a pull request: choose one".into());
    }
    if let Some(t) = &s.merge_target
        && !valid_branch(t)
    {
        out.push(format!(
            "`merge_target` is `{}`: it must be a branch name (letters, digits, `-_./`, not starting with `-`)",
            t.escape_debug()
        ));
    }
    if s.retry_backoff.is_empty() {
        out.push("`retry_backoff` needs at least one duration".into());
    }
    for w in &s.webhooks {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            out.push("`webhooks`: each `url` must start with http:// or https://".into());
        }
    }
    if let Some(a) = &s.commit_author
        && !(a.contains('<') && a.trim_end().ends_with('>'))
    {
        out.push(format!("`commit_author` is `{a}`; expected `Name <email>`"));
    }
    out.extend(duration_out_of_bounds(s));
    for (key, e) in s.permissions.check() {
        out.push(format!("`{key}`: not a valid rule: {e}"));
    }
    if s.approval_timeout.is_zero() {
        out.push("`approval_timeout` must be longer than zero".into());
    }
    if s.breaker_threshold == 0 {
        out.push("`breaker_threshold` must be at least 1".into());
    }
    if !s.workdir.is_dir() {
        out.push(format!(
            "`workdir` {} is not a directory",
            s.workdir.display()
        ));
    }
    out
}

/// A duration past what the operator can wait (`retry_backoff = ["584542046090y"]` validated,
/// then overflowed a clock at run time): each is bounded here, with its key named.
fn duration_out_of_bounds(s: &ChainSettings) -> Vec<String> {
    const DAY: u64 = 86_400;
    let mut checks: Vec<(&str, Duration, u64)> = vec![
        ("idle_timeout", s.idle_timeout, 30 * DAY),
        ("session_timeout", s.session_timeout, 30 * DAY),
        ("usage_limit_margin", s.usage_limit_margin, DAY),
        ("usage_limit_fallback", s.usage_limit_fallback, 7 * DAY),
        ("verify_timeout", s.verify_timeout, DAY),
        ("approval_timeout", s.approval_timeout, 7 * DAY),
        ("sim.step", s.sim.step, DAY),
    ];
    if let Some(c) = s.breaker_cooldown {
        checks.push(("breaker_cooldown", c, 7 * DAY));
    }
    for d in &s.retry_backoff {
        checks.push(("retry_backoff", **d, DAY));
    }
    checks
        .into_iter()
        .filter(|(_, d, max)| *d > Duration::from_secs(*max))
        .map(|(key, d, max)| {
            format!(
                "`{key}` is {}; at most {} (a longer wait is not one the operator can keep)",
                humantime::format_duration(d),
                humantime::format_duration(Duration::from_secs(max))
            )
        })
        .collect()
}

/// A dependency cycle among `after` lists, as `a → b → a`.
fn find_cycle(chains: &[(String, Vec<String>)]) -> Option<String> {
    fn visit<'a>(
        name: &'a str,
        chains: &'a [(String, Vec<String>)],
        stack: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<String> {
        if let Some(pos) = stack.iter().position(|n| *n == name) {
            let mut cycle: Vec<&str> = stack[pos..].to_vec();
            cycle.push(name);
            return Some(cycle.join(" → "));
        }
        if done.contains(&name) {
            return None;
        }
        stack.push(name);
        if let Some((_, after)) = chains.iter().find(|(n, _)| n == name) {
            for dep in after {
                if let Some(found) = visit(dep, chains, stack, done) {
                    return Some(found);
                }
            }
        }
        stack.pop();
        done.push(name);
        None
    }
    let mut done = Vec::new();
    chains
        .iter()
        .find_map(|(n, _)| visit(n, chains, &mut Vec::new(), &mut done))
}

/// A resumed chain's stored settings with the command-line flags of the resume on top,
/// through the same layering and checks as a new chain (the environment and the files are
/// not applied again: the chain keeps the settings it ran with).
pub fn with_overrides(
    stored: &ChainSettings,
    overrides: &Overrides,
) -> Result<ChainSettings, ConfigErrors> {
    let settings: ChainSettings = Config::builder()
        .add_source(
            Config::try_from(stored).map_err(|e| ConfigErrors::one(None, None, e.to_string()))?,
        )
        .add_source(overrides.layer())
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigErrors::one(None, None, e.to_string()))?;
    let problems = check_chain_settings(&settings);
    if !problems.is_empty() {
        let issues = problems.into_iter().map(|m| Issue {
            file: None,
            key: None,
            message: m,
        });
        return Err(ConfigErrors(issues.collect()));
    }
    Ok(settings)
}

/// `operator run demo` means `config/missions/demo.toml`.
pub fn resolve_mission(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.extension().is_some() || p.components().count() > 1 {
        return p;
    }
    let candidate = Path::new("config/missions").join(format!("{arg}.toml"));
    if candidate.is_file() { candidate } else { p }
}

#[cfg(test)]
mod tests;
