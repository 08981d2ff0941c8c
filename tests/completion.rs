//! Completion you can trust, on the sim agent: verify gates, stale COMPLETEs, no-progress detection,
//! and a usage limit that holds every chain of the account.

mod common;

use common::{Op, chains, stderr};
use operator::model::ChainStatus;
use operator::store::Store;

fn mission(op: &Op, body: &str) -> String {
    op.write("mission.toml", body).display().to_string()
}

#[tokio::test]
async fn a_verify_gate_failing_once_sends_the_chain_on_with_the_failure() {
    let op = Op::new();
    // Fails the first time (and says why), passes after.
    let gate = "if [ -f .gate-seen ]; then echo all green; else touch .gate-seen; echo 'test parser::tokens ... FAILED (3 errors)'; exit 1; fi";
    let m = mission(
        &op,
        &format!(
            "name = \"m\"\n[defaults]\nsim = {{ scenario = \"complete\" }}\nverify = [\"true\", {gate:?}]\n[[chain]]\nname = \"a\"\ntask = \"Fix the parser\"\n"
        ),
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2, "the failed gate cost one more session");
    assert!(
        c.sessions.iter().all(|s| s.error.is_none()),
        "a failed gate is not a failed session"
    );
    let store = op.store().await;
    let prompt = store.session_prompt(&c.id, 2).await.unwrap().unwrap();
    assert!(
        prompt.contains("test parser::tokens ... FAILED (3 errors)"),
        "{prompt}"
    );
    assert!(prompt.contains("exit code 1"), "{prompt}");
    // The final record shows which gates passed.
    let c = store.get_chain(&c.id).await.unwrap().unwrap();
    assert_eq!(c.verify.len(), 2);
    assert!(
        c.verify.iter().all(|g| g.passed && g.session == 2),
        "{:?}",
        c.verify
    );
    assert_eq!(c.verify[1].output_tail.trim(), "all green");
    let events = store.events(Some(&c.id), 0, 200).await.unwrap();
    let verdicts: Vec<bool> = events
        .iter()
        .filter(|e| e.kind == "chain:verify")
        .map(|e| e.data["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(verdicts, [false, true]);
}

#[tokio::test]
async fn a_stale_complete_is_not_believed() {
    let op = Op::new();
    // The agent says COMPLETE, a gate fails, and it says the very same thing again, changing
    // nothing: the second COMPLETE is not believed (the gate is not even consulted).
    let m = mission(
        &op,
        "name = \"m\"\n[defaults]\nsim = { scenario = \"lazy-complete\" }\nverify = [\"exit 1\"]\nmax_continuations = 2\nno_progress_sessions = 0\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::MaxContinuations);
    assert!(
        c.reason.as_deref().unwrap().contains("a stale COMPLETE"),
        "{:?}",
        c.reason
    );
    let store = op.store().await;
    let events = store.events(Some(&c.id), 0, 200).await.unwrap();
    let stale: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == "chain:stale-complete")
        .filter_map(|e| e.session_index)
        .collect();
    assert_eq!(stale, [2, 3]);
    assert_eq!(
        events.iter().filter(|e| e.kind == "chain:verify").count(),
        1
    );
    let prompt = store.session_prompt(&c.id, 3).await.unwrap().unwrap();
    assert!(prompt.contains("was not believed"), "{prompt}");
}

#[tokio::test]
async fn sessions_that_change_nothing_stop_the_chain_as_no_progress() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "Go nowhere",
        "--scenario",
        "stuck",
        "--max-continuations",
        "10",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    let reason = c.reason.as_deref().unwrap();
    assert!(reason.starts_with("no-progress: 3 sessions"), "{reason}");
    assert!(
        reason.contains("file sizes and modification times"),
        "the record says what was measured: {reason}"
    );
    // Session 1 is progress (a first handoff); 2, 3 and 4 change nothing.
    assert_eq!(c.sessions.len(), 4);

    // The same agent writing a file each session is making progress.
    let op = Op::new();
    let m = mission(
        &op,
        "name = \"m\"\n[defaults]\nsim = { scenario = \"stuck\", write = \"notes.md\" }\nmax_continuations = 4\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(chains(&out)[0].status, ChainStatus::MaxContinuations);
}

fn time_of(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[tokio::test]
async fn a_usage_limit_on_one_chain_holds_every_chain_of_the_account() {
    let op = Op::new();
    let m = mission(
        &op,
        "name = \"three\"\nconcurrency = 3\n[defaults]\nsim = { scenario = \"usage-limit\", complete_after = 2 }\n\
         [[chain]]\nname = \"a\"\ntask = \"A\"\n[[chain]]\nname = \"b\"\ntask = \"B\"\n[[chain]]\nname = \"c\"\ntask = \"C\"\n",
    );
    let out = op
        .cmd(&["run", &m, "--json"])
        .env("OPERATOR_USAGE_LIMIT_MARGIN", "100ms")
        .env("OPERATOR_RELEASE_JITTER", "300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 3);
    assert!(cs.iter().all(|c| c.status == ChainStatus::Complete));
    let store = op.store().await;
    // One chain hit the limit: its session 1 was tried again under the same index.
    let hit: Vec<_> = cs.iter().filter(|c| c.sessions[0].attempts == 2).collect();
    assert_eq!(hit.len(), 1, "{cs:?}");
    assert!(
        cs.iter().all(|c| c.sessions.len() == 3),
        "a wait is not a continuation"
    );
    assert!(cs.iter().all(|c| {
        c.sessions
            .iter()
            .all(|s| s.error.is_none() || s.attempts > 1)
    }));
    let hit_events = store.events(Some(&hit[0].id), 0, 200).await.unwrap();
    let reset = hit_events
        .iter()
        .find(|e| e.kind == "chain:waiting")
        .map(|e| time_of(e.data["until"].as_str().unwrap()))
        .expect("the chain that hit the limit waited");
    // The two others were held too: no session of theirs started before the reset.
    for c in cs.iter().filter(|c| c.id != hit[0].id) {
        let events = store.events(Some(&c.id), 0, 200).await.unwrap();
        let held = events
            .iter()
            .find(|e| e.kind == "chain:waiting" && e.data["account"] == true)
            .unwrap_or_else(|| panic!("chain {} was not held: {events:?}", c.name));
        assert!(
            held.data["reason"].as_str().unwrap().contains(&hit[0].id),
            "{:?}",
            held.data
        );
        for s in &c.sessions[1..] {
            assert!(
                time_of(&s.started_at) >= reset - std::time::Duration::from_secs(1),
                "chain {} started session {} at {} before the reset",
                c.name,
                s.index,
                s.started_at
            );
        }
    }
}

#[tokio::test]
async fn no_wait_ends_the_chain_at_a_usage_limit_and_resume_goes_on() {
    let op = Op::new();
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "usage-limit",
        "--no-wait",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::WaitingLimit);
    assert!(c.reason.as_deref().unwrap().contains("usage limit"));
    let out = op.run(&["run", "--resume", &c.id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(chains(&out)[0].status, ChainStatus::Complete);
}

#[tokio::test]
async fn a_half_open_breaker_probes_once_after_its_cool_down() {
    // A probe that succeeds closes the breaker and the chain goes on.
    let op = Op::new();
    let m = mission(
        &op,
        "name = \"m\"\n[defaults]\nsim = { scenario = \"flaky\" }\nmax_attempts = 1\nbreaker_cooldown = \"300ms\"\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 4, "three failures, then the probe");
    let kinds: Vec<String> = op
        .store()
        .await
        .events(Some(&c.id), 0, 200)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("chain:breaker"))
        .collect();
    assert_eq!(kinds, ["chain:breaker-half-open", "chain:breaker-closed"]);

    // A probe that fails ends the chain; without a cool-down there is no probe at all.
    let op = Op::new();
    let m = mission(
        &op,
        "name = \"m\"\n[defaults]\nsim = { scenario = \"error\" }\nmax_attempts = 1\nbreaker_cooldown = \"200ms\"\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.sessions.len(), 4);
    let reason = c.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("circuit-open") && reason.contains("probe"),
        "{reason}"
    );
    let out = op.run(&["run", "--task", "T", "--scenario", "error", "--json"]);
    let c = &chains(&out)[0];
    assert_eq!(
        c.sessions.len(),
        3,
        "off by default: three failures end the chain"
    );

    // The breaker's state does not leak into the next run: a resume starts counting again.
    // Session 4 fails (its three attempts are `flaky`'s three failures): with the old count
    // that would open the breaker at once; counted afresh, session 5 runs and completes.
    let out = op.run(&["run", "--resume", &c.id, "--scenario", "flaky", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 5, "{:?}", c.reason);
}

#[tokio::test]
async fn quiet_hours_and_a_cap_on_sessions_at_once_hold_sessions_back() {
    let op = Op::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hms = |s: u64| {
        let s = s % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    };
    // A quiet window from a second ago to two seconds from now (UTC).
    let quiet = format!("{}-{}", hms(now - 1), hms(now + 2));
    let m = mission(
        &op,
        "name = \"two\"\nconcurrency = 2\n[defaults]\nsim = { scenario = \"incomplete\", complete_after = 1 }\n\
         [[chain]]\nname = \"a\"\ntask = \"A\"\n[[chain]]\nname = \"b\"\ntask = \"B\"\n",
    );
    let out = op
        .cmd(&["run", &m, "--json"])
        .env("OPERATOR_QUIET_HOURS", &quiet)
        .env("OPERATOR_MAX_CONCURRENT_SESSIONS", "1")
        .env("OPERATOR_RELEASE_JITTER", "50ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    let store = op.store().await;
    let mut spans = Vec::new();
    for c in &cs {
        let events = store.events(Some(&c.id), 0, 100).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.kind == "chain:waiting" && e.data["reason"] == "quiet hours"),
            "{events:?}"
        );
        for s in &c.sessions {
            assert!(
                time_of(&s.started_at)
                    >= std::time::UNIX_EPOCH + std::time::Duration::from_secs(now + 2)
            );
            spans.push((
                time_of(&s.started_at),
                time_of(s.ended_at.as_deref().unwrap()),
            ));
        }
    }
    // One session of the account at a time: no two sessions overlap.
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "sessions overlap: {w:?}");
    }
}
