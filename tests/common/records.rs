//! Records the store tests and benches write: a completed session.

use operator::model::{SessionRecord, SessionStatus, now_rfc3339};

/// A completed session of three turns, one second and a cent.
pub fn session(index: u32) -> SessionRecord {
    SessionRecord {
        index,
        session_id: Some(format!("s{index}")),
        status: SessionStatus::Completed,
        turns: 3,
        cost_usd: 0.01,
        duration_ms: 1000,
        hit_max_turns: false,
        pre_compacted: false,
        handoff_complete: false,
        handoff_file: None,
        error: None,
        error_kind: None,
        handoff_synthetic: false,
        asked_again: false,
        attempts: 1,
        started_at: now_rfc3339(),
        ended_at: Some(now_rfc3339()),
    }
}
