//! The Chain actor's messages: its own (next, mode changes, abort, reconfigure, approvals) and
//! the reports of its Session actor, which arrive wrapped as [`ChainMsg::Session`].

use std::sync::Arc;

use crate::agent::Agent;
use crate::config::ChainSettings;
use crate::session::SessionReport;

pub enum ChainMsg {
    Next,
    /// A report of the running session (the session sends [`SessionReport`]s through a derived
    /// actor ref and never names this type).
    Session(SessionReport),
    /// The operator's run mode changed (pause, resume, stop).
    ModeChanged,
    /// Stop the chain as `aborted`.
    Abort,
    /// The live session's cost crossed `max_session_cost_usd`.
    SessionOverBudget {
        spent: f64,
    },
    /// New settings from a reload; they apply from the next session.
    Reconfigure(Box<ChainSettings>, Arc<dyn Agent>),
    /// Look for answers to held tool calls.
    CheckApprovals,
    /// The chain's landing (checks, merge queue) answered.
    Landed(super::machine::Landed),
}

impl From<SessionReport> for ChainMsg {
    fn from(r: SessionReport) -> Self {
        ChainMsg::Session(r)
    }
}

/// The way back, for a report that could not be delivered.
impl TryFrom<ChainMsg> for SessionReport {
    type Error = ();
    fn try_from(m: ChainMsg) -> Result<Self, ()> {
        match m {
            ChainMsg::Session(r) => Ok(r),
            _ => Err(()),
        }
    }
}
