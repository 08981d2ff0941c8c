//! The machine's single decisions, each a plain method on [`ChainMachine`]: the gate before a
//! session, what happens after a session ends (retry with backoff, wait out a usage limit, stop
//! at it, record and decide), the breaker and its half-open probe, and the judgement of a
//! completed session (stale COMPLETE, verify gates, no progress). The flow in `mod.rs` strings
//! them together; the table tests below reach each one on simulated time.

use std::time::Duration;

use super::policy::{self, AfterSession, Next, Verdict};
use crate::config::ChainSettings;
use crate::model::{ChainStatus, ErrorKind, SessionRecord, SessionStatus};

/// The limits the machine decides by (from the chain's settings).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_attempts: u32,
    pub retry_backoff: Vec<Duration>,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Option<Duration>,
    pub max_continuations: u32,
    pub max_budget_usd: f64,
    pub no_wait: bool,
    pub usage_limit_margin: Duration,
    pub usage_limit_fallback: Duration,
    pub no_progress_sessions: u32,
    /// `continuation = "resume"`: the next session continues the agent's last one.
    pub resume: bool,
    /// Verify gates are configured: a COMPLETE needs them to pass.
    pub gates: bool,
    /// The operator-wide daily cap on spending, across chains.
    pub daily_cap_usd: Option<f64>,
    /// Fallback agents are configured: a usage limit holds this agent's account and the same
    /// session is tried again at once (the shell picks an agent whose account is free).
    pub fallback: bool,
    /// A COMPLETE lands before the chain is complete: the pull request's checks are waited
    /// for, or the branch goes through the merge queue.
    pub landing: bool,
}

impl Limits {
    pub fn of(s: &ChainSettings) -> Self {
        Self {
            max_attempts: s.max_attempts,
            retry_backoff: s.retry_backoff.iter().map(|d| **d).collect(),
            breaker_threshold: s.breaker_threshold,
            breaker_cooldown: s.breaker_cooldown,
            max_continuations: s.max_continuations,
            max_budget_usd: s.max_budget_usd,
            no_wait: s.no_wait,
            usage_limit_margin: s.usage_limit_margin,
            usage_limit_fallback: s.usage_limit_fallback,
            no_progress_sessions: s.no_progress_sessions,
            resume: s.continuation == crate::config::Continuation::Resume,
            gates: !s.verify.is_empty(),
            daily_cap_usd: None,
            fallback: s.fallback_agents.iter().any(|a| *a != s.agent),
            landing: s.wait_for_checks || s.merge_queue,
        }
    }

    /// With the operator's daily cap.
    pub fn with_daily_cap(self, cap: Option<f64>) -> Self {
        Self {
            daily_cap_usd: cap,
            ..self
        }
    }
}

/// A session's end, as the machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub index: u32,
    pub verdict: Verdict,
    /// What this attempt cost, and its turns.
    pub cost: f64,
    pub turns: u32,
    /// The operator runs normally (not paused, stopping or aborting this chain).
    pub running: bool,
    /// Now, in Unix seconds.
    pub now: u64,
}

/// What to do with a session that ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterEnd {
    /// A usage limit with `no_wait`: record the attempt as interrupted and end the chain
    /// `waiting-limit` (resumable).
    StopAtLimit { until: u64, reason: String },
    /// A usage limit: hold the account until `until`, record the attempt, and try the same
    /// session again after `delay` (not counted as an attempt, nor by the breaker).
    WaitForLimit {
        delay: Duration,
        until: u64,
        attempt: Attempt,
    },
    /// A usage limit with fallback agents: hold the account until `until`, record the attempt,
    /// and try the same session again at once, on another agent if one is free.
    FallOver { until: u64, attempt: Attempt },
    /// A transient failure with attempts left: record it and try again after `delay`.
    Retry { delay: Duration, attempt: Attempt },
    /// The session is over: resolve its handoff, record it with these totals, then [`decide`].
    Record {
        attempts: u32,
        cost: f64,
        turns: u32,
    },
}

/// A failed attempt to record: its number and the cost and turns of the failed attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub cost: f64,
    pub turns: u32,
    /// For the next attempt's prompt.
    pub note: Option<String>,
}

/// What the decision after a recorded session needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub index: u32,
    pub verdict: Verdict,
    /// The agent's handoff says COMPLETE (and is not synthetic).
    pub complete: bool,
    /// The handoff is the agent's (not synthetic).
    pub agent_handoff: bool,
    pub hit_max_turns: bool,
    /// The chain's total cost after this session.
    pub total_cost: f64,
    pub aborting: bool,
    /// The session was interrupted to hold the chain (`pause --now`) or for its cost limit:
    /// decided as a session that hit a limit.
    pub held: bool,
}

/// The decision after a recorded session.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub next: Next,
    /// Why the previous session failed, for the next prompt.
    pub note: Option<String>,
    /// The chain has now spent 80 % of its budget (told once).
    pub budget_warning: bool,
}

/// Facts measured after a completed session, for its judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub tree_changed: bool,
    /// The handoff's Remaining section differs from the previous session's.
    pub remaining_changed: bool,
    /// The whole handoff repeats the previous session's.
    pub same_handoff: bool,
    /// What measured the tree (`git`, `files`), for the no-progress reason.
    pub source: String,
}

/// Whether a decision needs the verify gates before it stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Final (for the breaker); `stale`: a stale COMPLETE was not believed.
    Done {
        next: Next,
        stale: bool,
        note: Option<String>,
    },
    /// A COMPLETE that the verify gates must confirm: run them, then [`ChainMachine::gated`].
    RunGates,
}

/// What the breaker does with a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Breaker {
    /// Act on it.
    Go(Next),
    /// The probe session succeeded: the breaker closes (tell the world), then act on it.
    Closed(Next),
    /// The breaker opened and has a cool-down: wait it, then run one probe session.
    HalfOpen { cooldown: Duration, reason: String },
}

/// The operator's run mode, as a chain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Running,
    /// No session starts (`pause`, or `pause --now` once the running session has ended).
    Paused,
    /// The operator is stopping.
    Stopping,
}

/// What the chain knows when it is asked to start its next session.
#[derive(Debug, Clone, PartialEq)]
pub struct Before {
    /// Now on the chain's own clock (milliseconds since it started).
    pub now_ms: u64,
    pub mode: RunMode,
    pub aborting: bool,
    /// Why the chain must not run a session at all (a dirty tree it was told to refuse).
    pub refused: Option<String>,
}

/// Whether the next session may start.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Not yet: a retry's backoff or a cool-down is running (a timer will ask again).
    NotYet,
    /// End the chain.
    Finish(ChainStatus, String),
    /// Paused: the chain holds (`first`: record and announce it) until the mode changes.
    Hold { first: bool },
    /// Go on to the budget and the account's quota; `resumed`: a pause just ended.
    Proceed { resumed: bool },
}

/// Why the operator interrupted the running turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// The session crossed its cost limit.
    CostLimit,
    /// `pause --now`.
    Pausing,
    /// A stop or an abort.
    Stopping,
}

/// A turn of the running session ended (a `result` line).
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `Err`: why the handoff so far is missing or invalid.
    pub handoff: Result<(), String>,
    pub is_error: bool,
    pub hit_max_turns: bool,
    /// The agent was already asked once for its handoff in this session.
    pub asked_again: bool,
    pub interrupted: Option<Interrupted>,
}

/// What the session does after a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterTurn {
    /// Close stdin: the agent ends.
    Close,
    /// Ask once more, in the same process, for the handoff (the reason goes in the follow-up).
    AskAgain(String),
}

/// After a turn: a valid handoff ends the session; a missing one is asked for once — even
/// after an error result when the operator interrupted the turn, never after a failed API
/// call otherwise (the agent could not write anything).
pub fn after_turn(t: Turn) -> AfterTurn {
    let reason = match t.handoff {
        Ok(()) => return AfterTurn::Close,
        Err(reason) => reason,
    };
    if (t.is_error && t.interrupted.is_none()) || t.asked_again {
        return AfterTurn::Close;
    }
    AfterTurn::AskAgain(match t.interrupted {
        Some(Interrupted::CostLimit) => "the session reached its cost limit".into(),
        Some(Interrupted::Pausing) => "the operator is pausing".into(),
        Some(Interrupted::Stopping) => "the operator is stopping".into(),
        None if t.hit_max_turns => "you reached the turn limit".into(),
        None => reason,
    })
}

/// The agent session a next session may continue: one that completed without a compaction
/// (after a compaction, a failure or an interruption, the next session starts fresh).
pub fn resumable_id(s: &SessionRecord) -> Option<String> {
    (s.status == SessionStatus::Completed && !s.pre_compacted)
        .then(|| s.session_id.clone())
        .flatten()
}

/// The chain's state: the counters behind its decisions and where its flow stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainMachine {
    pub limits: Limits,
    /// Sessions of this run are counted from here.
    pub session_base: u32,
    /// Attempt of the current session (transient failures are retried).
    pub attempt: u32,
    /// Attempts of the current session that waited out a usage limit.
    pub waits: u32,
    /// Cost and turns of the failed attempts of the current session.
    pub failed_attempts: (f64, u32),
    pub consecutive_failures: u32,
    /// Errors of the consecutive failed sessions, for the breaker's record.
    pub recent_errors: Vec<String>,
    /// The breaker is half-open: the running (or next) session is its one probe.
    pub probing: bool,
    /// Completed sessions in a row that made no measurable progress.
    pub no_progress: u32,
    /// Tool calls denied since the last session without denials.
    pub denied_in_row: u32,
    pub budget_warned: bool,
    /// The verify gates' last results (passed or not, in order).
    pub last_gates: Vec<bool>,
    /// No session starts before this (chain clock, ms): a retry's backoff or a cool-down.
    pub not_before: Option<u64>,
    /// The chain announced that it holds for a pause.
    pub paused: bool,

    // The flow's state (see `mod.rs`).
    /// The index of the next session.
    pub next_index: u32,
    /// Why the previous session or attempt failed, for the next prompt.
    pub note: Option<String>,
    /// The last session's denied tool calls, for the next prompt.
    pub denied_note: Option<String>,
    /// The note of a start the store refused (the account was busy): the next start uses it.
    pub(super) kept_note: Option<String>,
    /// The agent session the next one may continue (`continuation = "resume"`).
    pub resumable: Option<String>,
    pub aborting: bool,
    /// The running session was stopped for crossing its cost limit.
    pub over_budget: bool,
    pub finished: bool,
    /// Why the chain must not run a session (a dirty tree it was told to refuse).
    pub refused: Option<String>,
    /// The account is held: no session starts before this (chain clock, ms).
    pub quota_wait: Option<u64>,
    /// The running session was admitted by the quota scheduler (and must be released).
    pub admitted: bool,
    /// The running session.
    pub live: Option<super::Live>,
    /// The session being recorded and judged (between its end and the decision).
    pub(super) ending: Option<super::Ending>,
    /// The chain's COMPLETE is landing (checks, merge queue): no session starts meanwhile.
    pub landing: bool,
    /// The chain was landing when its previous life ended: it lands before anything else.
    pub land_pending: bool,
}

impl ChainMachine {
    pub fn new(limits: Limits, session_base: u32) -> Self {
        Self {
            limits,
            session_base,
            attempt: 1,
            waits: 0,
            failed_attempts: (0.0, 0),
            consecutive_failures: 0,
            recent_errors: Vec::new(),
            probing: false,
            no_progress: 0,
            denied_in_row: 0,
            budget_warned: false,
            last_gates: Vec::new(),
            not_before: None,
            paused: false,
            next_index: session_base + 1,
            note: None,
            denied_note: None,
            kept_note: None,
            resumable: None,
            aborting: false,
            over_budget: false,
            finished: false,
            refused: None,
            quota_wait: None,
            admitted: false,
            live: None,
            ending: None,
            landing: false,
            land_pending: false,
        }
    }

    /// The machine of a chain that starts (again) from its stored sessions: the breaker counts
    /// this run's failed sessions in a row only (a resume of an ended chain moves the base, so
    /// its state never leaks into a new run); a budget already 80 % spent was warned about.
    pub fn restore(limits: Limits, session_base: u32, sessions: &[SessionRecord]) -> Self {
        let mut m = Self::new(limits, session_base);
        let failed: Vec<&SessionRecord> = sessions
            .iter()
            .filter(|s| s.index > session_base)
            .rev()
            .take_while(|s| s.status == SessionStatus::Failed)
            .collect();
        m.consecutive_failures = failed.len() as u32;
        m.recent_errors = failed
            .iter()
            .rev()
            .map(|s| {
                format!(
                    "session {}: {}",
                    s.index,
                    s.error.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        let spent: f64 = sessions.iter().map(|s| s.cost_usd).sum();
        m.budget_warned = spent >= 0.8 * m.limits.max_budget_usd;
        m.next_index = sessions.last().map(|s| s.index + 1).unwrap_or(1);
        m.resumable = sessions.last().and_then(resumable_id);
        m
    }

    /// No session starts for `delay` from `now_ms` (a mode change may still wake the chain).
    pub fn wait(&mut self, now_ms: u64, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.not_before = Some(now_ms.saturating_add(ms));
    }

    /// Whether the next session may start: a refusal, an abort and a stop end the chain; a
    /// backoff is waited out only while the operator runs normally; a pause holds it.
    pub fn before_session(&mut self, b: &Before) -> Gate {
        if let Some(reason) = &b.refused {
            return Gate::Finish(ChainStatus::Failed, reason.clone());
        }
        if let Some(t) = self.not_before
            && b.mode == RunMode::Running
            && !b.aborting
            && b.now_ms < t
        {
            return Gate::NotYet;
        }
        self.not_before = None;
        if b.aborting {
            return Gate::Finish(ChainStatus::Aborted, "aborted".into());
        }
        match b.mode {
            RunMode::Stopping => {
                Gate::Finish(ChainStatus::Interrupted, "the operator was stopped".into())
            }
            RunMode::Paused => Gate::Hold {
                first: !std::mem::replace(&mut self.paused, true),
            },
            RunMode::Running => Gate::Proceed {
                resumed: std::mem::take(&mut self.paused),
            },
        }
    }

    /// When to try again after a usage limit that resets at `reset` (Unix seconds; `None`:
    /// not said): the reset plus the margin, or the fallback.
    pub fn usage_limit_delay(&self, reset: Option<u64>, now: u64) -> Duration {
        match reset {
            Some(t) => {
                let at = Duration::from_secs(t).saturating_add(self.limits.usage_limit_margin);
                at.checked_sub(Duration::from_secs(now))
                    .unwrap_or(self.limits.usage_limit_margin)
            }
            None => self.limits.usage_limit_fallback,
        }
    }

    fn failed_attempt(&mut self, e: &Ended, note: Option<String>) -> Attempt {
        self.failed_attempts.0 += e.cost;
        self.failed_attempts.1 += e.turns;
        let a = Attempt {
            number: self.attempt,
            cost: self.failed_attempts.0,
            turns: self.failed_attempts.1,
            note,
        };
        self.attempt += 1;
        a
    }

    /// A session ended: retry it, wait, stop, or record it.
    pub fn session_ended(&mut self, e: &Ended) -> AfterEnd {
        let error = e.verdict.error.clone().unwrap_or_default();
        let retry_note = Some(format!(
            "The previous attempt at this session failed: {error}"
        ));
        if let (Some(reset), true) = (e.verdict.usage_limit, e.running) {
            let delay = self.usage_limit_delay(reset, e.now);
            let until = e.now.saturating_add(delay.as_secs());
            if self.limits.fallback {
                self.waits += 1;
                let attempt = self.failed_attempt(e, retry_note);
                return AfterEnd::FallOver { until, attempt };
            }
            if self.limits.no_wait {
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(until),
                );
                return AfterEnd::StopAtLimit {
                    until,
                    reason: format!("usage limit; it resets at {when} (no_wait: not waiting)"),
                };
            }
            self.waits += 1;
            let attempt = self.failed_attempt(e, retry_note);
            return AfterEnd::WaitForLimit {
                delay,
                until,
                attempt,
            };
        }
        let counted = self.attempt - self.waits;
        if e.verdict.status == SessionStatus::Failed
            && e.verdict.error_kind == Some(ErrorKind::Transient)
            && counted < self.limits.max_attempts
            && e.running
        {
            let backoff = &self.limits.retry_backoff;
            let delay = backoff
                .get(counted as usize - 1)
                .or(backoff.last())
                .copied()
                .unwrap_or_default();
            let attempt = self.failed_attempt(e, retry_note);
            return AfterEnd::Retry { delay, attempt };
        }
        let (prior_cost, prior_turns) = std::mem::take(&mut self.failed_attempts);
        self.waits = 0;
        let attempts = std::mem::replace(&mut self.attempt, 1);
        AfterEnd::Record {
            attempts,
            cost: e.cost + prior_cost,
            turns: e.turns + prior_turns,
        }
    }

    /// The decision after a recorded session: the continuation rules, the breaker's count and
    /// the budget (before the judgement and the half-open breaker).
    pub fn decide(&mut self, r: &Recorded) -> Decided {
        let mut note = None;
        match r.verdict.status {
            SessionStatus::Failed => {
                self.consecutive_failures += 1;
                self.recent_errors.push(format!(
                    "session {}: {}",
                    r.index,
                    r.verdict.error.as_deref().unwrap_or("failed")
                ));
                note = r
                    .verdict
                    .error
                    .as_ref()
                    .map(|e| format!("The previous session failed: {e}"));
            }
            SessionStatus::Completed => {
                self.consecutive_failures = 0;
                self.recent_errors.clear();
            }
            _ => {}
        }
        let budget_warning =
            !self.budget_warned && r.total_cost >= 0.8 * self.limits.max_budget_usd;
        self.budget_warned |= budget_warning;
        let after = AfterSession {
            verdict: r.verdict.clone(),
            complete: r.complete,
            agent_handoff: r.agent_handoff,
            hit_max_turns: r.hit_max_turns,
            consecutive_failures: self.consecutive_failures,
            recent_errors: self.recent_errors.clone(),
            sessions_in_run: r.index - self.session_base,
            max_continuations: self.limits.max_continuations,
            breaker_threshold: self.limits.breaker_threshold,
            total_cost_usd: r.total_cost,
            max_budget_usd: self.limits.max_budget_usd,
        };
        let next = if r.aborting {
            Next::Finish(ChainStatus::Aborted, Some("aborted".into()))
        } else if r.verdict.status == SessionStatus::Interrupted && r.held {
            // Interrupted to hold the chain or to go on fresh, not to end it: decided as a
            // session that hit a limit (a COMPLETE still completes; the limits still apply).
            policy::decide(&AfterSession {
                verdict: Verdict {
                    status: SessionStatus::Completed,
                    error: None,
                    error_kind: None,
                    usage_limit: None,
                },
                hit_max_turns: true,
                ..after
            })
        } else {
            policy::decide(&after)
        };
        Decided {
            next,
            note,
            budget_warning,
        }
    }

    /// Goes on after a COMPLETE that was not accepted, as a continuation (its limit applies).
    fn go_on(&self, index: u32, why: &str) -> Next {
        let run = index - self.session_base;
        if run > self.limits.max_continuations {
            Next::Finish(
                ChainStatus::MaxContinuations,
                Some(format!(
                    "{run} sessions run without a verified COMPLETE; the last: {why}"
                )),
            )
        } else {
            Next::Continue
        }
    }

    /// Whether a decision is judged at all: only completed sessions that continue or complete.
    pub fn judged(decision: &Next, status: SessionStatus) -> bool {
        status == SessionStatus::Completed
            && matches!(
                decision,
                Next::Continue | Next::Finish(ChainStatus::Complete, _)
            )
    }

    /// Judges a completed session from the measured facts: a stale COMPLETE is not believed; a
    /// COMPLETE otherwise needs the gates when there are any.
    pub fn judge(&mut self, decision: Next, index: u32, m: &Measured, gates: bool) -> Judgement {
        if matches!(decision, Next::Finish(ChainStatus::Complete, _)) {
            if !m.tree_changed && m.same_handoff {
                return Judgement::Done {
                    next: self.progress(self.go_on(index, "a stale COMPLETE"), m, false),
                    stale: true,
                    note: Some(
                        "Your COMPLETE handoff was not believed: it repeats the previous session's handoff and nothing changed in the working tree. Check what is really left to do, do it, and write a handoff that says what you did.".into(),
                    ),
                };
            }
            if gates {
                return Judgement::RunGates;
            }
        }
        Judgement::Done {
            next: self.progress(decision, m, false),
            stale: false,
            note: None,
        }
    }

    /// The verify gates' results for a COMPLETE (`passed[i]` for each gate, `failed` their
    /// names): the decision, and the note for the next prompt when one failed.
    pub fn gated(
        &mut self,
        index: u32,
        m: &Measured,
        passed: &[bool],
        failed: &[String],
    ) -> (Next, bool) {
        let gates_changed = passed != self.last_gates.as_slice();
        self.last_gates = passed.to_vec();
        let decision = if failed.is_empty() {
            Next::Finish(ChainStatus::Complete, None)
        } else {
            self.go_on(index, &format!("verify failed: {}", failed.join(", ")))
        };
        (
            self.progress(decision, m, gates_changed),
            !failed.is_empty(),
        )
    }

    /// Counts progress (the tree, the Remaining section, the gates) and stops a chain that went
    /// `no_progress_sessions` sessions without any.
    fn progress(&mut self, decision: Next, m: &Measured, gates_changed: bool) -> Next {
        let made = m.tree_changed || m.remaining_changed || gates_changed;
        self.no_progress = if made { 0 } else { self.no_progress + 1 };
        let limit = self.limits.no_progress_sessions;
        if decision == Next::Continue && limit > 0 && self.no_progress >= limit {
            let mut reason = crate::chain::gates::no_progress_reason(self.no_progress, &m.source);
            if self.denied_in_row > 0 {
                reason.push_str(&format!(
                    "; {} tool call(s) were denied by the permission policy in those sessions",
                    self.denied_in_row
                ));
            }
            return Next::Finish(ChainStatus::Failed, Some(reason));
        }
        decision
    }

    /// The optional half-open state of the breaker: when it opens and `breaker_cooldown` is
    /// set, the chain waits the cool-down and runs one probe; a probe that succeeds closes the
    /// breaker, one that fails ends the chain.
    pub fn breaker(&mut self, decision: Next, status: SessionStatus, now: u64) -> Breaker {
        let opens = |d: &Next| matches!(d, Next::Finish(ChainStatus::Failed, Some(r)) if r.starts_with("circuit-open"));
        if std::mem::take(&mut self.probing) {
            if status == SessionStatus::Completed {
                return Breaker::Closed(decision);
            }
            return Breaker::Go(match decision {
                Next::Finish(ChainStatus::Failed, Some(r)) if r.starts_with("circuit-open") => {
                    Next::Finish(
                        ChainStatus::Failed,
                        Some(format!("{r} (the probe after the cool-down failed too)")),
                    )
                }
                other => other,
            });
        }
        match (opens(&decision), self.limits.breaker_cooldown) {
            (true, Some(cooldown)) => {
                self.probing = true;
                let at = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(now) + cooldown,
                );
                Breaker::HalfOpen {
                    cooldown,
                    reason: format!("circuit half-open: one probe session at {at}"),
                }
            }
            _ => Breaker::Go(decision),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    pub(crate) fn limits() -> Limits {
        Limits {
            max_attempts: 3,
            retry_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(4),
                Duration::from_secs(16),
            ],
            breaker_threshold: 3,
            breaker_cooldown: None,
            max_continuations: 5,
            max_budget_usd: 5.0,
            no_wait: false,
            usage_limit_margin: Duration::from_secs(60),
            usage_limit_fallback: Duration::from_secs(1800),
            no_progress_sessions: 3,
            resume: false,
            gates: false,
            daily_cap_usd: None,
            fallback: false,
            landing: false,
        }
    }

    fn verdict(status: SessionStatus, kind: Option<ErrorKind>) -> Verdict {
        Verdict {
            status,
            error: kind.map(|_| "boom".to_string()),
            error_kind: kind,
            usage_limit: None,
        }
    }

    fn ended(index: u32, v: Verdict) -> Ended {
        Ended {
            index,
            verdict: v,
            cost: 0.5,
            turns: 2,
            running: true,
            now: NOW,
        }
    }

    fn transient(index: u32) -> Ended {
        ended(
            index,
            verdict(SessionStatus::Failed, Some(ErrorKind::Transient)),
        )
    }

    fn recorded(index: u32, v: Verdict) -> Recorded {
        Recorded {
            index,
            verdict: v,
            complete: false,
            agent_handoff: true,
            hit_max_turns: false,
            total_cost: 1.0,
            aborting: false,
            held: false,
        }
    }

    fn measured(tree: bool, remaining: bool, same: bool) -> Measured {
        Measured {
            tree_changed: tree,
            remaining_changed: remaining,
            same_handoff: same,
            source: "git".into(),
        }
    }

    #[test]
    fn transient_failures_back_off_one_four_sixteen_then_the_session_is_recorded() {
        let mut m = ChainMachine::new(
            Limits {
                max_attempts: 4,
                ..limits()
            },
            0,
        );
        let mut delays = Vec::new();
        for _ in 0..3 {
            match m.session_ended(&transient(1)) {
                AfterEnd::Retry { delay, attempt } => {
                    delays.push(delay.as_secs());
                    assert!(
                        attempt
                            .note
                            .unwrap()
                            .contains("attempt at this session failed")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [1, 4, 16]);
        // The fourth failure is the last attempt: recorded with every attempt's cost and turns.
        assert_eq!(
            m.session_ended(&transient(1)),
            AfterEnd::Record {
                attempts: 4,
                cost: 2.0,
                turns: 8
            }
        );
        assert_eq!(m.attempt, 1, "the next session starts at attempt 1");
        // Past the list, the last pause repeats.
        let mut m = ChainMachine::new(
            Limits {
                max_attempts: 6,
                ..limits()
            },
            0,
        );
        let d: Vec<u64> = (0..5)
            .map(|_| match m.session_ended(&transient(1)) {
                AfterEnd::Retry { delay, .. } => delay.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(d, [1, 4, 16, 16, 16]);
    }

    #[test]
    fn fatal_failures_stopping_and_successes_are_recorded_at_once() {
        for e in [
            ended(1, verdict(SessionStatus::Failed, Some(ErrorKind::Fatal))),
            ended(1, verdict(SessionStatus::Completed, None)),
            Ended {
                running: false,
                ..transient(1)
            },
        ] {
            let mut m = ChainMachine::new(limits(), 0);
            assert!(
                matches!(m.session_ended(&e), AfterEnd::Record { attempts: 1, .. }),
                "{e:?}"
            );
        }
    }

    #[test]
    fn with_fallback_agents_a_usage_limit_holds_the_account_and_retries_at_once() {
        let mut m = ChainMachine::new(
            Limits {
                fallback: true,
                no_wait: true,
                ..limits()
            },
            0,
        );
        let limited = Ended {
            verdict: Verdict {
                usage_limit: Some(Some(NOW + 3600)),
                ..verdict(SessionStatus::Failed, Some(ErrorKind::Transient))
            },
            ..transient(1)
        };
        // Fallbacks come before no_wait: another agent may run the session now.
        match m.session_ended(&limited) {
            AfterEnd::FallOver { until, attempt } => {
                assert_eq!(until, NOW + 3660);
                assert_eq!(attempt.number, 1);
            }
            other => panic!("{other:?}"),
        }
        // Not counted: three transient failures are still allowed their retries.
        assert!(matches!(
            m.session_ended(&transient(1)),
            AfterEnd::Retry { .. }
        ));
    }

    #[test]
    fn a_usage_limit_is_waited_out_until_its_reset_and_not_counted_as_an_attempt() {
        let mut m = ChainMachine::new(limits(), 0);
        let limited = |reset| Ended {
            verdict: Verdict {
                usage_limit: Some(reset),
                ..verdict(SessionStatus::Failed, Some(ErrorKind::Transient))
            },
            ..transient(1)
        };
        // Reset in an hour: wait it plus the margin.
        match m.session_ended(&limited(Some(NOW + 3600))) {
            AfterEnd::WaitForLimit { delay, until, .. } => {
                assert_eq!(delay.as_secs(), 3660);
                assert_eq!(until, NOW + 3660);
            }
            other => panic!("{other:?}"),
        }
        // No reset given: the fallback; a reset in the past: the margin.
        assert!(matches!(m.session_ended(&limited(None)),
            AfterEnd::WaitForLimit { delay, .. } if delay.as_secs() == 1800));
        assert!(matches!(m.session_ended(&limited(Some(NOW - 10))),
            AfterEnd::WaitForLimit { delay, .. } if delay.as_secs() == 50));
        // Three waits did not use up the three attempts: a transient failure is still retried.
        assert!(matches!(
            m.session_ended(&transient(1)),
            AfterEnd::Retry { .. }
        ));
        // An overflowing reset never panics.
        assert!(matches!(
            m.session_ended(&limited(Some(u64::MAX))),
            AfterEnd::WaitForLimit { .. }
        ));
    }

    #[test]
    fn no_wait_stops_at_a_usage_limit() {
        let mut m = ChainMachine::new(
            Limits {
                no_wait: true,
                ..limits()
            },
            0,
        );
        let e = Ended {
            verdict: Verdict {
                usage_limit: Some(Some(NOW + 3600)),
                ..verdict(SessionStatus::Failed, Some(ErrorKind::Transient))
            },
            ..transient(1)
        };
        match m.session_ended(&e) {
            AfterEnd::StopAtLimit { until, reason } => {
                assert_eq!(until, NOW + 3660);
                assert!(reason.contains("no_wait: not waiting"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_breaker_opens_after_three_failed_sessions() {
        let mut m = ChainMachine::new(limits(), 0);
        let failed = verdict(SessionStatus::Failed, Some(ErrorKind::Transient));
        assert_eq!(m.decide(&recorded(1, failed.clone())).next, Next::Continue);
        assert_eq!(m.decide(&recorded(2, failed.clone())).next, Next::Continue);
        let d = m.decide(&recorded(3, failed.clone()));
        match &d.next {
            Next::Finish(ChainStatus::Failed, Some(r)) => {
                assert!(
                    r.starts_with("circuit-open: 3 consecutive failed sessions"),
                    "{r}"
                );
                assert!(r.contains("session 1: boom | session 2: boom | session 3: boom"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.note.as_deref(), Some("The previous session failed: boom"));
        // Without a cool-down the breaker's decision stands.
        assert_eq!(
            m.breaker(d.next.clone(), SessionStatus::Failed, NOW),
            Breaker::Go(d.next)
        );
        // A completed session in between resets the count.
        let mut m = ChainMachine::new(limits(), 0);
        m.decide(&recorded(1, failed.clone()));
        m.decide(&recorded(2, failed.clone()));
        m.decide(&recorded(3, verdict(SessionStatus::Completed, None)));
        assert_eq!(m.decide(&recorded(4, failed)).next, Next::Continue);
    }

    #[test]
    fn the_half_open_breaker_probes_once_after_its_cool_down() {
        let mut m = ChainMachine::new(
            Limits {
                breaker_cooldown: Some(Duration::from_secs(600)),
                ..limits()
            },
            0,
        );
        let open = Next::Finish(
            ChainStatus::Failed,
            Some("circuit-open: 3 consecutive failed sessions: x".into()),
        );
        match m.breaker(open.clone(), SessionStatus::Failed, NOW) {
            Breaker::HalfOpen { cooldown, reason } => {
                assert_eq!(cooldown.as_secs(), 600);
                assert!(reason.starts_with("circuit half-open: one probe session at"));
            }
            other => panic!("{other:?}"),
        }
        // The probe fails: the chain ends, saying so.
        match m.breaker(open.clone(), SessionStatus::Failed, NOW) {
            Breaker::Go(Next::Finish(ChainStatus::Failed, Some(r))) => {
                assert!(r.ends_with("(the probe after the cool-down failed too)"))
            }
            other => panic!("{other:?}"),
        }
        // Or it succeeds: the breaker closes and the chain goes on.
        m.breaker(open, SessionStatus::Failed, NOW);
        assert_eq!(
            m.breaker(Next::Continue, SessionStatus::Completed, NOW),
            Breaker::Closed(Next::Continue)
        );
        assert!(!m.probing);
    }

    #[test]
    fn max_continuations_count_from_the_runs_base() {
        let mut m = ChainMachine::new(limits(), 4);
        let ok = verdict(SessionStatus::Completed, None);
        assert_eq!(m.decide(&recorded(9, ok.clone())).next, Next::Continue);
        assert!(matches!(
            m.decide(&recorded(10, ok)).next,
            Next::Finish(ChainStatus::MaxContinuations, Some(r)) if r == "6 sessions run without COMPLETE"
        ));
    }

    #[test]
    fn the_budget_warns_once_at_eighty_percent_and_stops_when_spent() {
        let mut m = ChainMachine::new(limits(), 0);
        let ok = verdict(SessionStatus::Completed, None);
        let at = |cost| Recorded {
            total_cost: cost,
            ..recorded(1, ok.clone())
        };
        assert!(!m.decide(&at(3.9)).budget_warning);
        assert!(m.decide(&at(4.0)).budget_warning);
        assert!(!m.decide(&at(4.5)).budget_warning, "told once");
        assert!(matches!(
            m.decide(&at(5.0)).next,
            Next::Finish(ChainStatus::BudgetExceeded, _)
        ));
    }

    #[test]
    fn interruptions_end_the_chain_unless_they_hold_it() {
        let mut m = ChainMachine::new(limits(), 0);
        let interrupted = Verdict {
            status: SessionStatus::Interrupted,
            error: Some("stopped by the operator".into()),
            error_kind: None,
            usage_limit: None,
        };
        assert_eq!(
            m.decide(&recorded(1, interrupted.clone())).next,
            Next::Finish(
                ChainStatus::Interrupted,
                Some("stopped by the operator".into())
            )
        );
        // `pause --now` or the session's cost limit: the chain goes on (or completes).
        let held = Recorded {
            held: true,
            ..recorded(1, interrupted.clone())
        };
        assert_eq!(m.decide(&held).next, Next::Continue);
        let complete = Recorded {
            complete: true,
            ..held
        };
        assert_eq!(
            m.decide(&complete).next,
            Next::Finish(ChainStatus::Complete, None)
        );
        let aborting = Recorded {
            aborting: true,
            ..recorded(1, interrupted)
        };
        assert_eq!(
            m.decide(&aborting).next,
            Next::Finish(ChainStatus::Aborted, Some("aborted".into()))
        );
    }

    #[test]
    fn a_stale_complete_is_not_believed_and_gates_decide_a_complete() {
        let mut m = ChainMachine::new(limits(), 0);
        let complete = Next::Finish(ChainStatus::Complete, None);
        match m.judge(complete.clone(), 2, &measured(false, false, true), true) {
            Judgement::Done {
                next: Next::Continue,
                stale: true,
                note: Some(n),
            } => assert!(n.contains("not believed")),
            other => panic!("{other:?}"),
        }
        // A changed tree: believed, and the gates are asked.
        assert_eq!(
            m.judge(complete.clone(), 2, &measured(true, false, true), true),
            Judgement::RunGates
        );
        // No gates: it stands.
        assert!(matches!(
            m.judge(complete, 2, &measured(true, false, true), false),
            Judgement::Done {
                next: Next::Finish(ChainStatus::Complete, None),
                stale: false,
                ..
            }
        ));
        // A failing gate goes on, as a continuation; passing gates complete.
        let (next, failed) = m.gated(
            3,
            &measured(true, true, false),
            &[true, false],
            &["cargo test".into()],
        );
        assert_eq!((next, failed), (Next::Continue, true));
        let (next, failed) = m.gated(4, &measured(true, true, false), &[true, true], &[]);
        assert_eq!(
            (next, failed),
            (Next::Finish(ChainStatus::Complete, None), false)
        );
        // At the last continuation, a failing gate ends the chain at its limit.
        let mut m = ChainMachine::new(
            Limits {
                max_continuations: 1,
                ..limits()
            },
            0,
        );
        assert!(matches!(
            m.gated(2, &measured(true, true, false), &[false], &["make".into()]).0,
            Next::Finish(ChainStatus::MaxContinuations, Some(r)) if r.ends_with("verify failed: make")
        ));
    }

    #[test]
    fn sessions_without_progress_stop_the_chain() {
        let mut m = ChainMachine::new(limits(), 0);
        let still = measured(false, false, false);
        for i in 1..=2 {
            assert!(matches!(
                m.judge(Next::Continue, i, &still, false),
                Judgement::Done {
                    next: Next::Continue,
                    ..
                }
            ));
        }
        m.denied_in_row = 2;
        match m.judge(Next::Continue, 3, &still, false) {
            Judgement::Done {
                next: Next::Finish(ChainStatus::Failed, Some(r)),
                ..
            } => {
                assert!(r.contains("3 sessions"), "{r}");
                assert!(r.contains("2 tool call(s) were denied"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        // Any progress resets the count.
        let mut m = ChainMachine::new(limits(), 0);
        m.judge(Next::Continue, 1, &still, false);
        m.judge(Next::Continue, 2, &still, false);
        m.judge(Next::Continue, 3, &measured(false, true, false), false);
        assert_eq!(m.no_progress, 0);
        // Off with 0.
        let mut m = ChainMachine::new(
            Limits {
                no_progress_sessions: 0,
                ..limits()
            },
            0,
        );
        for i in 1..10 {
            assert!(matches!(
                m.judge(Next::Continue, i, &still, false),
                Judgement::Done {
                    next: Next::Continue,
                    ..
                }
            ));
        }
    }

    fn session(index: u32, status: SessionStatus, cost: f64) -> SessionRecord {
        SessionRecord {
            index,
            session_id: None,
            status,
            turns: 1,
            cost_usd: cost,
            duration_ms: 1,
            hit_max_turns: false,
            pre_compacted: false,
            handoff_complete: false,
            handoff_file: None,
            error: (status == SessionStatus::Failed).then(|| format!("e{index}")),
            error_kind: None,
            handoff_synthetic: false,
            asked_again: false,
            attempts: 1,
            started_at: String::new(),
            ended_at: None,
        }
    }

    #[test]
    fn a_restarted_chain_counts_this_runs_failures_and_remembers_the_budget_warning() {
        use SessionStatus::{Completed, Failed};
        let sessions = [
            session(1, Failed, 1.0),
            session(2, Completed, 1.0),
            session(3, Failed, 1.0),
            session(4, Failed, 1.0),
        ];
        let m = ChainMachine::restore(limits(), 0, &sessions);
        assert_eq!(m.consecutive_failures, 2);
        assert_eq!(m.recent_errors, ["session 3: e3", "session 4: e4"]);
        assert!(m.budget_warned, "4.0 of 5.0 spent");
        // A resume moved the base past them: a new run starts with a closed breaker.
        let m = ChainMachine::restore(limits(), 4, &sessions[..3]);
        assert_eq!(m.consecutive_failures, 0);
        assert!(!m.budget_warned);
    }

    fn before(now_ms: u64, mode: RunMode) -> Before {
        Before {
            now_ms,
            mode,
            aborting: false,
            refused: None,
        }
    }

    #[test]
    fn a_backoff_holds_the_next_session_until_it_ends_unless_the_operator_stops() {
        let mut m = ChainMachine::new(limits(), 0);
        assert_eq!(
            m.before_session(&before(0, RunMode::Running)),
            Gate::Proceed { resumed: false }
        );
        m.wait(1_000, Duration::from_secs(4));
        assert_eq!(
            m.before_session(&before(4_999, RunMode::Running)),
            Gate::NotYet
        );
        assert_eq!(
            m.before_session(&before(5_000, RunMode::Running)),
            Gate::Proceed { resumed: false }
        );
        // A stop does not wait out a backoff; nor does an abort.
        m.wait(10_000, Duration::from_secs(16));
        assert_eq!(
            m.before_session(&before(10_001, RunMode::Stopping)),
            Gate::Finish(ChainStatus::Interrupted, "the operator was stopped".into())
        );
        m.wait(10_000, Duration::from_secs(16));
        let aborting = Before {
            aborting: true,
            ..before(10_001, RunMode::Running)
        };
        assert_eq!(
            m.before_session(&aborting),
            Gate::Finish(ChainStatus::Aborted, "aborted".into())
        );
        // A refused start fails the chain before anything else.
        let refused = Before {
            refused: Some("the working tree is dirty".into()),
            ..before(0, RunMode::Running)
        };
        assert_eq!(
            m.before_session(&refused),
            Gate::Finish(ChainStatus::Failed, "the working tree is dirty".into())
        );
    }

    #[test]
    fn a_pause_holds_the_chain_once_and_resuming_says_so() {
        let mut m = ChainMachine::new(limits(), 0);
        assert_eq!(
            m.before_session(&before(0, RunMode::Paused)),
            Gate::Hold { first: true }
        );
        assert_eq!(
            m.before_session(&before(10, RunMode::Paused)),
            Gate::Hold { first: false }
        );
        assert_eq!(
            m.before_session(&before(20, RunMode::Running)),
            Gate::Proceed { resumed: true }
        );
        assert_eq!(
            m.before_session(&before(30, RunMode::Running)),
            Gate::Proceed { resumed: false }
        );
    }

    #[test]
    fn a_missing_handoff_is_asked_for_once() {
        let turn = |handoff: Result<(), String>, is_error, interrupted, asked_again| Turn {
            handoff,
            is_error,
            hit_max_turns: false,
            asked_again,
            interrupted,
        };
        let missing = || Err("no `## HANDOFF` heading".to_string());
        assert_eq!(
            after_turn(turn(Ok(()), false, None, false)),
            AfterTurn::Close
        );
        assert_eq!(
            after_turn(turn(missing(), false, None, false)),
            AfterTurn::AskAgain("no `## HANDOFF` heading".into())
        );
        assert_eq!(
            after_turn(turn(missing(), false, None, true)),
            AfterTurn::Close
        );
        // A failed API call: nothing to ask — unless the operator interrupted the turn.
        assert_eq!(
            after_turn(turn(missing(), true, None, false)),
            AfterTurn::Close
        );
        assert_eq!(
            after_turn(turn(missing(), true, Some(Interrupted::Stopping), false)),
            AfterTurn::AskAgain("the operator is stopping".into())
        );
        assert_eq!(
            after_turn(turn(missing(), false, Some(Interrupted::Pausing), false)),
            AfterTurn::AskAgain("the operator is pausing".into())
        );
        assert_eq!(
            after_turn(turn(missing(), false, Some(Interrupted::CostLimit), false)),
            AfterTurn::AskAgain("the session reached its cost limit".into())
        );
        let max = Turn {
            hit_max_turns: true,
            ..turn(missing(), false, None, false)
        };
        assert_eq!(
            after_turn(max),
            AfterTurn::AskAgain("you reached the turn limit".into())
        );
    }

    #[test]
    fn only_completed_sessions_that_continue_or_complete_are_judged() {
        assert!(ChainMachine::judged(
            &Next::Continue,
            SessionStatus::Completed
        ));
        assert!(ChainMachine::judged(
            &Next::Finish(ChainStatus::Complete, None),
            SessionStatus::Completed
        ));
        assert!(!ChainMachine::judged(
            &Next::Continue,
            SessionStatus::Failed
        ));
        assert!(!ChainMachine::judged(
            &Next::Finish(ChainStatus::BudgetExceeded, None),
            SessionStatus::Completed
        ));
    }
}
