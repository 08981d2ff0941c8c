//! Fleet mode on one machine: a throwaway PostgreSQL server (tests/common/pg.rs), chains queued
//! with `operator run --enqueue`, several `operator worker` processes claiming them. Checked from
//! the database: every chain completes, its sessions never overlap and their indices are used
//! once; a worker killed with `kill -9` loses its chains to the others after its lease; a stale
//! worker's writes are refused by the fence.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Op, pg};
use operator::model::{ChainStatus, HandoffRecord, SessionRecord, SessionStatus, now_rfc3339};
use operator::store::postgres::PostgresStore;
use operator::store::{ChainQuery, NewChain, SessionStart, Store, StoreError};

/// A mission of `n` sim chains of three sessions each.
fn mission(op: &Op, n: usize, step: &str) -> std::path::PathBuf {
    mission_with(
        op,
        n,
        &format!(
            "max_continuations = 5\n\
             sim = {{ scenario = \"incomplete\", complete_after = 2, step = \"{step}\", turns = 2 }}\n"
        ),
    )
}

/// A mission of `n` sim chains, all run at once, with these `[defaults]` lines.
fn mission_with(op: &Op, n: usize, defaults: &str) -> std::path::PathBuf {
    let mut m =
        format!("name = \"fleet\"\nconcurrency = {n}\n[defaults]\nagent = \"sim\"\n{defaults}");
    for i in 0..n {
        m += &format!("[[chain]]\nname = \"c{i}\"\ntask = \"Part {i} of the work.\"\n");
    }
    op.write("fleet.toml", &m)
}

/// Queues a mission's chains. Their settings are stored as the mission gives them: the
/// harness's `OPERATOR_SIM__STEP` would override the mission's step (the environment ranks
/// above mission defaults), so it is left out here.
fn enqueue(op: &Op, url: &str, mission: &std::path::Path) -> Vec<String> {
    let out = op
        .cmd(&["run", "--store", url, "--enqueue"])
        .env_remove("OPERATOR_SIM__STEP")
        .arg(mission)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// A running `operator worker`, killed (SIGKILL, its agents die with it) if a test ends without
/// stopping it: a failing assertion must not leave workers claiming chains on the machine.
struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `operator worker` with its own data dir.
fn worker(op: &Op, url: &str, name: &str, capacity: u32, lease: &str) -> Worker {
    worker_env(op, url, name, capacity, lease, &[])
}

/// The same, with more environment variables.
fn worker_env(
    op: &Op,
    url: &str,
    name: &str,
    capacity: u32,
    lease: &str,
    env: &[(&str, &str)],
) -> Worker {
    let data = op.root.path().join(format!("data-{name}"));
    let mut cmd = op.cmd(&[
        "worker",
        "--store",
        url,
        "--capacity",
        &capacity.to_string(),
        "--lease",
        lease,
    ]);
    cmd.env("OPERATOR_DATA_DIR", data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Worker(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `n` workers named `w0`, `w1`, … with the same capacity, lease and extra environment.
fn workers(
    op: &Op,
    url: &str,
    n: u32,
    capacity: u32,
    lease: &str,
    env: &[(&str, &str)],
) -> Vec<Worker> {
    (0..n)
        .map(|i| worker_env(op, url, &format!("w{i}"), capacity, lease, env))
        .collect()
}

fn stop(mut w: Worker) {
    let pid = nix::unistd::Pid::from_raw(w.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = w.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = w.kill();
    panic!("a worker did not stop within 20 s of SIGTERM");
}

async fn all_chains(s: &PostgresStore) -> Vec<operator::model::ChainRecord> {
    s.list_chains(&ChainQuery {
        limit: 500,
        include_archived: true,
        with_sessions: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn wait_all_complete(s: &PostgresStore, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let chains = all_chains(s).await;
        let done = chains
            .iter()
            .filter(|c| c.status == ChainStatus::Complete)
            .count();
        if done == n {
            return;
        }
        assert!(
            !chains
                .iter()
                .any(|c| c.status.is_terminal() && c.status != ChainStatus::Complete),
            "a chain ended otherwise: {:?}",
            chains
                .iter()
                .map(|c| (&c.id, c.status, &c.reason))
                .collect::<Vec<_>>()
        );
        assert!(
            Instant::now() < deadline,
            "{done} of {n} chains complete after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every chain's sessions: indices 1..=k used once, each completed, none overlapping the next.
fn check_sessions(chains: &[operator::model::ChainRecord]) {
    for c in chains {
        let s = &c.sessions;
        assert!(!s.is_empty(), "{}: no sessions", c.id);
        for (i, r) in s.iter().enumerate() {
            assert_eq!(r.index as usize, i + 1, "{}: session indices {s:?}", c.id);
        }
        for w in s.windows(2) {
            let ended = w[0].ended_at.as_deref().expect("an ended session");
            assert!(
                w[1].started_at.as_str() >= ended,
                "{}: session {} started at {} before session {} ended at {ended}",
                c.id,
                w[1].index,
                w[1].started_at,
                w[0].index
            );
        }
        assert_eq!(
            s.last().map(|r| r.status),
            Some(SessionStatus::Completed),
            "{}",
            c.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_chains_on_three_workers_each_run_by_one_worker_at_a_time() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let ids = enqueue(&op, &url, &mission(&op, 30, "20ms"));
    assert_eq!(ids.len(), 30);
    let s = PostgresStore::open(&url).await.unwrap();
    assert!(
        all_chains(&s)
            .await
            .iter()
            .all(|c| c.status == ChainStatus::Queued),
        "--enqueue runs nothing"
    );
    let workers = workers(&op, &url, 3, 4, "5s", &[]);
    wait_all_complete(&s, 30, Duration::from_secs(180)).await;
    let chains = all_chains(&s).await;
    check_sessions(&chains);
    // The work was shared: more than one worker ran chains.
    let holders = s.holders(&ids).await.unwrap();
    let distinct: std::collections::HashSet<_> = holders.values().collect();
    assert!(
        distinct.len() >= 2,
        "one worker did everything: {holders:?}"
    );
    assert_eq!(s.workers().await.unwrap().len(), 3);
    for w in workers {
        stop(w);
    }
    assert!(
        s.workers().await.unwrap().is_empty(),
        "stopped workers leave"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_chains_finish_on_the_others_after_its_lease() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let ids = enqueue(&op, &url, &mission(&op, 4, "300ms"));
    let s = PostgresStore::open(&url).await.unwrap();
    let mut first = worker(&op, &url, "first", 4, "2s");
    // Wait until it runs all four, mid-session.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chains = all_chains(&s).await;
        let running = chains
            .iter()
            .filter(|c| {
                c.status == ChainStatus::Running
                    && c.sessions
                        .iter()
                        .any(|x| x.status == SessionStatus::Running)
            })
            .count();
        if running == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker never ran all four: {:?}",
            chains
                .iter()
                .map(|c| (
                    &c.id,
                    c.status,
                    c.sessions
                        .iter()
                        .map(|x| (x.status, x.started_at.clone(), x.ended_at.clone()))
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = s.holders(&ids).await.unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let others = workers(&op, &url, 2, 4, "2s", &[]);
    wait_all_complete(&s, 4, Duration::from_secs(120)).await;
    let chains = all_chains(&s).await;
    check_sessions(&chains);
    let now = s.holders(&ids).await.unwrap();
    for id in &ids {
        assert_ne!(
            dead.get(id),
            now.get(id),
            "{id} finished on the killed worker"
        );
    }
    for w in others {
        stop(w);
    }
}

/// A claimed chain that a worker cannot start goes back to the queue with the reason, and is not
/// claimed by that worker again; the workers go on with the rest. (It used to stay claimed,
/// its lease renewed, by a worker that never ran it: one chain of the soak stuck for good when
/// the database went down between a claim and the chain's read.)
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_a_worker_cannot_start_is_handed_back_with_the_reason() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let s = PostgresStore::open(&url).await.unwrap();
    s.create_chain(&NewChain {
        id: "c-unreadable".into(),
        name: "unreadable".into(),
        mission: None,
        task: "t".into(),
        config: serde_json::json!({"max_turns": "many"}),
        status: ChainStatus::Queued,
    })
    .await
    .unwrap();
    enqueue(&op, &url, &mission(&op, 2, "50ms"));
    let fleet = workers(&op, &url, 2, 2, "2s", &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let chains = all_chains(&s).await;
        let done = chains
            .iter()
            .filter(|c| c.status == ChainStatus::Complete)
            .count();
        let bad = chains.iter().find(|c| c.id == "c-unreadable").unwrap();
        let reason = bad.reason.clone().unwrap_or_default();
        // Both workers have tried it: the reason names the last, and nobody holds it.
        let handed_back = bad.status == ChainStatus::Queued
            && reason.contains("cannot run it")
            && reason.contains("max_turns")
            && s.holders(&["c-unreadable".to_string()])
                .await
                .unwrap()
                .is_empty();
        if done == 2 && handed_back && tries_of(&url, "c-unreadable").await >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {done} of 2 chains complete; the unreadable chain: {:?} {reason:?}, \
             claimed {} times",
            bad.status,
            tries_of(&url, "c-unreadable").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Neither worker claims it again.
    let tries = tries_of(&url, "c-unreadable").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tries_of(&url, "c-unreadable").await, tries);
    for w in fleet {
        stop(w);
    }
}

/// How many times a chain was claimed (its fence counts the claims), read from the database.
async fn tries_of(url: &str, id: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n = sqlx::query_scalar("SELECT fence FROM chains WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// The fleet's soak: twelve workers over PostgreSQL, one `kill -9`ed at a random moment every
/// second or so (and started again under its name), the database server crashed and restarted
/// twice (SIGQUIT: no shutdown checkpoint) along the way. Every chain completes, its session
/// indices are used once, its sessions never overlap, and no agent is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_survives_kill_9_of_its_workers_and_two_restarts_of_the_database() {
    let Some(bin) = pg::available() else { return };
    // A server of its own: this test crashes it.
    let server = pg::PgServer::start(&bin);
    let url = server.fresh_db().await;
    let op = Op::new();
    let n = 30;
    let defaults = "max_continuations = 60\n\
         sim = { scenario = \"incomplete\", complete_after = 40, step = \"120ms\", turns = 2 }\n";
    enqueue(&op, &url, &mission_with(&op, n, defaults));
    let mut fleet = workers(&op, &url, 12, 2, "2s", &[]);
    let seed = fastrand::u64(..);
    eprintln!("fleet soak: seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut kills, mut restarts) = (0, 0);
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        if round == 6 || round == 13 {
            server.stop();
            tokio::time::sleep(Duration::from_millis(rng.u64(500..2000))).await;
            server.resume();
            restarts += 1;
            continue;
        }
        let i = rng.usize(..fleet.len());
        fleet[i].kill().unwrap();
        fleet[i].wait().unwrap();
        kills += 1;
        fleet[i] = worker(&op, &url, &format!("w{i}"), 2, "2s");
    }
    let s = PostgresStore::open(&url).await.unwrap();
    let during = all_chains(&s).await;
    assert!(
        during.iter().any(|c| c.status != ChainStatus::Complete),
        "every chain was done before the faults ended: make them longer"
    );
    wait_all_complete(&s, n, Duration::from_secs(300)).await;
    check_sessions(&all_chains(&s).await);
    for w in fleet {
        stop(w);
    }
    assert!(common::processes_in(&op.workdir()).is_empty());
    eprintln!(
        "fleet soak: {kills} workers killed, the database restarted {restarts} times; {n} chains complete"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_worker_cannot_overwrite_the_new_owners_records() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let old = PostgresStore::open(&url).await.unwrap();
    let new = PostgresStore::open(&url).await.unwrap();
    old.create_chain(&NewChain {
        id: "c-1".into(),
        name: "main".into(),
        mission: None,
        task: "t".into(),
        config: serde_json::json!({}),
        status: ChainStatus::Queued,
    })
    .await
    .unwrap();
    let claim = old
        .claim("old", 4, Duration::from_millis(300), &[])
        .await
        .unwrap();
    assert_eq!(claim, vec![("c-1".to_string(), 1)]);
    let start = |i| SessionStart {
        chain_id: "c-1".into(),
        index: i,
        attempt: 1,
        prompt: "p".into(),
        started_at: now_rfc3339(),
        account: None,
    };
    old.start_session(&start(1)).await.unwrap();
    // Nobody else may claim it while the lease holds.
    assert!(
        new.claim("new", 4, Duration::from_secs(30), &[])
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        new.claim("new", 4, Duration::from_secs(30), &[])
            .await
            .unwrap(),
        vec![("c-1".to_string(), 2)]
    );
    new.set_chain_status("c-1", ChainStatus::Running, None, None)
        .await
        .unwrap();
    // The old owner's writes, each refused by the fence.
    let record = SessionRecord {
        session_id: None,
        turns: 1,
        cost_usd: 9.0,
        duration_ms: 1,
        handoff_complete: true,
        ..common::records::session(1)
    };
    let handoff = HandoffRecord {
        chain_id: "c-1".into(),
        index: 1,
        text: "## HANDOFF: COMPLETE\nstale".into(),
        complete: true,
        synthetic: false,
        reason: None,
        file: "handoff-1.md".into(),
        created_at: now_rfc3339(),
    };
    let fenced = |r: Result<(), StoreError>| {
        assert!(
            matches!(r, Err(StoreError::Fenced { fence: 1, .. })),
            "{r:?}"
        )
    };
    fenced(old.finish_session("c-1", &record, Some(&handoff)).await);
    fenced(
        old.set_chain_status("c-1", ChainStatus::Complete, None, None)
            .await,
    );
    fenced(old.start_session(&start(2)).await);
    fenced(
        old.append_event(
            Some("c-1"),
            Some(1),
            "chain:complete",
            &serde_json::json!({}),
        )
        .await
        .map(|_| ()),
    );
    fenced(old.set_session_agent("c-1", 1, 4242, "claude").await);
    // Nothing of it landed; the old owner learns it lost the chain at its next renewal.
    let c = new.get_chain("c-1").await.unwrap().unwrap();
    assert_eq!(c.status, ChainStatus::Running);
    assert_eq!(c.sessions.len(), 1);
    assert_eq!(c.sessions[0].status, SessionStatus::Running);
    assert!(new.handoffs("c-1").await.unwrap().is_empty());
    assert!(new.events(Some("c-1"), 0, 10).await.unwrap().is_empty());
    let (lost, _) = old.renew(Duration::from_secs(30)).await.unwrap();
    assert_eq!(lost, vec!["c-1".to_string()]);
    assert!(old.held().is_empty());
}

/// Pids of `sim-agent` processes whose parent is `pid` (a worker's agents).
fn agents_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // pid (comm) state ppid …
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("sim-agent") {
            found.push(p);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_the_database_stops_its_agents_and_rejoins() {
    let Some(bin) = pg::available() else { return };
    // A server of its own: this test stops it.
    let server = pg::PgServer::start(&bin);
    let url = server.fresh_db().await;
    let op = Op::new();
    enqueue(&op, &url, &mission(&op, 2, "400ms"));
    let s = PostgresStore::open(&url).await.unwrap();
    let w = worker(&op, &url, "w", 4, "2s");
    let deadline = Instant::now() + Duration::from_secs(60);
    while agents_of(w.id()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the worker never ran both chains"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
    server.stop();
    // Within a lease (2 s) and a renewal tick its agents are stopped.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agents_of(w.id()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker's agents still run 15 s after the database went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agents_of(w.id()).is_empty(),
        "no agent started without the database"
    );
    server.resume();
    // It rejoins: claims the chains again (their leases ran out) and finishes them.
    let s = PostgresStore::open(&url).await.unwrap();
    wait_all_complete(&s, 2, Duration::from_secs(120)).await;
    check_sessions(&all_chains(&s).await);
    stop(w);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// WebSocket messages until one of `kind` for `chain` arrives (within 60 s).
async fn ws_until(ws: &mut Ws, kind: &str, chain: &str) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an event within 60 s")
            .expect("the socket is open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let done = v["kind"] == kind && v["chainId"] == chain;
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_shows_the_fleet_relays_its_events_and_pauses_every_worker() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    // A chain a plain `run` made in the shared store is its own: no worker takes it.
    let s = PostgresStore::open(&url)
        .await
        .unwrap()
        .owned_by("run:elsewhere:1");
    s.create_chain(&NewChain {
        id: "c-20261126-000000".into(),
        name: "mine".into(),
        mission: None,
        task: "t".into(),
        config: serde_json::json!({}),
        status: ChainStatus::Queued,
    })
    .await
    .unwrap();
    let workers: Vec<Worker> = (0..2)
        .map(|i| worker(&op, &url, &format!("w{i}"), 2, "3s"))
        .collect();
    let srv = common::api::Server::start_with(
        &op,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--agent",
            "sim",
            "--store",
            &url,
            "--enqueue",
        ],
        &[("OPERATOR_SIM__STEP", "100ms")],
    );
    // The fleet view: both workers heard from.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = srv.get("/api/fleet").await;
        assert_eq!(st, reqwest::StatusCode::OK, "{v}");
        assert_eq!(v["shared"], true);
        if v["workers"].as_array().map_or(0, Vec::len) == 2 {
            assert!(v["workers"][0]["heartbeatAt"].is_string());
            assert_eq!(v["workers"][0]["capacity"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "workers never showed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A chain started through the API is queued for the fleet; a worker runs it, and its
    // events reach this server's WebSocket live.
    let mut ws = tokio_tungstenite::connect_async(srv.ws_url("/ws?subscribe=chain:*"))
        .await
        .expect("connect")
        .0;
    let id = srv.start_chain("Write the docs.").await;
    let events = ws_until(&mut ws, "chain:session-started", &id).await;
    assert!(events.iter().any(|e| e["kind"] == "subscribed"));
    let (_, fleet) = srv.get("/api/fleet").await;
    let holder = fleet["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["chainId"] == id.as_str())
        .map(|h| h["worker"].as_str().unwrap().to_string())
        .expect("the chain is held by a worker");
    assert!(!holder.starts_with("run:"), "{holder}");
    ws_until(&mut ws, "chain:complete", &id).await;
    // The dashboard's orchestrator page lists the workers.
    let page = srv
        .req(reqwest::Method::GET, "/orchestrator")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("fleet-workers") && page.contains(&holder),
        "{page}"
    );
    // The chain's own page names the worker that ran it.
    let page = srv
        .req(reqwest::Method::GET, &format!("/chains/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            "last on worker <span class=\"worker\">{holder}</span>"
        )),
        "{page}"
    );

    // A fleet-wide pause through the API: no worker starts a session until the resume.
    let (st, _) = srv
        .post("/api/orchestrator/pause", serde_json::Value::Null)
        .await;
    assert!(st.is_success());
    // Every worker's next heartbeat reads the fleet's pause (its claim step reads the flag right
    // after the heartbeat), so once both have beaten since, neither claims anything.
    let paused_at = std::time::SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = srv.get("/api/fleet").await;
        let beats: Vec<std::time::SystemTime> = v["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["heartbeatAt"].as_str().map(time_of))
                    .collect()
            })
            .unwrap_or_default();
        if beats.len() == 2 && beats.iter().all(|b| *b > paused_at) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers stopped beating: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = srv.start_chain("Write more docs.").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, c) = srv.get(&format!("/api/chains/{paused}")).await;
    assert_eq!(c["sessions"].as_array().map_or(0, Vec::len), 0, "{c}");
    let (st, _) = srv
        .post("/api/orchestrator/resume", serde_json::Value::Null)
        .await;
    assert!(st.is_success());
    srv.wait_status(&paused, "complete").await;
    let mine = s.get_chain("c-20261126-000000").await.unwrap().unwrap();
    assert_eq!(
        mine.status,
        ChainStatus::Queued,
        "a worker took a chain it must not"
    );
    for w in workers {
        stop(w);
    }
    srv.stop().await;
}

fn time_of(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usage_limit_on_one_worker_holds_the_accounts_chains_on_every_worker() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let m = mission_with(
        &op,
        4,
        "usage_limit_margin = \"100ms\"\nsim = { scenario = \"usage-limit\", complete_after = 2 }\n",
    );
    let ids = enqueue(&op, &url, &m);
    let workers = workers(
        &op,
        &url,
        2,
        2,
        "5s",
        &[("OPERATOR_RELEASE_JITTER", "300ms")],
    );
    let s = PostgresStore::open(&url).await.unwrap();
    wait_all_complete(&s, 4, Duration::from_secs(120)).await;
    let chains = all_chains(&s).await;
    check_sessions(&chains);
    let holders = s.holders(&ids).await.unwrap();
    let hit: Vec<_> = chains
        .iter()
        .filter(|c| c.sessions[0].attempts == 2)
        .collect();
    assert_eq!(hit.len(), 1, "one chain hit the limit");
    let hit = hit[0];
    let reset = s
        .events(Some(&hit.id), 0, 200)
        .await
        .unwrap()
        .iter()
        .find(|e| e.kind == "chain:waiting")
        .map(|e| time_of(e.data["until"].as_str().unwrap()))
        .expect("the chain that hit the limit waited");
    // The chains on the other worker were held too, through the shared store.
    let others: Vec<_> = chains
        .iter()
        .filter(|c| holders.get(&c.id) != holders.get(&hit.id))
        .collect();
    assert!(
        !others.is_empty(),
        "every chain ran on one worker: {holders:?}"
    );
    for c in others {
        let events = s.events(Some(&c.id), 0, 200).await.unwrap();
        let held = events
            .iter()
            .find(|e| e.kind == "chain:waiting" && e.data["account"] == true)
            .unwrap_or_else(|| {
                panic!(
                    "chain {} on another worker was not held: {events:?}",
                    c.name
                )
            });
        assert!(
            held.data["reason"]
                .as_str()
                .unwrap()
                .contains("another worker"),
            "{:?}",
            held.data
        );
        for x in &c.sessions[1..] {
            assert!(
                time_of(&x.started_at) >= reset - Duration::from_secs(1),
                "chain {} started session {} at {} before the reset",
                c.name,
                x.index,
                x.started_at
            );
        }
    }
    for w in workers {
        stop(w);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_paused_by_its_own_signal_takes_no_work_and_the_fleet_goes_on() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let s = PostgresStore::open(&url).await.unwrap();
    let paused = worker(&op, &url, "paused", 4, "2s");
    let busy = worker(&op, &url, "busy", 4, "2s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.workers().await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the workers never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = nix::unistd::Pid::from_raw(paused.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = enqueue(&op, &url, &mission(&op, 4, "20ms"));
    wait_all_complete(&s, 4, Duration::from_secs(60)).await;
    let holders = s.holders(&ids).await.unwrap();
    let busy_id = format!(":{}", busy.id());
    assert!(
        holders.values().all(|w| w.ends_with(&busy_id)),
        "the paused worker took work: {holders:?}"
    );
    // A worker's own pause is its own: the fleet's flag is untouched.
    assert_eq!(s.get_flag("paused").await.unwrap(), None);
    stop(paused);
    stop(busy);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_session_cap_holds_across_the_fleet() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let op = Op::new();
    let m = mission_with(
        &op,
        4,
        "sim = { scenario = \"complete\", step = \"100ms\", turns = 2 }\n",
    );
    let ids = enqueue(&op, &url, &m);
    // One session of the account at a time, in the whole fleet.
    let workers = workers(
        &op,
        &url,
        2,
        2,
        "5s",
        &[
            ("OPERATOR_MAX_CONCURRENT_SESSIONS", "1"),
            ("OPERATOR_RELEASE_JITTER", "50ms"),
        ],
    );
    let s = PostgresStore::open(&url).await.unwrap();
    wait_all_complete(&s, 4, Duration::from_secs(120)).await;
    let chains = all_chains(&s).await;
    let holders = s.holders(&ids).await.unwrap();
    let distinct: std::collections::HashSet<_> = holders.values().collect();
    assert_eq!(distinct.len(), 2, "both workers held chains: {holders:?}");
    let mut spans: Vec<(std::time::SystemTime, std::time::SystemTime, String)> = chains
        .iter()
        .flat_map(|c| {
            c.sessions.iter().map(|x| {
                (
                    time_of(&x.started_at),
                    time_of(x.ended_at.as_deref().unwrap()),
                    c.name.clone(),
                )
            })
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 4);
    // `started_at` is taken just before the cap is checked: allow that moment, not more.
    let slack = Duration::from_millis(100);
    for w in spans.windows(2) {
        assert!(
            w[1].0 + slack >= w[0].1,
            "{} started before {} ended: {spans:?}",
            w[1].2,
            w[0].2
        );
    }
    for w in workers {
        stop(w);
    }
}
