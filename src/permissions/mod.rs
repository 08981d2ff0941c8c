//! Tool permissions: the operator, not the agent CLI, decides which tool calls an unattended agent
//! may make — rules in Claude Code's syntax ([`rule`]), a chain's policy over a safe default
//! ([`policy`]), and calls held for a person ([`approval`]).

pub mod approval;
pub mod policy;
pub mod rule;

pub use approval::{Approval, ApprovalStatus};
pub use policy::{Decision, PermissionRules, Policy, Verdict, summarize};

/// A tool call that was refused, as the next session's prompt names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeniedCall {
    pub tool: String,
    /// The call in one line (secrets masked).
    pub summary: String,
    /// Why: the rule, or who answered.
    pub reason: String,
}

/// The operator's note to the next session about calls that were denied (`None` without any).
pub fn denial_note(denied: &[DeniedCall]) -> Option<String> {
    if denied.is_empty() {
        return None;
    }
    const SHOWN: usize = 10;
    let mut s = String::from(
        "These tool calls of the previous session were denied by the operator's permission policy; do not try them again — find another way, or say in your handoff what a person must do:",
    );
    for d in denied.iter().take(SHOWN) {
        s.push_str(&format!("\n- {} `{}` ({})", d.tool, d.summary, d.reason));
    }
    if denied.len() > SHOWN {
        s.push_str(&format!("\n- … and {} more", denied.len() - SHOWN));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_names_each_denied_call() {
        assert_eq!(denial_note(&[]), None);
        let d = DeniedCall {
            tool: "Write".into(),
            summary: "/etc/x".into(),
            reason: "default: writes only inside the workdir".into(),
        };
        let note = denial_note(&vec![d; 12]).unwrap();
        assert!(note.contains("- Write `/etc/x` (default: writes only inside the workdir)"));
        assert!(note.contains("… and 2 more"));
    }
}
