//! Unit tests of configuration layering and error reporting.

use std::time::Duration;

use super::*;

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn env(pairs: &[(&str, &str)]) -> Env {
    Env(pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

const MISSION: &str = r#"
name = "m"
concurrency = 2
[defaults]
model = "haiku"
max_turns = 12
[[chain]]
name = "a"
task = "Task A"
max_turns = 7
[chain.sim]
scenario = "complete"
step = "250ms"
[[chain]]
name = "b"
task = "Task B"
after = ["a"]
"#;

#[test]
fn builtin_defaults_apply_without_files() {
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    assert_eq!(loaded.operator.data_dir, PathBuf::from(".operator"));
    assert_eq!(loaded.operator.shutdown_grace, Duration::from_secs(10));
    let plan = loaded
        .plan_for_task("Do it", &Overrides::default())
        .unwrap();
    let s = &plan.chains[0].settings;
    assert_eq!(s.model, "sonnet");
    assert_eq!(s.max_turns, 30);
    assert_eq!(s.max_continuations, 5);
    assert_eq!(
        s.agent,
        AgentKind::Claude,
        "real work needs a real agent by default"
    );
}

#[test]
fn verify_commands_from_the_environment_are_one_per_line_and_keep_their_commas() {
    let vars = env(&[
        (
            "OPERATOR_VERIFY",
            "cargo test --features a,b\n\n  npm test -- --grep x,y  \n",
        ),
        ("OPERATOR_EXCLUDE", "*.log,target"),
    ]);
    let loaded = load_operator(None, &vars, &Overrides::default()).unwrap();
    let plan = loaded
        .plan_for_task("Do it", &Overrides::default())
        .unwrap();
    let s = &plan.chains[0].settings;
    assert_eq!(
        s.verify,
        vec![
            "cargo test --features a,b".to_string(),
            "npm test -- --grep x,y".to_string()
        ]
    );
    // Other lists stay comma-separated.
    assert_eq!(s.exclude, vec!["*.log".to_string(), "target".to_string()]);
}

#[test]
fn precedence_is_defaults_operator_mission_chain_env_cli() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        "data_dir = \"/tmp/x\"\n[defaults]\nmodel = \"opus\"\nmax_turns = 20\nmax_continuations = 9\nmax_budget_usd = 2.5\n",
    );
    let mission = write(dir.path(), "m.toml", MISSION);
    // operator.toml beats built-ins; the mission beats operator.toml; the chain beats the mission.
    let loaded = load_operator(Some(&op), &Env::default(), &Overrides::default()).unwrap();
    assert_eq!(loaded.operator.data_dir, PathBuf::from("/tmp/x"));
    let plan = loaded
        .plan_for_mission(&mission, &Overrides::default())
        .unwrap();
    let (a, b) = (&plan.chains[0].settings, &plan.chains[1].settings);
    assert_eq!(a.max_continuations, 9, "from operator.toml");
    assert_eq!(a.max_budget_usd, 2.5);
    assert_eq!(a.model, "haiku", "mission beats operator.toml");
    assert_eq!(b.max_turns, 12, "mission defaults");
    assert_eq!(a.max_turns, 7, "chain beats mission defaults");
    assert_eq!(a.sim.step, Duration::from_millis(250));
    assert_eq!(plan.concurrency, 2);
    assert_eq!(plan.chains[1].after, vec!["a".to_string()]);

    // The environment beats the files …
    let e = env(&[
        ("OPERATOR_MAX_TURNS", "3"),
        ("OPERATOR_SIM__STEP", "1s"),
        ("OPERATOR_DATA_DIR", "/tmp/y"),
    ]);
    let loaded = load_operator(Some(&op), &e, &Overrides::default()).unwrap();
    assert_eq!(loaded.operator.data_dir, PathBuf::from("/tmp/y"));
    let plan = loaded
        .plan_for_mission(&mission, &Overrides::default())
        .unwrap();
    assert_eq!(plan.chains[0].settings.max_turns, 3);
    assert_eq!(plan.chains[0].settings.sim.step, Duration::from_secs(1));

    // … and the command line beats everything.
    let mut cli = Overrides::default();
    cli.set("max_turns", 4i64);
    cli.set("model", "sonnet");
    cli.set("sim.scenario", "no-handoff");
    let plan = loaded.plan_for_mission(&mission, &cli).unwrap();
    assert_eq!(plan.chains[0].settings.max_turns, 4);
    assert_eq!(plan.chains[1].settings.model, "sonnet");
    assert_eq!(
        plan.chains[0].settings.sim.scenario,
        crate::agent::sim::Scenario::NoHandoff
    );
    // The chain's own sim settings that the CLI did not touch stay.
    assert_eq!(plan.chains[0].settings.sim.step, Duration::from_secs(1));
}

#[test]
fn every_error_of_a_mission_is_reported_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let mission = write(
        dir.path(),
        "bad.toml",
        r#"
concurrncy = 2
[defaults]
max_turn = 3
[[chain]]
name = "a"
task = "x"
max_turns = "lots"
[[chain]]
name = "b"
[[chain]]
name = "c"
task = "y"
after = ["zzz"]
[chain.sim]
scenario = "compelte"
"#,
    );
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let err = loaded
        .plan_for_mission(&mission, &Overrides::default())
        .unwrap_err();
    let text = err.to_string();
    let file = mission.display().to_string();
    assert!(
        text.contains(&format!(
            "{file}: `concurrncy`: unknown key (did you mean `concurrency`?)"
        )),
        "{text}"
    );
    assert!(
        text.contains("`defaults.max_turn`: unknown key (did you mean `max_turns`?)"),
        "{text}"
    );
    assert!(
        text.contains("`chain[0] (a)`") && text.contains("max_turns"),
        "{text}"
    );
    assert!(text.contains("`chain[1].task`: missing"), "{text}");
    assert!(text.contains("compelte"), "{text}");
    assert!(text.contains("no chain named `zzz`"), "{text}");
    assert!(err.0.len() >= 5, "{text}");
    assert!(
        err.0
            .iter()
            .all(|i| i.file.as_deref() == Some(file.as_str()))
    );
}

#[test]
fn toml_syntax_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mission = write(dir.path(), "broken.toml", "[[chain]\ntask = \"x\"\n");
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let err = loaded
        .plan_for_mission(&mission, &Overrides::default())
        .unwrap_err();
    assert!(err.to_string().contains("broken.toml"), "{err}");
    let missing = loaded
        .plan_for_mission(&dir.path().join("nope.toml"), &Overrides::default())
        .unwrap_err();
    assert!(
        missing.to_string().contains("nope.toml: file not found"),
        "{missing}"
    );
}

#[test]
fn bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    for (body, needle) in [
        ("[[chain]]\ntask = \"x\"\nmax_turns = 0\n", "max_turns"),
        (
            "[[chain]]\ntask = \"x\"\npermission_mode = \"yolo\"\n",
            "permission_mode",
        ),
        (
            "[[chain]]\ntask = \"x\"\nworkdir = \"/no/such/dir\"\n",
            "workdir",
        ),
        ("[[chain]]\ntask = \"x\"\nagent = \"gpt\"\n", "gpt"),
        (
            "[[chain]]\ntask = \"x\"\n[chain.sim]\nstep = \"soon\"\n",
            "soon",
        ),
        (
            "[[chain]]\nname = \"../x\"\ntask = \"x\"\n",
            "not a valid name",
        ),
        (
            "[[chain]]\nname = \"a\"\ntask = \"x\"\nafter = [\"a\"]\n",
            "cycle",
        ),
        ("name = \"m\"\n", "no [[chain]]"),
        (
            "[[chain]]\ntask = \"x\"\nmodel = \"--dangerously-skip-permissions\"\n",
            "a model name starts with a letter or digit",
        ),
        (
            "[[chain]]\ntask = \"x\"\nmodel = \"sonnet --verbose\"\n",
            "a model name",
        ),
        (
            "[[chain]]\ntask = \"x\"\n[chain.permissions]\nallow = [\"Bash(ls\"]\n",
            "chain[0].permissions.allow[0]",
        ),
        (
            "[[chain]]\ntask = \"x\"\nretry_backoff = [\"1s\", \"584542046090y\"]\n",
            "`retry_backoff` is",
        ),
        (
            "[[chain]]\ntask = \"x\"\nusage_limit_margin = \"400years\"\n",
            "`usage_limit_margin` is",
        ),
        (
            "[[chain]]\ntask = \"x\"\napproval_timeout = \"30days\"\n",
            "`approval_timeout` is 30days; at most 7days",
        ),
    ] {
        let m = write(dir.path(), "m.toml", body);
        let err = loaded
            .plan_for_mission(&m, &Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
}

#[test]
fn model_names_are_names_never_options() {
    for ok in [
        "sonnet",
        "claude-opus-4-5-20251101",
        "us.anthropic.claude-sonnet-4-5-v1:0",
        "claude-sonnet-4-5@20250929",
        "sonnet[1m]",
    ] {
        assert!(is_model_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-m",
        "--dangerously-skip-permissions",
        "a b",
        "a\nb",
        "x;rm",
    ] {
        assert!(!is_model_name(bad), "{bad:?}");
    }
}

#[test]
fn operator_toml_unknown_keys_and_bad_types() {
    let dir = tempfile::tempdir().unwrap();
    let op = write(
        dir.path(),
        "operator.toml",
        "data_dri = \"x\"\nshutdown_grace = \"forever\"\n",
    );
    let err = load_operator(Some(&op), &Env::default(), &Overrides::default())
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("did you mean `data_dir`"), "{text}");
    assert!(text.contains("forever"), "{text}");
}

#[test]
fn mission_names_resolve_to_files() {
    assert_eq!(resolve_mission("x.toml"), PathBuf::from("x.toml"));
    assert_eq!(resolve_mission("some/dir/x"), PathBuf::from("some/dir/x"));
    // A bare name without such a file stays as given (and fails later with "file not found").
    assert_eq!(
        resolve_mission("zz-no-such-mission"),
        PathBuf::from("zz-no-such-mission")
    );
}

#[test]
fn resume_flags_layer_over_stored_settings() {
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let stored = loaded
        .plan_for_task("T", &Overrides::default())
        .unwrap()
        .chains[0]
        .settings
        .clone();
    assert_eq!(
        with_overrides(&stored, &Overrides::default()).unwrap(),
        stored
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Overrides::default();
    cli.set("max_turns", 9i64);
    cli.set("workdir", dir.path().display().to_string());
    cli.set("sim.scenario", "complete");
    let s = with_overrides(&stored, &cli).unwrap();
    assert_eq!(s.max_turns, 9);
    assert_eq!(s.workdir, dir.path());
    assert_eq!(s.sim.scenario, crate::agent::sim::Scenario::Complete);
    assert_eq!(s.sim.step, stored.sim.step, "untouched nested keys stay");
    let mut bad = Overrides::default();
    bad.set("max_turns", 0i64);
    assert!(
        with_overrides(&stored, &bad)
            .unwrap_err()
            .to_string()
            .contains("max_turns")
    );
}

#[test]
fn agents_and_fallbacks_come_from_files_and_the_environment_and_typos_name_the_choices() {
    let vars = env(&[
        ("OPERATOR_AGENT", "codex"),
        ("OPERATOR_FALLBACK_AGENTS", "claude,sim"),
    ]);
    let loaded = load_operator(None, &vars, &Overrides::default()).unwrap();
    let s = loaded
        .plan_for_task("Do it", &Overrides::default())
        .unwrap()
        .chains[0]
        .settings
        .clone();
    assert_eq!(s.agent, AgentKind::Codex);
    assert_eq!(s.fallback_agents, vec![AgentKind::Claude, AgentKind::Sim]);
    assert!(s.prefer_primary, "back to the chain's own agent by default");
    let bad = load_operator(
        None,
        &env(&[("OPERATOR_AGENT", "codx")]),
        &Overrides::default(),
    )
    .unwrap()
    .plan_for_task("Do it", &Overrides::default())
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("`agent` is `codx`: it must be one of claude, codex, gemini, sim"),
        "{bad}"
    );
}

#[test]
fn every_bad_value_of_a_chain_and_of_operator_toml_is_reported_at_once_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mission = write(
        dir.path(),
        "m.toml",
        r#"
[defaults]
max_turns = -1
max_budget_usd = "lots"
idle_timeout = "forever"
[[chain]]
name = "a"
task = "x"
max_attempts = 99999999999
permission_mode = "yolo"
model = "-x"
retry_backoff = ["584542046090y", "2y"]
"#,
    );
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let err = loaded
        .plan_for_mission(&mission, &Overrides::default())
        .unwrap_err();
    let text = err.to_string();
    for key in [
        "max_turns",
        "max_budget_usd",
        "idle_timeout",
        "max_attempts",
        "permission_mode",
        "model",
        "retry_backoff",
    ] {
        let hits = err.0.iter().filter(|i| i.message.contains(key)).count();
        assert!(hits >= 1, "`{key}` is not named: {text}");
    }
    assert!(err.0.len() >= 7, "{text}");

    let op = write(
        dir.path(),
        "operator.toml",
        "daily_cap_usd = \"y\"\nmax_concurrent_sessions = \"x\"\nshutdown_grace = \"forever\"\n",
    );
    let err = load_operator(Some(&op), &Env::default(), &Overrides::default())
        .err()
        .unwrap();
    let text = err.to_string();
    assert_eq!(err.0.len(), 3, "{text}");
    for key in ["daily_cap_usd", "max_concurrent_sessions", "shutdown_grace"] {
        assert!(text.contains(key), "`{key}` is not named: {text}");
    }
}

#[test]
fn a_mission_file_is_utf8_text_within_the_apis_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let plan = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        loaded.plan_for_mission(&p, &Overrides::default())
    };
    let mut latin1 = b"[[chain]]\ntask = \"caf".to_vec();
    latin1.extend_from_slice(&[0xe9, b'"', b'\n']);
    let err = plan("latin1.toml", &latin1).unwrap_err().to_string();
    assert!(
        err.contains("latin1.toml") && err.contains("not UTF-8") && err.contains("line 2"),
        "{err}"
    );

    let big = format!(
        "[[chain]]\ntask = \"{}\"\n",
        "x".repeat(crate::model::INPUT_LIMIT)
    );
    let err = plan("big.toml", big.as_bytes()).unwrap_err().to_string();
    assert!(
        err.contains("big.toml") && err.contains("larger than 64 KiB"),
        "{err}"
    );
    let fits = format!(
        "[[chain]]\ntask = \"{}\"\n",
        "x".repeat(crate::model::INPUT_LIMIT - 100)
    );
    assert!(plan("fits.toml", fits.as_bytes()).is_ok());

    let err = loaded
        .plan_for_task(
            &"x".repeat(crate::model::INPUT_LIMIT + 1),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--task") && err.contains("longer than 64 KiB"),
        "{err}"
    );
}

#[test]
fn a_merge_target_must_be_a_branch_name() {
    for ok in ["main", "release/1.2", "feature_x-2"] {
        assert!(super::valid_branch(ok), "{ok}");
    }
    for bad in [
        "", "-f", "a..b", "a b", "x.lock", "/main", "main/", "a;rm", ".hidden",
    ] {
        assert!(!super::valid_branch(bad), "{bad}");
    }
}

#[test]
fn landing_settings_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        dir.path(),
        "ok.toml",
        r#"
[defaults]
wait_for_checks = true
checks_timeout = "45m"
merge = "auto"
merge_method = "rebase"
[[chain]]
name = "a"
task = "x"
"#,
    );
    let loaded = load_operator(None, &Env::default(), &Overrides::default()).unwrap();
    let plan = loaded.plan_for_mission(&ok, &Overrides::default()).unwrap();
    let s = &plan.chains[0].settings;
    assert!(s.wait_for_checks && s.opens_pr() && !s.pull_request);
    assert_eq!(s.checks_timeout, Duration::from_secs(45 * 60));
    assert_eq!(s.checks_poll, Duration::from_secs(30));
    assert_eq!(
        (s.merge, s.merge_method),
        (MergeMode::Auto, MergeMethod::Rebase)
    );
    assert!(!s.merge_queue);
    assert_eq!(s.max_evictions, 3);

    let bad = write(
        dir.path(),
        "bad.toml",
        r#"
[defaults]
merge_queue = true
wait_for_checks = true
merge_target = "-f"
merge_method = "octopus"
[[chain]]
name = "a"
task = "x"
"#,
    );
    let text = loaded
        .plan_for_mission(&bad, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("`merge_queue` lands branches locally"),
        "{text}"
    );
    assert!(text.contains("`merge_target` is `-f`"), "{text}");
    assert!(
        text.contains("merge_method") && text.contains("squash, merge, rebase"),
        "{text}"
    );
}
