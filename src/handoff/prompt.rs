//! Prompts: the auto-continuation protocol (system prompt), each session's user prompt, and the follow-up
//! that asks an agent for its missing handoff.

/// Appended to the agent's system prompt in every session.
pub const CONTINUATION_PROTOCOL: &str = "\
AUTO-CONTINUATION PROTOCOL
You are one session in a chain of sessions working on the same task. Your context will not \
carry over: the next session starts fresh and knows only the task and what you write in your \
handoff. Before you stop, always end your final message with a handoff in exactly this form:

## HANDOFF
### Accomplished
What you finished in this session (at least one full sentence).
### Remaining
What is still to do, as a concrete list.
### Context
Decisions, gotchas, files and commands the next session needs.

When the whole task is finished and verified, write `## HANDOFF: COMPLETE` as the heading \
instead (Remaining may then be empty). Never write COMPLETE for partial work. If you are told \
that your session is ending, stop what you are doing and write the handoff at once.";

/// What the agent is asked when a turn ended without a valid handoff.
pub fn follow_up(reason: &str) -> String {
    format!(
        "Your session is ending now ({reason}). Do not start new work. Write your handoff \
         now, exactly as the AUTO-CONTINUATION PROTOCOL says: a `## HANDOFF` heading (or \
         `## HANDOFF: COMPLETE` if the whole task is done) with the sections Accomplished, \
         Remaining and Context."
    )
}

/// The user prompt of session `index` (1-based): the task alone for the first session,
/// the task and the previous handoff after that.
pub fn session_prompt(task: &str, index: u32, previous: Option<&PreviousHandoff<'_>>) -> String {
    match previous {
        None => format!("{}\n", task.trim()),
        Some(prev) => {
            let mut s = format!(
                "## Task\n{}\n\n## Previous handoff (session {})\n",
                task.trim(),
                prev.index
            );
            if prev.synthetic {
                s.push_str(
                    "(The previous session did not write a valid handoff; the operator wrote \
                     this one from its output. Check the state of the work before relying on it.)\n\n",
                );
            }
            s.push_str(prev.text.trim());
            s.push_str(&format!(
                "\n\n## Your session\nThis is session {index} of the chain. Continue the task \
                 from where the previous session left off: start with what Remaining lists, \
                 check the working tree rather than trusting the handoff blindly, and end with \
                 your own handoff.\n"
            ));
            if let Some(note) = prev.note {
                s.push_str(&format!("\n## Note from the operator\n{}\n", note.trim()));
            }
            s
        }
    }
}

/// The user message of a session that continues the agent's own session (`--resume`): the
/// conversation, the task and the last handoff are already in its context.
pub fn resume_prompt(index: u32, note: Option<&str>) -> String {
    let mut s = format!(
        "This is session {index} of the chain, continuing your previous session. Go on from the \
         Remaining items of your last handoff; check the working tree rather than trusting it \
         blindly, and end with a new handoff as the AUTO-CONTINUATION PROTOCOL says.\n"
    );
    if let Some(n) = note {
        s.push_str(&format!("\n## Note from the operator\n{}\n", n.trim()));
    }
    s
}

/// What the next prompt needs from the handoff before it.
#[derive(Debug, Clone, Copy)]
pub struct PreviousHandoff<'a> {
    pub index: u32,
    pub text: &'a str,
    pub synthetic: bool,
    /// Extra information from the operator (e.g. why the last session failed).
    pub note: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_session_gets_the_task_only() {
        assert_eq!(
            session_prompt("  Fix the bug.  ", 1, None),
            "Fix the bug.\n"
        );
    }

    #[test]
    fn later_sessions_get_task_and_previous_handoff() {
        let prev = PreviousHandoff {
            index: 2,
            text: "## HANDOFF\n### Accomplished\nhalf\n### Remaining\nrest",
            synthetic: false,
            note: None,
        };
        let p = session_prompt("Fix the bug.", 3, Some(&prev));
        assert!(p.starts_with("## Task\nFix the bug."));
        assert!(p.contains("## Previous handoff (session 2)"));
        assert!(p.contains("### Remaining\nrest"));
        assert!(p.contains("session 3 of the chain"));
        assert!(!p.contains("operator wrote"));
    }

    #[test]
    fn synthetic_previous_handoff_is_flagged_and_notes_are_carried() {
        let prev = PreviousHandoff {
            index: 1,
            text: "## HANDOFF",
            synthetic: true,
            note: Some("the agent exited with code 1"),
        };
        let p = session_prompt("T", 2, Some(&prev));
        assert!(p.contains("operator wrote this one"));
        assert!(p.contains("## Note from the operator\nthe agent exited with code 1"));
    }

    #[test]
    fn a_resumed_session_gets_a_short_prompt() {
        let p = resume_prompt(3, None);
        assert!(p.contains("session 3") && p.contains("Remaining") && p.contains("handoff"));
        assert!(resume_prompt(2, Some("a note")).contains("a note"));
    }

    #[test]
    fn protocol_and_follow_up_name_the_markers() {
        assert!(CONTINUATION_PROTOCOL.contains("## HANDOFF: COMPLETE"));
        for s in ["Accomplished", "Remaining", "Context"] {
            assert!(CONTINUATION_PROTOCOL.contains(s));
            assert!(follow_up("max turns").contains(s));
        }
        assert!(follow_up("max turns reached").contains("max turns reached"));
    }
}
