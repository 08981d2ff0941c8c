//! Actor failures, injected with the fault hook (`OPERATOR_FAULT`, src/fault.rs):
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

/// Runs with an injected crash (the process aborts, as under `kill -9`), then resumes.
fn crash_then_resume(op: &Op, fault: &str) -> operator::model::ChainRecord {
    let out = op
        .cmd(&["run", "--task", "T", "--scenario", "incomplete"])
        .env("OPERATOR_FAULT", fault)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "the operator should have been killed: {}",
        stderr(&out)
    );
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || common::processes_in(
            &op.workdir()
        )
        .is_empty()),
        "an agent outlived the crashed operator"
    );
    let out = op.run(&["run", "--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    chains(&out).remove(0)
}

#[test]
fn a_crash_between_sessions_loses_nothing() {
    let op = Op::new();
    // The second Chain::next: session 1 is recorded, session 2 not started.
    let c = crash_then_resume(&op, "chain:next@2!");
    assert_eq!(c.status, ChainStatus::Complete);
    let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
    assert_eq!(
        idx,
        [1, 2, 3],
        "indices must be contiguous, none used twice"
    );
    assert!(
        c.sessions
            .iter()
            .all(|s| s.status == SessionStatus::Completed && s.attempts == 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_the_handoff_write_resumes_from_the_last_committed_handoff() {
    let op = Op::new();
    // Session 2's handoff file is written, the store not yet updated.
    let c = crash_then_resume(&op, "handoff:written@2!");
    assert_eq!(c.status, ChainStatus::Complete);
    let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
    assert_eq!(idx, [1, 2, 3]);
    assert_eq!(c.sessions[1].status, SessionStatus::Interrupted);
    let store = op.store().await;
    use operator::store::Store;
    let prompt = store.session_prompt(&c.id, 3).await.unwrap().unwrap();
    assert!(
        prompt.contains("Previous handoff (session 1)"),
        "resumed from an unacknowledged handoff: {prompt}"
    );
    // The acknowledged handoffs are all in the store, one per finished session.
    let handoffs = store.handoffs(&c.id).await.unwrap();
    assert_eq!(handoffs.iter().map(|h| h.index).collect::<Vec<_>>(), [1, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_of_the_root_supervisor_stops_every_agent_and_leaves_the_chains_resumable() {
    let op = Op::new();
    let mut child = op
        .cmd(&["run", "--task", "T", "--scenario", "hang"])
        .env("OPERATOR_FAULT", "operator:pump@2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(common::eventually(
        std::time::Duration::from_secs(20),
        || !common::processes_in(&op.workdir()).is_empty()
    ));
    // A pause makes the Operator pump its queue again: the injected panic fires there.
    common::signal(&child, nix::sys::signal::Signal::SIGUSR1);
    let done = common::eventually(std::time::Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(
        done,
        "the operator did not stop after its root supervisor crashed"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("root supervisor crashed"));
    assert!(common::eventually(
        std::time::Duration::from_secs(5),
        || common::processes_in(&op.workdir()).is_empty()
    ));
    let store = op.store().await;
    use operator::store::Store;
    let c = &store.list_chains(&Default::default()).await.unwrap()[0];
    assert_eq!(c.status, ChainStatus::Interrupted);
    assert!(c.status.is_resumable());
}
