//! The Chain actor's messages: its own (next, mode changes, abort, reconfigure, approvals) and
//! the reports of its Session actor, which arrive converted from [`SessionReport`].

use std::sync::Arc;

use crate::agent::Agent;
use crate::config::ChainSettings;
use crate::session::{SessionOutcome, SessionReport};

pub enum ChainMsg {
    Next,
    /// A turn ended (a `result` line); `handoff` says why the handoff so far is invalid, if it is.
    TurnEnded {
        index: u32,
        handoff: Result<(), String>,
        hit_max_turns: bool,
        is_error: bool,
    },
    SessionEnded(Box<SessionOutcome>),
    /// The operator's run mode changed (pause, resume, stop).
    ModeChanged,
    /// Stop the chain as `aborted`.
    Abort,
    /// Token usage of the live session, for the current Cost actor (routed through the chain
    /// so a restarted Cost actor gets it).
    Usage {
        model: String,
        usage: crate::agent::stream::Usage,
    },
    /// The live session's cost crossed `max_session_cost_usd`.
    SessionOverBudget {
        spent: f64,
    },
    /// A session's agent process started, leading its own process group.
    AgentStarted {
        index: u32,
        pgid: i32,
        program: String,
    },
    /// New settings from a reload; they apply from the next session.
    Reconfigure(Box<ChainSettings>, Arc<dyn Agent>),
    /// The session holds a tool call for a person (an `ask` rule).
    ApprovalRequested {
        index: u32,
        request_id: String,
        tool: String,
        summary: String,
        input: String,
        rule: String,
    },
    /// Look for answers to held tool calls.
    CheckApprovals,
}

/// A session's reports arrive as the chain's own messages (the session never names `ChainMsg`).
impl From<SessionReport> for ChainMsg {
    fn from(r: SessionReport) -> Self {
        match r {
            SessionReport::AgentStarted {
                index,
                pgid,
                program,
            } => ChainMsg::AgentStarted {
                index,
                pgid,
                program,
            },
            SessionReport::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            } => ChainMsg::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            },
            SessionReport::Usage { model, usage } => ChainMsg::Usage { model, usage },
            SessionReport::ApprovalRequested {
                index,
                request_id,
                tool,
                summary,
                input,
                rule,
            } => ChainMsg::ApprovalRequested {
                index,
                request_id,
                tool,
                summary,
                input,
                rule,
            },
            SessionReport::Ended(o) => ChainMsg::SessionEnded(o),
        }
    }
}

/// The way back, for a report that could not be delivered.
impl TryFrom<ChainMsg> for SessionReport {
    type Error = ();
    fn try_from(m: ChainMsg) -> Result<Self, ()> {
        Ok(match m {
            ChainMsg::AgentStarted {
                index,
                pgid,
                program,
            } => SessionReport::AgentStarted {
                index,
                pgid,
                program,
            },
            ChainMsg::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            } => SessionReport::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            },
            ChainMsg::Usage { model, usage } => SessionReport::Usage { model, usage },
            ChainMsg::ApprovalRequested {
                index,
                request_id,
                tool,
                summary,
                input,
                rule,
            } => SessionReport::ApprovalRequested {
                index,
                request_id,
                tool,
                summary,
                input,
                rule,
            },
            ChainMsg::SessionEnded(o) => SessionReport::Ended(o),
            _ => return Err(()),
        })
    }
}
