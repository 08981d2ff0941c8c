//! Per-session overhead of the operator, against a baseline in the same run: a chain of N sessions
//! run by `operator run`, versus the same agent program spawned N times bare and driven the way the
//! operator drives it (initialize request and prompt on stdin, read stdout up to the `result` line,
//! close stdin, wait for the exit). Whole processes are timed, start-up and exit included.
//!
//! Five agents: the sim agent in instant mode, a minimal static program (a POSIX sh script that
//! prints one canned session and exits), and the real Claude Code, Codex and Gemini CLIs talking to
//! the tests' fake Messages, Responses and Gemini APIs (when the CLIs are installed:
//! `OPERATOR_TEST_{CLAUDE,CODEX,GEMINI}_BIN`, as `.ci/run` sets them). Codex and Gemini run one
//! process per turn: their bare run writes the prompt, closes stdin and reads up to the turn's last
//! line, as the operator does.
//!
//! `cargo bench --bench overhead` runs the full measurement; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick pass, so CI notices a bench that no longer runs.

#[path = "../tests/common/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "../tests/common/fake_api.rs"]
mod fake_api;
#[allow(dead_code)]
#[path = "../tests/common/fake_gemini.rs"]
mod fake_gemini;
#[allow(dead_code)]
#[path = "../tests/common/fake_openai.rs"]
mod fake_openai;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::{FakeApi, Step};
use operator::agent::stream::{initialize_request, user_message};

const BIN: &str = env!("CARGO_BIN_EXE_operator");
/// The last line of a claude, sim or gemini turn.
const RESULT: &str = "\"type\":\"result\"";

/// The handoff every canned session writes (long enough for the operator's quality checks).
const HANDOFF: &str = "Done for now.\n\n## HANDOFF\n\n### Accomplished\nRead the module, wrote \
the parser and its unit tests; all pass.\n\n### Remaining\n- wire the parser into the CLI\n- \
document the flags\n\n### Context\nThe tests live beside the parser in src/parse.rs.";

/// One agent under test: how to run it bare, and how to point `operator run` at it.
struct Subject {
    name: &'static str,
    program: PathBuf,
    /// Arguments of session `i` (1-based), exactly as the operator passes them.
    args: Box<dyn Fn(u32) -> Vec<String>>,
    /// Environment for both the bare runs and the operator.
    env: Vec<(String, String)>,
    /// More environment for the operator only (which agent, which binary).
    operator_env: Vec<(String, String)>,
    /// One process per turn (codex, gemini): the prompt on stdin, then EOF.
    one_shot: bool,
    /// The line that ends a session's turn.
    end: &'static str,
}

/// Runs one session bare, driven as the operator drives an agent.
fn bare_session(s: &Subject, i: u32, dir: &Path) {
    let mut cmd = Command::new(&s.program);
    cmd.args((s.args)(i))
        .current_dir(dir)
        .env_remove("CLAUDECODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Piped and read, as the operator reads it: a CLI may write a pipe differently from
        // /dev/null (Node writes pipes synchronously).
        .stderr(Stdio::piped());
    for (k, v) in &s.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the agent");
    let stderr = child.stderr.take().expect("stderr");
    let drain = std::thread::spawn(move || {
        std::io::copy(&mut BufReader::new(stderr), &mut std::io::sink()).ok()
    });
    let mut stdin = child.stdin.take();
    let input = stdin.as_mut().expect("stdin");
    let end = if s.one_shot {
        // What the operator writes: a one-shot CLI has no system-prompt option, so the
        // continuation protocol leads the prompt, then the task and the last handoff.
        writeln!(
            input,
            "{}\n\nContinue the task.\n\n{HANDOFF}",
            operator::handoff::prompt::CONTINUATION_PROTOCOL
        )
        .expect("write");
        // The prompt is whole at EOF.
        stdin = None;
        s.end
    } else {
        writeln!(input, "{}", initialize_request("init_1")).expect("write");
        writeln!(input, "{}", user_message("Continue the task.")).expect("write");
        input.flush().expect("flush");
        s.end
    };
    let stdout = child.stdout.take().expect("stdout");
    let mut got_result = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line.contains(end) {
            got_result = true;
            break;
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait");
    let _ = drain.join();
    assert!(got_result, "{}: no result line", s.name);
    assert!(status.success(), "{}: bare agent failed: {status}", s.name);
}

fn bare(s: &Subject, n: u32, dir: &Path) -> Duration {
    let start = Instant::now();
    for i in 1..=n {
        bare_session(s, i, dir);
    }
    start.elapsed()
}

fn chain(s: &Subject, n: u32, dir: &Path) -> Duration {
    // The data dir sits beside the working tree, not in it: the operator measures each
    // session's tree change, and earlier rounds' stores must not be part of that tree.
    let data = dir
        .parent()
        .expect("the workdir has a parent")
        .join(format!("data-{}", fastrand::u32(..)));
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--task", "bench", "--json", "--quiet"])
        .args(["--max-continuations", &(n - 1).to_string()])
        .env("OPERATOR_DATA_DIR", &data)
        .env("OPERATOR_WORKDIR", dir)
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in s.env.iter().chain(&s.operator_env) {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().expect("run operator");
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}: operator exit {:?}\n{}\n{stdout}",
        s.name,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let chain: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{}: operator --json output: {e}\n{stdout}", s.name));
    let sessions = chain["sessions"].as_array().map_or(0, Vec::len);
    assert_eq!(
        sessions as u32, n,
        "{}: the chain ran {sessions} sessions, not {n} ({})",
        s.name, chain["reason"]
    );
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bare and operator times of a chain of `n` sessions (medians), after printing them.
fn measure(s: &Subject, n: u32, rounds: usize, dir: &Path) -> (Duration, Duration) {
    // One unmeasured round of each warms the page cache.
    bare(s, 1, dir);
    let mut b = Vec::new();
    let mut o = Vec::new();
    for _ in 0..rounds {
        b.push(bare(s, n, dir));
        o.push(chain(s, n, dir));
    }
    let (b, o) = (median(b), median(o));
    println!("{}: {n} sessions, median of {rounds} rounds", s.name);
    println!(
        "  bare agent processes : {:>9.1} ms  ({:.2} ms/session)",
        ms(b),
        ms(b) / n as f64
    );
    println!(
        "  operator chain       : {:>9.1} ms  ({:.2} ms/session)",
        ms(o),
        ms(o) / n as f64
    );
    println!(
        "  overhead             : {:>9.1} ms  ({:.2} ms/session)  ratio {:.3}x",
        ms(o) - ms(b),
        (ms(o) - ms(b)) / n as f64,
        o.as_secs_f64() / b.as_secs_f64()
    );
    (b, o)
}

/// What a 1.05x target leaves for the operator on an agent that exits at once, against the
/// least any `operator run` costs: starting and exiting the binary (`operator --version`).
fn allowance(rounds: usize, instant: &[(&str, u32, Duration)]) {
    let version = median(
        (0..rounds.max(3) * 5)
            .map(|_| {
                let start = Instant::now();
                let out = Command::new(BIN)
                    .arg("--version")
                    .output()
                    .expect("operator --version");
                assert!(out.status.success(), "operator --version failed");
                start.elapsed()
            })
            .collect(),
    );
    println!("what 1.05x allows on instant agents (5 % of the bare time, whole run):");
    println!(
        "  operator --version (start and exit, no work): {:.2} ms",
        ms(version)
    );
    for (name, n, bare) in instant {
        let allowed = ms(*bare) * 0.05;
        let left = allowed - ms(version);
        if left > 0.0 {
            println!(
                "  {name}: {allowed:.2} ms in all, {:.3} ms a session after the start",
                left / f64::from(*n)
            );
        } else {
            println!("  {name}: {allowed:.2} ms in all, less than the start alone");
        }
    }
}

fn sim_subject() -> Subject {
    let args = |i: u32| {
        [
            "sim-agent",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--max-turns",
            "30",
            "--model",
            "sonnet",
            "--scenario",
            "incomplete",
            "--complete-after",
            "1000",
            "--session-index",
            &i.to_string(),
            "--step",
            "0s",
            "--turns",
            "3",
        ]
        .map(String::from)
        .to_vec()
    };
    Subject {
        name: "sim agent, instant mode",
        program: BIN.into(),
        args: Box::new(args),
        env: Vec::new(),
        one_shot: false,
        end: RESULT,
        operator_env: [
            ("OPERATOR_AGENT", "sim"),
            ("OPERATOR_SIM__SCENARIO", "incomplete"),
            ("OPERATOR_SIM__STEP", "0s"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "1000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
    }
}

/// The claude backend's arguments (src/agent/claude.rs), for a bare run of the same program.
fn claude_args() -> Vec<String> {
    [
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--max-turns",
        "30",
        "--model",
        "sonnet",
        "--permission-mode",
        "bypassPermissions",
        "--append-system-prompt",
        "You are one session of a chain run by operator.",
    ]
    .map(String::from)
    .to_vec()
}

/// A POSIX sh script that answers the initialize request, reads the prompt, appends a line to
/// a file (so each session changes the tree), prints one canned session and exits.
fn static_agent(dir: &Path) -> Subject {
    let line = |v: serde_json::Value| format!("printf '%s\\n' '{v}'\n");
    let mut script = String::from("#!/bin/sh\nread -r line\n");
    script += &line(serde_json::json!({"type": "control_response", "response":
        {"subtype": "success", "request_id": "init_1", "response": {}}}));
    script += "read -r line\necho step >> work.txt\n";
    script += &line(serde_json::json!({"type": "system", "subtype": "init",
        "session_id": "s-1", "model": "sonnet", "tools": [], "cwd": "."}));
    script += &line(serde_json::json!({"type": "assistant", "session_id": "s-1",
        "message": {"role": "assistant", "model": "sonnet",
            "content": [{"type": "text", "text": HANDOFF}],
            "usage": {"input_tokens": 1500, "output_tokens": 250}}}));
    script += &line(serde_json::json!({"type": "result", "subtype": "success",
        "is_error": false, "num_turns": 1, "total_cost_usd": 0.001, "duration_ms": 1,
        "duration_api_ms": 1, "session_id": "s-1", "result": HANDOFF,
        "usage": {"input_tokens": 1500, "output_tokens": 250}}));
    assert!(
        !HANDOFF.contains('\''),
        "the canned text must not need sh quoting"
    );
    let path = dir.join("static-agent.sh");
    std::fs::write(&path, script).expect("write the static agent");
    Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .expect("chmod");
    Subject {
        name: "minimal static program (sh script)",
        program: path.clone(),
        args: Box::new(|_| claude_args()),
        env: Vec::new(),
        one_shot: false,
        end: RESULT,
        operator_env: vec![
            ("OPERATOR_AGENT".into(), "claude".into()),
            ("OPERATOR_CLAUDE_BIN".into(), path.display().to_string()),
            // A stand-in for the CLI: it needs no credentials.
            ("OPERATOR_SKIP_CREDENTIALS_CHECK".into(), "1".into()),
        ],
    }
}

fn claude_subject(bin: PathBuf, api: &FakeApi, home: &Path) -> Subject {
    let env = [
        ("ANTHROPIC_BASE_URL", api.url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-test"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("IS_SANDBOX", "1"),
        ("HOME", &home.display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    Subject {
        name: "Claude Code CLI + fake Messages API",
        program: bin.clone(),
        args: Box::new(|_| claude_args()),
        env,
        one_shot: false,
        end: RESULT,
        operator_env: vec![
            ("OPERATOR_AGENT".into(), "claude".into()),
            ("OPERATOR_CLAUDE_BIN".into(), bin.display().to_string()),
            (
                "OPERATOR_PERMISSION_MODE".into(),
                "bypassPermissions".into(),
            ),
        ],
    }
}

/// The codex backend's arguments (src/agent/codex.rs) in the default permission mode.
fn codex_subject(bin: PathBuf, api: &fake_openai::FakeOpenAi, home: &Path) -> Subject {
    std::fs::write(home.join("config.toml"), api.codex_config()).expect("codex config");
    let env = [
        ("OPENAI_API_KEY", "sk-test"),
        ("CODEX_HOME", &home.display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    Subject {
        name: "Codex CLI + fake Responses API",
        program: bin.clone(),
        args: Box::new(|_| {
            let mut a: Vec<String> = ["exec", "--json", "--skip-git-repo-check"]
                .map(String::from)
                .to_vec();
            a.extend(operator::agent::codex::sandbox_args("default"));
            a.push("-".into());
            a
        }),
        env,
        one_shot: true,
        end: "\"type\":\"turn.completed\"",
        operator_env: vec![
            ("OPERATOR_AGENT".into(), "codex".into()),
            ("OPERATOR_CODEX_BIN".into(), bin.display().to_string()),
        ],
    }
}

/// The gemini backend's arguments (src/agent/gemini.rs) in the default permission mode, on the
/// CLI's own default model (`auto`: a routing request, then the turn).
fn gemini_subject(bin: PathBuf, api: &fake_gemini::FakeGemini, home: &Path) -> Subject {
    fake_gemini::FakeGemini::prepare_home(home);
    let env = [
        ("GEMINI_API_KEY", "test-key"),
        ("GOOGLE_GEMINI_BASE_URL", api.url.as_str()),
        ("HOME", &home.display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    Subject {
        name: "Gemini CLI + fake Gemini API",
        program: bin.clone(),
        args: Box::new(|_| {
            let mut a: Vec<String> = ["-p", "", "-o", "stream-json", "--approval-mode"]
                .map(String::from)
                .to_vec();
            a.push(operator::agent::gemini::approval_mode("default").into());
            a.push("--skip-trust".into());
            a
        }),
        env,
        one_shot: true,
        end: RESULT,
        operator_env: vec![
            ("OPERATOR_AGENT".into(), "gemini".into()),
            ("OPERATOR_GEMINI_BIN".into(), bin.display().to_string()),
        ],
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench overhead -- gemini`: only the subjects whose name has that word.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.to_lowercase())
        .collect();
    let wanted = |name: &str| {
        only.is_empty()
            || only
                .iter()
                .any(|w| name.to_lowercase().contains(w.as_str()))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("workdir");

    let (n, rounds) = if full { (20, 7) } else { (3, 1) };
    if wanted("sim") || wanted("sh script") {
        let (sim, _) = measure(&sim_subject(), n, rounds, &work);
        let (sh, _) = measure(&static_agent(dir.path()), n, rounds, &work);
        allowance(rounds, &[("sim agent", n, sim), ("sh script", n, sh)]);
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (n, rounds) = if full { (10, 3) } else { (2, 1) };
    // These sessions change nothing in the tree, so the chain's progress check is turned off
    // (`no_progress_sessions = 0`); otherwise it would rightly stop the chain after three.
    let no_progress_check = ("OPERATOR_NO_PROGRESS_SESSIONS".to_string(), "0".to_string());
    match wanted("claude").then(cli::claude_bin) {
        None => {}
        Some(None) => {
            println!("Claude Code CLI: not installed (set OPERATOR_TEST_CLAUDE_BIN); not measured")
        }
        Some(Some(bin)) => {
            // Every agent-loop request gets the same answer: a session of one turn with a handoff.
            let api = rt.block_on(FakeApi::start(Vec::new(), Step::text(HANDOFF)));
            let home = dir.path().join("home");
            std::fs::create_dir_all(&home).expect("home");
            let mut s = claude_subject(bin, &api, &home);
            s.operator_env.push(no_progress_check.clone());
            measure(&s, n, rounds, &work);
        }
    }
    match wanted("codex").then(cli::codex_bin) {
        None => {}
        Some(None) => {
            println!("Codex CLI: not installed (set OPERATOR_TEST_CODEX_BIN); not measured")
        }
        Some(Some(bin)) => {
            let api = rt.block_on(fake_openai::FakeOpenAi::start(
                Vec::new(),
                fake_openai::Step::text(HANDOFF),
            ));
            let home = dir.path().join("codex-home");
            std::fs::create_dir_all(&home).expect("codex home");
            let mut s = codex_subject(bin, &api, &home);
            s.operator_env.push(no_progress_check.clone());
            measure(&s, n, rounds, &work);
        }
    }
    match wanted("gemini").then(cli::gemini_bin) {
        None => {}
        Some(None) => {
            println!("Gemini CLI: not installed (set OPERATOR_TEST_GEMINI_BIN); not measured")
        }
        Some(Some(bin)) => {
            let api = rt.block_on(fake_gemini::FakeGemini::start(
                Vec::new(),
                fake_gemini::Step::text(HANDOFF),
            ));
            let home = dir.path().join("gemini-home");
            std::fs::create_dir_all(&home).expect("gemini home");
            let mut s = gemini_subject(bin, &api, &home);
            s.operator_env.push(no_progress_check);
            measure(&s, n, rounds, &work);
        }
    }
}
