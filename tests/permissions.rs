//! Tool permissions with the real Claude Code CLI (against the fake Messages API), run as a new user
//! runs it: `operator run --task "…"` with the default settings — no `--agent`, no permission mode,
//! the CLI found on `PATH` — and the operator answering every `can_use_tool` request.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use std::time::Duration;

use common::cli::claude_bin;
use common::fake_api::{FakeApi, Step};
use common::{Op, chains, stderr, user_cmd};
use operator::model::ChainStatus;
use serde_json::{Value, json};

const COMPLETE: &str = "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nWrote the files and checked them.\n\n### Remaining\nNothing.\n\n### Context\nNone.";

fn incomplete(n: u32) -> String {
    format!(
        "Part {n} done.\n\n## HANDOFF\n\n### Accomplished\nFinished part {n} of the work.\n\n### Remaining\n- part {}\n\n### Context\nNone.",
        n + 1
    )
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn request_text(body: &Value) -> String {
    let mut s = body["system"].to_string();
    s.push_str(&body["messages"].to_string());
    s
}

/// The permission decisions journaled for a chain: (session, tool, decision, rule, input).
async fn decisions(op: &Op, chain: &str) -> Vec<(u32, String, String, String, String)> {
    decisions_in(&op.data_dir(), chain).await
}

/// The same, from the store in `data_dir`.
async fn decisions_in(
    data_dir: &std::path::Path,
    chain: &str,
) -> Vec<(u32, String, String, String, String)> {
    use operator::store::Store;
    let store = operator::store::sqlite::SqliteStore::open(data_dir)
        .await
        .unwrap();
    store
        .events(Some(chain), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "session:permission")
        .map(|e| {
            let s = |k: &str| e.data[k].as_str().unwrap_or_default().to_string();
            (
                e.session_index.unwrap_or(0),
                s("tool"),
                s("decision"),
                s("rule"),
                s("input"),
            )
        })
        .collect()
}

fn workdir(op: &Op) -> PathBuf {
    std::fs::canonicalize(op.workdir()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_default_settings_the_agent_works_in_its_workdir_and_nowhere_else() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = workdir(&op);
    let outside = op.root.path().join("outside.txt");
    let home = op.root.path().join("home");
    let api = FakeApi::start(
        vec![
            Step::tool(
                "Write",
                json!({"file_path": work.join("hello.txt"), "content": "written by the agent\n"}),
            ),
            Step::bash("git init -q && echo ran > bash.txt"),
            Step::tool(
                "Write",
                json!({"file_path": outside, "content": "should never be written\n"}),
            ),
            Step::tool("Read", json!({"file_path": home.join(".ssh/id_ed25519")})),
            Step::text(incomplete(1)),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let out = output(user_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Write the files", "--json"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete, "{c:?}");
    assert_eq!(c.config["agent"], "claude", "the default agent is claude");
    // Both allowed calls really ran…
    assert_eq!(
        std::fs::read_to_string(work.join("hello.txt")).unwrap(),
        "written by the agent\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("bash.txt"))
            .unwrap()
            .trim(),
        "ran"
    );
    assert!(work.join(".git").is_dir(), "git init ran");
    // …the denied ones did not.
    assert!(
        !outside.exists(),
        "a write outside the workdir went through"
    );
    // The model was told (the key's content never reached the API).
    let reqs = api.scripted();
    let all: String = reqs.iter().map(request_text).collect();
    assert!(!all.contains("PRIVATE KEY"), "the secret was read");
    assert!(all.contains("Writing outside the workdir"), "{all}");
    // Every decision is kept, with the rule that made it.
    let d = decisions(&op, &c.id).await;
    let find = |tool: &str, decision: &str| {
        d.iter()
            .find(|x| x.1 == tool && x.2 == decision)
            .unwrap_or_else(|| panic!("no {decision} of {tool} in {d:?}"))
            .clone()
    };
    assert_eq!(
        find("Write", "allow").3,
        "default: writes inside the workdir"
    );
    assert_eq!(
        find("Bash", "allow").3,
        "default: commands run in the workdir"
    );
    assert_eq!(
        find("Write", "deny").3,
        "default: writes only inside the workdir"
    );
    assert_eq!(find("Read", "deny").3, "default: secret places");
    assert!(find("Read", "deny").4.ends_with(".ssh/id_ed25519"));
    // The next session's prompt names the denied calls.
    let prompt2 = op
        .store()
        .await
        .session_prompt(&c.id, 2)
        .await
        .unwrap()
        .unwrap();
    assert!(
        prompt2.contains("denied by the operator's permission policy"),
        "{prompt2}"
    );
    assert!(prompt2.contains("outside.txt"), "{prompt2}");
    assert!(prompt2.contains("id_ed25519"), "{prompt2}");
    assert!(
        request_text(&reqs[5]).contains("denied by the operator's permission policy"),
        "the CLI's second session did not get the note"
    );
    // `show` lists the decisions per session; a warning event went out.
    let show = op.run(&["show", &c.id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("deny  Write"), "{text}");
    assert!(text.contains("allow Bash"), "{text}");
    let store = op.store().await;
    use operator::store::Store;
    let warned = store
        .events(Some(&c.id), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .any(|e| e.kind == "chain:permissions-denied" && e.data["count"] == 2);
    assert!(warned, "no chain:permissions-denied event");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_rule_refuses_what_the_default_allows() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = workdir(&op);
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(
        work.join("config/operator.toml"),
        "[defaults.permissions]\ndeny = [\"Bash(git push:*)\", \"Edit(secrets/**)\"]\n",
    )
    .unwrap();
    let api = FakeApi::start(
        vec![
            Step::bash("git push origin main"),
            Step::tool(
                "Write",
                json!({"file_path": work.join("secrets/key.txt"), "content": "x"}),
            ),
            Step::bash("echo fine > ok.txt"),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Push it", "--json"]);
    cmd.current_dir(&work);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let d = decisions(&op, &c.id).await;
    assert!(
        d.iter()
            .any(|x| x.1 == "Bash" && x.2 == "deny" && x.3 == "deny: Bash(git push:*)"),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|x| x.1 == "Write" && x.2 == "deny" && x.3 == "deny: Edit(secrets/**)"),
        "{d:?}"
    );
    assert!(!work.join("secrets/key.txt").exists());
    assert!(work.join("ok.txt").exists());
    // `validate` names a malformed rule with its file and key.
    std::fs::write(
        work.join("config/operator.toml"),
        "[defaults.permissions]\nallow = [\"Bash\", \"Edit(src/**\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(work.join("config/missions")).unwrap();
    std::fs::write(
        work.join("config/missions/m.toml"),
        "[[chain]]\ntask = \"t\"\n[chain.permissions]\ndeny = [\"WebFetch(docs.rs)\"]\n",
    )
    .unwrap();
    let mut v = op.cmd(&["validate", "m"]);
    v.current_dir(&work);
    let out = v.output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("config/operator.toml")
            && err.contains("defaults.permissions.allow[1]")
            && err.contains("must end with `)`"),
        "{err}"
    );
    std::fs::remove_file(work.join("config/operator.toml")).unwrap();
    let mut v = op.cmd(&["validate", "m"]);
    v.current_dir(&work);
    let out = v.output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("m.toml")
            && err.contains("chain[0].permissions.deny[0]")
            && err.contains("domain:"),
        "{err}"
    );
}

/// A run with an `ask` rule in the background: the approval id once it is requested.
async fn pending_approval(op: &Op, chain_hint: Option<&str>) -> (String, String) {
    for _ in 0..600 {
        let store = op.store().await;
        if let Ok(list) = operator::store::approvals::list(&store, chain_hint).await
            && let Some(a) = list
                .into_iter()
                .find(|a| a.status == operator::permissions::ApprovalStatus::Pending)
        {
            return (a.chain_id, a.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no approval was requested");
}

/// One held call as the store has it now.
async fn approval(op: &Op, chain: &str, id: &str) -> operator::permissions::Approval {
    operator::store::approvals::load(&op.store().await, chain, id)
        .await
        .unwrap()
}

fn ask_config(op: &Op, extra: &str) -> PathBuf {
    let work = workdir(op);
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(
        work.join("config/operator.toml"),
        format!("[defaults]\n{extra}\n[defaults.permissions]\nask = [\"Bash(git push:*)\"]\n"),
    )
    .unwrap();
    work
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ask_rule_holds_the_call_until_a_person_answers_through_the_api_or_the_cli() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    // A short idle watchdog: a held call must not count as idleness.
    let work = ask_config(&op, "idle_timeout = \"3s\"");
    let api = FakeApi::start(
        vec![
            Step::bash("git push origin main || echo pushed > pushed.txt"),
            Step::bash("git push --tags || echo tags > tags.txt"),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = user_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Push", "--json", "--serve", "127.0.0.1:0"],
    );
    cmd.current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // First call: held; the chain shows it; answered through the API after the watchdog's 3 s.
    let (chain, id) = pending_approval(&op, None).await;
    let status = op.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("awaiting-approval"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    // Two minutes on hold, forty times the idle watchdog: the wait is not idleness.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let addr = std::fs::read_to_string(op.data_dir().join("api.addr")).unwrap();
    let token = std::fs::read_to_string(op.data_dir().join("api-token")).unwrap();
    let client = reqwest::Client::new();
    let listed: Value = client
        .get(format!("{}/api/chains/{chain}/approvals", addr.trim()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["tool"], "Bash");
    let r = client
        .post(format!("{}/api/chains/{chain}/approvals/{id}", addr.trim()))
        .bearer_auth(token.trim())
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Second call: denied from the terminal.
    let (_, id2) = loop {
        let p = pending_approval(&op, Some(&chain)).await;
        if p.1 != id {
            break p;
        }
    };
    let out = op.run(&["deny", &chain, "--message", "no tags tonight"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete, "{}", stderr(&out));
    assert_eq!(c.sessions.len(), 1, "the watchdog must not have fired");
    // The approved push ran (the command's `||` branch, as there is no remote); the denied one did not.
    assert!(work.join("pushed.txt").exists());
    assert!(!work.join("tags.txt").exists());
    let all: String = api.scripted().iter().map(request_text).collect();
    assert!(all.contains("no tags tonight"), "the agent was told why");
    let d = decisions(&op, &c.id).await;
    assert!(
        d.iter().any(|x| x.2 == "allow" && x.3 == "answered by api"),
        "{d:?}"
    );
    assert!(
        d.iter().any(|x| x.2 == "deny" && x.3 == "answered by cli"),
        "{d:?}"
    );
    let a = approval(&op, &chain, &id2).await;
    assert_eq!(a.answered_by.as_deref(), Some("cli"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_call_is_denied_at_its_timeout_and_the_chain_goes_on() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = ask_config(&op, "approval_timeout = \"2s\"");
    let api = FakeApi::start(
        vec![
            Step::bash("git push origin main || echo pushed > pushed.txt"),
            Step::bash("echo after > after.txt"),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Push", "--json"]);
    cmd.current_dir(&work);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert!(!work.join("pushed.txt").exists());
    assert!(work.join("after.txt").exists(), "the chain went on");
    let d = decisions(&op, &c.id).await;
    assert!(d.iter().any(|x| x.2 == "ask"), "{d:?}");
    assert!(
        d.iter()
            .any(|x| x.2 == "deny" && x.3 == "answered by timeout"),
        "{d:?}"
    );
    let all: String = api.scripted().iter().map(request_text).collect();
    assert!(all.contains("Nobody answered"), "the agent was told");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_while_a_call_waits_for_approval_ends_the_run_cleanly() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = ask_config(&op, "");
    let api = FakeApi::start(
        vec![
            Step::bash("git push origin main || echo pushed > pushed.txt"),
            Step::text(incomplete(1)),
        ],
        Step::text(incomplete(2)),
    )
    .await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Push", "--json"]);
    cmd.current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let (chain, id) = pending_approval(&op, None).await;
    // A pause does not disturb the held call…
    let out = op.run(&["pause"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = approval(&op, &chain, &id).await;
    assert_eq!(a.status, operator::permissions::ApprovalStatus::Pending);
    // …a stop settles it, and the session still writes its handoff.
    let out = op.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Interrupted, "{}", stderr(&out));
    assert!(!work.join("pushed.txt").exists());
    let a = approval(&op, &chain, &id).await;
    assert_eq!(a.status, operator::permissions::ApprovalStatus::Cancelled);
    assert!(common::processes_in(&work).is_empty(), "an agent is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_run_refuses_before_starting_and_a_skipped_check_fails_fast() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let api = FakeApi::start(vec![], Step::text("unexpected")).await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Work", "--json"]);
    cmd.env_remove("ANTHROPIC_API_KEY");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no credentials") && err.contains("/login"),
        "{err}"
    );
    assert!(err.contains("Nothing was started"), "{err}");
    let list = op.run(&["list", "--json"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).trim().is_empty()
            || String::from_utf8_lossy(&list.stdout).trim() == "[]",
        "a chain was created: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    // With the check skipped, the CLI's "Not logged in" is fatal at its first appearance.
    let mut cmd = user_cmd(
        &op,
        &api,
        &bin,
        &[
            "run",
            "--task",
            "Work",
            "--json",
            "--skip-credentials-check",
        ],
    );
    cmd.env_remove("ANTHROPIC_API_KEY");
    let started = std::time::Instant::now();
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert_eq!(c.sessions.len(), 1, "{c:?}");
    assert_eq!(c.sessions[0].attempts, 1, "retried: {c:?}");
    let reason = c.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("not logged in") && reason.contains("ANTHROPIC_API_KEY"),
        "{reason}"
    );
    // No API request was needed to know (the CLI says so before calling out).
    assert!(api.scripted().is_empty());
    eprintln!("failed in {:?}", started.elapsed());
}

/// The usual layout: the data dir (`.operator`, with the API token) inside the workdir. The CLI
/// would let an agent read files of its workdir without asking; the operator still decides.
#[tokio::test(flavor = "multi_thread")]
async fn reads_inside_the_workdir_are_decided_too_and_the_data_dir_stays_closed() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = workdir(&op);
    std::fs::write(work.join("notes.txt"), "inside the workdir").unwrap();
    let data = work.join(".operator");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("api-token"), "TOKEN-SECRET-VALUE").unwrap();
    let api = FakeApi::start(
        vec![
            Step::tool("Read", json!({"file_path": work.join("notes.txt")})),
            Step::tool("Read", json!({"file_path": data.join("api-token")})),
            Step::tool(
                "Write",
                json!({"file_path": data.join("injected.md"), "content": "x"}),
            ),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Read", "--json"]);
    cmd.env("OPERATOR_DATA_DIR", &data);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let all: String = api.scripted().iter().map(request_text).collect();
    assert!(
        all.contains("inside the workdir"),
        "the allowed read did not run"
    );
    assert!(
        !all.contains("TOKEN-SECRET-VALUE"),
        "the API token was read"
    );
    let c = &chains(&out)[0];
    let d: Vec<(String, String, String)> = decisions_in(&data, &c.id)
        .await
        .into_iter()
        .map(|(_, tool, decision, rule, _)| (tool, decision, rule))
        .collect();
    assert_eq!(
        d,
        [
            (
                "Read".into(),
                "allow".into(),
                "default: reads anywhere but secret places".into()
            ),
            (
                "Read".into(),
                "deny".into(),
                "default: the operator's data dir".into()
            ),
            (
                "Write".into(),
                "deny".into(),
                "default: the operator's data dir".into()
            ),
        ]
    );
}

/// A `kill -9` of the operator while a call waits: the agent that asked is gone, so the approval is
/// settled when the chain comes back, and the chain goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_held_when_the_operator_died_is_settled_when_the_chain_resumes() {
    let Some(bin) = claude_bin() else { return };
    let op = Op::new();
    let work = ask_config(&op, "");
    let api = FakeApi::start(
        vec![
            Step::bash("git push origin main || echo pushed > pushed.txt"),
            Step::text(COMPLETE),
        ],
        Step::text("unexpected"),
    )
    .await;
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--task", "Push", "--json"]);
    cmd.current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (chain, id) = pending_approval(&op, None).await;
    common::signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let mut cmd = user_cmd(&op, &api, &bin, &["run", "--resume", "--json"]);
    cmd.current_dir(&work);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(
        (c.id.as_str(), c.status),
        (chain.as_str(), ChainStatus::Complete)
    );
    let a = approval(&op, &chain, &id).await;
    assert_eq!(a.status, operator::permissions::ApprovalStatus::Cancelled);
    assert!(!work.join("pushed.txt").exists());
    let status = String::from_utf8_lossy(&op.run(&["status"]).stdout).into_owned();
    assert!(!status.contains("waits for approval"), "{status}");
}
