//! `operator tui` on a pseudo-terminal, its screen read by a terminal emulator, against a real
//! `operator serve` on the sim agent: what a person sees and the keys they press.

mod common;

use std::time::Duration;

use common::api::Server;
use common::pty::Pty;
use common::{BIN, Op};
use portable_pty::CommandBuilder;

/// The environment a user's shell gives the view: `op`'s data dir, none of our other variables.
fn user_env(c: &mut CommandBuilder, op: &Op, env: &[(&str, &str)]) {
    c.cwd(op.root.path());
    for (k, _) in std::env::vars() {
        let desktop = ["DISPLAY", "WAYLAND_DISPLAY", "SSH_CONNECTION", "SSH_TTY"];
        if k.starts_with("OPERATOR_") || k == "NO_COLOR" || desktop.contains(&k.as_str()) {
            c.env_remove(k);
        }
    }
    c.env("OPERATOR_DATA_DIR", op.data_dir());
    for (k, v) in env {
        c.env(k, v);
    }
}

/// `operator <args>` for `op`'s data dir, as a user's shell would start it.
fn user_cmd(op: &Op, args: &[&str], env: &[(&str, &str)]) -> CommandBuilder {
    let mut c = CommandBuilder::new(BIN);
    for a in args {
        c.arg(a);
    }
    user_env(&mut c, op, env);
    c
}

/// `operator tui <args>` for `op`'s data dir, as a user's shell would start it.
fn tui_cmd(op: &Op, args: &[&str], env: &[(&str, &str)]) -> CommandBuilder {
    user_cmd(op, &[&["tui"], args].concat(), env)
}

/// Keeps what the screen shows as `target/screenshots/<name>.txt` (docs/tui.md shows them).
fn keep_screen(t: &Pty, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<String> = t.rows().iter().map(|r| r.trim_end().to_string()).collect();
    std::fs::write(dir.join(format!("{name}.txt")), rows.join("\n") + "\n").unwrap();
}

/// The sessions so far on the chain's row (the `n` of `n/max`).
fn sessions_shown(screen: &str, id: &str) -> Option<u32> {
    let row = screen.lines().find(|l| l.contains(id))?;
    let cell = row
        .split_whitespace()
        .find(|w| w.contains('/') && !w.contains('-'))?;
    cell.split('/').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_view_follows_a_chain_and_steers_the_operator() {
    let op = Op::new();
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "127.0.0.1:0", "--agent", "sim"],
        &[
            ("OPERATOR_SIM__STEP", "700ms"),
            ("OPERATOR_SIM__SCENARIO", "incomplete"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "20"),
            ("OPERATOR_MAX_CONTINUATIONS", "25"),
        ],
    );
    let id = srv.start_chain("Follow me in the terminal").await;
    let mut t = Pty::spawn(tui_cmd(&op, &[], &[]), 30, 110);
    // The chains screen: the chain running, its session counter advancing.
    let first = t.until("the chain running", |s| {
        s.lines().any(|l| l.contains(&id) && l.contains("running"))
    });
    let n = sessions_shown(&first, &id).unwrap_or(0);
    t.until("the session counter advancing", |s| {
        sessions_shown(s, &id).is_some_and(|m| m > n)
    });
    // The chain screen: the agent's live output (its tool calls, as the operator streams them).
    t.send("\r");
    t.until("the live output", |s| {
        s.lines()
            .any(|l| l.starts_with('[') && l.contains("] tool: Bash"))
    });
    t.until("the sessions", |s| {
        s.contains("SESSION") && s.contains("HANDOFF")
    });
    keep_screen(&t, "tui-chain");
    // Its last handoff, rendered: headings without their `###`.
    t.send("h");
    t.until("the handoff", |s| {
        s.contains("handoff of session") && s.lines().any(|l| l.trim() == "Accomplished")
    });
    t.send("h");
    t.send("\x1b");
    t.until("back on the chains screen", |s| {
        s.contains("CHAIN") && s.contains("AGE")
    });
    // The costs and the fleet.
    keep_screen(&t, "tui-chains");
    t.send("c");
    t.until("the costs", |s| {
        s.contains("today (UTC)") && s.contains("forecast")
    });
    keep_screen(&t, "tui-costs");
    t.send("f");
    t.until("the fleet", |s| s.contains("no workers share it"));
    t.send("\x1b");
    t.until("back on the chains screen", |s| {
        s.contains("CHAIN") && s.contains("AGE")
    });

    // Pause from the keyboard: shown, and no new session starts.
    t.send("p");
    t.until("paused in the header", |s| {
        s.lines().next().is_some_and(|l| l.contains("paused"))
    });
    let (_, st) = srv.get("/api/orchestrator/status").await;
    assert_eq!(st["mode"], "paused");
    let settled = |v: &serde_json::Value| {
        v["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| !x["endedAt"].is_null()))
    };
    let held = srv.wait_chain(&id, "between sessions", settled).await;
    let sessions = held["sessions"].as_array().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = srv.get(&format!("/api/chains/{id}")).await;
    assert_eq!(
        later["sessions"].as_array().unwrap().len(),
        sessions,
        "a session started while paused"
    );
    t.send("p");
    t.until("resumed", |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.contains("running") && !l.contains("paused"))
    });

    // Kill, with its confirmation.
    t.send("x");
    t.until("the question", |s| s.contains(&format!("Kill chain {id}?")));
    t.send("y");
    srv.wait_status(&id, "aborted").await;
    t.until("the chain shown aborted", |s| {
        s.lines().any(|l| l.contains(&id) && l.contains("aborted"))
    });
    // And resumed, with its confirmation: it runs again, in a new session.
    t.send("R");
    t.until("the question", |s| {
        s.contains(&format!("Resume chain {id}?"))
    });
    t.send("y");
    srv.wait_chain(&id, "running a new session", |c| {
        c["status"] == "running"
            && c["sessions"]
                .as_array()
                .and_then(|s| s.last())
                .is_some_and(|s| s["status"] == "running")
    })
    .await;
    t.until("the chain shown running again", |s| {
        s.lines().any(|l| l.contains(&id) && l.contains("running"))
    });
    t.send("q");
    assert!(t.wait().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_80_by_24_every_row_stays_readable() {
    let op = Op::new();
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "127.0.0.1:0", "--agent", "sim"],
        &[("OPERATOR_SIM__STEP", "300ms")],
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(srv.start_chain(&format!("Chain number {i}")).await);
    }
    let t = Pty::spawn(tui_cmd(&op, &[], &[]), 40, 140);
    t.until("the chains", |s| {
        ids.iter().all(|id| s.contains(id.as_str()))
    });
    t.resize(24, 80);
    let screen = t.until("redrawn at 80 columns", |s| {
        s.lines().count() <= 24
            && s.lines()
                .any(|l| l.starts_with("CHAIN") && l.trim_end().ends_with("AGE"))
    });
    let rows = t.rows();
    assert_eq!(rows.len(), 24);
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not on\n{screen}"));
        assert!(row.chars().count() <= 80, "{row}");
        assert!(row.contains('$'), "the cost is cut off: {row}");
    }
    assert!(rows[23].contains("? help · q quit"), "{screen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_operator_goes_away_the_view_says_so_and_comes_back_with_it() {
    let op = Op::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", listen.as_str(), "--agent", "sim"];
    let mut srv = Server::start_with(&op, &args, &[]);
    let t = Pty::spawn(tui_cmd(&op, &[], &[]), 30, 110);
    t.until("connected", |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.contains("running") || l.contains("queued"))
    });
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    t.until("disconnected", |s| s.contains("DISCONNECTED"));
    let srv = Server::start_with(&op, &args, &[]);
    t.until("reconnected", |s| {
        !s.contains("DISCONNECTED") && s.lines().next().is_some_and(|l| l.contains("running"))
    });
    let id = srv.start_chain("After the restart").await;
    t.until("a chain started after the restart", |s| s.contains(&id));
}

/// The terminal is given back — out of the alternate screen, out of raw mode — when the view
/// quits and when it panics.
#[tokio::test(flavor = "multi_thread")]
async fn the_terminal_is_restored_after_quit_and_after_a_panic() {
    let op = Op::new();
    let _srv = Server::start(&op, &[]);
    for (keys, panics) in [("q", false), ("\x1b[24~", true)] {
        // A shell runs the view, then prints the terminal's modes.
        let cmd = format!("'{BIN}' tui; echo EXIT=$?; stty -a");
        let mut sh = CommandBuilder::new("sh");
        sh.args(["-c", &cmd]);
        user_env(
            &mut sh,
            &op,
            &[("OPERATOR_TUI_PANIC", "1"), ("RUST_BACKTRACE", "0")],
        );
        let mut t = Pty::spawn(sh, 30, 110);
        t.until("the view", |s| s.contains("? help"));
        assert!(t.alternate_screen());
        t.send(keys);
        let out = t.until("the shell after the view", |s| {
            s.contains("EXIT=") && s.contains("icanon")
        });
        assert!(
            !t.alternate_screen(),
            "still on the alternate screen:\n{out}"
        );
        let modes: Vec<&str> = out.split_whitespace().collect();
        assert!(modes.contains(&"icanon"), "left in raw mode:\n{out}");
        assert!(modes.contains(&"echo"), "echo left off:\n{out}");
        if panics {
            assert!(out.contains("EXIT=101"), "{out}");
            assert!(out.contains("a panic injected for the tests"), "{out}");
        } else {
            assert!(out.contains("EXIT=0"), "{out}");
        }
        assert!(t.wait().success());
    }
}

#[test]
fn without_a_serving_operator_the_view_says_how_to_start_one() {
    let op = Op::new();
    let out = op.run(&["tui"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("operator serve") && err.contains("--url"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mission_is_started_from_the_keyboard_after_its_plan() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    std::fs::write(
        op.root.path().join("config/missions/nightly.toml"),
        "description = \"two small chains\"\n[defaults]\nsim = { scenario = \"complete\" }\n\
         [[chain]]\nname = \"one\"\ntask = \"First\"\n\n[[chain]]\nname = \"two\"\ntask = \"Second\"\n",
    )
    .unwrap();
    std::fs::write(
        op.root.path().join("config/missions/broken.toml"),
        "[[chain]\n",
    )
    .unwrap();
    let srv = Server::start(&op, &[]);
    let mut t = Pty::spawn(tui_cmd(&op, &[], &[]), 30, 110);
    t.until("the chains screen", |s| s.contains("? help"));
    t.send("m");
    t.until("the missions", |s| {
        s.lines()
            .any(|l| l.contains("nightly") && l.contains("two small chains"))
            && s.lines()
                .any(|l| l.contains("broken") && l.contains("cannot be read"))
    });
    // `broken` sorts first: move to `nightly`, see its plan, then start it.
    let rows = t.screen();
    let broken_first = rows.find("broken") < rows.find("nightly");
    if broken_first {
        t.send("j");
    }
    t.send("\r");
    t.until("the plan, to confirm", |s| {
        s.contains("Start nightly: 2 chain(s)") && s.contains("one (sim")
    });
    let (_, before) = srv.get("/api/chains").await;
    assert_eq!(
        before["chains"].as_array().unwrap().len(),
        0,
        "a dry run started something"
    );
    t.send("y");
    t.until("started", |s| s.contains("started"));
    let ok = common::eventually(Duration::from_secs(30), || {
        let out = op.run(&["list", "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("\"mission\":\"nightly\"")
            .count()
            == 2
    });
    assert!(ok, "the mission's two chains were not started");
    t.send("q");
    assert!(t.wait().success());
}

/// `operator run --tui <args>` as a user's shell starts it, on the sim agent with chains long
/// enough to watch.
fn run_tui_cmd(op: &Op, task: &str) -> CommandBuilder {
    user_cmd(
        op,
        &["run", "--tui", "--agent", "sim", "--task", task],
        &[
            ("OPERATOR_WORKDIR", op.workdir().to_str().unwrap()),
            ("OPERATOR_SIM__STEP", "300ms"),
            ("OPERATOR_SIM__SCENARIO", "incomplete"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "50"),
            ("OPERATOR_MAX_CONTINUATIONS", "60"),
        ],
    )
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// `run --tui`: the run in the background with the view in front. Quitting asks; `l` leaves the
/// run going (`operator tui` finds it again, a second `run --tui` is refused with the reason,
/// `operator stop` stops it); `s` stops it and ends with the run's exit code.
#[tokio::test(flavor = "multi_thread")]
async fn run_with_the_view_in_front_asks_what_becomes_of_the_run_on_quit() {
    let op = Op::new();
    std::fs::create_dir_all(op.workdir()).unwrap();
    let mut t = Pty::spawn(run_tui_cmd(&op, "Watched from the front"), 30, 110);
    t.until("the chain running", |s| {
        s.lines().any(|l| l.contains("c-") && l.contains("running"))
    });
    t.send("q");
    t.until("the question", |s| s.contains("Quit: s stops the run"));
    t.send("l");
    assert!(t.wait().success());
    let screen = t.screen();
    let pid: i32 = screen
        .split("in the background (pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in:\n{screen}"));
    assert!(alive(pid), "the run did not go on:\n{screen}");

    // `operator tui` attaches to it; quitting that view asks nothing.
    let mut again = Pty::spawn(tui_cmd(&op, &[], &[]), 30, 110);
    again.until("the same chain, running", |s| {
        s.lines().any(|l| l.contains("c-") && l.contains("running"))
    });
    again.send("q");
    assert!(again.wait().success());
    assert!(alive(pid));

    // A second run on the same data dir is refused, and says why.
    let mut second = Pty::spawn(run_tui_cmd(&op, "A second run"), 30, 110);
    let status = second.wait();
    assert!(!status.success());
    let screen = second.screen();
    assert!(
        screen.contains("ended before it served its API") && screen.contains(&pid.to_string()),
        "{screen}"
    );

    let out = op.cmd(&["stop"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::eventually(Duration::from_secs(30), || !alive(pid)),
        "operator stop did not stop the background run"
    );

    // Once more, and `s` stops the run: the view waits for it and ends with its exit code.
    let mut t = Pty::spawn(run_tui_cmd(&op, "Stopped from the front"), 30, 110);
    t.until("the chain running", |s| {
        s.lines()
            .any(|l| l.contains("c-") && l.contains("running") && !l.contains("interrupted"))
    });
    t.send("q");
    t.until("the question", |s| s.contains("Quit: s stops the run"));
    t.send("s");
    let status = t.wait();
    let screen = t.screen();
    assert!(screen.contains("the run stopped (exit code"), "{screen}");
    assert!(
        !status.success(),
        "an interrupted run's exit code: {screen}"
    );
    assert!(common::processes_in(&op.workdir()).is_empty());
}

/// `o` on a desktop opens the chain's page with the desktop's opener (`xdg-open`, here a script
/// that notes its argument); over ssh it only shows the URL.
#[tokio::test(flavor = "multi_thread")]
async fn o_opens_the_chains_page_on_a_desktop_and_shows_it_over_ssh() {
    use std::os::unix::fs::PermissionsExt;
    let op = Op::new();
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "127.0.0.1:0", "--agent", "sim"],
        &[],
    );
    let id = srv.start_chain("Open me").await;
    let bin = op.root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opened = op.root.path().join("opened");
    let script = bin.join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let page = format!("{}/chains/{id}", srv.url.trim_end_matches('/'));

    let over_ssh = [
        ("PATH", path.as_str()),
        ("DISPLAY", ":0"),
        ("SSH_CONNECTION", "10.0.0.1 5000 10.0.0.2 22"),
    ];
    let mut t = Pty::spawn(tui_cmd(&op, &[], &over_ssh), 30, 110);
    t.until("the chain", |s| s.contains(&id));
    t.send("o");
    t.until("the URL", |s| s.contains(&page));
    t.send("q");
    assert!(t.wait().success());
    assert!(!opened.exists(), "a browser was opened over ssh");

    let desktop = [("PATH", path.as_str()), ("DISPLAY", ":0")];
    let mut t = Pty::spawn(tui_cmd(&op, &[], &desktop), 30, 110);
    t.until("the chain", |s| s.contains(&id));
    t.send("o");
    t.until("said opened", |s| s.contains("in your browser"));
    t.send("q");
    assert!(t.wait().success());
    assert!(
        common::eventually(Duration::from_secs(10), || std::fs::read_to_string(&opened)
            .is_ok_and(|u| u == page)),
        "the opener was not given the page: {:?}",
        std::fs::read_to_string(&opened)
    );
}
