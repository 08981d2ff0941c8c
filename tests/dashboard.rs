//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver + fantoccini)
//! against `operator serve` with sim chains. Screenshots of each page go to `target/screenshots/`.
//!
//! In CI (`CI` set) a missing Chromium fails these tests; elsewhere they are skipped with a loud
//! message. `.ci/run` installs Debian's `chromium` and `chromium-driver`.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::Server;
use common::{Op, eventually, processes_in};
use fantoccini::{Client, ClientBuilder, Locator};
use operator::model::{ChainStatus, HandoffRecord, SessionRecord, now_rfc3339};
use operator::store::{NewChain, SessionStart, Store};
use serde_json::{Value, json};

struct Browser {
    driver: Child,
    client: Client,
    /// Chromium's profile and temp dir (`TMPDIR`): without them, each browser left a 7 MB
    /// `org.chromium.Chromium.scoped_dir.*` behind in /tmp when its driver was killed.
    _tmp: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its own process group, which Chromium and its helpers join: the whole
        // group goes, not only the driver.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium, or `None` (loudly) when it is not installed outside CI.
async fn browser(width: u32, height: u32) -> Option<Browser> {
    let Some(driver_bin) = find_in_path("chromedriver") else {
        let msg = "chromedriver (Debian: chromium-driver) is not installed";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}: the dashboard tests cannot run in CI without it");
        }
        eprintln!("\n*** SKIPPED: {msg}; the dashboard browser tests did not run ***\n");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().expect("a temp dir for Chromium");
    let driver = Command::new(driver_bin)
        .process_group(0)
        .env("TMPDIR", tmp.path())
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "chromedriver did not start"
    );
    let args = vec![
        "--headless=new".to_string(),
        format!("--user-data-dir={}", tmp.path().join("profile").display()),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        format!("--window-size={width},{height}"),
    ];
    let mut opts = json!({"args": args});
    if let Some(bin) = find_in_path("chromium") {
        opts["binary"] = json!(bin);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), opts);
    // chromedriver may accept connections a moment before it serves them (seen with four
    // browsers starting at once on two cores): a reset connection is tried again.
    let mut tries = 0;
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("WebDriver session, try {tries}: {e}");
                tokio::time::sleep(Duration::from_millis(500 * tries)).await;
            }
            Err(e) => panic!("a WebDriver session with Chromium: {e}"),
        }
    };
    Some(Browser {
        driver,
        client,
        _tmp: tmp,
    })
}

fn shots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

/// Polls the page until `script` returns true.
async fn until(c: &Client, what: &str, script: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if js(c, script).await == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < end, "never true: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` names, found again when the page's live fragment was swapped between
/// finding and clicking it (every event, and the WebSocket's connection, refresh the fragment).
async fn click(c: &Client, css: &str) {
    for _ in 0..20 {
        let el = c
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match el.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
    panic!("{css} was replaced 20 times in a row before it could be clicked");
}

fn no_horizontal_scroll() -> &'static str {
    "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;"
}

#[tokio::test]
async fn the_home_page_follows_a_chain_live_and_kill_stops_it() {
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let c = &b.client;
    let op = Op::new();
    // Slow sessions, and five of them, so the chain is seen running before it completes even
    // on a loaded machine (a full suite's run once missed it with three).
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "127.0.0.1:0", "--agent", "sim"],
        &[
            ("OPERATOR_SIM__STEP", "250ms"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "4"),
        ],
    );
    let id = srv.start_chain("Follow me live").await;
    srv.wait_status(&id, "running").await;
    c.goto(&srv.url).await.unwrap();
    let row = format!("tr[data-chain='{id}'] .state");
    until(c, "the chain listed as running", &format!(
        "var r = document.querySelector(\"{row}\"); return !!r && r.textContent.trim() === 'running';"
    ))
    .await;
    shot(c, "home").await;
    js(c, "window.__marker = 42; return true;").await;
    // Its state changes on the page without a reload (over the WebSocket).
    until(c, "the chain shown complete", &format!(
        "var r = document.querySelector(\"{row}\"); return !!r && r.textContent.trim() === 'complete';"
    ))
    .await;
    assert_eq!(
        js(c, "return window.__marker;").await,
        json!(42),
        "the page was reloaded"
    );
    srv.wait_status(&id, "complete").await;

    // The chain page: its timeline, then the kill switch on a chain that hangs.
    c.goto(&format!("{}/chains/{id}", srv.url)).await.unwrap();
    let bars = c
        .find_all(Locator::Css("#timeline details.session"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 5);
    shot(c, "chain").await;
    drop(srv);

    // A chain whose every event comes in one burst (instant sessions), started with the page
    // already open: the page ends on its last state, not on the first event of the burst.
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    c.goto(&srv.url).await.unwrap();
    let id = srv.start_chain("All at once").await;
    srv.wait_status(&id, "complete").await;
    let row = format!("tr[data-chain='{id}'] .state");
    until(c, "the burst's chain shown complete", &format!(
        "var r = document.querySelector(\"{row}\"); return !!r && r.textContent.trim() === 'complete';"
    ))
    .await;
    drop(srv);

    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "hang"]);
    let id = srv.start_chain("Hang until killed").await;
    srv.wait_status(&id, "running").await;
    assert!(eventually(Duration::from_secs(20), || !processes_in(
        &op.workdir()
    )
    .is_empty()));
    c.goto(&srv.url).await.unwrap();
    click(c, &format!("tr[data-chain='{id}'] button.kill")).await;
    // The confirmation first.
    c.accept_alert().await.expect("a confirmation dialog");
    srv.wait_status(&id, "aborted").await;
    assert!(
        eventually(Duration::from_secs(10), || processes_in(&op.workdir())
            .is_empty()),
        "the agent survived the kill switch"
    );
    until(
        c,
        "the chain leaves the active list",
        &format!("return !document.querySelector(\"#active tr[data-chain='{id}']\");"),
    )
    .await;
    // Its page offers to run it again; after the confirmation it runs a second session.
    c.goto(&format!("{}/chains/{id}", srv.url)).await.unwrap();
    click(c, "button.resume").await;
    c.accept_alert().await.expect("a confirmation dialog");
    let resumed = srv
        .wait_chain(&id, "running its second session", |v| {
            v["status"] == "running" && v["sessions"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    assert_eq!(resumed["name"], "main");
    let (_, events) = srv.get(&format!("/api/chains/{id}/events")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "operator:request"
                && e["data"]
                    == serde_json::json!({"action": "resume_chain", "origin": "dashboard"})),
        "{events}"
    );
    let _ = b.client.clone().close().await;
}

#[tokio::test]
async fn quick_start_and_the_mission_launcher_start_chains() {
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let c = &b.client;
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    op.write(
        "config/missions/nightly.toml",
        "name = \"nightly\"\ndescription = \"two chains\"\nconcurrency = 2\n[defaults]\nsim = { scenario = \"complete\" }\n\
         [[chain]]\nname = \"parser\"\ntask = \"Port the parser\"\n[[chain]]\nname = \"docs\"\ntask = \"Write docs\"\nafter = [\"parser\"]\n",
    );
    let srv = Server::start(&op, &["--scenario", "complete"]);
    c.goto(&srv.url).await.unwrap();
    let task = c
        .find(Locator::Css("#quick-start textarea[name=task]"))
        .await
        .unwrap();
    task.send_keys("Quick start from the dashboard")
        .await
        .unwrap();
    c.find(Locator::Css("#start-task"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = srv.get("/api/chains").await;
        if page["chains"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["task"] == "Quick start from the dashboard")
        {
            break;
        }
        assert!(Instant::now() < end, "the quick-start form started nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.goto(&format!("{}/missions", srv.url)).await.unwrap();
    let form = "article[data-mission=nightly]";
    c.find(Locator::Css(&format!("{form} input[name=model]")))
        .await
        .unwrap()
        .send_keys("opus")
        .await
        .unwrap();
    c.find(Locator::Css(&format!("{form} button.outline")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, "the dry run's plan", "var t = document.querySelector('.plan table'); return !!t && t.textContent.includes('Port the parser') && t.textContent.includes('opus');").await;
    shot(c, "missions").await;
    assert_eq!(
        srv.get("/api/chains").await.1["chains"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a dry run started chains"
    );
    c.find(Locator::Css(&format!("{form} button[type=submit]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = srv.get("/api/chains").await;
        let chains = page["chains"].as_array().unwrap();
        if chains
            .iter()
            .filter(|c| c["mission"] == "nightly" && c["config"]["model"] == "opus")
            .count()
            == 2
        {
            break;
        }
        assert!(Instant::now() < end, "the launcher started nothing: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The launcher goes back home, where the chains are.
    until(
        c,
        "back on the home page",
        "return location.pathname === '/';",
    )
    .await;
    c.goto(&format!("{}/orchestrator", srv.url)).await.unwrap();
    shot(c, "orchestrator").await;
    let _ = b.client.clone().close().await;
}

/// A chain whose task and handoffs carry script payloads, written straight into the store.
async fn hostile_chain(op: &Op) -> String {
    let store = op.store().await;
    let id = "c-20261125-bad001".to_string();
    let payload = "<script>window.__pwned=1</script> and <img src=x onerror=\"window.__pwned=2\">";
    store
        .create_chain(&NewChain {
            id: id.clone(),
            name: "hostile".into(),
            mission: None,
            task: format!("Task with {payload}"),
            config: json!({"model": "sonnet", "max_continuations": 5}),
            status: ChainStatus::Complete,
        })
        .await
        .unwrap();
    for i in 1..=2u32 {
        store
            .start_session(&SessionStart {
                chain_id: id.clone(),
                index: i,
                attempt: 1,
                prompt: "p".into(),
                started_at: now_rfc3339(),
                account: None,
            })
            .await
            .unwrap();
        let text = format!(
            "## HANDOFF{}\n\n**Accomplished**\n- step {i}: {payload}\n\n**Remaining**\n- more <b onmouseover=\"window.__pwned=3\">work</b>\n",
            if i == 2 { ": COMPLETE" } else { "" }
        );
        let record = SessionRecord {
            cost_usd: 0.05 * f64::from(i),
            duration_ms: 1000 * u64::from(i),
            handoff_complete: i == 2,
            ..common::records::session(i)
        };
        let handoff = HandoffRecord {
            chain_id: id.clone(),
            index: i,
            text,
            complete: i == 2,
            synthetic: false,
            reason: None,
            file: format!("handoff-{i}.md"),
            created_at: now_rfc3339(),
        };
        store
            .finish_session(&id, &record, Some(&handoff))
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn handoffs_render_as_text_in_three_columns_and_every_page_fits_a_phone() {
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let c = &b.client;
    let op = Op::new();
    let id = hostile_chain(&op).await;
    let srv = Server::start(&op, &[]);
    for (path, name) in [
        (format!("/chains/{id}"), "chain-hostile"),
        (format!("/chains/{id}/sessions/2/handoff"), "handoff-viewer"),
        (format!("/chains/{id}/report"), "report"),
        ("/".to_string(), "home-hostile"),
    ] {
        c.goto(&format!("{}{path}", srv.url)).await.unwrap();
        // Give any payload the chance to run: open every handoff and hover over everything.
        js(c, "document.querySelectorAll('details').forEach(function (d) { d.open = true; }); document.querySelectorAll('b, img').forEach(function (e) { e.dispatchEvent(new MouseEvent('mouseover')); }); return true;").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            js(c, "return typeof window.__pwned;").await,
            json!("undefined"),
            "{path}: a payload ran"
        );
        assert_eq!(
            js(
                c,
                "return document.querySelectorAll('main script, main img').length;"
            )
            .await,
            json!(0),
            "{path}"
        );
        let text = js(c, "return document.body.innerText;").await;
        assert!(
            text.as_str()
                .unwrap()
                .contains("<script>window.__pwned=1</script>"),
            "{path}: the payload is not shown as text"
        );
        if name == "handoff-viewer" {
            shot(c, name).await;
        }
    }
    // The handoff viewer: previous handoff, the session's output, the next handoff.
    c.goto(&format!("{}/chains/{id}/sessions/2/handoff", srv.url))
        .await
        .unwrap();
    let cols = c.find_all(Locator::Css("#viewer .col")).await.unwrap();
    assert_eq!(cols.len(), 3);
    let first = cols[0].text().await.unwrap();
    let last = cols[2].text().await.unwrap();
    assert!(
        first.contains("step 1") && last.contains("step 2"),
        "{first} / {last}"
    );
    shot(c, "report-and-viewer").await;

    // At 375 px wide nothing scrolls sideways.
    c.set_window_size(375, 812).await.unwrap();
    for path in [
        "/".to_string(),
        format!("/chains/{id}"),
        format!("/chains/{id}/sessions/2/handoff"),
        format!("/chains/{id}/report"),
        "/missions".to_string(),
        "/orchestrator".to_string(),
    ] {
        c.goto(&format!("{}{path}", srv.url)).await.unwrap();
        let width = js(c, "return window.innerWidth;").await;
        assert!(width.as_u64().unwrap() <= 400, "the window is {width} wide");
        assert_eq!(
            js(c, no_horizontal_scroll()).await,
            json!(true),
            "{path} scrolls sideways at 375 px"
        );
        if path == "/" {
            shot(c, "home-375px").await;
        }
    }
    let _ = b.client.clone().close().await;
}

/// A real Claude Code CLI session whose `git push` waits for approval under an `ask` rule: the
/// chain page shows the call with its input, and clicking Approve lets it run.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_tool_call_is_approved_by_clicking_approve_on_the_chain_page() {
    let Some(bin) = common::cli::claude_bin() else {
        return;
    };
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let c = &b.client;
    let op = Op::new();
    let work = std::fs::canonicalize(op.workdir()).unwrap();
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(
        work.join("config/operator.toml"),
        "[defaults.permissions]\nask = [\"Bash(git push:*)\"]\n",
    )
    .unwrap();
    let api = common::fake_api::FakeApi::start(
        vec![
            common::fake_api::Step::bash("git push origin main || echo pushed > pushed.txt"),
            common::fake_api::Step::text(
                "Done.\n\n## HANDOFF: COMPLETE\n\n### Accomplished\nPushed.\n\n### Remaining\nNothing.\n\n### Context\nNone.",
            ),
        ],
        common::fake_api::Step::text("unexpected"),
    )
    .await;
    let mut cmd = common::user_cmd(
        &op,
        &api,
        &bin,
        &["run", "--task", "Push", "--json", "--serve", "127.0.0.1:0"],
    );
    cmd.current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let store = op.store().await;
    let mut pending = None;
    for _ in 0..600 {
        if let Some(a) = operator::store::approvals::list(&store, None)
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            pending = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = pending.expect("an approval was requested");
    let url = std::fs::read_to_string(op.data_dir().join("api.addr")).unwrap();
    c.goto(&format!("{}/chains/{}", url.trim(), a.chain_id))
        .await
        .unwrap();
    until(
        c,
        "the held call is shown",
        &format!(
            "var e = document.getElementById('approval-{}'); return !!e && e.textContent.includes('git push origin main');",
            a.id
        ),
    )
    .await;
    until(
        c,
        "the chain shows awaiting-approval",
        "return document.body.textContent.includes('awaiting-approval');",
    )
    .await;
    shot(c, "chain-approval").await;
    click(c, &format!("#approval-{} button.approve", a.id)).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        work.join("pushed.txt").exists(),
        "the approved call did not run"
    );
    let settled = operator::store::approvals::load(&store, &a.chain_id, &a.id)
        .await
        .unwrap();
    assert_eq!(
        settled.status,
        operator::permissions::ApprovalStatus::Approved
    );
    assert_eq!(settled.answered_by.as_deref(), Some("dashboard"));
}
