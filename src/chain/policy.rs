//! The chain's decisions as plain functions: how a session ended, and what the chain does next.

use crate::model::{ChainStatus, ErrorKind, SessionStatus};
pub use crate::session::{CREDENTIALS, SessionFacts};

/// How the session is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: SessionStatus,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    /// A usage limit: the chain waits for the reset (Unix seconds, when known) and tries
    /// the session again; the breaker does not count it.
    pub usage_limit: Option<Option<u64>>,
}

/// Messages with which the agent refuses to start at all (measured with Claude Code 2.1.328):
/// retrying cannot help.
pub fn fatal_start_message(stderr: &str) -> Option<&str> {
    const FATAL: [&str; 3] = [
        "cannot be used with root/sudo privileges",
        "Invalid API key",
        "model not found",
    ];
    stderr
        .lines()
        .map(str::trim)
        .find(|l| FATAL.iter().any(|f| l.contains(f)))
}

/// What the Claude Code CLI says when it has no valid credentials (measured with 2.1.328:
/// `Not logged in · Please run /login` with no key and no login; `Invalid API key · Fix
/// external API key` on a 401), and what to do about it.
pub fn credentials_error(
    text: &str,
    status: Option<u16>,
    agent: crate::agent::AgentKind,
) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let what = if lower.contains("not logged in") || lower.contains("please run /login") {
        "the agent is not logged in"
    } else if lower.contains("invalid api key")
        || lower.contains("invalid x-api-key")
        || lower.contains("api key not valid")
    {
        "the API key was refused"
    } else if lower.contains("oauth token")
        && (lower.contains("expired") || lower.contains("revoked"))
    {
        "the login (OAuth token) has expired or was revoked"
    } else if matches!(status, Some(401)) || lower.contains("authentication_error") {
        "the API refused the credentials (401)"
    } else if matches!(status, Some(403)) || lower.contains("permission_error") {
        "the API refused access with these credentials (403)"
    } else {
        return None;
    };
    let said = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    Some(format!(
        "{CREDENTIALS}{what} (`{said}`): {}, then `operator run --resume`",
        agent.login_hint()
    ))
}

/// The CLI refused `--resume <id>` because it no longer knows the session (its files were cleared,
/// or the chain moved to another machine). Measured with 2.1.328: an `error_during_execution`
/// result whose `errors` say `No conversation found with session ID: <id>`.
pub fn unknown_resume_id(f: &SessionFacts) -> bool {
    f.errors
        .iter()
        .chain(f.result_text.iter())
        .chain(std::iter::once(&f.stderr_tail))
        .any(|e| e.contains("No conversation found with session ID"))
}

/// Recognises a usage-limit message (`Claude AI usage limit reached|1767225600`, the wordings
/// with "usage limit", and the subscription's `You've hit your limit · resets 8pm
/// (Europe/Paris)`), and its reset time (Unix seconds) when the message carries one.
pub fn usage_limit_in(text: &str) -> Option<Option<u64>> {
    usage_limit_at(text, jiff::Timestamp::now())
}

/// [`usage_limit_in`] at a given moment (a reset given as a time of day is the next one after `now`).
pub fn usage_limit_at(text: &str, now: jiff::Timestamp) -> Option<Option<u64>> {
    let lower = text.to_ascii_lowercase();
    let says_limit = lower.contains("usage limit")
        || lower.contains("quota exceeded")
        || (lower.contains("exhausted your") && lower.contains("quota"))
        || lower.contains("limit reached")
        || lower.contains("reached your limit")
        || (lower.contains("hit your") && lower.contains("limit"));
    if !says_limit {
        return None;
    }
    let epoch = text
        .split('|')
        .skip(1)
        .find_map(|part| {
            part.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .filter(|t| *t > 1_000_000_000);
    Some(
        epoch
            .or_else(|| reset_time_of_day(text, now))
            .or_else(|| daily_quota_reset(&lower, now)),
    )
}

/// Google's daily quotas (the Gemini CLI's `You have exhausted your daily quota on this model.`)
/// reset at midnight Pacific time: the next one after `now`.
fn daily_quota_reset(lower: &str, now: jiff::Timestamp) -> Option<u64> {
    if !lower.contains("daily quota") {
        return None;
    }
    let tz = jiff::tz::TimeZone::get("America/Los_Angeles").ok()?;
    let tomorrow = now.to_zoned(tz.clone()).date().tomorrow().ok()?;
    let at = tomorrow.at(0, 0, 0, 0).to_zoned(tz).ok()?.timestamp();
    u64::try_from(at.as_second()).ok()
}

/// `resets 8pm`, `resets 8:30 pm (Europe/Paris)`, `resets at 20:00 (UTC)`, Codex's `try again at
/// 7:33 PM`: the next such moment
/// after `now`, in the named zone (the machine's own when none is named). `None` when the text
/// says no time, or names a zone this machine does not know.
fn reset_time_of_day(text: &str, now: jiff::Timestamp) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let at = ["resets", "try again at"]
        .iter()
        .find_map(|w| lower.find(w).map(|i| i + w.len()))?;
    let rest = lower[at..].trim_start();
    let rest = rest.strip_prefix("at ").unwrap_or(rest).trim_start();
    let clock: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ':')
        .collect();
    let after = rest[clock.len()..].trim_start();
    let (mut hour, minute) = match clock.split_once(':') {
        Some((h, m)) => (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?),
        None => (clock.parse::<i8>().ok()?, 0),
    };
    if after.starts_with("pm") && hour < 12 {
        hour += 12;
    } else if after.starts_with("am") && hour == 12 {
        hour = 0;
    }
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
        return None;
    }
    // The zone keeps its case: take it from the original text.
    let zone = text[at..]
        .split_once('(')
        .and_then(|(_, z)| z.split_once(')'))
        .map(|(z, _)| z.trim().to_string());
    let tz = match zone {
        Some(z) => jiff::tz::TimeZone::get(&z).ok()?,
        None => jiff::tz::TimeZone::system(),
    };
    let today = now.to_zoned(tz.clone()).date();
    let mut when = today
        .at(hour, minute, 0, 0)
        .to_zoned(tz.clone())
        .ok()?
        .timestamp();
    // A time of day has minute resolution: one a few minutes past is the reset just passed,
    // not tomorrow's.
    let just_passed = (now - jiff::SignedDuration::from_mins(5)) < when;
    if when <= now && !just_passed {
        when = today
            .tomorrow()
            .ok()?
            .at(hour, minute, 0, 0)
            .to_zoned(tz)
            .ok()?
            .timestamp();
    }
    u64::try_from(when.as_second()).ok()
}

/// The agent the next session runs on: the first whose account no usage limit holds, starting
/// from the chain's own agent (`prefer_primary`) or from the current one. `None`: all are held.
pub fn pick_agent(held: &[bool], current: usize, prefer_primary: bool) -> Option<usize> {
    let n = held.len();
    let start = if prefer_primary { 0 } else { current };
    (0..n).map(|k| (start + k) % n).find(|i| !held[*i])
}

/// Reads all the facts together: never `subtype` or the exit code alone.
pub fn classify(f: &SessionFacts) -> Verdict {
    let failed = |error: String, kind: ErrorKind| Verdict {
        status: SessionStatus::Failed,
        error: Some(error),
        error_kind: Some(kind),
        usage_limit: None,
    };
    if let Some(reset) = f.usage_limit.or_else(|| {
        f.result_text
            .as_deref()
            .and_then(usage_limit_in)
            .filter(|_| f.result_is_error)
    }) {
        let when = match reset {
            Some(t) => format!(
                "until {}",
                humantime::format_rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)
                )
            ),
            None => "with no reset time given".into(),
        };
        return Verdict {
            usage_limit: Some(reset),
            ..failed(
                format!("usage limit reached ({when})"),
                ErrorKind::Transient,
            )
        };
    }
    if let Some(e) = &f.spawn_error {
        return failed(format!("could not start the agent: {e}"), ErrorKind::Fatal);
    }
    if let Some(e) = &f.auth_error {
        return failed(e.clone(), ErrorKind::Fatal);
    }
    if f.result_is_error
        && let Some(e) = credentials_error(
            f.result_text.as_deref().unwrap_or_default(),
            f.api_error_status,
            f.agent,
        )
    {
        // Retrying cannot log anyone in: fatal at its first appearance.
        return failed(e, ErrorKind::Fatal);
    }
    if let Some(w) = &f.watchdog {
        return failed(w.clone(), ErrorKind::Transient);
    }
    if f.stopped_by_operator {
        return Verdict {
            status: SessionStatus::Interrupted,
            error: Some("stopped by the operator".into()),
            error_kind: None,
            usage_limit: None,
        };
    }
    if f.hit_max_turns {
        // Max turns without COMPLETE is a reason to continue, not a failure.
        return Verdict {
            status: SessionStatus::Completed,
            error: None,
            error_kind: None,
            usage_limit: None,
        };
    }
    if !f.saw_result && f.exit_code == Some(crate::process::EXEC_FAILED) {
        let tail = f.stderr_tail.trim();
        return failed(
            format!("could not start the agent: {tail}"),
            ErrorKind::Fatal,
        );
    }
    if !f.saw_result
        && let Some(reason) = fatal_start_message(&f.stderr_tail)
    {
        return failed(
            format!("the agent refused to start: {reason}"),
            ErrorKind::Fatal,
        );
    }
    if !f.saw_result {
        let how = match f.exit_code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        let tail = f.stderr_tail.trim();
        let error = if tail.is_empty() {
            format!("the agent ended without a result ({how})")
        } else {
            format!("the agent ended without a result ({how}): {tail}")
        };
        return failed(error, ErrorKind::Transient);
    }
    if f.result_is_error {
        let text = f
            .result_text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| f.errors.first().cloned())
            .unwrap_or_else(|| format!("error result ({})", f.result_subtype));
        let kind = match f.api_error_status {
            // Authentication, permission, an invalid request or model: retrying cannot help.
            Some(400 | 401 | 403 | 404) => ErrorKind::Fatal,
            _ => ErrorKind::Transient,
        };
        return failed(text, kind);
    }
    // The exit code reflects the process's last turn: after a follow-up it says how the
    // follow-up went, which only decides the handoff.
    if let Some(c) = f.exit_code.filter(|c| *c != 0 && f.results <= 1) {
        return failed(
            format!("the agent exited with code {c}"),
            ErrorKind::Transient,
        );
    }
    Verdict {
        status: SessionStatus::Completed,
        error: None,
        error_kind: None,
        usage_limit: None,
    }
}

/// What the chain knows after a session, for deciding the next step.
#[derive(Debug, Clone)]
pub struct AfterSession {
    pub verdict: Verdict,
    /// The agent wrote a valid COMPLETE handoff.
    pub complete: bool,
    /// The agent wrote a valid handoff (as opposed to a synthetic one).
    pub agent_handoff: bool,
    pub hit_max_turns: bool,
    pub consecutive_failures: u32,
    /// The errors of those consecutive failed sessions, oldest first.
    pub recent_errors: Vec<String>,
    /// Sessions run by this run of the chain, this one included.
    pub sessions_in_run: u32,
    pub max_continuations: u32,
    pub breaker_threshold: u32,
    pub total_cost_usd: f64,
    pub max_budget_usd: f64,
}

/// The next step of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Continue,
    Finish(ChainStatus, Option<String>),
}

/// Why the chain may not start another session, when `total` has reached the budget.
pub fn over_budget(total_usd: f64, max_usd: f64) -> Option<String> {
    (total_usd >= max_usd).then(|| format!("spent ${total_usd:.4} of a ${max_usd:.2} budget"))
}

/// Whether a chain may start another session: the budget must cover what it has spent plus
/// what a session costs on average (`forecast`, from the sessions so far). `None`: go on.
pub fn forecast_refuses(spent: f64, sessions: u32, budget: f64, what: &str) -> Option<String> {
    let per_session = if sessions > 0 {
        spent / f64::from(sessions)
    } else {
        0.0
    };
    if spent >= budget {
        Some(format!("spent ${spent:.4} of the ${budget:.2} {what}"))
    } else if spent + per_session > budget {
        Some(format!(
            "the next session would cross the ${budget:.2} {what}: ${spent:.4} spent, about ${per_session:.4} a session"
        ))
    } else {
        None
    }
}

/// M1's continuation rules plus the breaker and the budget.
pub fn decide(a: &AfterSession) -> Next {
    match a.verdict.status {
        SessionStatus::Interrupted => {
            return Next::Finish(
                ChainStatus::Interrupted,
                Some("stopped by the operator".into()),
            );
        }
        SessionStatus::Failed => {
            let error = a.verdict.error.clone().unwrap_or_default();
            if a.verdict.error_kind == Some(ErrorKind::Fatal) {
                return Next::Finish(ChainStatus::Failed, Some(format!("fatal: {error}")));
            }
            if a.consecutive_failures >= a.breaker_threshold {
                return Next::Finish(
                    ChainStatus::Failed,
                    Some(format!(
                        "circuit-open: {} consecutive failed sessions: {}",
                        a.consecutive_failures,
                        if a.recent_errors.is_empty() {
                            error
                        } else {
                            a.recent_errors.join(" | ")
                        }
                    )),
                );
            }
        }
        SessionStatus::Completed | SessionStatus::Running => {
            if a.complete {
                return Next::Finish(ChainStatus::Complete, None);
            }
            if !a.agent_handoff && !a.hit_max_turns {
                return Next::Finish(
                    ChainStatus::AssumedComplete,
                    Some("the agent stopped without a handoff and no limit was hit".into()),
                );
            }
        }
    }
    if let Some(reason) = over_budget(a.total_cost_usd, a.max_budget_usd) {
        return Next::Finish(ChainStatus::BudgetExceeded, Some(reason));
    }
    if a.sessions_in_run > a.max_continuations {
        return Next::Finish(
            ChainStatus::MaxContinuations,
            Some(format!(
                "{} sessions run without COMPLETE",
                a.sessions_in_run
            )),
        );
    }
    Next::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_facts() -> SessionFacts {
        SessionFacts {
            saw_result: true,
            result_subtype: "success".into(),
            exit_code: Some(0),
            ..Default::default()
        }
    }

    fn after(verdict: Verdict) -> AfterSession {
        AfterSession {
            verdict,
            complete: false,
            agent_handoff: true,
            hit_max_turns: false,
            consecutive_failures: 0,
            recent_errors: Vec::new(),
            sessions_in_run: 1,
            max_continuations: 5,
            breaker_threshold: 3,
            total_cost_usd: 0.1,
            max_budget_usd: 5.0,
        }
    }

    fn completed() -> Verdict {
        classify(&ok_facts())
    }

    #[test]
    fn normal_end_is_completed() {
        assert_eq!(completed().status, SessionStatus::Completed);
    }

    #[test]
    fn api_error_with_success_subtype_is_a_failure() {
        let f = SessionFacts {
            result_is_error: true,
            api_error_status: Some(429),
            result_text: Some("API Error: 429".into()),
            exit_code: Some(1),
            ..ok_facts()
        };
        let v = classify(&f);
        assert_eq!(v.status, SessionStatus::Failed);
        assert_eq!(v.error_kind, Some(ErrorKind::Transient));
        assert_eq!(v.error.as_deref(), Some("API Error: 429"));
        for status in [400, 403, 404] {
            let v = classify(&SessionFacts {
                api_error_status: Some(status),
                ..f.clone()
            });
            assert_eq!(v.error_kind, Some(ErrorKind::Fatal), "{status}");
        }
        let auth = classify(&SessionFacts {
            api_error_status: Some(401),
            ..f
        });
        assert_eq!(auth.error_kind, Some(ErrorKind::Fatal));
    }

    #[test]
    fn exit_zero_without_result_is_a_failure() {
        let f = SessionFacts {
            saw_result: false,
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(classify(&f).status, SessionStatus::Failed);
        let killed = SessionFacts {
            saw_result: false,
            exit_code: None,
            stderr_tail: "boom".into(),
            ..Default::default()
        };
        let v = classify(&killed);
        assert!(v.error.unwrap().contains("killed by a signal): boom"));
    }

    #[test]
    fn watchdogs_are_transient_and_auth_errors_fatal() {
        let w = classify(&SessionFacts {
            watchdog: Some("no output for 10m".into()),
            stopped_by_operator: true,
            ..Default::default()
        });
        assert_eq!(
            (w.status, w.error_kind),
            (SessionStatus::Failed, Some(ErrorKind::Transient))
        );
        let a = classify(&SessionFacts {
            auth_error: Some("401".into()),
            ..Default::default()
        });
        assert_eq!(a.error_kind, Some(ErrorKind::Fatal));
    }

    #[test]
    fn a_failed_follow_up_does_not_fail_the_session() {
        let f = SessionFacts {
            results: 2,
            exit_code: Some(1),
            ..ok_facts()
        };
        assert_eq!(classify(&f).status, SessionStatus::Completed);
        let single = SessionFacts {
            results: 1,
            exit_code: Some(1),
            ..ok_facts()
        };
        assert_eq!(classify(&single).status, SessionStatus::Failed);
    }

    #[test]
    fn usage_limits_are_recognised_with_their_reset() {
        assert_eq!(
            usage_limit_in("Claude AI usage limit reached|1767225600"),
            Some(Some(1767225600))
        );
        assert_eq!(
            usage_limit_in("You've hit your usage limit. Try again later."),
            Some(None)
        );
        assert_eq!(usage_limit_in("API Error: 500"), None);
    }

    #[test]
    fn the_next_agent_is_the_first_free_one_in_order() {
        // Primary held: the first free fallback.
        assert_eq!(pick_agent(&[true, false, false], 0, true), Some(1));
        assert_eq!(pick_agent(&[true, true, false], 0, true), Some(2));
        // The primary's reset passed: back to it, or stay on the fallback.
        assert_eq!(pick_agent(&[false, false], 1, true), Some(0));
        assert_eq!(pick_agent(&[false, false], 1, false), Some(1));
        // The current fallback held too: on to the next, wrapping round.
        assert_eq!(pick_agent(&[false, true, false], 1, false), Some(2));
        assert_eq!(pick_agent(&[false, false, true], 2, false), Some(0));
        assert_eq!(pick_agent(&[true, true], 1, true), None);
    }

    #[test]
    fn the_subscription_wording_gives_a_reset_in_its_zone() {
        // 2026-12-02 15:00 UTC = 16:00 in Paris.
        let now: jiff::Timestamp = "2026-12-02T15:00:00Z".parse().unwrap();
        let at = |s: &str| -> u64 {
            let t: jiff::Timestamp = s.parse().unwrap();
            t.as_second() as u64
        };
        assert_eq!(
            usage_limit_at("You've hit your limit · resets 8pm (Europe/Paris)", now),
            Some(Some(at("2026-12-02T19:00:00Z")))
        );
        // Already past today: tomorrow's.
        assert_eq!(
            usage_limit_at("You've hit your limit · resets 3:30am (Europe/Paris)", now),
            Some(Some(at("2026-12-03T02:30:00Z")))
        );
        assert_eq!(
            usage_limit_at(
                "Claude usage limit reached. Your limit resets at 20:00 (UTC)",
                now
            ),
            Some(Some(at("2026-12-02T20:00:00Z")))
        );
        assert_eq!(
            usage_limit_at(
                "You've hit your limit · resets 12am (America/New_York)",
                now
            ),
            Some(Some(at("2026-12-03T05:00:00Z")))
        );
        // Measured with CLI 2.1.328 on an OAuth token and the API's unified rate-limit headers.
        assert_eq!(
            usage_limit_at("You've hit your 5-hour limit · resets 9:29am (UTC)", now),
            Some(Some(at("2026-12-03T09:29:00Z")))
        );
        // A zone this machine does not know, or no time at all: a limit with no reset time.
        assert_eq!(
            usage_limit_at("You've hit your limit · resets 8pm (Mars/Olympus)", now),
            Some(None)
        );
        assert_eq!(usage_limit_at("You've hit your limit", now), Some(None));
        // Measured with the Codex CLI 0.169.0: the time of day in the machine's own zone.
        let codex = "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit https://chatgpt.com/settings/usage to purchase more credits or try again at 7:33 PM.";
        let reset = usage_limit_at(codex, now).unwrap().unwrap();
        let local = jiff::Timestamp::from_second(reset as i64)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::system());
        assert_eq!((local.hour(), local.minute()), (19, 33));
        assert!(reset as i64 > now.as_second() && reset as i64 <= now.as_second() + 86_400);
        // A reset in the minute that has begun (or just passed) is now, not tomorrow.
        assert_eq!(
            usage_limit_at(
                "You've hit your limit · resets 3:58pm (UTC)",
                now + jiff::SignedDuration::from_secs(1000)
            ),
            Some(Some(at("2026-12-02T15:58:00Z")))
        );
        // Measured with the Gemini CLI 0.61.0: a daily quota resets at midnight Pacific time
        // (2026-12-02 15:00 UTC is 07:00 in Los Angeles: the next midnight is 08:00 UTC).
        assert_eq!(
            usage_limit_at(
                "[API Error: You have exhausted your daily quota on this model.]\nPlease wait and try again later.",
                now
            ),
            Some(Some(at("2026-12-03T08:00:00Z")))
        );
        // An API key's exhausted quota: a limit with no reset time.
        assert_eq!(
            usage_limit_at("Quota exceeded. Check your plan and billing details.", now),
            Some(None)
        );
        let f = SessionFacts {
            result_is_error: true,
            result_text: Some("Claude AI usage limit reached|1767225600".into()),
            exit_code: Some(1),
            ..ok_facts()
        };
        let v = classify(&f);
        assert_eq!(v.usage_limit, Some(Some(1767225600)));
        assert!(v.error.unwrap().contains("2026-01-01T00:00:00Z"));
        let from_event = classify(&SessionFacts {
            usage_limit: Some(None),
            saw_result: false,
            ..Default::default()
        });
        assert_eq!(from_event.usage_limit, Some(None));
    }

    #[test]
    fn the_forecast_refuses_a_session_the_budget_cannot_cover() {
        assert_eq!(forecast_refuses(0.0, 0, 1.0, "budget"), None);
        assert_eq!(forecast_refuses(0.4, 2, 1.0, "budget"), None);
        let r = forecast_refuses(0.8, 2, 1.0, "budget").unwrap();
        assert!(r.contains("would cross the $1.00 budget"), "{r}");
        assert!(
            forecast_refuses(1.0, 1, 1.0, "budget")
                .unwrap()
                .starts_with("spent")
        );
    }

    #[test]
    fn a_refusal_to_start_is_fatal() {
        let f = SessionFacts {
            exit_code: Some(1),
            stderr_tail: "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons".into(),
            ..Default::default()
        };
        let v = classify(&f);
        assert_eq!(v.error_kind, Some(ErrorKind::Fatal));
        assert!(v.error.unwrap().contains("root/sudo"));
    }

    #[test]
    fn max_turns_is_not_a_failure() {
        let f = SessionFacts {
            hit_max_turns: true,
            result_is_error: true,
            exit_code: Some(1),
            ..ok_facts()
        };
        assert_eq!(classify(&f).status, SessionStatus::Completed);
    }

    #[test]
    fn stopped_and_spawn_errors() {
        let f = SessionFacts {
            stopped_by_operator: true,
            ..ok_facts()
        };
        assert_eq!(classify(&f).status, SessionStatus::Interrupted);
        let s = SessionFacts {
            spawn_error: Some("No such file".into()),
            ..Default::default()
        };
        assert_eq!(classify(&s).error_kind, Some(ErrorKind::Fatal));
    }

    #[test]
    fn complete_handoff_completes_the_chain() {
        let a = AfterSession {
            complete: true,
            ..after(completed())
        };
        assert_eq!(decide(&a), Next::Finish(ChainStatus::Complete, None));
    }

    #[test]
    fn incomplete_handoff_continues_until_max_continuations() {
        assert_eq!(decide(&after(completed())), Next::Continue);
        let a = AfterSession {
            sessions_in_run: 6,
            ..after(completed())
        };
        assert!(matches!(
            decide(&a),
            Next::Finish(ChainStatus::MaxContinuations, _)
        ));
        let a = AfterSession {
            sessions_in_run: 5,
            ..after(completed())
        };
        assert_eq!(decide(&a), Next::Continue);
    }

    #[test]
    fn no_handoff_without_limit_is_assumed_complete() {
        let a = AfterSession {
            agent_handoff: false,
            ..after(completed())
        };
        assert!(matches!(
            decide(&a),
            Next::Finish(ChainStatus::AssumedComplete, _)
        ));
        let at_limit = AfterSession {
            agent_handoff: false,
            hit_max_turns: true,
            ..after(completed())
        };
        assert_eq!(decide(&at_limit), Next::Continue);
    }

    #[test]
    fn breaker_opens_at_threshold() {
        let failed = classify(&SessionFacts {
            saw_result: false,
            exit_code: Some(3),
            ..Default::default()
        });
        let a = AfterSession {
            consecutive_failures: 2,
            agent_handoff: false,
            ..after(failed.clone())
        };
        assert_eq!(
            decide(&a),
            Next::Continue,
            "a failure with a synthetic handoff goes on"
        );
        let a = AfterSession {
            consecutive_failures: 3,
            ..after(failed)
        };
        match decide(&a) {
            Next::Finish(ChainStatus::Failed, Some(r)) => {
                assert!(r.starts_with("circuit-open"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fatal_errors_end_at_once() {
        let v = classify(&SessionFacts {
            spawn_error: Some("x".into()),
            ..Default::default()
        });
        assert!(
            matches!(decide(&after(v)), Next::Finish(ChainStatus::Failed, Some(r)) if r.starts_with("fatal"))
        );
    }

    #[test]
    fn budget_is_checked_after_each_session() {
        let a = AfterSession {
            total_cost_usd: 5.0,
            ..after(completed())
        };
        assert!(matches!(
            decide(&a),
            Next::Finish(ChainStatus::BudgetExceeded, _)
        ));
    }

    #[test]
    fn interrupted_session_interrupts_the_chain() {
        let v = classify(&SessionFacts {
            stopped_by_operator: true,
            ..Default::default()
        });
        assert!(matches!(
            decide(&after(v)),
            Next::Finish(ChainStatus::Interrupted, _)
        ));
    }
}
