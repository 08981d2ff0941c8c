//! End-to-end chains: the real `operator` binary on the sim agent, checked through `--json` and the store.

mod common;

use std::time::Duration;

use common::{Op, chains, eventually, processes_in, stderr};
use operator::model::{ChainStatus, SessionStatus};
use operator::store::Store;

#[test]
fn complete_in_one_session() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "Fix the bug",
        "--scenario",
        "complete",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 1);
    let c = &cs[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 1);
    let s = &c.sessions[0];
    assert!(s.handoff_complete && !s.handoff_synthetic && !s.asked_again);
    assert!(s.cost_usd > 0.0 && s.turns > 0);
    assert!(
        s.session_id
            .as_deref()
            .is_some_and(|id| id.starts_with("sim-"))
    );
    let file = s.handoff_file.as_deref().unwrap();
    assert!(
        std::fs::read_to_string(file)
            .unwrap()
            .contains("## HANDOFF: COMPLETE")
    );
    assert!(
        file.ends_with(&format!("chains/{}/handoff-1.md", c.id)),
        "{file}"
    );
    assert!((c.totals.cost_usd - s.cost_usd).abs() < 1e-9);
}

#[tokio::test]
async fn incomplete_twice_then_complete_carries_the_handoff() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "Port the parser",
        "--scenario",
        "incomplete",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(
        c.sessions.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        c.sessions
            .iter()
            .map(|s| s.handoff_complete)
            .collect::<Vec<_>>(),
        [false, false, true]
    );

    let store = op.store().await;
    let handoffs = store.handoffs(&c.id).await.unwrap();
    let p1 = store.session_prompt(&c.id, 1).await.unwrap().unwrap();
    let p2 = store.session_prompt(&c.id, 2).await.unwrap().unwrap();
    assert_eq!(p1.trim(), "Port the parser");
    assert!(p2.contains("Port the parser"));
    assert!(
        p2.contains(handoffs[0].text.trim()),
        "session 2's prompt lacks session 1's handoff:\n{p2}"
    );
    assert!(handoffs[0].text.contains("Session 1 did part 1"));
    // Each handoff is also a file a person can read.
    for h in &handoffs {
        assert_eq!(
            std::fs::read_to_string(&h.file).unwrap().trim(),
            h.text.trim()
        );
    }
}

#[test]
fn no_handoff_is_asked_again_then_synthesised() {
    let op = Op::new();
    let out = op.run(&["run", "--task", "T", "--scenario", "no-handoff", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::AssumedComplete);
    let s = &c.sessions[0];
    assert!(s.asked_again, "the agent was not asked again");
    assert!(s.handoff_synthetic);
    let text = std::fs::read_to_string(s.handoff_file.as_deref().unwrap()).unwrap();
    assert!(text.contains("written by the operator"), "{text}");
    assert!(
        text.contains("not sure what you mean"),
        "the synthetic handoff lacks the output tail: {text}"
    );
    // The follow-up went to the same process: one transcript, one session id, two results.
    let transcript = std::fs::read_to_string(
        op.data_dir()
            .join(format!("chains/{}/session-1.jsonl", c.id)),
    )
    .unwrap();
    assert!(transcript.contains("\"subtype\":\"follow_up\""));
    assert_eq!(transcript.matches("\"type\":\"result\"").count(), 2);
}

#[test]
fn a_forgetful_agent_writes_its_handoff_when_asked() {
    let op = Op::new();
    let out = op.run(&["run", "--task", "T", "--scenario", "forgetful", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 3);
    for s in &c.sessions {
        assert!(s.asked_again && !s.handoff_synthetic, "{s:?}");
    }
}

#[test]
fn max_continuations_ends_the_chain() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "incomplete",
        "--max-continuations",
        "2",
        "--json",
    ]);
    let c = &chains(&out)[0];
    // complete_after defaults to 2: sessions 1 and 2 are incomplete, and 1 + 2 sessions are allowed.
    assert_eq!(c.status, ChainStatus::Complete);
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "max-turns",
        "--max-turns",
        "3",
        "--max-continuations",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::MaxContinuations);
    assert_eq!(c.sessions.len(), 2);
    for s in &c.sessions {
        assert!(
            s.hit_max_turns && s.asked_again && !s.handoff_synthetic,
            "{s:?}"
        );
        assert_eq!(s.status, SessionStatus::Completed);
    }
}

#[test]
fn three_failed_sessions_open_the_breaker() {
    let op = Op::new();
    let out = op.run(&["run", "--task", "T", "--scenario", "error", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert!(
        c.reason.as_deref().unwrap().starts_with("circuit-open"),
        "{:?}",
        c.reason
    );
    // The record holds the three errors.
    let reason = c.reason.as_deref().unwrap();
    for n in 1..=3 {
        assert!(
            reason.contains(&format!("session {n}: API Error: 500")),
            "{reason}"
        );
    }
    assert_eq!(c.sessions.len(), 3);
    for s in &c.sessions {
        assert_eq!(s.status, SessionStatus::Failed);
        assert!(s.error.as_deref().unwrap().contains("API Error: 500"));
        assert!(s.handoff_synthetic);
        assert_eq!(
            s.attempts, 3,
            "each session is tried three times before it counts"
        );
    }
    // Each retry is journaled.
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert_eq!(log.matches("chain:session-retry").count(), 6, "{log}");
}

#[test]
fn a_crashing_agent_and_a_garbage_printing_agent() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "crash",
        "--max-continuations",
        "0",
        "--json",
    ]);
    let c = &chains(&out)[0];
    assert_eq!(c.sessions[0].status, SessionStatus::Failed);
    assert!(
        c.sessions[0]
            .error
            .as_deref()
            .unwrap()
            .contains("exit code 3"),
        "{:?}",
        c.sessions[0].error
    );
    let out = op.run(&["run", "--task", "T", "--scenario", "garbage", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    // A control request the operator does not handle gets an error reply, never silence.
    let t = std::fs::read_to_string(
        op.data_dir()
            .join(format!("chains/{}/session-1.jsonl", c.id)),
    )
    .unwrap();
    assert!(
        t.contains("The operator answered my elicitation request: error."),
        "{t}"
    );
}

#[test]
fn two_chains_of_a_mission_run_at_once() {
    let op = Op::new();
    let mission = op.write(
        "two.toml",
        r#"
concurrency = 2
[defaults.sim]
scenario = "incomplete"
complete_after = 1
step = "60ms"
[[chain]]
name = "a"
task = "Task A"
[[chain]]
name = "b"
task = "Task B"
"#,
    );
    let out = op.run(&["run", mission.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 2);
    assert!(
        cs.iter()
            .all(|c| c.status == ChainStatus::Complete && c.sessions.len() == 2)
    );
    let (a, b) = (&cs[0].sessions[0], &cs[1].sessions[0]);
    let overlap = a.started_at < *b.ended_at.as_ref().unwrap()
        && b.started_at < *a.ended_at.as_ref().unwrap();
    assert!(overlap, "the first sessions did not overlap: {a:?} {b:?}");
    assert_eq!(cs[0].mission.as_deref(), Some("two"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_interrupts_and_resume_finishes() {
    let op = Op::new();
    let mut child = op
        .cmd(&[
            "run",
            "--task",
            "Long task",
            "--scenario",
            "incomplete",
            "--max-continuations",
            "9",
        ])
        .env("OPERATOR_SIM__STEP", "150ms")
        .env("OPERATOR_SIM__COMPLETE_AFTER", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = op.store().await;
    // Wait until the second session runs, then stop the operator.
    let started = eventually(Duration::from_secs(20), || {
        let rt = tokio::runtime::Handle::current();
        let chains =
            tokio::task::block_in_place(|| rt.block_on(store.list_chains(&Default::default())));
        chains
            .ok()
            .and_then(|c| c.first().map(|c| c.id.clone()))
            .is_some_and(|id| {
                tokio::task::block_in_place(|| rt.block_on(store.sessions(&id)))
                    .map(|s| s.len() >= 2)
                    .unwrap_or(false)
            })
    });
    assert!(started, "the chain never reached session 2");
    common::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let id = store.list_chains(&Default::default()).await.unwrap()[0]
        .id
        .clone();
    let c = store.get_chain(&id).await.unwrap().unwrap();
    assert_eq!(c.status, ChainStatus::Interrupted);
    assert!(
        processes_in(&op.workdir()).is_empty(),
        "agent processes left behind"
    );
    let interrupted = c.sessions.last().unwrap();
    assert_eq!(interrupted.status, SessionStatus::Interrupted);
    // Interrupted through the protocol and asked for its handoff: a real one, not synthetic.
    assert!(interrupted.asked_again, "{interrupted:?}");
    assert!(!interrupted.handoff_synthetic, "{interrupted:?}");

    let out = op.run(&["run", "--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.id, id);
    assert_eq!(c.status, ChainStatus::Complete);
    let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
    assert_eq!(
        idx,
        (1..=idx.len() as u32).collect::<Vec<_>>(),
        "indices not contiguous"
    );
    // The resumed session starts from the last handoff recorded before the stop.
    let resumed = interrupted.index + 1;
    let prompt = store.session_prompt(&id, resumed).await.unwrap().unwrap();
    assert!(
        prompt.contains(&format!("Previous handoff (session {})", interrupted.index)),
        "{prompt}"
    );
    // Nothing is left to resume.
    let again = op.run(&["run", "--resume"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("no incomplete chain"));
}

#[test]
fn a_malformed_mission_is_refused_and_nothing_is_written() {
    let op = Op::new();
    let bad = op.write(
        "bad.toml",
        "[[chain]]\ntask = \"x\"\nmax_turn = 3\n[chain.sim]\nscenario = \"compelte\"\n",
    );
    let out = op.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml")
            && err.contains("chain[0].max_turn")
            && err.contains("did you mean `max_turns`"),
        "{err}"
    );
    assert!(err.contains("compelte"), "{err}");
    assert!(
        !op.data_dir().join("operator.db").exists(),
        "the store was touched"
    );
    let v = op.run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(2));
    let syntax = op.write("syntax.toml", "[[chain]\n");
    let out = op.run(&["run", syntax.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("syntax.toml"));
}

#[test]
fn dry_run_runs_no_agent() {
    let op = Op::new();
    let mission = op.write(
        "m.toml",
        "[[chain]]\nname = \"x\"\ntask = \"Write the docs\"\n",
    );
    let out = op.run(&[
        "run",
        mission.to_str().unwrap(),
        "--dry-run",
        "--model",
        "opus",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DRY RUN"));
    assert!(
        text.contains("sim-agent --input-format stream-json"),
        "{text}"
    );
    assert!(text.contains("--model opus"));
    assert!(text.contains("Write the docs"));
    assert!(text.contains("AUTO-CONTINUATION PROTOCOL"));
    assert!(!op.data_dir().exists(), "a dry run created the data dir");
    let claude = op.run(&["run", "--task", "T", "--agent", "claude", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&claude.stdout)
            .contains("claude --input-format stream-json --output-format stream-json --verbose")
    );
}

#[test]
fn list_and_show_read_the_store() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "Listing",
        "--scenario",
        "complete",
        "--json",
    ]);
    let id = chains(&out)[0].id.clone();
    let list = op.run(&["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
    // Filters: by start time and by mission (this chain has none).
    let list = op.run(&["list", "--since", "1h"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
    let list = op.run(&["list", "--since", "2100-01-01"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));
    let list = op.run(&["list", "--mission", "nightly"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&id));
    let list = op.run(&["list", "--since", "yesterday"]);
    assert_eq!(list.status.code(), Some(2));
    assert!(common::stderr(&list).contains("--since: `since` is `yesterday`"));
    let show = op.run(&["show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("HANDOFF: COMPLETE") && text.contains("session 1"),
        "{text}"
    );
    let json = op.run(&["show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for key in [
        "id",
        "task",
        "status",
        "startedAt",
        "updatedAt",
        "config",
        "sessions",
        "totals",
        "handoffs",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(op.run(&["show", "../../etc"]).status.code(), Some(2));
    assert_eq!(
        op.run(&["show", "c-20990101-000000"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_missing_claude_binary_fails_before_any_chain_starts() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--agent",
        "claude",
        "--claude-bin",
        "/no/such/claude",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/no/such/claude"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&op.run(&["list"]).stdout).contains("no chains"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigint_stops_at_once_and_leaves_no_agent() {
    let op = Op::new();
    let mut child = op
        .cmd(&["run", "--task", "Hang", "--scenario", "hang"])
        .env("OPERATOR_SHUTDOWN_GRACE", "120s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || !processes_in(&op.workdir())
            .is_empty()),
        "the agent never started"
    );
    // … and its chain holds it as its running session: a signal a moment earlier finds the
    // chain between sessions, where a graceful stop rightly ends at once.
    let early = op.store().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while early.running_agents().await.map_or(true, |a| a.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the session was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::signal(&child, nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIGINT must wait for the grace period"
    );
    common::signal(&child, nix::sys::signal::Signal::SIGINT);
    let done = eventually(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(done, "the second SIGINT did not stop the operator");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&op.workdir())
            .is_empty()),
        "agent processes left behind"
    );
    let store = op.store().await;
    let c = store.list_chains(&Default::default()).await.unwrap()[0].clone();
    assert_eq!(c.status, ChainStatus::Interrupted);
    // Its session is over too, not left `running`.
    let sessions = store.sessions(&c.id).await.unwrap();
    assert!(
        sessions.iter().all(|s| s.status != SessionStatus::Running),
        "{sessions:?}"
    );
    // A new chain while this one is incomplete: a warning naming it, and the run goes on.
    let out = op.run(&["run", "--task", "Other", "--scenario", "complete"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("an earlier chain is incomplete")
            && err.contains(&format!("operator run --resume {}", c.id)),
        "{err}"
    );
}

#[test]
fn an_ended_chain_resumed_by_id_gets_a_new_allowance_and_keeps_its_indices() {
    let op = Op::new();
    let out = op
        .cmd(&[
            "run",
            "--task",
            "Long",
            "--scenario",
            "incomplete",
            "--max-continuations",
            "1",
            "--json",
        ])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::MaxContinuations);
    assert_eq!(c.sessions.len(), 2);
    // `list` marks it resumable.
    let list = String::from_utf8_lossy(&op.run(&["list"]).stdout).into_owned();
    assert!(
        list.contains("max-continuations*") && list.contains("resumable"),
        "{list}"
    );
    // Naming it continues it, with the cost so far kept.
    let out = op
        .cmd(&["run", "--resume", &c.id, "--json"])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &chains(&out)[0];
    assert_eq!(r.id, c.id);
    assert_eq!(r.status, ChainStatus::Complete);
    assert_eq!(
        r.sessions.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(r.totals.cost_usd > c.totals.cost_usd);
    let complete = op.run(&["run", "--resume", &c.id]);
    assert_eq!(
        complete.status.code(),
        Some(2),
        "a complete chain is not resumable"
    );
    assert!(stderr(&complete).contains("nothing to resume"));
}

#[test]
fn resume_without_an_id_continues_a_chain_that_hit_its_limit_with_a_higher_one() {
    let op = Op::new();
    let out = op
        .cmd(&[
            "run",
            "--task",
            "Long",
            "--scenario",
            "incomplete",
            "--max-continuations",
            "1",
            "--json",
        ])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::MaxContinuations);
    // What a user does then: raise the limit and go on, without looking up the id.
    let out = op
        .cmd(&["run", "--resume", "--max-continuations", "5", "--json"])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("resuming chain {}", c.id)), "{err}");
    assert!(err.contains("simulated agent"), "the sim says so: {err}");
    let r = &chains(&out)[0];
    assert_eq!(r.id, c.id);
    assert_eq!(r.status, ChainStatus::Complete);
    assert_eq!(r.sessions.len(), 5);
    assert_eq!(r.config["max_continuations"], 5);
    // A complete chain is final: nothing is left to resume.
    let again = op.run(&["run", "--resume"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("no incomplete chain to resume"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_silent_agent_is_stopped_by_the_watchdog() {
    let op = Op::new();
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "hang",
            "--max-continuations",
            "0",
            "--json",
        ])
        .env("OPERATOR_IDLE_TIMEOUT", "600ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let s = &c.sessions[0];
    assert_eq!(s.status, SessionStatus::Failed);
    assert_eq!(s.error.as_deref(), Some("watchdog: no output for 600ms"));
    assert!(s.handoff_synthetic);
    assert!(processes_in(&op.workdir()).is_empty());
    // The same for a session that runs too long in all.
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "slow",
            "--max-continuations",
            "0",
            "--json",
        ])
        .env("OPERATOR_SIM__STEP", "100ms")
        .env("OPERATOR_SESSION_TIMEOUT", "700ms")
        .output()
        .unwrap();
    let c = &chains(&out)[0];
    assert_eq!(
        c.sessions[0].error.as_deref(),
        Some("watchdog: the session ran longer than 700ms")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_no_agent_is_left_and_the_chain_resumes() {
    let op = Op::new();
    // A hung agent would not notice that its operator died.
    let mut child = op
        .cmd(&["run", "--task", "Crash me", "--scenario", "hang"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || !processes_in(
        &op.workdir()
    )
    .is_empty()));
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    // Wait until the agent's process group is recorded, then kill the operator outright.
    let recorded = eventually(Duration::from_secs(10), || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(store.running_agents()))
            .map(|a| !a.is_empty())
            .unwrap_or(false)
    });
    assert!(recorded, "the agent's process group was not recorded");
    common::signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    // The agent dies with its operator (parent-death signal), even a hung one.
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&op.workdir())
            .is_empty()),
        "the agent outlived its operator"
    );
    // The next operator resumes the chain from the store.
    let out = op.run(&["run", "--resume", "--scenario", "complete", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
    assert_eq!(idx, [1, 2]);
    assert_eq!(c.sessions[0].status, SessionStatus::Interrupted);
    assert_eq!(c.sessions[1].status, SessionStatus::Completed);
}

#[test]
fn list_and_show_never_send_control_characters_to_the_terminal() {
    let op = Op::new();
    let task = "Title \u{1b}]0;pwned\u{7} and clear \u{1b}[2J then a bell \u{7}.";
    let out = op.run(&["run", "--task", task, "--scenario", "complete", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = chains(&out)[0].id.clone();
    for args in [vec!["list"], vec!["show", id.as_str()], vec!["status"]] {
        let out = op.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{args:?}: {text:?}"
        );
    }
    let show = String::from_utf8_lossy(&op.run(&["show", &id]).stdout).into_owned();
    assert!(show.contains("\\u{1b}]0;pwned"), "{show}");
}

/// A tool an agent started in a session of its own (`setsid`: out of the agent's process group,
/// out of the guard's reach) outlives a `kill -9` of the operator once the agent itself is gone;
/// the next operator finds it by the session's mark in its environment and stops it.
#[test]
fn what_an_agent_started_is_stopped_by_the_next_operator() {
    let op = Op::new();
    let script = op.write(
        "agent.sh",
        "#!/bin/sh\nsetsid sleep 300 &\nwhile read -r line; do :; done\n",
    );
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let mut child = op
        .cmd(&["run", "--task", "Build", "--agent", "claude"])
        .env("OPERATOR_CLAUDE_BIN", &script)
        .env("OPERATOR_SKIP_CREDENTIALS_CHECK", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The agent and its tool run in the workdir.
    assert!(
        eventually(Duration::from_secs(20), || processes_in(&op.workdir())
            .len()
            >= 2),
        "the agent and its tool never ran"
    );
    // Its session is recorded with its agent before the operator is killed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(op.store());
    assert!(
        eventually(Duration::from_secs(10), || rt
            .block_on(store.running_agents())
            .is_ok_and(|a| !a.is_empty())),
        "the agent was not recorded"
    );
    common::signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    // The agent dies with its operator; the tool in a session of its own does not.
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&op.workdir()).len()
            == 1),
        "{:?}",
        processes_in(&op.workdir())
    );
    // Any next run sweeps what the dead operator's sessions left behind.
    let out = op.run(&["run", "--task", "Other", "--scenario", "complete"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&op.workdir())
            .is_empty()),
        "a tool outlived the next operator's start: {:?}",
        processes_in(&op.workdir())
    );
}

/// A tool an agent started in its process group (a background `sleep` here, a build or a test run
/// for real) dies with the operator at once, even by `kill -9`: the operator's guard process
/// kills the groups it was told of when the operator is gone.
#[test]
fn what_an_agent_started_dies_with_the_operator() {
    let op = Op::new();
    let script = op.write(
        "agent.sh",
        "#!/bin/sh\nsleep 300 &\nwhile read -r line; do :; done\n",
    );
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let mut child = op
        .cmd(&["run", "--task", "Build", "--agent", "claude"])
        .env("OPERATOR_CLAUDE_BIN", &script)
        .env("OPERATOR_SKIP_CREDENTIALS_CHECK", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || processes_in(&op.workdir())
            .len()
            >= 2),
        "the agent and its tool never ran"
    );
    common::signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&op.workdir())
            .is_empty()),
        "a tool outlived its operator: {:?}",
        processes_in(&op.workdir())
    );
}
