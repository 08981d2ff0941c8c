//! Faults of the machine under a running operator: the data dir's disk fills up (a real tmpfs,
//! filled to the last byte), the store is locked by another process past the busy timeout. The
//! chains wait the fault out and finish with nothing lost; a stop during the fault ends the run and
//! `--resume` finishes it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Op, eventually};
use operator::model::{ChainStatus, SessionStatus};
use operator::store::Store;

/// A tmpfs mounted on a path (the tests run as root in CI: mounting is how a real full disk is
/// made without touching the machine's own). Unmounted on drop.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // CI runs as root; a developer's machine may not.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root) for the disk-full tests"
            );
            eprintln!("cannot mount a tmpfs here (not root?): the disk-full test does not run");
            return None;
        }
        Some(Self {
            at: at.to_path_buf(),
        })
    }

    /// Fills the file system to its last byte.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.at.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.at.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

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

/// What must hold of a chain after a fault: it completed, its sessions are numbered 1..n without a
/// gap or a repeat, every completed session has its handoff in the store and on disk, and the chain's
/// cost is the sum of its sessions'.
async fn assert_whole(op: &Op) {
    let store = op.store().await;
    let chains = store.list_chains(&Default::default()).await.unwrap();
    assert_eq!(chains.len(), 1);
    let c = &chains[0];
    assert_eq!(c.status, ChainStatus::Complete, "{:?}", c.reason);
    let sessions = store.sessions(&c.id).await.unwrap();
    let idx: Vec<u32> = sessions.iter().map(|s| s.index).collect();
    assert_eq!(idx, (1..=idx.len() as u32).collect::<Vec<_>>(), "indices");
    assert!(
        sessions.iter().all(|s| s.status != SessionStatus::Running),
        "a session is still recorded running: {sessions:?}"
    );
    let handoffs = store.handoffs(&c.id).await.unwrap();
    for s in sessions
        .iter()
        .filter(|s| s.status == SessionStatus::Completed)
    {
        let h = handoffs.iter().find(|h| h.index == s.index);
        let h = h.unwrap_or_else(|| panic!("session {} has no handoff", s.index));
        assert!(Path::new(&h.file).exists(), "{} is missing", h.file);
    }
    let sum: f64 = sessions.iter().map(|s| s.cost_usd).sum();
    let ledger = store.cost_report(10).await.unwrap().all_time;
    assert!((ledger.cost_usd - sum).abs() < 1e-9, "{ledger:?} vs {sum}");
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
    let (mut child, log) = start(&op, &[]);
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
    tokio::time::sleep(Duration::from_secs(45)).await;
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
