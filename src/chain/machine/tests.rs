//! The chain's flow, event by event on simulated time: what the machine asks the shell to do.

use super::*;
use crate::model::ErrorKind;

const T0: u64 = 1_800_000_000;

fn limits() -> Limits {
    super::decide::tests::limits()
}

/// A machine and its simulated clocks.
struct Sim {
    m: ChainMachine,
    ms: u64,
    mode: Mode,
}

impl Sim {
    fn new(limits: Limits) -> Self {
        Self {
            m: ChainMachine::new(limits, 0),
            ms: 0,
            mode: Mode::Running,
        }
    }

    fn at(&self) -> Moment {
        Moment {
            ms: self.ms,
            unix: T0 + self.ms / 1000,
            mode: self.mode,
        }
    }

    fn on(&mut self, ev: Event) -> Vec<Cmd> {
        let at = self.at();
        self.m.handle(at, ev)
    }

    fn pass(&mut self, d: Duration) {
        self.ms += d.as_millis() as u64;
    }

    /// Starts the next session through the budget and the quota; returns its start command.
    fn start(&mut self) -> Cmd {
        assert!(has(&self.on(Event::Next), |c| *c == Cmd::CheckBudget));
        let start = self.start_after_check();
        assert!(matches!(start, Cmd::StartSession { .. }), "{start:?}");
        let out = self.on(Event::Started);
        assert!(has(&out, |c| matches!(c, Cmd::Spawn { .. })), "{out:?}");
        start
    }

    fn end(&mut self, index: u32, facts: SessionFacts) -> Vec<Cmd> {
        self.on(Event::SessionEnded {
            index,
            facts: Box::new(facts),
            cost: 0.5,
            turns: 2,
        })
    }

    fn record(&mut self, complete: bool) -> Vec<Cmd> {
        self.on(Event::Recorded(Handed {
            complete,
            agent_handoff: true,
            resumable: Some("agent-session".into()),
            denied: 0,
            denied_note: None,
            total_cost: 1.0,
        }))
    }
}

fn has(out: &[Cmd], f: impl Fn(&Cmd) -> bool) -> bool {
    out.iter().any(f)
}

fn emits(out: &[Cmd], kind: &str) -> bool {
    has(
        out,
        |c| matches!(c, Cmd::Emit { body, .. } if body.kind() == kind),
    )
}

fn ok() -> SessionFacts {
    SessionFacts {
        saw_result: true,
        results: 1,
        exit_code: Some(0),
        ..Default::default()
    }
}

fn transient() -> SessionFacts {
    SessionFacts {
        exit_code: Some(1),
        stderr_tail: "API Error: 529 overloaded".into(),
        ..Default::default()
    }
}

fn usage_limit(reset: Option<u64>) -> SessionFacts {
    SessionFacts {
        exit_code: Some(1),
        usage_limit: Some(reset),
        ..Default::default()
    }
}

fn measured(tree: bool, same: bool) -> Measured {
    Measured {
        tree_changed: tree,
        remaining_changed: tree,
        same_handoff: same,
        source: "git".into(),
    }
}

fn finish_of(out: &[Cmd]) -> Option<(ChainStatus, Option<String>)> {
    out.iter().find_map(|c| match c {
        Cmd::Finish(s, r) => Some((*s, r.clone())),
        _ => None,
    })
}

fn arm_of(out: &[Cmd]) -> Option<Duration> {
    out.iter().find_map(|c| match c {
        Cmd::Arm(d) => Some(*d),
        _ => None,
    })
}

#[test]
fn a_session_starts_through_the_budget_and_the_quota_and_is_recorded_before_its_agent_runs() {
    let mut s = Sim::new(limits());
    assert_eq!(s.on(Event::Next), vec![Cmd::CheckBudget]);
    let start = s.start_after_check();
    assert_eq!(
        start,
        Cmd::StartSession {
            index: 1,
            attempt: 1,
            note: None,
            resume_id: None
        }
    );
    let out = s.on(Event::Started);
    assert_eq!(out[0], Cmd::SetStatus(ChainStatus::Running, None));
    assert!(emits(&out, "chain:session-started"));
    assert_eq!(out.last(), Some(&Cmd::Spawn { index: 1 }));
    // A session runs: another Next does nothing.
    assert!(s.on(Event::Next).is_empty());
    // It completes with a handoff that goes on: recorded, then the next session.
    let out = s.end(1, ok());
    assert!(
        matches!(out.last(), Some(Cmd::Finalize { attempts: 1, .. })),
        "{out:?}"
    );
    let out = s.record(false);
    assert_eq!(out, vec![Cmd::Measure { index: 1 }]);
    let out = s.on(Event::Measured(measured(true, false)));
    assert!(emits(&out, "chain:progress"));
    assert_eq!(out.last(), Some(&Cmd::Next));
    assert_eq!(s.m.next_index, 2);
}

impl Sim {
    /// The budget and the quota after a [`Event::Next`] that asked for the budget.
    fn start_after_check(&mut self) -> Cmd {
        let out = self.on(Event::Budget {
            total: 0.0,
            today: None,
        });
        assert_eq!(out, vec![Cmd::AskQuota]);
        let out = self.on(Event::Quota(QuotaAnswer::Go));
        out.into_iter().next().expect("a start")
    }
}

#[test]
fn the_budget_and_the_daily_cap_refuse_a_session_that_would_cross_them() {
    let mut s = Sim::new(limits());
    s.m.next_index = 5;
    s.on(Event::Next);
    let out = s.on(Event::Budget {
        total: 4.5,
        today: None,
    });
    let (status, reason) = finish_of(&out).expect("a finish");
    assert_eq!(status, ChainStatus::BudgetExceeded);
    assert!(reason.unwrap().contains("would cross the $5.00 budget"));
    // Finished: nothing more happens.
    assert!(s.on(Event::Next).is_empty());

    let mut s = Sim::new(Limits {
        daily_cap_usd: Some(10.0),
        ..limits()
    });
    s.on(Event::Next);
    let out = s.on(Event::Budget {
        total: 0.0,
        today: Some((10.0, 4)),
    });
    let (status, reason) = finish_of(&out).expect("a finish");
    assert_eq!(status, ChainStatus::BudgetExceeded);
    assert!(reason.unwrap().contains("daily cap"));
}

#[test]
fn a_held_account_waits_announced_once_and_its_timer_holds_until_it_fires() {
    let mut s = Sim::new(limits());
    s.on(Event::Next);
    s.on(Event::Budget {
        total: 0.0,
        today: None,
    });
    let wait = QuotaAnswer::Wait {
        until: T0 + 60,
        delay: Duration::from_secs(60),
        reason: "usage limit of this account".into(),
    };
    let out = s.on(Event::Quota(wait.clone()));
    assert!(has(&out, |c| matches!(
        c,
        Cmd::SetStatus(ChainStatus::Waiting, _)
    )));
    assert!(emits(&out, "chain:waiting"));
    assert_eq!(arm_of(&out), Some(Duration::from_secs(60)));
    // A mode change before the timer: the quota is not asked again.
    s.pass(Duration::from_secs(10));
    s.on(Event::Next);
    let out = s.on(Event::Budget {
        total: 0.0,
        today: None,
    });
    assert!(out.is_empty(), "{out:?}");
    // The timer fires and the account is still held: no second announcement.
    s.pass(Duration::from_secs(50));
    s.on(Event::Next);
    assert_eq!(
        s.on(Event::Budget {
            total: 0.0,
            today: None
        }),
        vec![Cmd::AskQuota]
    );
    let out = s.on(Event::Quota(wait));
    assert_eq!(out, vec![Cmd::Arm(Duration::from_secs(60))]);
    // Released: the session starts.
    s.pass(Duration::from_secs(60));
    assert!(matches!(s.start(), Cmd::StartSession { index: 1, .. }));
}

#[test]
fn a_start_refused_by_a_busy_account_keeps_its_note_for_the_next_try() {
    let mut s = Sim::new(limits());
    s.m.note = Some("The previous session failed: boom".into());
    s.m.denied_note = Some("2 tool calls were denied".into());
    s.on(Event::Next);
    let Cmd::StartSession { note, .. } = s.start_after_check() else {
        panic!()
    };
    let note = note.expect("a note");
    assert!(
        note.contains("failed: boom") && note.contains("denied"),
        "{note}"
    );
    let out = s.on(Event::AccountBusy {
        reason: "the account runs 2 sessions".into(),
        delay: Duration::from_secs(5),
    });
    assert_eq!(out[0], Cmd::ReleaseAccount);
    assert_eq!(arm_of(&out), Some(Duration::from_secs(5)));
    s.on(Event::Next);
    let Cmd::StartSession {
        index, note: again, ..
    } = s.start_after_check()
    else {
        panic!()
    };
    assert_eq!((index, again), (1, Some(note)));
}

#[test]
fn transient_failures_retry_the_same_session_after_one_four_sixteen_seconds() {
    let mut s = Sim::new(Limits {
        max_attempts: 4,
        ..limits()
    });
    s.start();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let out = s.end(1, transient());
        assert!(
            has(
                &out,
                |c| matches!(c, Cmd::RecordAttempt { status: SessionStatus::Failed, attempts, .. } if *attempts == attempt)
            ),
            "{out:?}"
        );
        assert!(emits(&out, "chain:session-retry"));
        let delay = arm_of(&out).expect("a timer");
        delays.push(delay.as_secs());
        // Before the timer fires, nothing starts.
        assert!(s.on(Event::Next).is_empty());
        s.pass(delay);
        let Cmd::StartSession {
            index,
            attempt: a,
            note,
            ..
        } = s.start()
        else {
            panic!()
        };
        assert_eq!((index, a), (1, attempt + 1));
        assert!(note.unwrap().contains("attempt at this session failed"));
    }
    assert_eq!(delays, [1, 4, 16]);
    // The last attempt fails too: the session is recorded failed, and the chain goes on.
    let out = s.end(1, transient());
    assert!(
        matches!(out.last(), Some(Cmd::Finalize { attempts: 4, .. })),
        "{out:?}"
    );
}

#[test]
fn a_stop_during_a_backoff_ends_the_chain_at_once() {
    let mut s = Sim::new(limits());
    s.start();
    s.end(1, transient());
    s.mode = Mode::Stopping;
    let out = s.on(Event::ModeChanged);
    assert_eq!(
        finish_of(&out).map(|f| f.0),
        Some(ChainStatus::Interrupted),
        "{out:?}"
    );
}

#[test]
fn a_usage_limit_holds_the_account_and_retries_after_the_reset_or_stops_with_no_wait() {
    let mut s = Sim::new(limits());
    s.start();
    let out = s.end(1, usage_limit(Some(T0 + 600)));
    assert_eq!(
        out.iter().find(|c| matches!(c, Cmd::HoldAccount { .. })),
        Some(&Cmd::HoldAccount { until: T0 + 660 })
    );
    assert!(has(
        &out,
        |c| matches!(c, Cmd::SetStatus(ChainStatus::Waiting, Some(r)) if r.starts_with("usage limit"))
    ));
    assert!(emits(&out, "chain:waiting"));
    assert_eq!(arm_of(&out), Some(Duration::from_secs(660)));
    s.pass(Duration::from_secs(660));
    assert!(matches!(s.start(), Cmd::StartSession { index: 1, .. }));

    let mut s = Sim::new(Limits {
        no_wait: true,
        ..limits()
    });
    s.start();
    let out = s.end(1, usage_limit(None));
    assert!(has(&out, |c| matches!(
        c,
        Cmd::RecordAttempt {
            status: SessionStatus::Interrupted,
            ..
        }
    )));
    assert_eq!(
        finish_of(&out).map(|f| f.0),
        Some(ChainStatus::WaitingLimit)
    );
}

#[test]
fn three_failed_sessions_open_the_breaker_and_a_cool_down_probes_once() {
    // Transient failures with no attempts left: failed sessions the breaker counts.
    let fatal = transient;
    let one = || Limits {
        max_attempts: 1,
        ..limits()
    };
    let mut s = Sim::new(one());
    for index in 1..=3 {
        s.start();
        let out = s.end(index, fatal());
        assert!(matches!(out.last(), Some(Cmd::Finalize { .. })));
        let out = s.record(false);
        if index < 3 {
            assert_eq!(out.last(), Some(&Cmd::Next), "{out:?}");
        } else {
            let (status, reason) = finish_of(&out).expect("the breaker");
            assert_eq!(status, ChainStatus::Failed);
            assert!(reason.unwrap().starts_with("circuit-open"));
        }
    }

    let mut s = Sim::new(Limits {
        breaker_cooldown: Some(Duration::from_secs(300)),
        ..one()
    });
    for index in 1..=3 {
        s.start();
        s.end(index, fatal());
        s.record(false);
    }
    // Half-open: waits the cool-down, then one probe.
    assert_eq!(s.m.consecutive_failures, 3);
    s.on(Event::Next);
    assert!(s.m.probing);
    s.pass(Duration::from_secs(300));
    s.start();
    s.end(4, ok());
    let out = s.record(false);
    assert_eq!(out, vec![Cmd::Measure { index: 4 }]);
    let out = s.on(Event::Measured(measured(true, false)));
    assert!(emits(&out, "chain:breaker-closed"), "{out:?}");
    assert_eq!(out.last(), Some(&Cmd::Next));
}

#[test]
fn the_half_open_breaker_waits_its_cool_down_before_the_probe() {
    let fatal = transient();
    let mut s = Sim::new(Limits {
        breaker_cooldown: Some(Duration::from_secs(300)),
        max_attempts: 1,
        ..limits()
    });
    let mut last = Vec::new();
    for index in 1..=3 {
        s.start();
        s.end(index, fatal.clone());
        last = s.record(false);
    }
    assert!(emits(&last, "chain:breaker-half-open"), "{last:?}");
    assert!(has(
        &last,
        |c| matches!(c, Cmd::SetStatus(ChainStatus::Waiting, Some(r)) if r.starts_with("circuit half-open"))
    ));
    assert_eq!(arm_of(&last), Some(Duration::from_secs(300)));
    assert!(s.on(Event::Next).is_empty(), "the cool-down holds");
    s.pass(Duration::from_secs(300));
    s.start();
    // The probe fails: the chain ends.
    s.end(4, fatal);
    let out = s.record(false);
    let (status, reason) = finish_of(&out).expect("a finish");
    assert_eq!(status, ChainStatus::Failed);
    assert!(
        reason
            .unwrap()
            .contains("the probe after the cool-down failed too")
    );
}

#[test]
fn max_continuations_end_the_chain() {
    let mut s = Sim::new(Limits {
        max_continuations: 1,
        ..limits()
    });
    for index in 1..=2 {
        s.start();
        s.end(index, ok());
        let out = s.record(false);
        if index == 2 {
            // A decision to end is not judged.
            assert_eq!(
                finish_of(&out).map(|f| f.0),
                Some(ChainStatus::MaxContinuations)
            );
        } else {
            assert_eq!(out, vec![Cmd::Measure { index }]);
            let out = s.on(Event::Measured(measured(true, false)));
            assert_eq!(out.last(), Some(&Cmd::Next));
        }
    }
}

#[test]
fn the_budget_warns_once() {
    let mut s = Sim::new(limits());
    s.start();
    s.end(1, ok());
    let out = s.on(Event::Recorded(Handed {
        complete: false,
        agent_handoff: true,
        resumable: None,
        denied: 0,
        denied_note: None,
        total_cost: 4.2,
    }));
    assert!(emits(&out, "chain:budget-warning"));
    s.on(Event::Measured(measured(true, false)));
    s.start();
    s.end(2, ok());
    let out = s.on(Event::Recorded(Handed {
        complete: false,
        agent_handoff: true,
        resumable: None,
        denied: 0,
        denied_note: None,
        total_cost: 4.4,
    }));
    assert!(!emits(&out, "chain:budget-warning"));
}

#[test]
fn a_stale_complete_is_not_believed_and_gates_decide_a_complete() {
    let mut s = Sim::new(limits());
    s.start();
    s.end(1, ok());
    s.record(true);
    let out = s.on(Event::Measured(measured(false, true)));
    assert!(emits(&out, "chain:stale-complete"));
    assert_eq!(out.last(), Some(&Cmd::Next));
    assert!(s.m.note.as_deref().unwrap().contains("was not believed"));

    let mut s = Sim::new(Limits {
        gates: true,
        ..limits()
    });
    s.start();
    s.end(1, ok());
    s.record(true);
    let out = s.on(Event::Measured(measured(true, false)));
    assert_eq!(out, vec![Cmd::RunGates { index: 1 }]);
    let out = s.on(Event::Gated {
        passed: vec![false],
        failed: vec!["cargo test".into()],
        note: Some("`cargo test` failed".into()),
    });
    assert!(has(&out, |c| matches!(
        c,
        Cmd::Emit {
            body: Body::Progress {
                gates_changed: true,
                ..
            },
            ..
        }
    )));
    assert_eq!(out.last(), Some(&Cmd::Next));
    assert_eq!(s.m.note.as_deref(), Some("`cargo test` failed"));
    s.start();
    s.end(2, ok());
    s.record(true);
    s.on(Event::Measured(measured(true, false)));
    let out = s.on(Event::Gated {
        passed: vec![true],
        failed: vec![],
        note: None,
    });
    assert_eq!(finish_of(&out).map(|f| f.0), Some(ChainStatus::Complete));
}

#[test]
fn sessions_without_progress_stop_the_chain_and_name_denied_calls() {
    let mut s = Sim::new(limits());
    for index in 1..=3 {
        s.start();
        s.end(index, ok());
        s.on(Event::Recorded(Handed {
            complete: false,
            agent_handoff: true,
            resumable: None,
            denied: 1,
            denied_note: Some("a call was denied".into()),
            total_cost: 0.1,
        }));
        let out = s.on(Event::Measured(measured(false, false)));
        if index == 3 {
            let (status, reason) = finish_of(&out).expect("a finish");
            assert_eq!(status, ChainStatus::Failed);
            assert!(reason.unwrap().contains("3 tool call(s) were denied"));
        }
    }
}

#[test]
fn a_missing_handoff_is_asked_for_once_and_interruptions_say_why() {
    let mut s = Sim::new(limits());
    s.start();
    let turn = |handoff: Result<(), String>| Event::TurnEnded {
        index: 1,
        handoff,
        is_error: false,
        hit_max_turns: false,
    };
    let out = s.on(turn(Err("no handoff".into())));
    assert!(
        matches!(out.last(), Some(Cmd::FollowUp { index: 1, text }) if text.contains("no handoff"))
    );
    assert_eq!(
        s.on(turn(Err("still none".into()))),
        vec![Cmd::Close { index: 1 }]
    );

    let mut s = Sim::new(limits());
    s.start();
    let out = s.on(Event::OverBudget { spent: 2.0 });
    assert_eq!(out.last(), Some(&Cmd::StopSession(Grace::Shutdown)));
    // Told once.
    assert!(s.on(Event::OverBudget { spent: 2.5 }).is_empty());
    let out = s.on(turn(Err("no handoff".into())));
    assert!(matches!(out.last(), Some(Cmd::FollowUp { text, .. }) if text.contains("cost limit")));
    // Over budget, the session is decided as one that hit a limit: the chain goes on.
    s.end(1, ok());
    assert_eq!(s.record(false), vec![Cmd::Measure { index: 1 }]);
}

#[test]
fn pause_holds_the_chain_once_resume_goes_on_and_pause_now_interrupts() {
    let mut s = Sim::new(limits());
    s.mode = Mode::Paused { interrupt: false };
    let out = s.on(Event::Next);
    assert_eq!(out[0], Cmd::SetStatus(ChainStatus::Paused, None));
    assert!(emits(&out, "chain:paused"));
    assert!(s.on(Event::ModeChanged).is_empty(), "announced once");
    s.mode = Mode::Running;
    let out = s.on(Event::ModeChanged);
    assert!(emits(&out, "chain:resumed"));
    assert_eq!(out.last(), Some(&Cmd::CheckBudget));
    s.start_after_check();
    s.on(Event::Started);
    s.mode = Mode::Paused { interrupt: true };
    let out = s.on(Event::ModeChanged);
    assert_eq!(
        out,
        vec![
            Cmd::CancelApprovals(STOPPING_UNAPPROVED),
            Cmd::StopSession(Grace::Shutdown)
        ]
    );
}

#[test]
fn an_abort_stops_the_session_and_ends_the_chain_aborted() {
    let mut s = Sim::new(limits());
    s.start();
    let out = s.on(Event::Abort);
    assert_eq!(out.last(), Some(&Cmd::StopSession(Grace::Abort)));
    s.end(1, ok());
    let out = s.record(false);
    assert_eq!(finish_of(&out).map(|f| f.0), Some(ChainStatus::Aborted));

    let mut s = Sim::new(limits());
    let out = s.on(Event::Abort);
    assert_eq!(finish_of(&out).map(|f| f.0), Some(ChainStatus::Aborted));
}

#[test]
fn resume_continues_the_last_session_unless_the_agent_forgot_it() {
    let mut s = Sim::new(Limits {
        resume: true,
        ..limits()
    });
    s.start();
    s.end(1, ok());
    s.record(false);
    s.on(Event::Measured(measured(true, false)));
    let Cmd::StartSession { resume_id, .. } = s.start() else {
        panic!()
    };
    assert_eq!(resume_id.as_deref(), Some("agent-session"));
    let forgot = SessionFacts {
        exit_code: Some(1),
        result_is_error: true,
        saw_result: true,
        errors: vec!["No conversation found with session ID: agent-session".into()],
        ..Default::default()
    };
    let out = s.end(2, forgot);
    assert!(
        has(
            &out,
            |c| matches!(c, Cmd::Log { message, .. } if message.contains("no longer knows"))
        ),
        "{out:?}"
    );
    assert_eq!(s.m.resumable, None);
}

#[test]
fn a_refused_workdir_fails_the_chain_before_any_session() {
    let mut s = Sim::new(limits());
    s.m.refused = Some("the working tree has uncommitted changes".into());
    let out = s.on(Event::Next);
    assert_eq!(
        out,
        vec![Cmd::Finish(
            ChainStatus::Failed,
            Some("the working tree has uncommitted changes".into())
        )]
    );
}

#[test]
fn a_stray_report_of_another_session_changes_nothing() {
    let mut s = Sim::new(limits());
    s.start();
    assert!(
        s.on(Event::TurnEnded {
            index: 7,
            handoff: Ok(()),
            is_error: false,
            hit_max_turns: false
        })
        .is_empty()
    );
    let out = s.end(7, ok());
    assert_eq!(out, vec![Cmd::CancelApprovals(ENDED_UNANSWERED)]);
    assert!(s.m.live.is_some());
}

#[test]
fn an_error_kind_is_classified_from_the_facts() {
    let v = policy::classify(&transient());
    assert_eq!(v.error_kind, Some(ErrorKind::Transient));
}

impl Sim {
    /// Runs the next session to a COMPLETE that is believed; returns the commands of the
    /// measurement (the decision).
    fn complete_session(&mut self) -> Vec<Cmd> {
        self.start();
        let index = self.m.next_index - 1;
        self.end(index, ok());
        assert_eq!(self.record(true), vec![Cmd::Measure { index }]);
        self.on(Event::Measured(measured(true, false)))
    }
}

#[test]
fn a_complete_lands_before_the_chain_is_complete() {
    let mut s = Sim::new(Limits {
        landing: true,
        ..limits()
    });
    let out = s.complete_session();
    assert_eq!(out.last(), Some(&Cmd::Land { index: 1 }));
    assert_eq!(finish_of(&out), None);
    // While it lands, nothing starts a session (a timer, a resume of the operator).
    assert!(s.on(Event::Next).is_empty());
    assert!(s.on(Event::ModeChanged).is_empty());
    let out = s.on(Event::Landed(Landed::Done(Some("https://pr/1".into()))));
    assert_eq!(
        finish_of(&out),
        Some((ChainStatus::Complete, Some("https://pr/1".into())))
    );
    // Without landing a COMPLETE finishes at once.
    let mut s = Sim::new(limits());
    let out = s.complete_session();
    assert_eq!(finish_of(&out).map(|f| f.0), Some(ChainStatus::Complete));
}

#[test]
fn failing_checks_run_another_session_with_them_counted_against_max_continuations() {
    let mut s = Sim::new(Limits {
        landing: true,
        max_continuations: 2,
        ..limits()
    });
    s.complete_session();
    let out = s.on(Event::Landed(Landed::Again {
        note: "checks failed: test".into(),
        counted: true,
    }));
    assert_eq!(out, vec![Cmd::Next]);
    s.on(Event::Next);
    let start = s.start_after_check();
    assert!(
        matches!(&start, Cmd::StartSession { index: 2, note: Some(n), .. } if n.contains("checks failed: test")),
        "{start:?}"
    );
    s.on(Event::Started);
    s.end(2, ok());
    s.record(true);
    let out = s.on(Event::Measured(measured(true, false)));
    assert_eq!(out.last(), Some(&Cmd::Land { index: 2 }));
    s.on(Event::Landed(Landed::Again {
        note: "checks failed: lint".into(),
        counted: true,
    }));
    s.complete_session();
    // The third session is the last of 1 + 2: its checks failing ends the chain.
    let out = s.on(Event::Landed(Landed::Again {
        note: "checks failed: lint".into(),
        counted: true,
    }));
    let (status, reason) = finish_of(&out).expect("a finish");
    assert_eq!(status, ChainStatus::MaxContinuations);
    assert!(
        reason
            .unwrap()
            .contains("the checks still fail: checks failed: lint")
    );
    // An eviction is bounded by max_evictions (the shell's count), not by continuations.
    let mut s = Sim::new(Limits {
        landing: true,
        max_continuations: 0,
        ..limits()
    });
    s.complete_session();
    let out = s.on(Event::Landed(Landed::Again {
        note: "conflict".into(),
        counted: false,
    }));
    assert_eq!(out, vec![Cmd::Next]);
    let out = s.on(Event::Landed(Landed::Failed(
        ChainStatus::MergeFailed,
        "late".into(),
    )));
    assert!(
        out.is_empty(),
        "an answer with no landing is ignored: {out:?}"
    );
}

#[test]
fn an_abort_or_a_stop_ends_a_landing_and_a_restored_landing_lands_first() {
    let mut s = Sim::new(Limits {
        landing: true,
        ..limits()
    });
    s.complete_session();
    let out = s.on(Event::Abort);
    assert_eq!(finish_of(&out).map(|f| f.0), Some(ChainStatus::Aborted));

    let mut s = Sim::new(Limits {
        landing: true,
        ..limits()
    });
    s.complete_session();
    s.mode = Mode::Stopping;
    let out = s.on(Event::ModeChanged);
    let (status, reason) = finish_of(&out).expect("a finish");
    assert_eq!(status, ChainStatus::Interrupted);
    assert!(reason.unwrap().contains("landing"));

    // A chain restored in the middle of its landing lands again before any session.
    let mut s = Sim::new(Limits {
        landing: true,
        ..limits()
    });
    s.m.next_index = 3;
    s.m.land_pending = true;
    assert_eq!(s.on(Event::Next), vec![Cmd::Land { index: 2 }]);
    assert!(s.on(Event::Next).is_empty());
    let out = s.on(Event::Landed(Landed::Failed(
        ChainStatus::ChecksTimeout,
        "checks did not finish".into(),
    )));
    assert_eq!(
        finish_of(&out).map(|f| f.0),
        Some(ChainStatus::ChecksTimeout)
    );
}
