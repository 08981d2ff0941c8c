//! What a session tells its chain: the facts of its end, and the reports on the way (the agent
//! started, a turn ended, usage, a call held for approval). The session knows nothing of the chain's
//! own message type: it sends [`SessionReport`]s through a derived actor ref.

use super::SessionOutcome;

/// Facts about a finished session, gathered by the session actor.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts {
    /// The agent that ran (its errors say what to do in its own terms).
    pub agent: crate::agent::AgentKind,
    /// A `result` line was seen.
    pub saw_result: bool,
    /// How many `result` lines (more than one when a follow-up asked for the handoff).
    pub results: u32,
    /// The last result said `is_error`.
    pub result_is_error: bool,
    pub result_subtype: String,
    pub terminal_reason: Option<String>,
    pub api_error_status: Option<u16>,
    pub result_text: Option<String>,
    pub errors: Vec<String>,
    pub hit_max_turns: bool,
    /// Exit code, or `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The operator stopped the session (shutdown, abort).
    pub stopped_by_operator: bool,
    /// A watchdog stopped the session (no output for too long, or too long in all).
    pub watchdog: Option<String>,
    /// The agent reported an authentication or permission error (401/403) while retrying:
    /// the operator stopped it at once instead of waiting for its own retries.
    pub auth_error: Option<String>,
    /// The agent hit a usage or rate-limit window, with its reset time (Unix seconds) when
    /// it said one.
    pub usage_limit: Option<Option<u64>>,
    pub spawn_error: Option<String>,
    pub stderr_tail: String,
}

/// A tool call the session holds for a person, as the chain records it.
#[derive(Debug, Clone)]
pub struct HeldCall {
    pub index: u32,
    /// The `can_use_tool` request the answer goes back to.
    pub request_id: String,
    pub tool: String,
    /// The call in one line (secrets masked).
    pub summary: String,
    /// The call's whole input (secrets masked).
    pub input: String,
    /// The rule that asked.
    pub rule: String,
}

/// The prefix of every error caused by the agent's credentials (`operator run` exits with its own
/// code when a chain failed on them).
pub const CREDENTIALS: &str = "credentials: ";

/// A session's messages to its chain.
#[derive(Debug)]
pub enum SessionReport {
    /// The agent process started, leading its own process group.
    AgentStarted {
        index: u32,
        pgid: i32,
        program: String,
    },
    /// A turn ended (a `result` line); `handoff` says why the handoff so far is invalid, if it is.
    TurnEnded {
        index: u32,
        handoff: Result<(), String>,
        hit_max_turns: bool,
        is_error: bool,
    },
    /// Token usage of the running session, priced by `model`.
    Usage {
        model: String,
        usage: crate::agent::stream::Usage,
    },
    /// A tool call waits for a person (an `ask` rule).
    ApprovalRequested(HeldCall),
    /// The session is over.
    Ended(Box<SessionOutcome>),
}
