//! Domain records shared by the store, the actors and the JSON output: chains, sessions, handoffs, events.
//!
//! Field names in JSON are the original operator's camelCase names (`startedAt`,
//! `costUsd`, `hitMaxTurns`, …) so that tools written against its registry keep working.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a chain stands. Terminal states never change again except through an
/// explicit `--resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChainStatus {
    /// Created, waiting for its turn (concurrency limit, ordering).
    Queued,
    Running,
    /// Held by a pause; no new session starts.
    Paused,
    /// Waiting out a usage or rate limit.
    Waiting,
    /// A tool call of the running session waits for a person (an `ask` rule).
    AwaitingApproval,
    /// Stopped by a graceful shutdown; resumable.
    Interrupted,
    Complete,
    AssumedComplete,
    MaxContinuations,
    BudgetExceeded,
    Failed,
    Aborted,
    /// Stopped at a usage limit instead of waiting for it (`--no-wait`); resumable.
    WaitingLimit,
    /// Complete, its pull request pushed: waiting for the forge's checks (`wait_for_checks`).
    AwaitingChecks,
    /// Complete, its branch in the repository's merge queue (`merge_queue`).
    Merging,
    /// The pull request's checks did not finish within `checks_timeout`; resumable (waits again).
    ChecksTimeout,
    /// Evicted from the merge queue `max_evictions` times; the branch is kept; resumable.
    MergeFailed,
}

impl ChainStatus {
    pub const ALL: [ChainStatus; 17] = [
        Self::Queued,
        Self::Running,
        Self::Paused,
        Self::Waiting,
        Self::AwaitingApproval,
        Self::Interrupted,
        Self::Complete,
        Self::AssumedComplete,
        Self::MaxContinuations,
        Self::BudgetExceeded,
        Self::Failed,
        Self::Aborted,
        Self::WaitingLimit,
        Self::AwaitingChecks,
        Self::Merging,
        Self::ChecksTimeout,
        Self::MergeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Waiting => "waiting",
            Self::AwaitingApproval => "awaiting-approval",
            Self::Interrupted => "interrupted",
            Self::Complete => "complete",
            Self::AssumedComplete => "assumed-complete",
            Self::MaxContinuations => "max-continuations",
            Self::BudgetExceeded => "budget-exceeded",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::WaitingLimit => "waiting-limit",
            Self::AwaitingChecks => "awaiting-checks",
            Self::Merging => "merging",
            Self::ChecksTimeout => "checks-timeout",
            Self::MergeFailed => "merge-failed",
        }
    }

    /// The chain has ended for this run (it may still be resumed explicitly).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Queued
                | Self::Running
                | Self::Paused
                | Self::Waiting
                | Self::AwaitingApproval
                | Self::AwaitingChecks
                | Self::Merging
        )
    }

    /// The task is done, as far as the operator can tell.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Complete | Self::AssumedComplete)
    }

    /// `operator run --resume` (without an id) picks chains in these states: every chain that
    /// did not complete, except one a person aborted. (`complete`, `assumed-complete` and
    /// `aborted` are final: the work is done, or someone said to stop it.)
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            Self::Running
                | Self::Paused
                | Self::Waiting
                | Self::AwaitingApproval
                | Self::Interrupted
                | Self::Failed
                | Self::WaitingLimit
                | Self::MaxContinuations
                | Self::BudgetExceeded
                | Self::AwaitingChecks
                | Self::Merging
                | Self::ChecksTimeout
                | Self::MergeFailed
        )
    }
}

impl fmt::Display for ChainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChainStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown chain status `{s}`"))
    }
}

/// How one session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionStatus {
    Running,
    /// Ended with a handoff (valid or synthetic) and no error.
    Completed,
    /// The agent or its process failed.
    Failed,
    /// Stopped by a shutdown or an abort.
    Interrupted,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

impl FromStr for SessionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown session status `{s}`"))
    }
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Transient,
    Fatal,
}

/// One session of a chain, as stored and as printed by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub index: u32,
    /// The agent's own session id (from its `system/init` line).
    pub session_id: Option<String>,
    pub status: SessionStatus,
    pub turns: u32,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub hit_max_turns: bool,
    pub pre_compacted: bool,
    pub handoff_complete: bool,
    pub handoff_file: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    /// The handoff was built by the operator, not written by the agent.
    pub handoff_synthetic: bool,
    /// A follow-up message asked the agent for its handoff.
    pub asked_again: bool,
    /// Attempts this session took (transient failures are retried with backoff).
    pub attempts: u32,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// Sums over a chain's sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub sessions: u32,
    pub turns: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
}

/// A chain, as stored and as printed by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainRecord {
    pub id: String,
    /// The chain's name in its mission (`[[chain]] name = …`).
    pub name: String,
    pub mission: Option<String>,
    pub task: String,
    pub status: ChainStatus,
    /// Why the chain ended the way it did (`circuit-open: …`, `fatal: …`).
    pub reason: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub config: serde_json::Value,
    pub sessions: Vec<SessionRecord>,
    pub totals: Totals,
    pub archived: bool,
    /// The verify gates' results after the last COMPLETE (empty when none ran).
    #[serde(default)]
    pub verify: Vec<GateResult>,
}

/// A URL shown without what may be a secret in it (Slack and Discord put their keys in the path,
/// others in the query or the user info): `https://hooks.slack.com/…`.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    let masked = rest.len() > host.len() || rest.contains('@');
    format!(
        "{}{host}{}",
        if scheme.is_empty() {
            String::new()
        } else {
            format!("{scheme}://")
        },
        if masked { "/…" } else { "" }
    )
}

impl ChainRecord {
    /// The record as it may leave the operator (API, webhooks): webhook URLs masked.
    pub fn public(mut self) -> Self {
        if let Some(hooks) = self
            .config
            .get_mut("webhooks")
            .and_then(serde_json::Value::as_array_mut)
        {
            for h in hooks {
                if let Some(u) = h.get("url").and_then(serde_json::Value::as_str) {
                    let m = mask_url(u);
                    h["url"] = serde_json::Value::String(m);
                }
            }
        }
        self
    }
}

/// One verify command's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    pub command: String,
    pub passed: bool,
    /// `None` when it was stopped (timeout) or could not start.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// The tail of what it printed (stdout and stderr), secrets masked.
    pub output_tail: String,
    /// The session after which it ran.
    pub session: u32,
}

/// A handoff as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRecord {
    pub chain_id: String,
    pub index: u32,
    pub text: String,
    pub complete: bool,
    pub synthetic: bool,
    /// Why the agent's handoff was replaced by a synthetic one.
    pub reason: Option<String>,
    pub file: String,
    pub created_at: String,
}

/// One entry of the append-only events journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub id: i64,
    pub chain_id: Option<String>,
    pub session_index: Option<u32>,
    pub kind: String,
    pub data: serde_json::Value,
    pub at: String,
}

/// Current UTC time as RFC 3339 with milliseconds (`2026-11-25T18:30:20.123Z`).
/// Lexicographic order of these strings is time order, which the store relies on.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A new chain id: `c-YYYYMMDD-xxxxxx` (UTC date, 6 random hex digits).
pub fn new_chain_id() -> String {
    let now = now_rfc3339();
    let date: String = now.chars().take(10).filter(|c| *c != '-').collect();
    format!("c-{date}-{:06x}", fastrand::u32(..0x0100_0000))
}

/// The largest mission file, `--task` text or API request body: what a person writes for a chain,
/// with room to spare (a task of 20 MB took the operator to 311 MB and its store to 81 MB).
pub const INPUT_LIMIT: usize = 64 * 1024;

/// Chain ids reach file paths and SQL parameters: accept only what we generate
/// (and the names users give), never a path.
/// A lowercase ASCII slug: letters and digits joined by `-`, at most 40 characters (empty when
/// the text has none). Branch names and a backlog item's chain name are made from it.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

pub fn is_valid_chain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked_past_their_host() {
        assert_eq!(
            mask_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            mask_url("http://user:pw@example.com"),
            "http://example.com/…"
        );
        assert_eq!(mask_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(mask_url("http://h?token=x"), "http://h/…");
    }

    #[test]
    fn chain_status_round_trips_through_its_name() {
        for st in ChainStatus::ALL {
            assert_eq!(st.as_str().parse::<ChainStatus>(), Ok(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert!("nope".parse::<ChainStatus>().is_err());
    }

    #[test]
    fn terminal_and_success_states() {
        assert!(!ChainStatus::Running.is_terminal());
        assert!(ChainStatus::Interrupted.is_terminal());
        assert!(ChainStatus::AssumedComplete.is_success());
        assert!(!ChainStatus::MaxContinuations.is_success());
    }

    #[test]
    fn chain_ids_are_well_formed_and_validated() {
        let id = new_chain_id();
        assert!(id.starts_with("c-20"), "{id}");
        assert_eq!(id.len(), "c-20261125-abcdef".len());
        assert!(is_valid_chain_id(&id));
        assert!(!is_valid_chain_id("../etc/passwd"));
        assert!(!is_valid_chain_id(""));
        assert!(!is_valid_chain_id("a b"));
        assert!(!is_valid_chain_id("-rf"));
    }

    #[test]
    fn session_record_uses_the_original_field_names() {
        let s = SessionRecord {
            index: 1,
            session_id: Some("abc".into()),
            status: SessionStatus::Completed,
            turns: 3,
            cost_usd: 0.02,
            duration_ms: 1500,
            hit_max_turns: false,
            pre_compacted: false,
            handoff_complete: true,
            handoff_file: Some("x.md".into()),
            error: None,
            error_kind: None,
            handoff_synthetic: false,
            asked_again: false,
            attempts: 1,
            started_at: now_rfc3339(),
            ended_at: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "index",
            "sessionId",
            "status",
            "turns",
            "costUsd",
            "durationMs",
            "hitMaxTurns",
            "preCompacted",
            "handoffComplete",
            "handoffFile",
            "error",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
