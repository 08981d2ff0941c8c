//! The `claude` backend against the real Claude Code CLI, which talks to a fake Messages API in Rust.
//!
//! The CLI comes from the npm registry (`.ci/run` installs it and sets OPERATOR_TEST_CLAUDE_BIN).
//! In CI a missing CLI fails these tests; locally they are skipped with a loud message.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::cli::claude_bin;
use common::fake_api::{FakeApi, Step};
use common::{Op, chains, stderr};
use operator::model::{ChainRecord, ChainStatus, ErrorKind, SessionStatus};

/// Runs `operator <args>` with the claude agent pointed at `api`, with a fresh HOME.
async fn run_claude(op: &Op, api: &FakeApi, bin: &PathBuf, args: &[&str]) -> Output {
    run_claude_env(op, api, bin, args, &[]).await
}

/// The same, with more environment variables.
async fn run_claude_env(
    op: &Op,
    api: &FakeApi,
    bin: &PathBuf,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = claude_cmd(op, api, bin, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// `operator <args>` with the claude agent pointed at `api`, a fresh HOME and the
/// environment AGENT-PROTOCOL.md prescribes for tests.
fn claude_cmd(op: &Op, api: &FakeApi, bin: &PathBuf, args: &[&str]) -> std::process::Command {
    let home = op.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = op.cmd(args);
    cmd.env("OPERATOR_AGENT", "claude")
        .env("OPERATOR_CLAUDE_BIN", bin)
        .env("OPERATOR_PERMISSION_MODE", "bypassPermissions")
        .env("ANTHROPIC_BASE_URL", &api.url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "2")
        .env("IS_SANDBOX", "1")
        .env("HOME", &home)
        .env_remove("CLAUDECODE");
    cmd
}

const COMPLETE: &str = "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nWrote the greeting and checked it twice.\n\n### Remaining\nNothing.\n\n### Context\nNone.";

fn incomplete(n: u32) -> String {
    format!(
        "Part {n} done.\n\n## HANDOFF\n\n### Accomplished\nFinished part {n} of the work and tested it.\n\n### Remaining\n- part {}\n\n### Context\nThe marker is HANDOFF-MARKER-{n}.",
        n + 1
    )
}

/// All the text a request carries (messages and system), for assertions.
fn request_text(body: &serde_json::Value) -> String {
    let mut s = body["system"].to_string();
    s.push_str(&body["messages"].to_string());
    s
}

fn transcript(op: &Op, chain: &str, n: u32) -> String {
    std::fs::read_to_string(
        op.data_dir()
            .join(format!("chains/{chain}/session-{n}.jsonl")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_complete() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![Step::text(COMPLETE)], Step::text("unexpected")).await;
    let out = run_claude(&op, &api, &bin, &["run", "--task", "Say hi", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s = &c.sessions[0];
    assert!(s.handoff_complete && !s.handoff_synthetic && !s.asked_again);
    assert!(s.cost_usd > 0.0, "cost from the CLI's total_cost_usd");
    assert!(s.turns >= 1);
    let sid = s.session_id.clone().unwrap();
    assert!(transcript(&op, &c.id, 1).contains(&sid));
    // The prompt went in as a user message; the protocol is in the system prompt.
    let req = &api.scripted()[0];
    let text = request_text(req);
    assert!(text.contains("Say hi"));
    assert!(
        text.contains("AUTO-CONTINUATION PROTOCOL"),
        "the continuation protocol is not in the request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handoff_is_carried_to_the_next_session() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![Step::text(incomplete(1)), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(&op, &api, &bin, &["run", "--task", "Two parts", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    let reqs = api.scripted();
    assert_eq!(reqs.len(), 2);
    let second = request_text(&reqs[1]);
    assert!(
        second.contains("HANDOFF-MARKER-1"),
        "session 2's request lacks session 1's handoff"
    );
    assert!(
        !second.contains("Finished part 1 of the work and tested it.\"}],\"role\":\"assistant\""),
        "session 2 must start fresh, not resume"
    );
    assert_ne!(
        c.sessions[0].session_id, c.sessions[1].session_id,
        "a fresh session per process"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_handoff_is_asked_for_in_the_same_process() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![
            Step::text("I changed the files. All good."),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(
        &op,
        &api,
        &bin,
        &["run", "--task", "Forget the handoff", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.sessions.len(), 1);
    let s = &c.sessions[0];
    assert!(
        s.asked_again && !s.handoff_synthetic && s.handoff_complete,
        "{s:?}"
    );
    let reqs = api.scripted();
    assert_eq!(reqs.len(), 2);
    // The follow-up continues the same conversation: the earlier answer is in it.
    let follow = request_text(&reqs[1]);
    assert!(
        follow.contains("I changed the files. All good."),
        "the follow-up lost the conversation"
    );
    assert!(follow.contains("Write your handoff"));
    // … and the same CLI session.
    assert_eq!(
        transcript(&op, &c.id, 1)
            .matches("\"type\":\"result\"")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_turns_in_a_real_tool_loop_continues_the_chain() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![
            Step::bash("echo one"),
            Step::bash("echo two"),
            Step::text(incomplete(1)),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(
        &op,
        &api,
        &bin,
        &["run", "--task", "Loop", "--max-turns", "2", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s1 = &c.sessions[0];
    assert!(s1.hit_max_turns, "{s1:?}");
    assert!(s1.asked_again && !s1.handoff_synthetic, "{s1:?}");
    assert_eq!(s1.status, SessionStatus::Completed);
    // The CLI really ran the tool: its output went back to the API.
    let reqs = api.scripted();
    assert!(request_text(&reqs[1]).contains("tool_result"));
    assert!(request_text(&reqs[1]).contains("one"));
    assert!(request_text(&reqs[3]).contains("HANDOFF-MARKER-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_edits_a_file_in_the_workdir() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![
            Step::bash("echo made by the agent > agent-file.txt"),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(
        &op,
        &api,
        &bin,
        &["run", "--task", "Write a file", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let written = std::fs::read_to_string(op.workdir().join("agent-file.txt")).unwrap();
    assert_eq!(written.trim(), "made by the agent");
}

/// One session against an API that always fails; the chain, the output, and how many
/// agent-loop requests the CLI made.
async fn one_failing_session(status: u16, kind: &'static str) -> (ChainRecord, Output, usize) {
    let bin = claude_bin().unwrap();
    let op = Op::new();
    let api = FakeApi::start(vec![], Step::error(status, kind, format!("fake {status}"))).await;
    let out = run_claude(
        &op,
        &api,
        &bin,
        &[
            "run",
            "--task",
            "Fail",
            "--max-continuations",
            "0",
            "--json",
        ],
    )
    .await;
    (chains(&out)[0].clone(), out, api.scripted().len())
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_overload_are_transient_errors() {
    if claude_bin().is_none() {
        return;
    }
    for (status, kind) in [
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
    ] {
        let (c, out, _) = one_failing_session(status, kind).await;
        let s = &c.sessions[0];
        assert_eq!(
            s.status,
            SessionStatus::Failed,
            "{status}: {}",
            stderr(&out)
        );
        assert_eq!(s.error_kind, Some(ErrorKind::Transient), "{status}");
        assert!(
            s.error.as_deref().unwrap().contains(&status.to_string()),
            "{status}: {:?}",
            s.error
        );
        assert!(s.handoff_synthetic);
        assert_ne!(
            c.status,
            ChainStatus::Failed,
            "one transient failure does not fail the chain"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_is_a_fatal_error() {
    if claude_bin().is_none() {
        return;
    }
    let (c, out, requests) = one_failing_session(401, "authentication_error").await;
    // Exit 7: the agent's credentials (docs/running.md).
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(c.status, ChainStatus::Failed);
    assert!(
        c.reason.as_deref().unwrap().starts_with("fatal"),
        "{:?}",
        c.reason
    );
    assert_eq!(c.sessions[0].error_kind, Some(ErrorKind::Fatal));
    // Recognised at its first api_retry line and stopped there, not after the CLI's retries.
    assert!(
        c.sessions[0]
            .error
            .as_deref()
            .unwrap()
            .contains("authentication failed"),
        "{:?}",
        c.sessions[0].error
    );
    assert_eq!(requests, 1, "the CLI went on retrying");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cli_killed_from_outside_is_a_failed_session_and_the_chain_goes_on() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![Step::hang()], Step::text(COMPLETE)).await;
    let workdir = op.workdir();
    let seen = api.seen();
    let killer = tokio::task::spawn_blocking(move || {
        // Wait for the CLI to be waiting on the hanging answer, then kill it.
        let found = common::eventually(std::time::Duration::from_secs(60), || {
            !common::processes_in(&workdir).is_empty() && seen.scripted() >= 1
        });
        for pid in common::processes_in(&workdir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        found
    });
    let out = run_claude(&op, &api, &bin, &["run", "--task", "Hang", "--json"]).await;
    assert!(killer.await.unwrap(), "the CLI never started");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    // The killed attempt failed (no result line) and the session was retried, with its
    // index, and completed; the record is whole.
    assert_eq!(c.sessions.len(), 1);
    let s1 = &c.sessions[0];
    assert_eq!(
        (s1.status, s1.attempts),
        (SessionStatus::Completed, 2),
        "{s1:?}"
    );
    let t = transcript(&op, &c.id, 1);
    assert!(
        t.contains("\"attempt\":2,\"subtype\":\"attempt\""),
        "the retry is not in the transcript"
    );
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert!(
        log.contains("chain:session-retry") && log.contains("without a result"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_makes_the_summary_the_handoff_and_the_next_session_fresh() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    // The first answer reports a nearly full context: the CLI compacts before its next request.
    let api = FakeApi::start(
        vec![
            Step::bash("echo big").tokens(998_000),
            Step::text("Carrying on after the compaction."),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    api.set_compaction_summary(incomplete(1));
    let out = run_claude(&op, &api, &bin, &["run", "--task", "Compact", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s1 = &c.sessions[0];
    assert!(s1.pre_compacted, "{s1:?}");
    assert!(
        !s1.handoff_synthetic && !s1.asked_again,
        "the summary should be the handoff: {s1:?}"
    );
    // Our PreCompact answer shaped the summary request.
    let compaction: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.compaction)
        .collect();
    assert!(!compaction.is_empty(), "the CLI never asked for a summary");
    assert!(
        request_text(&compaction[0].body).contains("The session will end after this compaction")
    );
    // The next session starts fresh from it.
    let reqs = api.scripted();
    let last = reqs.last().unwrap();
    assert!(request_text(last).contains("HANDOFF-MARKER-1"));
    // Fresh: a new conversation, without session 1's tool calls or later text.
    let text = request_text(last);
    assert!(
        !text.contains("tool_result") && !text.contains("echo big"),
        "session 2 was not fresh"
    );
    assert!(
        !text.contains("Carrying on after the compaction."),
        "the handoff took text after it"
    );
    assert_eq!(c.sessions.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_the_cli_and_runs_a_tiny_session() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![Step::text(COMPLETE)], Step::text("unexpected")).await;
    let out = run_claude(&op, &api, &bin, &["doctor", "--session"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("2.1.328"), "{text}");
    assert!(
        text.contains("ANTHROPIC_API_KEY is set (not shown)") && !text.contains("sk-test"),
        "{text}"
    );
    assert!(text.contains("ok   test session     completed"), "{text}");
    assert_eq!(api.scripted().len(), 1);
    // Nothing of the test session is left in the user's data dir.
    assert!(!op.data_dir().join("operator.db").exists());
    // A bad binary is a clear failure.
    let out = run_claude(
        &op,
        &api,
        &bin,
        &["doctor", "--claude-bin", "/no/such/claude"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL claude CLI"));
}

#[tokio::test(flavor = "multi_thread")]
async fn continuation_resume_continues_the_agent_session_in_a_new_process() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![Step::text(incomplete(1)), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let args = [
        "run",
        "--task",
        "Resume me",
        "--max-continuations",
        "3",
        "--json",
    ];
    let out = run_claude_env(
        &op,
        &api,
        &bin,
        &args,
        &[("OPERATOR_CONTINUATION", "resume")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    // The same agent session, continued by a second process with --resume.
    assert_eq!(c.sessions[0].session_id, c.sessions[1].session_id);
    let reqs = api.scripted();
    let second = request_text(&reqs[1]);
    assert!(
        second.contains("Finished part 1 of the work"),
        "the resumed request lacks the earlier conversation"
    );
    assert!(
        second.contains("continuing your previous session"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_cli_no_longer_knows_is_started_fresh_from_the_handoff() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![Step::text(incomplete(1)), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let env = [("OPERATOR_CONTINUATION", "resume")];
    let first = [
        "run",
        "--task",
        "Resume me",
        "--max-continuations",
        "0",
        "--json",
    ];
    let out = run_claude_env(&op, &api, &bin, &first, &env).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = chains(&out)[0].clone();
    // The CLI's session files are gone (cleared, or another machine).
    std::fs::remove_dir_all(op.root.path().join("home/.claude/projects")).unwrap();
    let again = ["run", "--resume", "--max-continuations", "2", "--json"];
    let out = run_claude_env(&op, &api, &bin, &again, &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &chains(&out)[0];
    assert_eq!(r.id, c.id);
    assert_eq!(r.status, ChainStatus::Complete);
    assert_eq!(r.sessions.len(), 2);
    // One attempt on the dead id, then a fresh session from the handoff.
    assert_eq!(r.sessions[1].attempts, 2, "{:?}", r.sessions[1]);
    assert_ne!(r.sessions[1].session_id, r.sessions[0].session_id);
    let fresh = request_text(&api.scripted()[1]);
    assert!(fresh.contains("HANDOFF-MARKER-1"), "{fresh}");
}

/// A subscriber (OAuth login) at the end of a 5-hour window: the CLI reports a `rate_limit_event`
/// and its own wording; the chain stops at the announced reset (`--no-wait`), resumable.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_limit_is_read_from_the_structured_event() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![], Step::subscription_limit(4_000_000_000)).await;
    let mut cmd = claude_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Limit", "--no-wait", "--json"],
    );
    cmd.env_remove("ANTHROPIC_API_KEY").env(
        "CLAUDE_CODE_OAUTH_TOKEN",
        "sk-ant-oat01-fake-token-for-tests",
    );
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::WaitingLimit);
    // 4,000,000,000 s (plus the margin) is in 2096.
    assert!(
        c.reason.as_deref().unwrap().contains("2096"),
        "{:?}",
        c.reason
    );
    let t = transcript(&op, &c.id, 1);
    assert!(
        t.contains("rate_limit_event") && t.contains("\"rejected\""),
        "{t}"
    );
    assert!(t.contains("hit your"), "the CLI's own wording: {t}");
    assert_eq!(
        api.scripted().len(),
        1,
        "a subscription limit is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_waiting_for_a_usage_limit_is_visible_and_stops_cleanly() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    // A reset far ahead: the chain waits.
    let api = FakeApi::start(vec![], Step::usage_limit(4_000_000_000)).await;
    let mut cmd = claude_cmd(&op, &api, &bin, &["run", "--task", "Limit", "--json"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let waiting = common::eventually(std::time::Duration::from_secs(60), || {
        String::from_utf8_lossy(&op.run(&["list"]).stdout).contains("waiting")
    });
    assert!(waiting, "the chain never showed as waiting");
    let shown = op.run(&["list", "--json"]);
    let c: ChainRecord =
        serde_json::from_slice(shown.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(c.status, ChainStatus::Waiting);
    assert!(
        c.reason
            .as_deref()
            .unwrap()
            .starts_with("usage limit; trying again at 2096"),
        "{:?}",
        c.reason
    );
    let s = &c.sessions[0];
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("usage limit reached (until 2096"),
        "{:?}",
        s.error
    );
    // Not counted by the breaker: the session is recorded failed, the chain is not.
    common::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(chains(&out)[0].status, ChainStatus::Interrupted);
    assert_eq!(
        api.scripted().len(),
        3,
        "the CLI's own retries only: the operator waited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_keeps_working_instead_of_writing_its_handoff_is_interrupted() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    // No handoff, and when asked for one, tool call after tool call.
    let api = FakeApi::start(
        vec![Step::text("Did some work.")],
        Step::bash("echo still working"),
    )
    .await;
    let out = run_claude(
        &op,
        &api,
        &bin,
        &[
            "run",
            "--task",
            "Busy",
            "--max-continuations",
            "0",
            "--json",
        ],
    )
    .await;
    let c = &chains(&out)[0];
    let s = &c.sessions[0];
    assert!(
        s.asked_again && s.handoff_synthetic,
        "{s:?}\n{}",
        stderr(&out)
    );
    // 1 answer, then at most the budget of tool calls (+1 that trips it) before the interrupt.
    let n = api.scripted().len() as u32;

    assert!(
        n <= 2 + operator::session::FOLLOW_UP_TOOL_BUDGET,
        "{n} requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_is_retried_as_the_same_session() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    // Three 529s exhaust the CLI's own two retries: the attempt fails; the operator's retry
    // (after its backoff) gets the answer.
    let overloaded = || Step::error(529, "overloaded_error", "Overloaded");
    let api = FakeApi::start(
        vec![
            overloaded(),
            overloaded(),
            overloaded(),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(&op, &api, &bin, &["run", "--task", "Retry", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 1);
    let s = &c.sessions[0];
    assert_eq!(
        (s.index, s.attempts, s.status),
        (1, 2, SessionStatus::Completed)
    );
    assert!(s.handoff_complete && !s.handoff_synthetic);
    assert_eq!(api.scripted().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_limit_is_waited_out_and_the_session_tried_again() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 4;
    // The CLI retries the 429 twice itself; then the operator waits for the reset.
    let limit = || Step::usage_limit(reset);
    let api = FakeApi::start(
        vec![limit(), limit(), limit(), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude_env(
        &op,
        &api,
        &bin,
        &["run", "--task", "Wait", "--json"],
        &[("OPERATOR_USAGE_LIMIT_MARGIN", "0s")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s = &c.sessions[0];
    assert_eq!(
        (s.index, s.attempts, s.status),
        (1, 2, SessionStatus::Completed)
    );
    // It waited (visible as `waiting`), and tried again only after the reset.
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert!(log.contains("chain:waiting"), "{log}");
    let ended = humantime::parse_rfc3339(s.ended_at.as_deref().unwrap()).unwrap();
    assert!(
        ended >= std::time::UNIX_EPOCH + std::time::Duration::from_secs(reset),
        "tried again before the reset"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_of_the_operator_the_cli_dies_too_and_the_chain_resumes() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![Step::hang()], Step::text(COMPLETE)).await;
    let cmd = claude_cmd(&op, &api, &bin, &["run", "--task", "Crash"]);
    let workdir = op.workdir();
    let seen = api.seen();
    // Killed while the CLI waits on the hanging answer.
    tokio::task::spawn_blocking(move || {
        common::kill_9_mid_session(cmd, &workdir, || seen.scripted() >= 1)
    })
    .await
    .unwrap();
    let mut cmd = claude_cmd(&op, &api, &bin, &["run", "--resume", "--json"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(
        c.sessions.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(c.sessions[0].status, SessionStatus::Interrupted);
}

#[tokio::test(flavor = "multi_thread")]
async fn bypass_permissions_refused_as_root_is_a_fatal_error() {
    let Some(bin) = claude_bin() else { return };
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let op = Op::new();
    let api = FakeApi::start(vec![], Step::text(COMPLETE)).await;
    // Without IS_SANDBOX=1, the CLI refuses bypassPermissions as root before it starts.
    let mut cmd = claude_cmd(&op, &api, &bin, &["run", "--task", "T", "--json"]);
    cmd.env_remove("IS_SANDBOX");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert!(
        c.reason.as_deref().unwrap().contains("root/sudo"),
        "{:?}",
        c.reason
    );
    assert_eq!(
        (c.sessions.len(), c.sessions[0].attempts),
        (1, 1),
        "a refusal is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_absorbs_two_529s_and_the_session_completes_first_time() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let overloaded = || Step::error(529, "overloaded_error", "Overloaded");
    let api = FakeApi::start(
        vec![overloaded(), overloaded(), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(&op, &api, &bin, &["run", "--task", "T", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = &chains(&out)[0].sessions[0];
    assert_eq!((s.attempts, s.status), (1, SessionStatus::Completed));
    assert!(
        stderr(&out).contains("the agent is retrying an API call"),
        "the api_retry lines were not seen"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_then_success_is_retried_by_the_operator() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let limited = || Step::error(429, "rate_limit_error", "Too many requests");
    let api = FakeApi::start(
        vec![limited(), limited(), limited(), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let out = run_claude(&op, &api, &bin, &["run", "--task", "T", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = &chains(&out)[0].sessions[0];
    assert_eq!((s.attempts, s.status), (2, SessionStatus::Completed));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_api_is_caught_by_the_watchdog() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![Step::hang()], Step::text(COMPLETE)).await;
    let out = run_claude_env(
        &op,
        &api,
        &bin,
        &["run", "--task", "T", "--json"],
        &[("OPERATOR_IDLE_TIMEOUT", "3s")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let s = &c.sessions[0];
    assert_eq!(
        (s.attempts, s.status),
        (2, SessionStatus::Completed),
        "{s:?}"
    );
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert!(log.contains("watchdog: no output for 3s"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_failed_sessions_open_the_breaker_with_the_real_cli() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![],
        Step::error(500, "api_error", "Internal server error"),
    )
    .await;
    let out = run_claude_env(
        &op,
        &api,
        &bin,
        &["run", "--task", "T", "--json"],
        &[("OPERATOR_MAX_ATTEMPTS", "1")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert_eq!(c.sessions.len(), 3);
    let reason = c.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("circuit-open: 3 consecutive failed sessions"),
        "{reason}"
    );
    assert_eq!(reason.matches("500").count(), 3, "{reason}");
}

/// `total_cost_usd` of the last result line of a transcript (the CLI's own total).
fn cli_total(op: &Op, chain: &str, n: u32) -> f64 {
    transcript(op, chain, n)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "result")
        .filter_map(|v| v["total_cost_usd"].as_f64())
        .next_back()
        .expect("a result line with total_cost_usd")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_equals_the_clis_own_totals_across_resumes() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![
            Step::text(incomplete(1)),
            Step::text(incomplete(2)),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    // One session per run: the chain is resumed twice; a resume never resets what it spent.
    let out = run_claude(
        &op,
        &api,
        &bin,
        &[
            "run",
            "--task",
            "Three parts",
            "--max-continuations",
            "0",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let id = chains(&out)[0].id.clone();
    for expect in [3, 0] {
        let out = run_claude(
            &op,
            &api,
            &bin,
            &["run", "--resume", &id, "--max-continuations", "0", "--json"],
        )
        .await;
        assert_eq!(out.status.code(), Some(expect), "{}", stderr(&out));
    }
    let store = op.store().await;
    use operator::store::Store;
    let c = store.get_chain(&id).await.unwrap().unwrap();
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 3);
    let cli: f64 = (1..=3).map(|n| cli_total(&op, &id, n)).sum();
    assert!(cli > 0.0);
    assert!(
        (c.totals.cost_usd - cli).abs() < 1e-9,
        "ledger {} vs the CLI's {cli}",
        c.totals.cost_usd
    );
    for s in &c.sessions {
        assert!((s.cost_usd - cli_total(&op, &id, s.index)).abs() < 1e-9);
    }
    // `operator costs` prints the same ledger.
    let out = op.run(&["costs", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (report["allTime"]["costUsd"].as_f64().unwrap() - cli).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(report["allTime"]["sessions"], 3);
    assert_eq!(report["byChain"][0]["chainId"], id.as_str());
    let text = String::from_utf8(op.run(&["costs"]).stdout).unwrap();
    assert!(
        text.contains("forecast") && text.contains("a session (3 sessions so far)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verify_gate_reaches_the_real_cli_in_the_next_prompt() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(
        vec![
            Step::text(COMPLETE),
            Step::text(COMPLETE.replace("twice", "three times")),
        ],
        Step::text("unexpected"),
    )
    .await;
    let gate = "if [ -f .gate-seen ]; then exit 0; else touch .gate-seen; echo 'assertion failed: greeting == \"hi\"'; exit 101; fi";
    let out = run_claude_env(
        &op,
        &api,
        &bin,
        &["run", "--task", "Say hi", "--json"],
        &[("OPERATOR_VERIFY", gate)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    let second = request_text(&api.scripted()[1]);
    assert!(
        second.contains("assertion failed: greeting"),
        "the gate's output is not in the prompt"
    );
    assert!(second.contains("exit code 101"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_mission_runs_on_the_real_cli_as_a_new_user_and_ticks_each_item() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let w = op.workdir();
    let git = |args: &[&str]| common::repo::git(&w, args);
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(
        w.join("TASKS.md"),
        "- [ ] Add a README\n  One paragraph on what this is.\n- [ ] Add a LICENSE (after: add a readme)\n",
    )
    .unwrap();
    git(&["add", "TASKS.md"]);
    git(&[
        "-c",
        "user.name=U",
        "-c",
        "user.email=u@example.com",
        "commit",
        "-q",
        "-m",
        "tasks",
    ]);
    let m = op.write("tasks.toml", "name = \"tasks\"\nbacklog = \"TASKS.md\"\n");
    let api = FakeApi::start(vec![], Step::text(COMPLETE)).await;
    // Default settings: no agent, no permission mode, no flag a new user would not know.
    let cmd = common::user_cmd(&op, &api, &bin, &["run", m.to_str().unwrap(), "--json"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 2);
    let readme = cs.iter().find(|c| c.name == "add-a-readme").unwrap();
    let license = cs.iter().find(|c| c.name == "add-a-license").unwrap();
    assert_eq!(readme.config["agent"], "claude");
    assert!(license.sessions[0].started_at >= readme.sessions[0].ended_at.clone().unwrap());
    for c in &cs {
        assert_eq!(
            c.status,
            ChainStatus::Complete,
            "{}: {:?}",
            c.name,
            c.reason
        );
    }
    // The CLI was asked with each item's task.
    let asked: Vec<String> = api.scripted().iter().map(request_text).collect();
    assert!(
        asked
            .iter()
            .any(|t| t.contains("One paragraph on what this is."))
    );
    assert!(asked.iter().any(|t| t.contains("Add a LICENSE")));
    // By default a mission runs its chains at once, so in one repository each item worked in a
    // worktree on its own branch, and its tick went with its work: on that branch, not on main
    // (`merge_queue` lands both).
    let branches = git(&[
        "for-each-ref",
        "--format=%(refname:short)",
        "refs/heads/operator/",
    ]);
    for (c, ticked) in [
        (readme, "- [x] Add a README"),
        (license, "- [x] Add a LICENSE"),
    ] {
        let suffix = c.id.rsplit('-').next().unwrap();
        let branch = branches
            .lines()
            .find(|b| b.ends_with(suffix))
            .unwrap_or_else(|| panic!("no branch of {}: {branches}", c.name));
        let text = git(&["show", &format!("{branch}:TASKS.md")]);
        assert!(text.contains(ticked), "{branch}: {text}");
        assert_eq!(text.matches("[x]").count(), 1, "{branch}: {text}");
    }
    assert!(
        !std::fs::read_to_string(w.join("TASKS.md"))
            .unwrap()
            .contains("[x]")
    );
}
