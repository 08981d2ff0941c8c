//! Actor failures, injected with the test-only fault hook (`OPERATOR_FAULT`, debug builds):
//! restarts rebuild state from the store, a crash never touches a sibling chain, and a chain
//! that keeps crashing is given up as `failed` while the operator stays up.

mod common;

use common::{Op, chains, stderr};
use operator::model::{ChainStatus, SessionStatus};

fn run_with_fault(op: &Op, fault: &str, args: &[&str]) -> std::process::Output {
    op.cmd(args).env("OPERATOR_FAULT", fault).output().unwrap()
}

#[test]
fn a_crashed_cost_actor_is_restarted_with_the_right_totals() {
    let op = Op::new();
    let out = run_with_fault(
        &op,
        "cost:usage@6",
        &["run", "--task", "T", "--scenario", "incomplete", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the Cost actor crashed; restarting it from the store")
            || err.contains("the Cost actor is gone; restarting it from the store"),
        "{err}"
    );
    assert!(
        !err.contains("the chain crashed"),
        "a Cost crash must not take the chain down: {err}"
    );
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    // Totals rebuilt from the store: the sum of the sessions, each priced by the agent's own figure.
    let sum: f64 = c.sessions.iter().map(|s| s.cost_usd).sum();
    assert!((c.totals.cost_usd - sum).abs() < 1e-9);
    assert!(
        c.sessions.iter().all(|s| (s.cost_usd - 0.039).abs() < 1e-6),
        "{:?}",
        c.sessions
    );
}

#[test]
fn a_crashed_session_actor_is_a_failed_attempt_and_the_session_is_retried() {
    let op = Op::new();
    let out = run_with_fault(
        &op,
        "session:line@3",
        &["run", "--task", "T", "--scenario", "complete", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 1);
    assert_eq!(
        (c.sessions[0].attempts, c.sessions[0].status),
        (2, SessionStatus::Completed)
    );
    assert!(
        common::processes_in(&op.workdir()).is_empty(),
        "the crashed session's agent survived"
    );
}

#[test]
fn a_crashed_handoff_actor_takes_its_chain_down_and_the_chain_is_restarted_from_the_store() {
    let op = Op::new();
    let out = run_with_fault(
        &op,
        "handoff:finalize@1",
        &["run", "--task", "T", "--scenario", "incomplete", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the chain crashed; restarting it from the store"),
        "{}",
        stderr(&out)
    );
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    // The session whose handoff was lost is recorded as interrupted; indices stay contiguous.
    let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
    assert_eq!(idx, (1..=idx.len() as u32).collect::<Vec<_>>());
    assert_eq!(c.sessions[0].status, SessionStatus::Interrupted);
}

#[test]
fn a_crashing_chain_never_touches_its_sibling() {
    let op = Op::new();
    let mission = op.write(
        "two.toml",
        "concurrency = 2\n[[chain]]\nname = \"a\"\ntask = \"A\"\n[[chain]]\nname = \"b\"\ntask = \"B\"\n",
    );
    // The third call to Chain::next, in whichever chain makes it, panics once.
    let out = run_with_fault(
        &op,
        "chain:next@3",
        &["run", mission.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("the chain crashed; restarting it from the store"));
    let cs = chains(&out);
    assert_eq!(cs.len(), 2);
    assert!(
        cs.iter().all(|c| c.status == ChainStatus::Complete),
        "{cs:?}"
    );
}

#[test]
fn a_chain_that_keeps_crashing_is_failed_and_the_operator_stays_up() {
    let op = Op::new();
    let out = run_with_fault(&op, "chain:next@*", &["run", "--task", "T", "--json"]);
    // The operator ended normally, with the chain given up.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert!(
        c.reason.as_deref().unwrap().contains("crashed 4 times"),
        "{:?}",
        c.reason
    );
}

#[test]
fn a_child_that_keeps_crashing_escalates_to_its_chain_then_to_the_operator() {
    let op = Op::new();
    // A long chain whose Cost actor crashes on every usage report.
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "incomplete",
            "--max-continuations",
            "50",
            "--json",
        ])
        .env("OPERATOR_FAULT", "cost:usage@*")
        .env("OPERATOR_SIM__COMPLETE_AFTER", "50")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    let reason = c.reason.as_deref().unwrap();
    assert!(
        reason.contains("crashed 4 times") && reason.contains("children keep crashing"),
        "{reason}"
    );
    assert!(common::processes_in(&op.workdir()).is_empty());
}
