//! The `gemini` backend against the real Gemini CLI (pinned, from npm), which talks to a fake
//! Gemini API in Rust. The operator runs it as a new user would: `--agent gemini`, the default
//! permission mode; the CLI reaches the fake through `GOOGLE_GEMINI_BASE_URL`.
//!
//! `.ci/run` installs the CLI and sets OPERATOR_TEST_GEMINI_BIN. In CI a missing CLI fails these
//! tests; locally they are skipped with a loud message.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::cli::gemini_bin;
use common::fake_gemini::{FakeGemini, Step, request_text};
use common::{Op, chains, stderr};
use operator::model::{ChainStatus, ErrorKind, SessionStatus};

const COMPLETE: &str = "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nWrote the notes and checked them twice.\n\n### Remaining\nNothing.\n\n### Context\nNone.";

fn incomplete(n: u32) -> String {
    format!(
        "Part {n} done.\n\n## HANDOFF\n\n### Accomplished\nFinished part {n} of the work and tested it.\n\n### Remaining\n- part {}\n\n### Context\nThe marker is HANDOFF-MARKER-{n}.",
        n + 1
    )
}

/// `operator <args>` with `--agent gemini` as a user runs it: the CLI's binary, a key, and the
/// fake's address. Nothing else: the default permission mode.
fn gemini_cmd(op: &Op, api: &FakeGemini, bin: &Path, args: &[&str]) -> Command {
    let home = op.root.path().join("home");
    FakeGemini::prepare_home(&home);
    let mut cmd = op.cmd(args);
    cmd.env("OPERATOR_AGENT", "gemini")
        .env("OPERATOR_GEMINI_BIN", bin)
        .env("GEMINI_API_KEY", "test-key")
        .env("GOOGLE_GEMINI_BASE_URL", &api.url)
        .env("HOME", &home);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn transcript(op: &Op, chain: &str, n: u32) -> String {
    std::fs::read_to_string(
        op.data_dir()
            .join(format!("chains/{chain}/session-{n}.jsonl")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_joined_by_a_handoff_edit_the_workdir_and_nothing_outside() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let outside = op.root.path().join("outside.txt");
    let api = FakeGemini::start(
        vec![
            Step::write_file(&op.workdir().join("notes.txt"), "written by the agent"),
            Step::write_file(&outside, "bad"),
            Step::text(incomplete(1)),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Write the notes", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    let notes = std::fs::read_to_string(op.workdir().join("notes.txt")).unwrap();
    assert_eq!(notes, "written by the agent");
    assert!(
        !outside.exists(),
        "a write outside the workdir went through"
    );
    let reqs = api.requests();
    let first = request_text(&reqs[0]);
    assert!(first.contains("Write the notes") && first.contains("AUTO-CONTINUATION PROTOCOL"));
    // The refusal reached the model as the tool's error.
    assert!(request_text(&reqs[2]).contains("Path not in workspace"));
    let second = request_text(reqs.last().unwrap());
    assert!(second.contains("HANDOFF-MARKER-1"), "{second}");
    for s in &c.sessions {
        assert_eq!(s.status, SessionStatus::Completed);
        assert!(!s.handoff_synthetic && !s.asked_again);
        assert!(s.cost_usd > 0.0, "priced from the result's stats");
        let id = s.session_id.clone().expect("the session id");
        assert!(transcript(&op, &c.id, s.index).contains(&id));
    }
    assert!(c.sessions[1].handoff_complete);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_handoff_is_asked_for_by_resuming_the_session() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(
        vec![
            Step::text("I did the work but forgot the handoff."),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Forgetful", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 1);
    let s = &c.sessions[0];
    assert!(s.asked_again && !s.handoff_synthetic && s.handoff_complete);
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    let follow_up = request_text(&reqs[1]);
    assert!(
        follow_up.contains("forgot the handoff") && follow_up.contains("Forgetful"),
        "the follow-up continues the same session: {follow_up}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_is_fatal_in_one_attempt() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(vec![], Step::unauthorized()).await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Key", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    let s = &c.sessions[0];
    assert_eq!((s.attempts, s.error_kind), (1, Some(ErrorKind::Fatal)));
    let error = s.error.as_deref().unwrap();
    assert!(error.contains("GEMINI_API_KEY"), "{error}");
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_is_retried_and_the_session_completes() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(
        vec![Step::rate_limited(), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Busy", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    // The CLI retried the 429 itself (after the delay it suggests, at least 5 s).
    assert_eq!(c.sessions[0].attempts, 1);
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_quota_waits_for_midnight_pacific_time() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(vec![], Step::daily_quota()).await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Quota", "--no-wait", "--json"],
    ))
    .await;
    // --no-wait: the chain ends `waiting-limit` with the reset it would wait for.
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::WaitingLimit);
    let tz = jiff::tz::TimeZone::get("America/Los_Angeles").unwrap();
    let midnight = jiff::Timestamp::now()
        .to_zoned(tz.clone())
        .date()
        .tomorrow()
        .unwrap()
        .at(0, 0, 0, 0)
        .to_zoned(tz)
        .unwrap()
        .timestamp()
        + jiff::SignedDuration::from_mins(1);
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(midnight.as_second() as u64),
    )
    .to_string();
    assert!(
        c.reason.as_deref().unwrap().contains(&when),
        "{:?} should name {when}",
        c.reason
    );
    assert_eq!(api.requests().len(), 1, "a daily quota is not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_of_the_operator_no_agent_is_left_and_the_chain_resumes() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(vec![Step::Hang], Step::text(COMPLETE)).await;
    // Killed while the CLI waits on the hanging answer.
    common::kill_9_mid_session(
        gemini_cmd(&op, &api, &bin, &["run", "--task", "Crash"]),
        &op.workdir(),
        || !api.requests().is_empty(),
    );
    let out = output(gemini_cmd(&op, &api, &bin, &["run", "--resume", "--json"])).await;
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
async fn doctor_checks_the_gemini_setup_and_runs_a_tiny_session() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(vec![], Step::text(COMPLETE)).await;
    let out = output(gemini_cmd(
        &op,
        &api,
        &bin,
        &["doctor", "--agent", "gemini", "--session"],
    ))
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0.61.0"), "{text}");
    assert!(text.contains("GEMINI_API_KEY is set"), "{text}");
    assert!(text.contains("auto_edit"), "{text}");
    assert!(!text.contains("test-key"), "the key was shown: {text}");
    assert_eq!(api.requests().len(), 1, "the tiny session");
    let mut cmd = gemini_cmd(&op, &api, &bin, &["run", "--task", "No key"]);
    cmd.env_remove("GEMINI_API_KEY");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("GEMINI_API_KEY"), "{}", stderr(&out));
    assert_eq!(api.requests().len(), 1, "nothing started");
}

/// `continuation = "resume"`: the next session continues the agent's own session
/// (`--resume <session_id>`), so its request carries the first session's conversation.
#[tokio::test(flavor = "multi_thread")]
async fn continuation_resume_continues_the_session_in_a_new_process() {
    let Some(bin) = gemini_bin() else { return };
    let op = Op::new();
    let api = FakeGemini::start(
        vec![Step::text(incomplete(1)), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = gemini_cmd(&op, &api, &bin, &["run", "--task", "Resume me", "--json"]);
    cmd.env("OPERATOR_CONTINUATION", "resume");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    assert_eq!(c.sessions[0].session_id, c.sessions[1].session_id);
    let second = request_text(&api.requests()[1]);
    assert!(
        second.contains("Resume me") && second.contains("HANDOFF-MARKER-1"),
        "the whole session: {second}"
    );
}
