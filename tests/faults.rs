//! Faults of the machine under a running operator: the data dir's disk fills up (a real tmpfs,
//! filled to the last byte), the store is locked by another process past the busy timeout. The
//! chains wait the fault out and finish with nothing lost; a stop during the fault ends the run and
//! `--resume` finishes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::tmpfs::Tmpfs;
use common::{Op, eventually};
use operator::model::{ChainStatus, SessionStatus};

/// A chain of many short sessions, its log in a file beside the data dir.
fn start(op: &Op, extra: &[&str]) -> (Child, PathBuf) {
    let log = op.root.path().join("operator.log");
    let mut args = vec!["run", "--task", "T", "--max-continuations", "40"];
    args.extend_from_slice(extra);
    let child = op
        .cmd(&args)
        .env("OPERATOR_SIM__COMPLETE_AFTER", "25")
        .env("OPERATOR_SIM__STEP", "30ms")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

fn log_says(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(what))
}

/// Handoff files on disk, by session index.
fn handoff_files(op: &Op) -> usize {
    let chains = op.data_dir().join("chains");
    let Ok(dirs) = std::fs::read_dir(chains) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|f| f.flatten())
        .filter(|f| f.file_name().to_string_lossy().starts_with("handoff-"))
        .count()
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let done = eventually(within, || child.try_wait().unwrap().is_some());
    assert!(done, "the operator did not end");
    child.wait().unwrap().code()
}

/// What must hold after a fault (`common::invariants`), and: the one chain completed, and no
/// session is left recorded `running`.
async fn assert_whole(op: &Op) {
    let chains = common::invariants::check(&op.data_dir(), &op.workdir()).await;
    assert_eq!(chains.len(), 1);
    let c = &chains[0];
    assert_eq!(c.status, ChainStatus::Complete, "{:?}", c.reason);
    assert!(
        c.sessions
            .iter()
            .all(|s| s.status != SessionStatus::Running),
        "a session is still recorded running: {:?}",
        c.sessions
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_waited_out_and_the_chain_finishes_with_nothing_lost() {
    let op = Op::new();
    let Some(disk) = Tmpfs::mount(&op.data_dir(), "8m") else {
        return;
    };
    let (mut child, log) = start(&op, &[]);
    assert!(eventually(Duration::from_secs(60), || handoff_files(&op) >= 3));
    disk.fill();
    let waiting = eventually(Duration::from_secs(60), || {
        log_says(&log, "cannot be written") && log_says(&log, "restarts from the store in 2 s")
    });
    assert!(
        waiting,
        "the operator did not say it waits for the disk: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended on a full disk"
    );
    disk.free();
    let code = wait_exit(&mut child, Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("database or disk is full"), "{text}");
    assert_whole(&op).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_full_disk_ends_the_run_and_resume_finishes_it() {
    let op = Op::new();
    let Some(disk) = Tmpfs::mount(&op.data_dir(), "8m") else {
        return;
    };
    let (mut child, log) = start(&op, &[]);
    assert!(eventually(Duration::from_secs(60), || handoff_files(&op) >= 2));
    disk.fill();
    assert!(eventually(Duration::from_secs(60), || log_says(
        &log,
        "cannot be written"
    )));
    common::signal(&child, nix::sys::signal::Signal::SIGTERM);
    // The stop cannot be recorded either: the run ends, its chain still resumable.
    let code = wait_exit(&mut child, Duration::from_secs(30));
    assert_ne!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(common::processes_in(&op.workdir()).is_empty());
    disk.free();
    let out = op
        .cmd(&["run", "--resume"])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "25")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_whole(&op).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_locked_past_the_busy_timeout_is_waited_out() {
    let op = Op::new();
    let (mut child, log) = start(&op, &["--serve", "127.0.0.1:0"]);
    assert!(eventually(Duration::from_secs(60), || handoff_files(&op) >= 3));
    // Another process (the sqlite3 shell of someone looking, a backup) holds the write lock for
    // 45 s: each write waits out the 10 s busy timeout and fails, longer than four restarts at once
    // (the chain's restart intensity) would last.
    use sqlx::Connection;
    let db = op.data_dir().join("operator.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let locked = std::time::Instant::now();
    // A start through the API cannot be recorded: 503, try again later (not a 500).
    let url = std::fs::read_to_string(op.data_dir().join("api.addr")).unwrap();
    let http = reqwest::Client::new();
    let csrf: serde_json::Value = http
        .get(format!("{}/api/csrf", url.trim()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .post(format!("{}/api/chains", url.trim()))
        .header("x-csrf-token", csrf["csrfToken"].as_str().unwrap())
        .json(&serde_json::json!({"task": "more work"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status.as_u16(), 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    tokio::time::sleep(Duration::from_secs(45).saturating_sub(locked.elapsed())).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended on a locked store"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("database is locked"), "{text}");
    assert_whole(&op).await;
}
