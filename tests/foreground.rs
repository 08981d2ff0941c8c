//! The foreground supervisor: missions with concurrency and ordering, and real signals sent to the
//! real binary (pause, resume, pause --now, reload), checked in the store and the process table.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Op, chains, eventually, processes_in, signal, stderr};
use nix::sys::signal::Signal;
use operator::model::{ChainRecord, ChainStatus, SessionStatus};
use operator::store::Store;
use operator::store::sqlite::SqliteStore;

const WAIT: Duration = Duration::from_secs(30);

/// Blocks on a store query from a synchronous polling closure.
fn q<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn only_chain(store: &SqliteStore) -> Option<ChainRecord> {
    let list = q(store.list_chains(&Default::default())).ok()?;
    let id = list.first()?.id.clone();
    q(store.get_chain(&id)).ok().flatten()
}

fn spawn_json(op: &Op, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = op.cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_new_sessions_and_resume_releases_them() {
    let op = Op::new();
    let child = spawn_json(
        &op,
        &["run", "--task", "T", "--scenario", "incomplete", "--json"],
        &[
            ("OPERATOR_SIM__STEP", "80ms"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "2"),
        ],
    );
    // Wait for the first session to be running, then pause.
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    assert!(eventually(WAIT, || only_chain(&store)
        .is_some_and(|c| !c.sessions.is_empty())));
    signal(&child, Signal::SIGUSR1);
    // The running session finishes normally; then the chain holds as `paused`.
    assert!(
        eventually(WAIT, || only_chain(&store)
            .is_some_and(|c| c.status == ChainStatus::Paused)),
        "the chain never paused"
    );
    let held = only_chain(&store).unwrap();
    assert!(
        held.sessions
            .iter()
            .all(|s| s.status == SessionStatus::Completed),
        "{:?}",
        held.sessions
    );
    std::thread::sleep(Duration::from_millis(800));
    let still = only_chain(&store).unwrap();
    assert_eq!(
        still.sessions.len(),
        held.sessions.len(),
        "a session started while paused"
    );
    assert_eq!(still.status, ChainStatus::Paused);
    assert!(
        processes_in(&op.workdir()).is_empty(),
        "an agent runs while paused"
    );
    // `operator status` reports it.
    let status = op.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("paused"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    signal(&child, Signal::SIGUSR2);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(c.sessions.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_paused_state_survives_a_restart_and_the_cli_resumes_it() {
    let op = Op::new();
    let child = spawn_json(
        &op,
        &["run", "--task", "T", "--scenario", "incomplete"],
        &[
            ("OPERATOR_SIM__STEP", "80ms"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "2"),
        ],
    );
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    assert!(eventually(WAIT, || only_chain(&store)
        .is_some_and(|c| !c.sessions.is_empty())));
    assert!(
        eventually(WAIT, || op.run(&["pause"]).status.success()),
        "`operator pause` found no operator"
    );
    assert!(eventually(WAIT, || only_chain(&store)
        .is_some_and(|c| c.status == ChainStatus::Paused)));
    assert!(
        op.run(&["stop"]).status.success(),
        "`operator stop` found no operator"
    );
    assert_eq!(finish(child).status.code(), Some(130));
    // Restarted, the operator is still paused: the resumed chain holds.
    let child = spawn_json(&op, &["run", "--resume", "--json"], &[]);
    let before = only_chain(&store).unwrap().sessions.len();
    assert!(eventually(WAIT, || only_chain(&store)
        .is_some_and(|c| c.status == ChainStatus::Paused)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(only_chain(&store).unwrap().sessions.len(), before);
    assert!(eventually(WAIT, || op.run(&["resume"]).status.success()));
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(chains(&out)[0].status, ChainStatus::Complete);
    assert!(processes_in(&op.workdir()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_now_interrupts_takes_the_handoff_and_holds() {
    let op = Op::new();
    let child = spawn_json(
        &op,
        &["run", "--task", "T", "--scenario", "incomplete", "--json"],
        &[
            ("OPERATOR_SIM__STEP", "150ms"),
            ("OPERATOR_SIM__TURNS", "40"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "1"),
        ],
    );
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    assert!(
        eventually(WAIT, || !processes_in(&op.workdir()).is_empty()),
        "no agent started"
    );
    assert!(eventually(WAIT, || op
        .run(&["pause", "--now"])
        .status
        .success()));
    assert!(
        eventually(WAIT, || only_chain(&store)
            .is_some_and(|c| c.status == ChainStatus::Paused)),
        "the chain did not hold"
    );
    let c = only_chain(&store).unwrap();
    let s = &c.sessions[0];
    assert_eq!(s.status, SessionStatus::Interrupted);
    assert!(
        s.asked_again && !s.handoff_synthetic,
        "the handoff was not obtained from the agent: {s:?}"
    );
    assert!(
        processes_in(&op.workdir()).is_empty(),
        "the interrupted agent still runs"
    );
    signal(&child, Signal::SIGUSR2);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    let prompt = store.session_prompt(&c.id, 2).await.unwrap().unwrap();
    assert!(prompt.contains("Session 1 did part 1"), "{prompt}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_picks_up_a_new_chain_applies_new_settings_and_rejects_a_broken_file() {
    let op = Op::new();
    let mission = |body: &str| op.write("live.toml", body);
    let a = "[defaults.sim]\nstep = \"100ms\"\nscenario = \"incomplete\"\ncomplete_after = 3\n[[chain]]\nname = \"a\"\ntask = \"Task A\"\n";
    let path = mission(a);
    let child = spawn_json(
        &op,
        &["run", path.to_str().unwrap(), "--json"],
        &[("OPERATOR_SIM__STEP", "100ms")],
    );
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    assert!(eventually(WAIT, || only_chain(&store)
        .is_some_and(|c| !c.sessions.is_empty())));
    let events = |kind: &str| {
        q(store.events(None, 0, 1000))
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    };
    // A broken file: refused, and the run goes on.
    mission("[[chain]\nname = \"a\"\n");
    signal(&child, Signal::SIGHUP);
    assert!(
        eventually(WAIT, || events("orchestrator:reload-failed") == 1),
        "no reload-failed event"
    );
    // A valid file: a new chain `b`, and a new model for `a` from its next session.
    mission(&format!(
        "{a}model = \"haiku\"\n[[chain]]\nname = \"b\"\ntask = \"Task B\"\n[chain.sim]\nscenario = \"complete\"\n"
    ));
    signal(&child, Signal::SIGHUP);
    assert!(
        eventually(WAIT, || events("orchestrator:reloaded") == 1),
        "no reloaded event"
    );
    let out = finish(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 2, "the new chain did not run");
    let a = cs.iter().find(|c| c.name == "a").unwrap();
    let b = cs.iter().find(|c| c.name == "b").unwrap();
    assert_eq!(b.status, ChainStatus::Complete);
    assert_eq!(a.status, ChainStatus::Complete);
    assert_eq!(a.config["model"], "haiku");
    let transcript = |n: u32| {
        std::fs::read_to_string(
            op.data_dir()
                .join(format!("chains/{}/session-{n}.jsonl", a.id)),
        )
        .unwrap()
    };
    assert!(transcript(1).contains("\"model\":\"sonnet\""));
    let last = a.sessions.last().unwrap().index;
    assert!(
        transcript(last).contains("\"model\":\"haiku\""),
        "the new model did not apply"
    );
}

#[test]
fn concurrency_and_ordering_are_honoured() {
    let op = Op::new();
    let mission = op.write(
        "m.toml",
        r#"
concurrency = 2
[defaults.sim]
scenario = "incomplete"
complete_after = 1
step = "40ms"
[[chain]]
name = "a"
task = "A"
[[chain]]
name = "b"
task = "B"
[[chain]]
name = "c"
task = "C"
[[chain]]
name = "d"
task = "D"
after = ["a", "b"]
[[chain]]
name = "e"
task = "E"
after = ["f"]
[[chain]]
name = "f"
task = "F"
[chain.sim]
scenario = "error"
"#,
    );
    let out = op.run(&["run", mission.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let cs = chains(&out);
    let span = |c: &ChainRecord| {
        (
            c.sessions.first().unwrap().started_at.clone(),
            c.sessions.last().unwrap().ended_at.clone().unwrap(),
        )
    };
    // At no instant do more than two chains run.
    let spans: Vec<(String, String)> = cs
        .iter()
        .filter(|c| !c.sessions.is_empty())
        .map(span)
        .collect();
    let mut max = 0;
    for (start, _) in &spans {
        let at_once = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        max = max.max(at_once);
    }
    assert_eq!(max, 2, "{spans:?}");
    let by = |n: &str| cs.iter().find(|c| c.name == n).unwrap();
    let d_start = span(by("d")).0;
    assert!(
        d_start >= span(by("a")).1 && d_start >= span(by("b")).1,
        "d started before a and b ended"
    );
    assert_eq!(by("f").status, ChainStatus::Failed);
    let e = by("e");
    assert_eq!(e.status, ChainStatus::Failed);
    assert!(e.sessions.is_empty());
    assert!(
        e.reason.as_deref().unwrap().contains("chain `f`"),
        "{:?}",
        e.reason
    );
}

#[test]
fn several_missions_run_in_one_operator() {
    let op = Op::new();
    let one = op.write(
        "one.toml",
        "[[chain]]\nname = \"main\"\ntask = \"One\"\n[chain.sim]\nscenario = \"complete\"\n",
    );
    let two = op.write(
        "two.toml",
        "[[chain]]\nname = \"main\"\ntask = \"Two\"\n[chain.sim]\nscenario = \"complete\"\n",
    );
    let out = op.run(&[
        "run",
        one.to_str().unwrap(),
        two.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    let mut missions: Vec<_> = cs.iter().map(|c| c.mission.clone().unwrap()).collect();
    missions.sort();
    assert_eq!(missions, ["one", "two"]);
    // Two missions with the same name in one run are refused.
    let dup = op.write("dup.toml", "name = \"one\"\n[[chain]]\ntask = \"x\"\n");
    let out = op.run(&["run", one.to_str().unwrap(), dup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("two missions of this run are named `one`"),
        "{}",
        stderr(&out)
    );
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn logs_and_files_never_contain_keys_or_tokens() {
    let op = Op::new();
    let key = "sk-ant-api03-TESTSECRETVALUE123";
    let out = op
        .cmd(&[
            "-vv",
            "run",
            "--task",
            "T",
            "--scenario",
            "garbage",
            "--json",
        ])
        .env("ANTHROPIC_API_KEY", key)
        .env(
            "OPERATOR_NOTIFY_WEBHOOK",
            "http://127.0.0.1:9/hook?token=HOOKSECRET987",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    // The agent really printed the key: its transcript holds the masked line.
    let transcript = std::fs::read_to_string(
        op.data_dir()
            .join(format!("chains/{}/session-1.jsonl", c.id)),
    )
    .unwrap();
    assert!(
        transcript.contains("ANTHROPIC_API_KEY=[REDACTED]"),
        "the sim did not print the key"
    );
    let log =
        std::fs::read_to_string(op.data_dir().join(format!("chains/{}/chain.log", c.id))).unwrap();
    assert!(
        log.contains("chain:session-complete") && log.contains("chain:complete"),
        "{log}"
    );
    let mut places = vec![
        ("stderr".to_string(), out.stderr.clone()),
        ("stdout".to_string(), out.stdout.clone()),
    ];
    for f in files(&op.data_dir()) {
        places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    for (name, bytes) in places {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["TESTSECRETVALUE123", "HOOKSECRET987"] {
            assert!(!text.contains(secret), "{secret} found in {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn continue_picks_a_mission_up_where_a_stop_left_it() {
    let op = Op::new();
    let mission = op.write(
        "nightly.toml",
        r#"
[[chain]]
name = "a"
task = "A"
[chain.sim]
scenario = "incomplete"
complete_after = 2
step = "120ms"
[[chain]]
name = "b"
task = "B"
[chain.sim]
scenario = "complete"
step = "10ms"
[[chain]]
name = "c"
task = "C"
after = ["a"]
[chain.sim]
scenario = "complete"
step = "10ms"
"#,
    );
    let m = mission.to_str().unwrap();
    // The harness's OPERATOR_SIM__STEP would override the mission's steps.
    let cmd = |args: &[&str]| {
        let mut c = op.cmd(args);
        c.env_remove("OPERATOR_SIM__STEP");
        c
    };
    let child = cmd(&["run", m])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(op.data_dir()).unwrap();
    let store = op.store().await;
    let by_name = |n: &str| {
        q(store.list_chains(&Default::default()))
            .unwrap()
            .into_iter()
            .find(|c| c.name == n)
            .and_then(|c| q(store.get_chain(&c.id)).ok().flatten())
    };
    assert!(eventually(WAIT, || {
        by_name("b").is_some_and(|b| b.status == ChainStatus::Complete)
            && by_name("a").is_some_and(|a| !a.sessions.is_empty())
    }));
    signal(&child, Signal::SIGTERM);
    assert_eq!(finish(child).status.code(), Some(130));
    let (a, b, c) = (
        by_name("a").unwrap(),
        by_name("b").unwrap(),
        by_name("c").unwrap(),
    );
    assert_eq!(a.status, ChainStatus::Interrupted);
    assert_eq!(c.status, ChainStatus::Interrupted);
    assert!(c.sessions.is_empty());

    let out = cmd(&["run", m, "--continue", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // It continues them: it does not tell the user to resume them.
    assert!(
        !stderr(&out).contains("an earlier chain is incomplete"),
        "{}",
        stderr(&out)
    );
    let cs = chains(&out);
    let mut ids: Vec<&str> = cs.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![a.id.as_str(), b.id.as_str(), c.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "--continue created new chains");
    let b2 = cs.iter().find(|x| x.id == b.id).unwrap();
    assert_eq!(
        b2.sessions.len(),
        b.sessions.len(),
        "a finished chain ran again"
    );
    for x in &cs {
        assert_eq!(x.status, ChainStatus::Complete, "{}", x.name);
    }
    assert!(processes_in(&op.workdir()).is_empty());
}

#[test]
fn a_stale_pid_file_is_detected() {
    let op = Op::new();
    std::fs::create_dir_all(op.data_dir()).unwrap();
    // A pid that belongs to no process (pid_max is at most 2^22).
    std::fs::write(op.data_dir().join("operator.pid"), "4194303\n").unwrap();
    let status = op.run(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no operator running"));
    assert_eq!(op.run(&["pause"]).status.code(), Some(1));
    let out = op.run(&["run", "--task", "T", "--scenario", "complete"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !op.data_dir().join("operator.pid").exists(),
        "the pid file outlived the run"
    );
}

/// Runs started at the same moment on one fresh data dir: exactly one operator runs (the lock is
/// atomic; a pid file read and then written let 2–4 run at once in 2 of 13 trials).
#[test]
fn one_operator_per_data_dir_even_when_several_start_at_once() {
    for trial in 0..5 {
        let op = Op::new();
        let children: Vec<_> = (0..4)
            .map(|_| {
                let mut c = op.cmd(&["run", "--task", "T", "--scenario", "complete"]);
                c.env("OPERATOR_SIM__STEP", "150ms")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ran: Vec<_> = outs.iter().filter(|o| o.status.code() == Some(0)).collect();
        let refused: Vec<_> = outs
            .iter()
            .filter(|o| o.status.code() == Some(2) && stderr(o).contains("another operator"))
            .collect();
        assert_eq!(
            (ran.len(), refused.len()),
            (1, 3),
            "trial {trial}: {:?}",
            outs.iter()
                .map(|o| (o.status.code(), stderr(o)))
                .collect::<Vec<_>>()
        );
        let store = tokio::runtime::Runtime::new().unwrap().block_on(op.store());
        let n = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(operator::store::Store::list_chains(
                &store,
                &Default::default(),
            ))
            .unwrap()
            .len();
        assert_eq!(n, 1, "trial {trial}: {n} chains were created");
    }
}

#[test]
fn log_lines_are_json_with_log_format_json() {
    let op = Op::new();
    let out = op.run(&[
        "--log-format",
        "json",
        "run",
        "--task",
        "T",
        "--scenario",
        "complete",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stderr(&out);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"session started\"") && l.contains("chain.id")),
        "{text}"
    );
}

#[test]
fn on_a_terminal_each_chain_has_a_live_line_and_a_summary_follows() {
    let op = Op::new();
    let mission = op.write(
        "tty.toml",
        "concurrency = 2\n[[chain]]\nname = \"alpha\"\ntask = \"A\"\n[[chain]]\nname = \"beta\"\ntask = \"B\"\n[chain.sim]\nscenario = \"complete\"\n",
    );
    // `script` gives the operator a pseudo-terminal, as a person's shell would.
    let line = format!("{} run {}", common::BIN, mission.display());
    let out = std::process::Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .current_dir(op.root.path())
        .env("OPERATOR_DATA_DIR", op.data_dir())
        .env("OPERATOR_WORKDIR", op.workdir())
        .env("OPERATOR_AGENT", "sim")
        .env("OPERATOR_SIM__STEP", "60ms")
        .env("COLUMNS", "80")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs the operator on a pseudo-terminal");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    // Live lines: name, state, session n/max, cost; redrawn with cursor movements.
    assert!(
        screen.contains("alpha") && screen.contains("beta"),
        "{screen}"
    );
    assert!(screen.contains("1/6"), "{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "no terminal control sequences: not a live view"
    );
    // Then the summary table.
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("chain ") && l.contains("sessions")),
        "{screen}"
    );
    // Every piece of text drawn between two cursor movements fits 80 columns.
    for piece in drawn_pieces(&screen) {
        assert!(
            piece.chars().count() <= 80,
            "wider than 80 columns: {piece:?}"
        );
    }
}

/// The runs of text a terminal draws, split at line ends and at escape sequences.
fn drawn_pieces(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                out.push(String::new());
            }
            '\r' | '\n' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}
