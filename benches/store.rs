//! The store's write cost must not grow with its size: recording a session (start and finish, with a
//! handoff) and appending an event, with 10 and with 10,000 chains in the store, in the same run.
//!
//! `cargo bench --bench store` fills 10,000 chains; without `--bench` a quick pass with 500.

#[path = "../tests/common/records.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use operator::model::{ChainStatus, HandoffRecord, now_rfc3339};
use operator::store::sqlite::SqliteStore;
use operator::store::{NewChain, SessionStart, SharedStore};

async fn chain(store: &SharedStore, id: &str) {
    store
        .create_chain(&NewChain {
            id: id.into(),
            name: "main".into(),
            mission: None,
            task: "t".into(),
            config: serde_json::json!({"model": "sonnet"}),
            status: ChainStatus::Running,
        })
        .await
        .expect("create");
}

/// Records `n` sessions (start + finish with a handoff) on `id`; returns each one's time.
async fn record_sessions(store: &SharedStore, id: &str, n: u32) -> Vec<Duration> {
    let mut v = Vec::new();
    for i in 1..=n {
        let t = Instant::now();
        store
            .start_session(&SessionStart {
                chain_id: id.into(),
                index: i,
                attempt: 1,
                prompt: "p".repeat(2000),
                started_at: now_rfc3339(),
                account: None,
            })
            .await
            .expect("start");
        let h = HandoffRecord {
            chain_id: id.into(),
            index: i,
            text: "## HANDOFF\n".to_string() + &"x".repeat(3000),
            complete: false,
            synthetic: false,
            reason: None,
            file: format!("handoff-{i}.md"),
            created_at: now_rfc3339(),
        };
        store
            .finish_session(id, &common::session(i), Some(&h))
            .await
            .expect("finish");
        v.push(t.elapsed());
    }
    v
}

async fn append_events(store: &SharedStore, id: &str, n: u32) -> Vec<Duration> {
    let mut v = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        store
            .append_event(
                Some(id),
                Some(i),
                "chain:session-complete",
                &serde_json::json!({"n": i}),
            )
            .await
            .expect("event");
        v.push(t.elapsed());
    }
    v
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
    )
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let big = if full { 10_000 } else { 500 };
    let per = if full { 200 } else { 20 };
    println!("store writes, p50 / p99, {per} of each:");
    for size in [10usize, big] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore = Arc::new(SqliteStore::open(dir.path()).await.expect("store"));
        for i in 0..size {
            let id = format!("c-fill-{i:06}");
            chain(&store, &id).await;
            record_sessions(&store, &id, 2).await;
            append_events(&store, &id, 3).await;
        }
        chain(&store, "c-measured").await;
        let (s50, s99) = pct(record_sessions(&store, "c-measured", per).await);
        let (e50, e99) = pct(append_events(&store, "c-measured", per * 5).await);
        println!(
            "  with {size:>6} chains: a session {s50:>6.3} / {s99:>6.3} ms   an event {e50:>6.3} / {e99:>6.3} ms"
        );
    }
}
