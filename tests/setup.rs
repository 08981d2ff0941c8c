//! A repository set up from the command line as a new user does it: `operator init` (every preset,
//! every agent), `operator config` with a value from each layer, shell completions and man pages.
//! The real binary, run in a fresh git repository with no `OPERATOR_*` variable set.
//!
//! In CI (`CI` set) a missing zsh, fish or groff fails these tests; elsewhere those checks are
//! skipped with a loud message. `.ci/run` installs them.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::BIN;
use serde_json::Value;

/// A fresh git repository.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git init");
    dir
}

/// `operator <args>` in `dir` as a new user runs it: no `OPERATOR_*` variable but `env`.
fn operator(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.current_dir(dir).args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OPERATOR_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run operator")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A tool the test needs: its path, or `None` (loudly) outside CI.
fn tool(name: &str) -> Option<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} is not installed: CI must run this check (.ci/run installs it)"
    );
    eprintln!("\n*** SKIPPED: {name} is not installed; its check did not run ***\n");
    None
}

#[test]
fn init_sets_up_a_repository_that_validates_and_is_never_overwritten_by_accident() {
    let dir = repo();
    let d = dir.path();
    std::fs::write(d.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    std::fs::write(d.join(".gitignore"), "/target").unwrap();
    let out = ok(&operator(d, &["init"], &[]));
    assert!(out.contains("operator doctor"), "{out}");
    assert!(out.contains("operator run survey"), "{out}");
    let settings = std::fs::read_to_string(d.join("config/operator.toml")).unwrap();
    let mission = std::fs::read_to_string(d.join("config/missions/survey.toml")).unwrap();
    assert!(settings.contains("# max_turns = 30"), "{settings}");
    assert!(mission.contains("NOTES.md"), "{mission}");
    assert_eq!(
        std::fs::read_to_string(d.join(".gitignore")).unwrap(),
        "/target\n/.operator/\n"
    );
    let v = ok(&operator(d, &["validate", "survey"], &[]));
    assert!(v.contains("ok"), "{v}");

    // A second init refuses, names the file and the flag, and writes nothing.
    std::fs::write(d.join("config/operator.toml"), "# mine\n").unwrap();
    let again = operator(d, &["init"], &[]);
    assert_eq!(again.status.code(), Some(2));
    let err = text(&again.stderr);
    assert!(
        err.contains("config/operator.toml") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("config/operator.toml")).unwrap(),
        "# mine\n"
    );
    ok(&operator(d, &["init", "--force"], &[]));
    assert_eq!(
        std::fs::read_to_string(d.join("config/operator.toml")).unwrap(),
        settings
    );
    // The data dir is not added twice.
    assert_eq!(
        std::fs::read_to_string(d.join(".gitignore")).unwrap(),
        "/target\n/.operator/\n"
    );
}

#[test]
fn every_preset_validates_and_dry_runs_with_every_agent() {
    for agent in ["claude", "codex", "gemini", "sim"] {
        for preset in ["survey", "refactor", "fix-tests", "docs"] {
            let dir = repo();
            let d = dir.path();
            std::fs::write(d.join("go.mod"), "module x\n").unwrap();
            ok(&operator(
                d,
                &["init", "--agent", agent, "--preset", preset],
                &[],
            ));
            ok(&operator(d, &["validate", preset], &[]));
            let plan = ok(&operator(d, &["run", preset, "--dry-run"], &[]));
            let bin = if agent == "sim" { "sim-agent" } else { agent };
            assert!(
                plan.contains(&format!("agent {agent}")) && plan.contains(bin),
                "{agent}/{preset}: {plan}"
            );
            if matches!(preset, "refactor" | "fix-tests") {
                let m = std::fs::read_to_string(d.join(format!("config/missions/{preset}.toml")))
                    .unwrap();
                assert!(m.contains("verify = [\"go test ./...\"]"), "{m}");
            }
        }
    }
}

#[test]
fn the_operator_file_with_every_example_uncommented_is_still_valid() {
    let dir = repo();
    let d = dir.path();
    ok(&operator(d, &["init"], &[]));
    let path = d.join("config/operator.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut set = 0;
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                set += 1;
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(set, 64, "every setting has a line to uncomment");
    std::fs::write(&path, uncommented).unwrap();
    ok(&operator(d, &["validate", "survey"], &[]));
    ok(&operator(d, &["run", "survey", "--dry-run"], &[]));
}

#[test]
fn config_names_where_each_value_came_from() {
    let dir = repo();
    let d = dir.path();
    std::fs::create_dir_all(d.join("config/missions")).unwrap();
    std::fs::write(
        d.join("config/operator.toml"),
        "listen = \"127.0.0.1:4000\"\napi_token = \"0123456789abcdef-secret\"\n\
         [defaults]\nmax_turns = 12\nmodel = \"haiku\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("config/missions/m.toml"),
        "[defaults]\nmodel = \"opus\"\n\n[[chain]]\nname = \"a\"\ntask = \"t\"\n\n\
         [[chain]]\nname = \"b\"\ntask = \"t\"\nmax_continuations = 2\n",
    )
    .unwrap();
    let env = [
        ("OPERATOR_MAX_BUDGET_USD", "3.5"),
        ("OPERATOR_SIM__STEP", "0s"),
    ];
    let out = ok(&operator(
        d,
        &[
            "config",
            "m",
            "b",
            "--json",
            "--max-session-cost-usd",
            "1.5",
        ],
        &env,
    ));
    assert!(
        !out.contains("0123456789abcdef"),
        "a secret was shown: {out}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let find = |list: &Value, key: &str| -> (Value, String) {
        let e = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no {key}"));
        (
            e["value"].clone(),
            e["origin"].as_str().unwrap().to_string(),
        )
    };
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "only chain b");
    assert_eq!(chains[0]["name"], "b");
    let b = &chains[0]["settings"];
    let expect = [
        ("session_timeout", "\"2h\"", "built-in"),
        (
            "max_turns",
            "12",
            "config/operator.toml: defaults.max_turns",
        ),
        (
            "model",
            "\"opus\"",
            "config/missions/m.toml: defaults.model",
        ),
        (
            "max_continuations",
            "2",
            "config/missions/m.toml: chain[1].max_continuations",
        ),
        ("max_budget_usd", "3.5", "OPERATOR_MAX_BUDGET_USD"),
        ("sim.step", "\"0s\"", "OPERATOR_SIM__STEP"),
        ("max_session_cost_usd", "1.5", "--max-session-cost-usd"),
    ];
    for (key, value, origin) in expect {
        assert_eq!(
            find(b, key),
            (serde_json::from_str(value).unwrap(), origin.to_string()),
            "{key}"
        );
    }
    let op = &v["operator"];
    assert_eq!(
        find(op, "listen"),
        (
            Value::from("127.0.0.1:4000"),
            "config/operator.toml: listen".into()
        )
    );
    assert_eq!(find(op, "api_token").0, Value::from("<hidden>"));
    assert_eq!(find(op, "data_dir").1, "built-in");

    // The text form: one line per setting with its origin; an unknown chain is an error that
    // lists the chains.
    let text_out = ok(&operator(d, &["config", "m"], &env));
    assert!(text_out.contains("chain `a` of") && text_out.contains("chain `b` of"));
    let line = text_out
        .lines()
        .find(|l| l.trim_start().starts_with("max_budget_usd"))
        .unwrap();
    assert!(
        line.contains("3.5") && line.ends_with("OPERATOR_MAX_BUDGET_USD"),
        "{line}"
    );
    let bad = operator(d, &["config", "m", "c"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("its chains are a, b"));

    // A bad value says where it was set.
    let bad = operator(
        d,
        &["run", "m", "--dry-run"],
        &[("OPERATOR_MAX_TURNS", "0")],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("`max_turns` must be at least 1 (set by OPERATOR_MAX_TURNS)"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn completions_parse_in_each_shell_and_name_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let commands = ["run", "init", "config", "completions", "man", "doctor"];
    let checks: [(&str, &[&str]); 3] = [
        ("bash", &["-n"]),
        ("zsh", &["-n"]),
        ("fish", &["--no-execute"]),
    ];
    for (shell, check) in checks {
        let script = ok(&operator(dir.path(), &["completions", shell], &[]));
        for c in commands {
            assert!(script.contains(c), "{shell} completion lacks {c}");
        }
        assert!(
            !script.contains("sim-agent"),
            "a hidden command is completed"
        );
        if tool(shell).is_none() {
            continue;
        }
        let file = dir.path().join(format!("operator.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let out = Command::new(shell).args(check).arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} cannot parse its completion script: {}",
            text(&out.stderr)
        );
    }
    for shell in ["elvish", "powershell"] {
        let script = ok(&operator(dir.path(), &["completions", shell], &[]));
        assert!(
            script.contains("init") && script.contains("config"),
            "{shell}"
        );
    }
    let bad = operator(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_man_pages_render() {
    let dir = tempfile::tempdir().unwrap();
    let page = ok(&operator(dir.path(), &["man"], &[]));
    assert!(page.contains(".TH operator 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing");
    }
    let pages = dir.path().join("man1");
    ok(&operator(
        dir.path(),
        &["man", "--dir", pages.to_str().unwrap()],
        &[],
    ));
    for name in [
        "operator.1",
        "operator-run.1",
        "operator-init.1",
        "operator-config.1",
    ] {
        assert!(pages.join(name).is_file(), "{name} not written");
    }
    assert!(!pages.join("operator-sim-agent.1").exists());
    let run_page = std::fs::read_to_string(pages.join("operator-run.1")).unwrap();
    assert!(run_page.contains("max\\-turns") && run_page.contains("OPERATOR_MAX_TURNS"));
    if tool("groff").is_none() {
        return;
    }
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(pages.join("operator-run.1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).trim().is_empty(),
        "groff warns: {}",
        text(&out.stderr)
    );
}

/// The whole first run of a new user: `operator init` in their repository, then the mission it
/// wrote, on default settings with the real Claude Code CLI (against the fake Messages API). The
/// agent's NOTES.md is committed; the operator's data dir, inside the repository, is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_inits_a_repository_and_runs_its_first_mission_with_the_real_cli() {
    use common::cli::claude_bin;
    use common::fake_api::{FakeApi, Step};
    let Some(bin) = claude_bin() else { return };
    let op = common::Op::new();
    let repo = std::fs::canonicalize(op.workdir()).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=U", "-c", "user.email=u@example.invalid"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("README.md"), "# project\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "start"]);
    let complete = "Wrote NOTES.md.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nRead the \
                    repository and wrote NOTES.md.\n\n### Remaining\nNothing.\n\n### Context\nNone.";
    let api = FakeApi::start(
        vec![
            Step::tool(
                "Write",
                serde_json::json!({"file_path": repo.join("NOTES.md"), "content": "# Notes\n"}),
            ),
            Step::text(complete),
        ],
        Step::text("unexpected"),
    )
    .await;
    // As the user types them, in the repository: no data dir, workdir or agent given.
    let user = |args: &[&str]| {
        let mut c = common::user_cmd(&op, &api, &bin, args);
        for k in [
            "OPERATOR_DATA_DIR",
            "OPERATOR_WORKDIR",
            "OPERATOR_SIM__STEP",
            "OPERATOR_RETRY_BACKOFF",
        ] {
            c.env_remove(k);
        }
        c.current_dir(&repo);
        c
    };
    let init = user(&["init"]).output().unwrap();
    let printed = ok(&init);
    assert!(printed.contains("operator run survey"), "{printed}");
    let mut run = user(&["run", "survey", "--json"]);
    let out = tokio::task::spawn_blocking(move || run.output().unwrap())
        .await
        .unwrap();
    ok(&out);
    let c = &common::chains(&out)[0];
    assert_eq!(c.status, operator::model::ChainStatus::Complete, "{c:?}");
    assert_eq!(c.config["agent"], "claude");
    assert_eq!(
        std::fs::read_to_string(repo.join("NOTES.md")).unwrap(),
        "# Notes\n"
    );
    let committed = git(&["log", "--name-only", "--format=%s", "-n", "1"]);
    assert!(
        committed.contains("NOTES.md"),
        "{committed}\n{}",
        text(&out.stderr)
    );
    assert!(
        !git(&["ls-files"]).contains(".operator"),
        "the data dir was committed"
    );
    assert!(
        repo.join(".operator/operator.db").is_file(),
        "the data dir is the default one, in the repository"
    );
}
