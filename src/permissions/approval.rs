//! A tool call held for a person (`ask`): its record, kept in the store so the dashboard, the API and
//! `operator approve|deny` in another terminal can all answer it, and the rules of answering.

use serde::{Deserialize, Serialize};

/// Where a pending approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Nobody answered within `approval_timeout`: denied.
    TimedOut,
    /// The session ended (stop, pause, crash) before anyone answered.
    Cancelled,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed-out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One held tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    pub chain_id: String,
    pub session: u32,
    pub tool: String,
    /// What the call does, in one line (secrets masked).
    pub summary: String,
    /// The call's input as the agent sent it, secrets masked (for the person deciding).
    pub input: String,
    /// The rule that asked.
    pub rule: String,
    pub status: ApprovalStatus,
    pub requested_at: String,
    /// Unix seconds after which nobody's answer counts: the call is denied.
    pub deadline: u64,
    #[serde(default)]
    pub answered_by: Option<String>,
    #[serde(default)]
    pub answered_at: Option<String>,
    /// What the agent is told with a denial.
    #[serde(default)]
    pub message: Option<String>,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("approval {id} was already answered ({status})")]
    AlreadyAnswered { id: String, status: &'static str },
}

/// The key of an approval in the store's flags.
pub fn flag_key(chain_id: &str, id: &str) -> String {
    format!("{}{chain_id}:{id}", prefix())
}

/// The prefix of every approval's key.
pub fn prefix() -> &'static str {
    "approval:"
}

/// The prefix of a chain's approvals' keys.
pub fn chain_prefix(chain_id: &str) -> String {
    format!("{}{chain_id}:", prefix())
}

impl Approval {
    /// A person's answer. `now` is RFC 3339; an answer after the deadline or to a settled
    /// approval is refused.
    pub fn answer(
        &self,
        approve: bool,
        by: &str,
        message: Option<&str>,
        now: &str,
    ) -> Result<Approval, AnswerError> {
        if self.status != ApprovalStatus::Pending {
            return Err(AnswerError::AlreadyAnswered {
                id: self.id.clone(),
                status: self.status.as_str(),
            });
        }
        let mut a = self.clone();
        a.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        a.answered_by = Some(by.to_string());
        a.answered_at = Some(now.to_string());
        a.message = Some(
            match (approve, message.map(str::trim).filter(|m| !m.is_empty())) {
                (true, _) => format!("approved by {by}"),
                (false, Some(m)) => format!("A person ({by}) denied this call: {m}"),
                (false, None) => format!(
                    "A person ({by}) denied this call. Do not try it again; find another way, or say in your handoff what a person must do."
                ),
            },
        );
        Ok(a)
    }

    /// The approval as it stands at `now_unix`: a pending one past its deadline is timed out.
    pub fn expired(&self, now_unix: u64, now: &str) -> Option<Approval> {
        if self.status != ApprovalStatus::Pending || now_unix < self.deadline {
            return None;
        }
        let mut a = self.clone();
        a.status = ApprovalStatus::TimedOut;
        a.answered_by = Some("timeout".into());
        a.answered_at = Some(now.to_string());
        a.message = Some(
            "Nobody answered the request to run this call in time, so it was denied. Do not wait for it; go on with other work and say in your handoff what still needs a person's approval.".into(),
        );
        Some(a)
    }

    /// Settled without an answer because its session ended.
    pub fn cancelled(&self, why: &str, now: &str) -> Approval {
        let mut a = self.clone();
        a.status = ApprovalStatus::Cancelled;
        a.answered_by = Some("operator".into());
        a.answered_at = Some(now.to_string());
        a.message = Some(why.to_string());
        a
    }

    /// The call may run.
    pub fn allowed(&self) -> bool {
        self.status == ApprovalStatus::Approved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Approval {
        Approval {
            id: "a1".into(),
            chain_id: "c".into(),
            session: 2,
            tool: "Bash".into(),
            summary: "git push".into(),
            input: "{}".into(),
            rule: "ask: Bash(git push:*)".into(),
            status: ApprovalStatus::Pending,
            requested_at: "2026-12-02T10:00:00Z".into(),
            deadline: 1000,
            answered_by: None,
            answered_at: None,
            message: None,
        }
    }

    #[test]
    fn an_answer_settles_it_once() {
        let a = pending().answer(true, "api", None, "t").unwrap();
        assert!(a.allowed());
        assert_eq!(a.answered_by.as_deref(), Some("api"));
        let e = a.answer(false, "cli", None, "t").unwrap_err();
        assert_eq!(e.to_string(), "approval a1 was already answered (approved)");
        let d = pending()
            .answer(false, "dashboard", Some("not tonight"), "t")
            .unwrap();
        assert!(!d.allowed());
        assert!(d.message.unwrap().contains("not tonight"));
    }

    #[test]
    fn a_pending_approval_times_out_at_its_deadline() {
        assert!(pending().expired(999, "t").is_none());
        let t = pending().expired(1000, "t").unwrap();
        assert_eq!(t.status, ApprovalStatus::TimedOut);
        assert!(!t.allowed());
        assert!(t.message.unwrap().contains("denied"));
        let answered = pending().answer(true, "api", None, "t").unwrap();
        assert!(answered.expired(5000, "t").is_none());
    }

    #[test]
    fn keys_group_by_chain() {
        assert_eq!(flag_key("c1", "a1"), "approval:c1:a1");
        assert!(flag_key("c1", "a1").starts_with(&chain_prefix("c1")));
    }
}
