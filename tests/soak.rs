//! The crash soak: a mission of several chains of sim agents (each with its own random step time,
//! and a real tool process at each tool turn) run under `kill -9` of the operator at random
//! moments — during start-up, mid-session, mid-tool, between sessions — each time started again
//! with `run MISSION --continue`; on the way the data dir's disk fills up for a while and another
//! process holds the store's write lock past its busy timeout. After every kill the store and
//! the files are checked (`common::invariants`): contiguous indices, no session recorded twice,
//! a handoff for every completed session, a ledger equal to the sum of the sessions, no process
//! of any agent left. At the end every chain completes.
//!
//! `OPERATOR_SOAK_KILLS` sets the number of kills (50 here and in CI; the long form in
//! docs/failure-handling.md ran 200), `OPERATOR_SOAK_SEED` replays a run (the seed is printed).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::{Op, eventually};
use operator::model::ChainStatus;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sessions of each chain: a few seconds of work between many kills.
const SESSIONS: u32 = 40;

/// Mission number `epoch`: four chains, each with a random step and tool time.
fn mission(op: &Op, rng: &mut fastrand::Rng, epoch: u32) -> std::path::PathBuf {
    let sessions = SESSIONS;
    let mut m = format!(
        "name = \"soak-{epoch}\"\nconcurrency = 4\n[defaults]\nagent = \"sim\"\n\
         max_continuations = {}\nretry_backoff = [\"50ms\"]\n",
        sessions + 10
    );
    for i in 0..4 {
        m += &format!(
            "[[chain]]\nname = \"c{i}\"\ntask = \"Part {i} of the work.\"\n\
             sim = {{ scenario = \"incomplete\", complete_after = {sessions}, step = \"{}ms\", \
             turns = 2, tool = \"sleep 0.{:02}\" }}\n",
            rng.u32(5..40),
            rng.u32(5..15),
        );
    }
    op.write(&format!("soak-{epoch}.toml"), &m)
}

#[tokio::test(flavor = "multi_thread")]
async fn chains_survive_kill_9_at_random_moments_a_full_disk_and_a_locked_store() {
    let kills: u32 = env_or("OPERATOR_SOAK_KILLS", 50);
    let seed: u64 = env_or("OPERATOR_SOAK_SEED", fastrand::u64(..));
    eprintln!("soak: {kills} kills, OPERATOR_SOAK_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let op = Op::new();
    let Some(disk) = Tmpfs::mount(&op.data_dir(), "256m") else {
        return;
    };
    // When a mission's chains have all completed between two kills, the soak goes on with the
    // next one: the kills, not the chains' length, set how long it runs.
    let mut epoch = 0;
    let mut mission = mission(&op, &mut rng, epoch);
    let log = op.root.path().join("soak.log");
    let run = |mission: &std::path::Path| {
        op.cmd(&["run", "--continue"])
            .arg(mission)
            .env_remove("OPERATOR_SIM__STEP")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    let (mut killed, mut full, mut locked) = (0u32, false, false);
    while killed < kills {
        let mut child = run(&mission);
        if !full && killed == kills.min(5) {
            // The disk fills up mid-run for a few seconds.
            tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
            disk.fill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            disk.free();
            full = true;
        }
        if !locked && killed == kills.min(10) {
            // Someone holds the store's write lock past its 10 s busy timeout.
            use sqlx::Connection;
            let url = format!("sqlite://{}", op.data_dir().join("operator.db").display());
            let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
            tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
            sqlx::raw_sql("BEGIN EXCLUSIVE")
                .execute(&mut holder)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(12)).await;
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut holder)
                .await
                .unwrap();
            holder.close().await.unwrap();
            locked = true;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..1500))).await;
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(status.success(), "{log}");
            epoch += 1;
            mission = self::mission(&op, &mut rng, epoch);
            continue;
        }
        common::signal(&child, nix::sys::signal::Signal::SIGKILL);
        child.wait().unwrap();
        killed += 1;
        // What the agents started dies with the operator (its guard kills their groups).
        let gone = eventually(Duration::from_secs(15), || {
            common::processes_in(&op.workdir()).is_empty()
        });
        assert!(gone, "kill {killed}: processes outlived the operator");
        common::invariants::check(&op.data_dir(), &op.workdir()).await;
    }
    let out = op
        .cmd(&["run", "--continue"])
        .arg(&mission)
        .env_remove("OPERATOR_SIM__STEP")
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default() + &common::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let chains = common::invariants::check(&op.data_dir(), &op.workdir()).await;
    let missions = epoch as usize + 1;
    assert_eq!(
        chains.len(),
        4 * missions,
        "one chain per mission entry, never a second"
    );
    for c in &chains {
        assert_eq!(c.status, ChainStatus::Complete, "{}: {:?}", c.id, c.reason);
    }
    let sessions: usize = chains.iter().map(|c| c.sessions.len()).sum();
    eprintln!(
        "soak: {killed} kills survived in {:.0} s; {sessions} sessions in {} chains of {missions} \
         missions, all complete; disk full and store locked episodes waited out; nothing lost",
        started.elapsed().as_secs_f64(),
        chains.len()
    );
    assert!(
        text.contains("cannot be written"),
        "no fault episode was seen"
    );
}
