//! The chain as a pure state machine: events in, commands out.
//!
//! [`ChainMachine::handle`] takes one [`Event`] (the chain was asked for its next session, a
//! turn or a session ended, the quota answered, the tree was measured, the gates ran, the mode
//! changed, an abort, new settings) at a [`Moment`] (the chain's clock, the wall clock and the
//! operator's run mode, all given: the machine reads no clock) and answers with [`Cmd`]s for the
//! Chain actor to carry out in order (set the status, emit an event, arm a timer, start or stop
//! a session, record an attempt, finish). Commands that need an answer from the world (the
//! budget, the quota, the store's start, the handoff, a measurement, the gates) are answered
//! with the next event. No I/O, no actors: every decision is reachable from the unit tests
//! below and beside each decision in `decide.rs`.

mod decide;

use std::time::Duration;

pub use decide::*;

use super::policy::{self, Next, SessionFacts, Verdict};
use crate::control::Mode;
use crate::events::Body;
use crate::handoff::prompt;
use crate::model::{ChainStatus, SessionStatus};

/// When an event happens, as the shell tells the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moment {
    /// The chain's clock: milliseconds since the actor started (timers).
    pub ms: u64,
    /// The wall clock, in Unix seconds (usage-limit resets, dates in events).
    pub unix: u64,
    /// The operator's run mode.
    pub mode: Mode,
}

/// What the quota scheduler said about the next session.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaAnswer {
    Go,
    /// The account is held until `until` (Unix seconds); ask again after `delay`.
    Wait {
        until: u64,
        delay: Duration,
        reason: String,
    },
}

/// Something that happened to the chain.
#[derive(Debug, Clone)]
pub enum Event {
    /// Start the next session if nothing holds the chain (its start, a timer, a recorded
    /// session).
    Next,
    /// The operator's run mode changed (the new one is the moment's).
    ModeChanged,
    /// `operator abort`: stop the session and end the chain `aborted`.
    Abort,
    /// New limits from a reload; they apply from the next session.
    Reconfigure(Limits),
    /// The answer to [`Cmd::CheckBudget`]: the chain's total cost and, under a daily cap,
    /// today's spending and sessions across all chains.
    Budget {
        total: f64,
        today: Option<(f64, u32)>,
    },
    /// The answer to [`Cmd::AskQuota`].
    Quota(QuotaAnswer),
    /// The answer to [`Cmd::StartSession`]: the store recorded the start.
    Started,
    /// The answer to [`Cmd::StartSession`]: another worker of the fleet took the account's
    /// last slot; try again after `delay`.
    AccountBusy { reason: String, delay: Duration },
    /// A turn of the running session ended.
    TurnEnded {
        index: u32,
        /// `Err`: why the handoff so far is missing or invalid.
        handoff: Result<(), String>,
        is_error: bool,
        hit_max_turns: bool,
    },
    /// The running session crossed its cost limit.
    OverBudget { spent: f64 },
    /// The running session ended; `cost` and `turns` are this attempt's.
    SessionEnded {
        index: u32,
        facts: Box<SessionFacts>,
        cost: f64,
        turns: u32,
    },
    /// The answer to [`Cmd::Finalize`]: the session is recorded with its handoff.
    Recorded(Handed),
    /// The answer to [`Cmd::Measure`].
    Measured(Measured),
    /// The answer to [`Cmd::RunGates`]: each gate passed or not, the failed ones' commands, and
    /// the note for the next prompt when one failed.
    Gated {
        passed: Vec<bool>,
        failed: Vec<String>,
        note: Option<String>,
    },
    /// The answer to [`Cmd::Land`] (it comes later: checks and queues take time).
    Landed(Landed),
}

/// How a COMPLETE landed.
#[derive(Debug, Clone, PartialEq)]
pub enum Landed {
    /// Checks green (and merged when asked), or the branch is on its target: complete.
    Done(Option<String>),
    /// Back to the chain: another session with `note` (failing checks, a conflict, a gate that
    /// failed on the rebased result). `counted`: it counts against `max_continuations` (a
    /// failing check); an eviction is bounded by `max_evictions` instead.
    Again { note: String, counted: bool },
    /// It cannot land: the chain ends so (`checks-timeout`, `merge-failed`).
    Failed(ChainStatus, String),
}

/// What the chain learned from recording a session with its handoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Handed {
    /// The agent's handoff says COMPLETE (and is not synthetic).
    pub complete: bool,
    /// The handoff is the agent's (not synthetic).
    pub agent_handoff: bool,
    /// The agent session the next one may continue (see [`resumable_id`]).
    pub resumable: Option<String>,
    /// Tool calls the permission policy denied, and the note about them for the next prompt.
    pub denied: u32,
    pub denied_note: Option<String>,
    /// The chain's total cost now.
    pub total_cost: f64,
}

/// How long a session is given to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// The operator's shutdown grace.
    Shutdown,
    /// An abort's: short.
    Abort,
}

/// What the Chain actor carries out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// Record the chain's status (and why).
    SetStatus(ChainStatus, Option<String>),
    /// Journal and broadcast a chain event.
    Emit { index: Option<u32>, body: Body },
    /// Log a line in the chain's span.
    Log {
        warn: bool,
        index: Option<u32>,
        message: String,
    },
    /// Send [`Event::Next`] after `delay`.
    Arm(Duration),
    /// Send [`Event::Next`] through the mailbox (messages already queued go first).
    Next,
    /// End the chain: settle its git work, record the status, announce it, stop the actor.
    Finish(ChainStatus, Option<String>),
    /// Answer with [`Event::Budget`].
    CheckBudget,
    /// Ask the operator-wide quota for the account; answer with [`Event::Quota`].
    AskQuota,
    /// The account's slot is free again.
    ReleaseAccount,
    /// Hold every chain of the account until `until` (Unix seconds), fleet-wide when the store
    /// is shared.
    HoldAccount { until: u64 },
    /// Build session `index`'s prompt (with the note) and record its start; answer with
    /// [`Event::Started`] or [`Event::AccountBusy`].
    StartSession {
        index: u32,
        attempt: u32,
        note: Option<String>,
        resume_id: Option<String>,
    },
    /// Measure the working tree and start the agent of the prepared session.
    Spawn { index: u32 },
    /// Ask the running agent once more, in the same process, for its handoff.
    FollowUp { index: u32, text: String },
    /// Close the running agent's input: it ends.
    Close { index: u32 },
    /// Interrupt the running session (it is asked for its handoff).
    StopSession(Grace),
    /// Answer the held tool calls with a denial carrying this message.
    CancelApprovals(&'static str),
    /// Record an attempt that ends without a handoff (retried, or stopped at a usage limit).
    RecordAttempt {
        status: SessionStatus,
        verdict: Verdict,
        attempts: u32,
        cost: f64,
        turns: u32,
        hit_max_turns: bool,
    },
    /// Resolve the session's handoff and record the session with these totals; answer with
    /// [`Event::Recorded`].
    Finalize {
        verdict: Verdict,
        attempts: u32,
        cost: f64,
        turns: u32,
    },
    /// Measure the working tree and compare the handoff with the previous one; answer with
    /// [`Event::Measured`].
    Measure { index: u32 },
    /// Run the verify gates; answer with [`Event::Gated`].
    RunGates { index: u32 },
    /// Land session `index`'s COMPLETE (wait for the pull request's checks, or go through the
    /// merge queue); answer later with [`Event::Landed`].
    Land { index: u32 },
}

/// The running session, as the machine knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub index: u32,
    /// The agent was asked once more for its handoff.
    pub asked_again: bool,
}

/// A session between its end and the decision about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    index: u32,
    verdict: Verdict,
    hit_max_turns: bool,
    /// The decision waiting for its judgement.
    decision: Option<Next>,
    measured: Option<Measured>,
}

const ENDED_UNANSWERED: &str = "The session ended before anyone answered.";
const STOPPING_UNAPPROVED: &str =
    "The operator is stopping this session; this call was not approved. Write your handoff.";
const ABORTED_UNAPPROVED: &str = "The chain was aborted; this call was not approved.";

/// Unix seconds as an RFC 3339 date (for events and reasons).
fn date(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ChainMachine {
    /// Takes one event and answers with what to do, in order.
    pub fn handle(&mut self, at: Moment, ev: Event) -> Vec<Cmd> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match ev {
            Event::Next => self.next(at, &mut out),
            Event::ModeChanged => {
                let interrupting =
                    matches!(at.mode, Mode::Stopping | Mode::Paused { interrupt: true });
                if interrupting {
                    out.push(Cmd::CancelApprovals(STOPPING_UNAPPROVED));
                }
                match &self.live {
                    Some(_) if interrupting => out.push(Cmd::StopSession(Grace::Shutdown)),
                    Some(_) => {}
                    None => self.next(at, &mut out),
                }
            }
            Event::Abort => {
                self.aborting = true;
                out.push(Cmd::CancelApprovals(ABORTED_UNAPPROVED));
                match &self.live {
                    Some(_) => out.push(Cmd::StopSession(Grace::Abort)),
                    None => self.next(at, &mut out),
                }
            }
            Event::Reconfigure(limits) => self.limits = limits,
            Event::Budget { total, today } => self.budget(at, total, today, &mut out),
            Event::Quota(answer) => self.quota(at, answer, &mut out),
            Event::Started => self.started(&mut out),
            Event::AccountBusy { reason, delay } => {
                self.admitted = false;
                self.note = self.kept_note.take();
                out.push(Cmd::ReleaseAccount);
                out.push(Cmd::Log {
                    warn: false,
                    index: None,
                    message: format!("the chain waits for its account: {reason}"),
                });
                out.push(Cmd::SetStatus(ChainStatus::Waiting, Some(reason)));
                out.push(Cmd::Arm(delay));
            }
            Event::TurnEnded {
                index,
                handoff,
                is_error,
                hit_max_turns,
            } => self.turn_ended(at, index, handoff, is_error, hit_max_turns, &mut out),
            Event::OverBudget { spent } => {
                if let Some(live) = &self.live
                    && !self.over_budget
                {
                    self.over_budget = true;
                    out.push(Cmd::Log {
                        warn: true,
                        index: Some(live.index),
                        message: format!(
                            "the session crossed its cost limit (${spent:.4} spent); asking for its handoff"
                        ),
                    });
                    out.push(Cmd::StopSession(Grace::Shutdown));
                }
            }
            Event::SessionEnded {
                index,
                facts,
                cost,
                turns,
            } => self.session_over(at, index, &facts, cost, turns, &mut out),
            Event::Recorded(h) => self.recorded(at, h, &mut out),
            Event::Measured(m) => self.measured(at, m, &mut out),
            Event::Gated {
                passed,
                failed,
                note,
            } => self.gates_ran(at, &passed, &failed, note, &mut out),
            Event::Landed(l) => self.landed(l, &mut out),
        }
        out
    }

    /// The landing answered: complete, another session, or the end it gives.
    fn landed(&mut self, l: Landed, out: &mut Vec<Cmd>) {
        if !std::mem::take(&mut self.landing) {
            return;
        }
        match l {
            Landed::Done(reason) => self.finish(ChainStatus::Complete, reason, out),
            Landed::Failed(status, reason) => self.finish(status, Some(reason), out),
            Landed::Again { note, counted } => {
                let run = self.next_index - 1 - self.session_base;
                if counted && run > self.limits.max_continuations {
                    let why = note.lines().next().unwrap_or("").to_string();
                    return self.finish(
                        ChainStatus::MaxContinuations,
                        Some(format!(
                            "{run} sessions run and the checks still fail: {why}"
                        )),
                        out,
                    );
                }
                self.note = Some(note);
                out.push(Cmd::Next);
            }
        }
    }

    /// A session has ended and is being recorded or judged.
    pub fn deciding(&self) -> bool {
        self.ending.is_some()
    }

    fn finish(&mut self, status: ChainStatus, reason: Option<String>, out: &mut Vec<Cmd>) {
        if !std::mem::replace(&mut self.finished, true) {
            out.push(Cmd::Finish(status, reason));
        }
    }

    /// The gate before a session: limits, the mode, a backoff; then the budget.
    fn next(&mut self, at: Moment, out: &mut Vec<Cmd>) {
        if self.live.is_some() || self.ending.is_some() {
            return;
        }
        if self.landing || self.land_pending {
            // A landing runs no session; an abort or a stop ends it (a stopped one lands
            // again when the chain is resumed).
            if self.aborting {
                return self.finish(ChainStatus::Aborted, Some("aborted".into()), out);
            }
            if at.mode == Mode::Stopping {
                return self.finish(
                    ChainStatus::Interrupted,
                    Some("the operator was stopped while the chain was landing".into()),
                    out,
                );
            }
            if std::mem::take(&mut self.land_pending) {
                self.landing = true;
                out.push(Cmd::Land {
                    index: self.next_index.saturating_sub(1),
                });
            }
            return;
        }
        let before = Before {
            now_ms: at.ms,
            mode: match at.mode {
                Mode::Running => RunMode::Running,
                Mode::Paused { .. } => RunMode::Paused,
                Mode::Stopping => RunMode::Stopping,
            },
            aborting: self.aborting,
            refused: self.refused.take(),
        };
        match self.before_session(&before) {
            Gate::NotYet => {}
            Gate::Finish(status, reason) => self.finish(status, Some(reason), out),
            Gate::Hold { first } => {
                if first {
                    out.push(Cmd::SetStatus(ChainStatus::Paused, None));
                    out.push(Cmd::Emit {
                        index: None,
                        body: Body::Paused {},
                    });
                }
            }
            Gate::Proceed { resumed } => {
                if resumed {
                    out.push(Cmd::Emit {
                        index: None,
                        body: Body::Resumed {},
                    });
                }
                // Decided from the store, so resumes and restarts never reset a budget.
                out.push(Cmd::CheckBudget);
            }
        }
    }

    /// Would the next session cross the chain's budget, or the day's cap? Then the quota.
    fn budget(&mut self, at: Moment, total: f64, today: Option<(f64, u32)>, out: &mut Vec<Cmd>) {
        let sessions = self.next_index - 1;
        let mut refusal =
            policy::forecast_refuses(total, sessions, self.limits.max_budget_usd, "budget");
        if let (None, Some(cap), Some((spent, n))) = (&refusal, self.limits.daily_cap_usd, today) {
            // Today's average session is the forecast.
            refusal = policy::forecast_refuses(spent, n, cap, "daily cap");
        }
        if let Some(reason) = refusal {
            return self.finish(ChainStatus::BudgetExceeded, Some(reason), out);
        }
        // The account is held (a usage limit, caps, quiet hours) and its timer is running.
        if let Some(t) = self.quota_wait
            && at.ms < t
            && at.mode == Mode::Running
        {
            return;
        }
        out.push(Cmd::AskQuota);
    }

    fn quota(&mut self, at: Moment, answer: QuotaAnswer, out: &mut Vec<Cmd>) {
        match answer {
            QuotaAnswer::Go => {
                self.admitted = true;
                self.quota_wait = None;
                let note = match (self.note.take(), self.denied_note.take()) {
                    (Some(n), Some(d)) => Some(format!("{n}\n\n{d}")),
                    (n, d) => n.or(d),
                };
                self.kept_note = note.clone();
                out.push(Cmd::StartSession {
                    index: self.next_index,
                    attempt: self.attempt,
                    note,
                    resume_id: self.resumable.clone().filter(|_| self.limits.resume),
                });
            }
            QuotaAnswer::Wait {
                until,
                delay,
                reason,
            } => {
                if self.quota_wait.is_none() {
                    let at = date(until);
                    out.push(Cmd::Log {
                        warn: true,
                        index: None,
                        message: format!("the chain waits for its account until {at}: {reason}"),
                    });
                    out.push(Cmd::SetStatus(ChainStatus::Waiting, Some(reason.clone())));
                    out.push(Cmd::Emit {
                        index: Some(self.next_index),
                        body: Body::Waiting {
                            until: at,
                            reason: Some(reason),
                            account: Some(true),
                        },
                    });
                }
                self.quota_wait = Some(at.ms.saturating_add(millis(delay)));
                out.push(Cmd::Arm(delay));
            }
        }
    }

    fn started(&mut self, out: &mut Vec<Cmd>) {
        let index = self.next_index;
        self.kept_note = None;
        self.next_index += 1;
        self.live = Some(Live {
            index,
            asked_again: false,
        });
        let max = self.session_base + 1 + self.limits.max_continuations;
        out.push(Cmd::SetStatus(ChainStatus::Running, None));
        out.push(Cmd::Emit {
            index: Some(index),
            body: Body::SessionStarted { max },
        });
        out.push(Cmd::Log {
            warn: false,
            index: Some(index),
            message: "session started".into(),
        });
        out.push(Cmd::Spawn { index });
    }

    fn turn_ended(
        &mut self,
        at: Moment,
        index: u32,
        handoff: Result<(), String>,
        is_error: bool,
        hit_max_turns: bool,
        out: &mut Vec<Cmd>,
    ) {
        let interrupted = if self.over_budget {
            Some(Interrupted::CostLimit)
        } else if at.mode == (Mode::Paused { interrupt: true }) {
            Some(Interrupted::Pausing)
        } else if at.mode == Mode::Stopping || self.aborting {
            Some(Interrupted::Stopping)
        } else {
            None
        };
        let Some(live) = self.live.as_mut().filter(|l| l.index == index) else {
            return;
        };
        let turn = Turn {
            handoff,
            is_error,
            hit_max_turns,
            asked_again: live.asked_again,
            interrupted,
        };
        match after_turn(turn) {
            AfterTurn::Close => out.push(Cmd::Close { index }),
            AfterTurn::AskAgain(why) => {
                live.asked_again = true;
                out.push(Cmd::Log {
                    warn: false,
                    index: Some(index),
                    message: format!("asking the agent for its handoff: {why}"),
                });
                out.push(Cmd::FollowUp {
                    index,
                    text: prompt::follow_up(&why),
                });
            }
        }
    }

    /// A session ended: stop at a usage limit, wait it out, retry, or record the session.
    fn session_over(
        &mut self,
        at: Moment,
        index: u32,
        facts: &SessionFacts,
        cost: f64,
        turns: u32,
        out: &mut Vec<Cmd>,
    ) {
        out.push(Cmd::CancelApprovals(ENDED_UNANSWERED));
        if self.live.take_if(|l| l.index == index).is_none() {
            return;
        }
        if std::mem::take(&mut self.admitted) {
            out.push(Cmd::ReleaseAccount);
        }
        let verdict = policy::classify(facts);
        if self.resumable.is_some() && policy::unknown_resume_id(facts) {
            // Spending more attempts on a dead id helps nobody: the retry starts fresh.
            out.push(Cmd::Log {
                warn: true,
                index: Some(index),
                message: "the agent no longer knows the session it was to resume; the next attempt starts fresh from the handoff".into(),
            });
            self.resumable = None;
        }
        let ended = Ended {
            index,
            verdict: verdict.clone(),
            cost,
            turns,
            running: !self.aborting && at.mode == Mode::Running,
            now: at.unix,
        };
        let attempts_so_far = self.attempt;
        match self.session_ended(&ended) {
            AfterEnd::StopAtLimit { reason, .. } => {
                out.push(Cmd::RecordAttempt {
                    status: SessionStatus::Interrupted,
                    verdict,
                    attempts: attempts_so_far,
                    cost,
                    turns,
                    hit_max_turns: false,
                });
                self.finish(ChainStatus::WaitingLimit, Some(reason), out);
            }
            AfterEnd::WaitForLimit {
                delay,
                until,
                attempt,
            } => {
                // Every chain of the same account waits too, on every worker of a fleet.
                out.push(Cmd::HoldAccount { until });
                let error = verdict.error.clone();
                self.retry(at, index, verdict, facts.hit_max_turns, attempt, delay, out);
                let at = date(until);
                out.push(Cmd::SetStatus(
                    ChainStatus::Waiting,
                    Some(format!("usage limit; trying again at {at}")),
                ));
                out.push(Cmd::Emit {
                    index: Some(index),
                    body: Body::Waiting {
                        until: at,
                        reason: error,
                        account: None,
                    },
                });
            }
            AfterEnd::FallOver { until, attempt } => {
                out.push(Cmd::HoldAccount { until });
                out.push(Cmd::Log {
                    warn: true,
                    index: Some(index),
                    message: format!(
                        "usage limit until {}; the session is tried again on a fallback agent",
                        date(until)
                    ),
                });
                self.retry(
                    at,
                    index,
                    verdict,
                    facts.hit_max_turns,
                    attempt,
                    Duration::ZERO,
                    out,
                );
            }
            AfterEnd::Retry { delay, attempt } => {
                self.retry(at, index, verdict, facts.hit_max_turns, attempt, delay, out)
            }
            AfterEnd::Record {
                attempts,
                cost,
                turns,
            } => {
                self.ending = Some(Ending {
                    index,
                    verdict: verdict.clone(),
                    hit_max_turns: facts.hit_max_turns,
                    decision: None,
                    measured: None,
                });
                out.push(Cmd::Finalize {
                    verdict,
                    attempts,
                    cost,
                    turns,
                });
            }
        }
    }

    /// Records a failed attempt and runs the same session again after `delay`.
    #[allow(clippy::too_many_arguments)]
    fn retry(
        &mut self,
        at: Moment,
        index: u32,
        verdict: Verdict,
        hit_max_turns: bool,
        attempt: Attempt,
        delay: Duration,
        out: &mut Vec<Cmd>,
    ) {
        let error = verdict.error.clone();
        out.push(Cmd::RecordAttempt {
            status: SessionStatus::Failed,
            verdict,
            attempts: attempt.number,
            cost: attempt.cost,
            turns: attempt.turns,
            hit_max_turns,
        });
        out.push(Cmd::Log {
            warn: true,
            index: Some(index),
            message: format!(
                "transient failure; retrying the session (attempt {}) in {}: {}",
                attempt.number,
                humantime::format_duration(delay),
                error.as_deref().unwrap_or("")
            ),
        });
        out.push(Cmd::Emit {
            index: Some(index),
            body: Body::SessionRetry {
                attempt: attempt.number,
                delay_ms: millis(delay),
                error,
            },
        });
        self.note = attempt.note;
        self.next_index = index;
        self.wait(at.ms, delay);
        out.push(Cmd::Arm(delay));
    }

    /// The session is recorded: count it, decide, and judge the decision when it needs it.
    fn recorded(&mut self, at: Moment, h: Handed, out: &mut Vec<Cmd>) {
        let Some(ending) = self.ending.as_mut() else {
            return;
        };
        let (index, verdict, hit_max_turns) =
            (ending.index, ending.verdict.clone(), ending.hit_max_turns);
        self.resumable = h.resumable;
        if let Some(note) = h.denied_note {
            self.denied_note = Some(note);
            self.denied_in_row += h.denied;
        } else {
            self.denied_in_row = 0;
        }
        let over_budget = std::mem::take(&mut self.over_budget);
        let decided = self.decide(&Recorded {
            index,
            verdict: verdict.clone(),
            complete: h.complete,
            agent_handoff: h.agent_handoff,
            hit_max_turns,
            total_cost: h.total_cost,
            aborting: self.aborting,
            held: at.mode.is_paused() || over_budget,
        });
        if decided.note.is_some() {
            self.note = decided.note;
        }
        if decided.budget_warning {
            out.push(Cmd::Emit {
                index: Some(index),
                body: Body::BudgetWarning {
                    spent_usd: h.total_cost,
                    budget_usd: self.limits.max_budget_usd,
                },
            });
        }
        if ChainMachine::judged(&decided.next, verdict.status) {
            if let Some(e) = self.ending.as_mut() {
                e.decision = Some(decided.next);
            }
            out.push(Cmd::Measure { index });
        } else {
            self.conclude(at, decided.next, verdict.status, out);
        }
    }

    /// The completed session is measured: judge it (or run the gates first).
    fn measured(&mut self, at: Moment, m: Measured, out: &mut Vec<Cmd>) {
        let Some(ending) = self.ending.as_mut() else {
            return;
        };
        let Some(decision) = ending.decision.take() else {
            return;
        };
        let index = ending.index;
        match self.judge(decision, index, &m, self.limits.gates) {
            Judgement::Done { next, stale, note } => {
                if stale {
                    out.push(Cmd::Log {
                        warn: true,
                        index: Some(index),
                        message: "a stale COMPLETE: the same handoff as before and no change in the working tree".into(),
                    });
                    out.push(Cmd::Emit {
                        index: Some(index),
                        body: Body::StaleComplete {
                            measured: m.source.clone(),
                        },
                    });
                }
                if note.is_some() {
                    self.note = note;
                }
                self.progress_event(index, &m, false, out);
                self.conclude(at, next, SessionStatus::Completed, out);
            }
            Judgement::RunGates => {
                if let Some(e) = self.ending.as_mut() {
                    e.measured = Some(m);
                }
                out.push(Cmd::RunGates { index });
            }
        }
    }

    fn gates_ran(
        &mut self,
        at: Moment,
        passed: &[bool],
        failed: &[String],
        note: Option<String>,
        out: &mut Vec<Cmd>,
    ) {
        let Some((index, m)) = self
            .ending
            .as_mut()
            .and_then(|e| Some((e.index, e.measured.take()?)))
        else {
            return;
        };
        let gates_changed = passed != self.last_gates.as_slice();
        let (next, any_failed) = self.gated(index, &m, passed, failed);
        if any_failed {
            out.push(Cmd::Log {
                warn: true,
                index: Some(index),
                message: format!(
                    "COMPLETE, but verify commands failed ({}); the chain goes on",
                    failed.join(", ")
                ),
            });
            self.note = note;
        }
        self.progress_event(index, &m, gates_changed, out);
        self.conclude(at, next, SessionStatus::Completed, out);
    }

    fn progress_event(&self, index: u32, m: &Measured, gates_changed: bool, out: &mut Vec<Cmd>) {
        out.push(Cmd::Emit {
            index: Some(index),
            body: Body::Progress {
                tree_changed: m.tree_changed,
                remaining_changed: m.remaining_changed,
                gates_changed,
                measured: m.source.clone(),
                sessions_without: self.no_progress,
            },
        });
    }

    /// The decision stands; the breaker has the last word.
    fn conclude(&mut self, at: Moment, decision: Next, status: SessionStatus, out: &mut Vec<Cmd>) {
        self.ending = None;
        let next = match self.breaker(decision, status, at.unix) {
            Breaker::Go(next) => next,
            Breaker::Closed(next) => {
                out.push(Cmd::Log {
                    warn: false,
                    index: None,
                    message: "the probe session succeeded; the breaker is closed".into(),
                });
                out.push(Cmd::Emit {
                    index: None,
                    body: Body::BreakerClosed {},
                });
                next
            }
            Breaker::HalfOpen { cooldown, reason } => {
                out.push(Cmd::Log {
                    warn: true,
                    index: None,
                    message: format!(
                        "the breaker opened; one probe session after the cool-down of {}",
                        humantime::format_duration(cooldown)
                    ),
                });
                out.push(Cmd::SetStatus(ChainStatus::Waiting, Some(reason)));
                out.push(Cmd::Emit {
                    index: None,
                    body: Body::BreakerHalfOpen {
                        until: date(at.unix.saturating_add(cooldown.as_secs())),
                        failures: self.consecutive_failures,
                    },
                });
                self.wait(at.ms, cooldown);
                out.push(Cmd::Arm(cooldown));
                return;
            }
        };
        match next {
            Next::Continue => out.push(Cmd::Next),
            Next::Finish(ChainStatus::Complete, _) if self.limits.landing && !self.aborting => {
                self.landing = true;
                out.push(Cmd::Land {
                    index: self.next_index.saturating_sub(1),
                });
            }
            Next::Finish(status, reason) => self.finish(status, reason, out),
        }
    }
}

#[cfg(test)]
mod tests;
