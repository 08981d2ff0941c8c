//! Restart latency under supervision (p50/p99): a crashed child actor of a chain (its Cost actor)
//! and a crashed chain, in the real `operator run` (release build, sim agent in instant mode,
//! crashes injected with `OPERATOR_FAULT`), timed from the log's "injected fault" line to the
//! line that shows the restart done ("the child actor was restarted"; the chain's next "session
//! started"). The baseline, in the same run: ractor's own floor, a bare supervisor respawning a
//! trivial child that panicked, in process.
//!
//! `cargo bench --bench supervision` runs the full measurement; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick pass, so CI notices a bench that no longer runs.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

const BIN: &str = env!("CARGO_BIN_EXE_operator");

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut v: Vec<Duration>) {
    let p50 = percentile(&mut v, 0.50);
    let p99 = percentile(&mut v, 0.99);
    println!(
        "  {name:<44}: p50 {:>7.3} ms   p99 {:>7.3} ms   ({} restarts)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        v.len()
    );
}

/// The timestamp that starts a log line of the text format (`2026-11-26T00:01:18.905375Z …`).
fn stamp(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// Runs one chain with `fault` armed and returns the time from the injected fault to the first
/// later log line containing `done`.
fn operator_restart(fault: &str, done: &str, dir: &std::path::Path) -> Duration {
    let data = dir.join(format!("data-{}", fastrand::u32(..)));
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("workdir");
    let out = Command::new(BIN)
        .args(["run", "--task", "bench", "--max-continuations", "2"])
        .env("OPERATOR_DATA_DIR", &data)
        .env("OPERATOR_WORKDIR", &work)
        .env("OPERATOR_AGENT", "sim")
        .env("OPERATOR_SIM__STEP", "0s")
        .env("OPERATOR_SIM__COMPLETE_AFTER", "2")
        .env("OPERATOR_LOG", "info")
        .env("OPERATOR_FAULT", fault)
        // A backtrace (RUST_BACKTRACE=1) is symbolised at the panic: ~60 ms of the restart.
        .env_remove("RUST_BACKTRACE")
        .current_dir(&work)
        .stdin(Stdio::null())
        .output()
        .expect("run operator");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{fault}: {log}");
    let mut lines = log.lines();
    let crashed = lines
        .find(|l| l.contains("injected fault"))
        .and_then(stamp)
        .unwrap_or_else(|| panic!("{fault}: no injected fault in the log:\n{log}"));
    let restarted = lines
        .find(|l| l.contains(done))
        .and_then(stamp)
        .unwrap_or_else(|| panic!("{fault}: no {done:?} after the fault:\n{log}"));
    restarted
        .duration_since(crashed)
        .expect("the log's clock went backwards")
}

/// A child that panics when told to.
struct Fragile;

impl Actor for Fragile {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        panic!("crash on purpose");
    }
}

/// Respawns its child when it fails and reports the crash-to-respawned time.
struct Parent {
    crashed_at: Arc<Mutex<Option<Instant>>>,
    results: tokio::sync::mpsc::UnboundedSender<(Duration, ActorRef<()>)>,
}

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        evt: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(..) = evt {
            let (child, _) = Actor::spawn_linked(None, Fragile, (), me.get_cell()).await?;
            let t0 = self.crashed_at.lock().expect("lock").take();
            if let Some(t0) = t0 {
                let _ = self.results.send((t0.elapsed(), child));
            }
        }
        Ok(())
    }
}

fn bare_ractor(samples: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let crashed_at = Arc::new(Mutex::new(None));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (parent, _) = Actor::spawn(
            None,
            Parent {
                crashed_at: crashed_at.clone(),
                results: tx,
            },
            (),
        )
        .await
        .expect("spawn parent");
        let (mut child, _) = Actor::spawn_linked(None, Fragile, (), parent.get_cell())
            .await
            .expect("spawn child");
        let mut v = Vec::new();
        for _ in 0..samples {
            *crashed_at.lock().expect("lock") = Some(Instant::now());
            child.cast(()).expect("cast");
            let (d, next) = rx.recv().await.expect("a respawn");
            v.push(d);
            child = next;
        }
        parent.stop(None);
        v
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let samples = if full { 60 } else { 2 };
    // Panics of the baseline's child are expected; keep them off the report.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().expect("tempdir");
    println!("restart latency, from the crash to the restarted actor's first work:");
    report(
        "baseline: bare ractor respawn (in process)",
        bare_ractor(samples * 5),
    );
    let child: Vec<_> = (0..samples)
        .map(|_| operator_restart("cost:usage@2", "the child actor was restarted", dir.path()))
        .collect();
    report("operator: a chain's crashed Cost actor", child);
    let chain: Vec<_> = (0..samples)
        .map(|_| operator_restart("chain:next@2", "session started", dir.path()))
        .collect();
    report("operator: a crashed chain (to its next session)", chain);
}
