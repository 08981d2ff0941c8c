//! The `codex` backend against the real Codex CLI (pinned, from npm), which talks to a fake OpenAI
//! Responses API in Rust. The operator runs it as a new user would: `--agent codex`, default
//! permission mode; the CLI finds the endpoint in its own `$CODEX_HOME/config.toml`.
//!
//! `.ci/run` installs the CLI and sets OPERATOR_TEST_CODEX_BIN. In CI a missing CLI fails these
//! tests; locally they are skipped with a loud message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::codex_bin;
use common::fake_openai::{FakeOpenAi, Step, request_text};
use common::{Op, chains, stderr};
use operator::model::{ChainStatus, ErrorKind, SessionStatus};

const COMPLETE: &str = "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nWrote the notes and checked them twice.\n\n### Remaining\nNothing.\n\n### Context\nNone.";

fn incomplete(n: u32) -> String {
    format!(
        "Part {n} done.\n\n## HANDOFF\n\n### Accomplished\nFinished part {n} of the work and tested it.\n\n### Remaining\n- part {}\n\n### Context\nThe marker is HANDOFF-MARKER-{n}.",
        n + 1
    )
}

/// `operator <args>` with `--agent codex` as a user runs it: the CLI's binary, a key, and a fresh
/// `CODEX_HOME` whose config.toml points at the fake. Nothing else: the default permission mode.
fn codex_cmd(op: &Op, api: &FakeOpenAi, bin: &Path, args: &[&str]) -> Command {
    let home = op.root.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("config.toml"), api.codex_config()).unwrap();
    let mut cmd = op.cmd(args);
    cmd.env("OPERATOR_AGENT", "codex")
        .env("OPERATOR_CODEX_BIN", bin)
        .env("OPENAI_API_KEY", "sk-test")
        .env("CODEX_HOME", &home)
        .env("HOME", op.root.path().join("home"));
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

fn bin() -> Option<PathBuf> {
    codex_bin()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_joined_by_a_handoff_edit_the_workdir_and_nothing_outside() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let outside = op.root.path().join("outside.txt");
    let api = FakeOpenAi::start(
        vec![
            Step::add_file("notes.txt", "written by the agent's patch"),
            Step::shell("echo hi > bash.txt"),
            Step::shell(format!("echo bad > {}", outside.display())),
            Step::text(incomplete(1)),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = output(codex_cmd(
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
    // The agent's own tools changed the workdir; the sandbox kept it there.
    let notes = std::fs::read_to_string(op.workdir().join("notes.txt")).unwrap();
    assert_eq!(notes.trim(), "written by the agent's patch");
    assert_eq!(
        std::fs::read_to_string(op.workdir().join("bash.txt"))
            .unwrap()
            .trim(),
        "hi"
    );
    assert!(
        !outside.exists(),
        "the default sandbox let a write outside the workdir through"
    );
    let reqs = api.requests();
    // The first request carries the task and the continuation protocol; the second session's
    // carries the first one's handoff.
    let first = request_text(&reqs[0]);
    assert!(first.contains("Write the notes") && first.contains("AUTO-CONTINUATION PROTOCOL"));
    let second = request_text(reqs.last().unwrap());
    assert!(second.contains("HANDOFF-MARKER-1"), "{second}");
    for s in &c.sessions {
        assert_eq!(s.status, SessionStatus::Completed);
        assert!(!s.handoff_synthetic && !s.asked_again);
        assert!(s.cost_usd > 0.0, "priced from the turn's usage");
        let thread = s.session_id.clone().expect("the thread id");
        assert!(transcript(&op, &c.id, s.index).contains(&thread));
    }
    assert!(c.sessions[1].handoff_complete);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_handoff_is_asked_for_by_resuming_the_thread() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let api = FakeOpenAi::start(
        vec![
            Step::text("I did the work but forgot the handoff."),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = output(codex_cmd(
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
    // The follow-up continued the same thread: its request holds the first turn and the ask.
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    let follow_up = request_text(&reqs[1]);
    assert!(
        follow_up.contains("forgot the handoff") && follow_up.contains("Forgetful"),
        "{follow_up}"
    );
    assert!(follow_up.contains("HANDOFF"), "the ask itself");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_is_fatal_in_one_attempt() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let api = FakeOpenAi::start(vec![], Step::unauthorized()).await;
    let out = output(codex_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Key", "--json"],
    ))
    .await;
    // Exit 7: the agent's credentials (docs/running.md).
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    let s = &c.sessions[0];
    assert_eq!((s.attempts, s.error_kind), (1, Some(ErrorKind::Fatal)));
    let error = s.error.as_deref().unwrap();
    assert!(
        error.contains("401") && error.contains("codex login"),
        "{error}"
    );
    // Stopped at the CLI's first retry, not after its five.
    assert!(api.requests().len() <= 2, "{}", api.requests().len());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_past_the_clis_own_retries_are_retried_by_the_operator() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    // The CLI tries six times (its first and five retries), then the turn fails.
    let mut script = vec![Step::rate_limited(); 6];
    script.push(Step::text(COMPLETE));
    let api = FakeOpenAi::start(script, Step::text("unexpected")).await;
    let out = output(codex_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Busy", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s = &c.sessions[0];
    assert_eq!(
        (s.index, s.attempts, s.status),
        (1, 2, SessionStatus::Completed)
    );
    assert_eq!(api.requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_limit_is_waited_out_and_the_session_tried_again() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let api = FakeOpenAi::start(
        vec![Step::usage_limit(reset), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = codex_cmd(&op, &api, &bin, &["run", "--task", "Wait", "--json"]);
    cmd.env("OPERATOR_USAGE_LIMIT_MARGIN", "1s");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let s = &c.sessions[0];
    assert_eq!(
        (s.index, s.attempts, s.status),
        (1, 2, SessionStatus::Completed)
    );
    // The CLI does not retry a usage limit; the operator waited for its reset (the CLI says
    // the time of day, to the minute).
    assert_eq!(api.requests().len(), 2);
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert!(log.contains("chain:waiting"), "{log}");
    assert!(transcript(&op, &c.id, 1).contains("usage limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_of_the_operator_no_agent_is_left_and_the_chain_resumes() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let api = FakeOpenAi::start(vec![Step::Hang], Step::text(COMPLETE)).await;
    // Killed while the CLI waits on the hanging answer.
    common::kill_9_mid_session(
        codex_cmd(&op, &api, &bin, &["run", "--task", "Crash"]),
        &op.workdir(),
        || !api.requests().is_empty(),
    );
    let out = output(codex_cmd(&op, &api, &bin, &["run", "--resume", "--json"])).await;
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
async fn doctor_checks_the_codex_setup_and_runs_a_tiny_session() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let api = FakeOpenAi::start(vec![], Step::text(COMPLETE)).await;
    let out = output(codex_cmd(
        &op,
        &api,
        &bin,
        &["doctor", "--agent", "codex", "--session"],
    ))
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("codex-cli 0.169.0"), "{text}");
    assert!(text.contains("OPENAI_API_KEY is set"), "{text}");
    assert!(text.contains("workspace-write"), "{text}");
    assert!(!text.contains("sk-test"), "the key was shown: {text}");
    assert_eq!(api.requests().len(), 1, "the tiny session");
    // Without a key or a login: refused before anything starts.
    let mut cmd = codex_cmd(&op, &api, &bin, &["run", "--task", "No key"]);
    cmd.env_remove("OPENAI_API_KEY");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("codex login"), "{}", stderr(&out));
    assert_eq!(api.requests().len(), 1, "nothing started");
}

/// One mission, four agents: a claude chain against the fake Messages API, a codex chain against
/// the fake Responses API, a gemini chain against the fake Gemini API and a sim chain, side by
/// side, each with its own transcript and cost.
#[tokio::test(flavor = "multi_thread")]
async fn a_mission_mixes_claude_codex_gemini_and_sim_chains() {
    let Some(bin) = bin() else { return };
    let Some(claude) = common::cli::claude_bin() else {
        return;
    };
    let Some(gemini) = common::cli::gemini_bin() else {
        return;
    };
    let google =
        common::fake_gemini::FakeGemini::start(vec![], common::fake_gemini::Step::text(COMPLETE))
            .await;
    let op = Op::new();
    let openai = FakeOpenAi::start(vec![], Step::text(COMPLETE)).await;
    let anthropic =
        common::fake_api::FakeApi::start(vec![], common::fake_api::Step::text(COMPLETE)).await;
    let root = op.root.path();
    for w in ["w-claude", "w-codex", "w-gemini", "w-sim"] {
        std::fs::create_dir_all(root.join(w)).unwrap();
    }
    let mission = op.write(
        "mixed.toml",
        &format!(
            r#"name = "mixed"
concurrency = 4

[[chain]]
name = "on-claude"
agent = "claude"
task = "Claude's part"
workdir = "{r}/w-claude"

[[chain]]
name = "on-codex"
agent = "codex"
model = "gpt-5-mini"
task = "Codex's part"
workdir = "{r}/w-codex"

[[chain]]
name = "on-gemini"
agent = "gemini"
task = "Gemini's part"
workdir = "{r}/w-gemini"

[[chain]]
name = "on-sim"
agent = "sim"
task = "The simulated part"
workdir = "{r}/w-sim"
[chain.sim]
scenario = "complete"
"#,
            r = root.display()
        ),
    );
    let mut cmd = codex_cmd(
        &op,
        &openai,
        &bin,
        &["run", mission.to_str().unwrap(), "--json"],
    );
    cmd.env_remove("OPERATOR_AGENT")
        .env_remove("OPERATOR_WORKDIR")
        .env("OPERATOR_CLAUDE_BIN", &claude)
        .env("ANTHROPIC_BASE_URL", &anthropic.url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("OPERATOR_GEMINI_BIN", &gemini)
        .env("GEMINI_API_KEY", "test-key")
        .env("GOOGLE_GEMINI_BASE_URL", &google.url);
    common::fake_gemini::FakeGemini::prepare_home(&op.root.path().join("home"));
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all = chains(&out);
    assert_eq!(all.len(), 4);
    for c in &all {
        assert_eq!(
            c.status,
            ChainStatus::Complete,
            "{}: {:?}",
            c.name,
            c.reason
        );
        assert_eq!(c.sessions.len(), 1, "{}", c.name);
    }
    let by = |name: &str| all.iter().find(|c| c.name == name).unwrap();
    assert_eq!(
        anthropic.scripted().len(),
        1,
        "the claude chain's one request"
    );
    let codex_reqs = openai.requests();
    assert_eq!(codex_reqs.len(), 1, "the codex chain's one request");
    assert_eq!(codex_reqs[0]["model"], "gpt-5-mini");
    assert!(request_text(&codex_reqs[0]).contains("Codex's part"));
    // Each priced by its own agent's usage.
    assert!(by("on-claude").sessions[0].cost_usd > 0.0);
    assert!(by("on-codex").sessions[0].cost_usd > 0.0);
    assert!(by("on-gemini").sessions[0].cost_usd > 0.0);
    assert_eq!(google.requests().len(), 1, "the gemini chain's one request");
    assert!(common::fake_gemini::request_text(&google.requests()[0]).contains("Gemini's part"));
    let t = transcript(&op, &by("on-codex").id, 1);
    assert!(t.contains("thread.started"), "{t}");
}

/// `fallback_agents = ["codex"]`: a usage limit on claude's account runs the same session on
/// codex at once (the handoff carries over as plain text), and the chain goes back to claude
/// once the limit has reset (`prefer_primary`, the default).
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_falls_over_from_claude_to_codex_at_a_usage_limit_and_back_after_the_reset() {
    let Some(bin) = bin() else { return };
    let Some(claude) = common::cli::claude_bin() else {
        return;
    };
    let op = Op::new();
    // Far enough ahead that the limit still holds when the CLI reports it, however loaded the
    // machine (at 4 s it had passed once in CI, and the retry ran on claude again).
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 12;
    // The CLI tries the 429 three times (CLAUDE_CODE_MAX_RETRIES=2), then reports the limit.
    let limit = || common::fake_api::Step::usage_limit(reset);
    let anthropic = common::fake_api::FakeApi::start(
        vec![
            limit(),
            limit(),
            limit(),
            common::fake_api::Step::text(COMPLETE),
        ],
        common::fake_api::Step::text("unexpected"),
    )
    .await;
    // Codex works on (a new handoff each session) until claude's limit has reset.
    let openai = FakeOpenAi::start(
        (1..=40).map(|n| Step::text(incomplete(n))).collect(),
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = codex_cmd(
        &op,
        &openai,
        &bin,
        &["run", "--task", "Fall over", "--json"],
    );
    cmd.env("OPERATOR_AGENT", "claude")
        .env("OPERATOR_FALLBACK_AGENTS", "codex")
        .env("OPERATOR_MAX_CONTINUATIONS", "60")
        .env("OPERATOR_NO_PROGRESS_SESSIONS", "0")
        .env("OPERATOR_USAGE_LIMIT_MARGIN", "0s")
        .env("OPERATOR_CLAUDE_BIN", &claude)
        .env("ANTHROPIC_BASE_URL", &anthropic.url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_MAX_RETRIES", "2")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete, "{:?}", c.reason);
    // Session 1: its first attempt hit claude's limit, its second ran on codex at once.
    let first = &c.sessions[0];
    assert_eq!((first.index, first.attempts), (1, 2));
    let codex_sessions = openai.requests().len();
    assert!(codex_sessions >= 1);
    assert_eq!(
        c.sessions.len(),
        codex_sessions + 1,
        "codex's sessions, then claude's last"
    );
    // Back on claude after the reset: its last request carries codex's last handoff.
    let last = anthropic.scripted();
    assert_eq!(last.len(), 4);
    let text = last[3]["messages"].to_string();
    assert!(
        text.contains(&format!("HANDOFF-MARKER-{codex_sessions}")),
        "{text}"
    );
    let ended =
        humantime::parse_rfc3339(c.sessions.last().unwrap().ended_at.as_deref().unwrap()).unwrap();
    assert!(ended >= std::time::UNIX_EPOCH + std::time::Duration::from_secs(reset));
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    let switches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("chain:agent-switched"))
        .collect();
    assert_eq!(switches.len(), 2, "{log}");
    assert!(
        switches[0].contains("\"agent\":\"codex\"") && switches[1].contains("\"agent\":\"claude\""),
        "{switches:?}"
    );
}

/// `continuation = "resume"`: the next session continues the agent's own thread
/// (`codex exec resume <thread_id>`), so its request carries the first session's conversation.
#[tokio::test(flavor = "multi_thread")]
async fn continuation_resume_continues_the_thread_in_a_new_process() {
    let Some(bin) = bin() else { return };
    let op = Op::new();
    let api = FakeOpenAi::start(
        vec![Step::text(incomplete(1)), Step::text(COMPLETE)],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = codex_cmd(&op, &api, &bin, &["run", "--task", "Resume me", "--json"]);
    cmd.env("OPERATOR_CONTINUATION", "resume");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 2);
    assert_eq!(
        c.sessions[0].session_id, c.sessions[1].session_id,
        "the same thread"
    );
    let second = request_text(&api.requests()[1]);
    assert!(
        second.contains("Resume me") && second.contains("HANDOFF-MARKER-1"),
        "the whole thread: {second}"
    );
}
