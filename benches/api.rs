//! `GET /api/chains` with many chains in the store, against a baseline in the same run: the store's own
//! `list_chains` for the same page. Three ways: the store call, the router in-process
//! (`tower::ServiceExt::oneshot`), and over real HTTP on 127.0.0.1 (reqwest). First and last pages.
//!
//! The same on SQLite and on PostgreSQL (a throwaway server, when installed).
//!
//! `cargo bench --bench api` runs 10,000 chains; without `--bench` (under `cargo test
//! --all-targets`) a quick pass over 300 chains, so CI notices a bench that no longer runs.

#[path = "../tests/common/records.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use operator::model::{ChainStatus, now_rfc3339};
use operator::store::sqlite::SqliteStore;
use operator::store::{ChainQuery, NewChain, SessionStart, SharedStore};
use tower::ServiceExt;

async fn fill(store: &SharedStore, n: usize) {
    for i in 0..n {
        let id = format!("c-20261125-{i:06x}");
        store
            .create_chain(&NewChain {
                id: id.clone(),
                name: "main".into(),
                mission: None,
                task: format!("task {i}"),
                config: serde_json::json!({"model": "sonnet"}),
                status: ChainStatus::Complete,
            })
            .await
            .expect("create");
        for idx in 1..=2 {
            store
                .start_session(&SessionStart {
                    chain_id: id.clone(),
                    index: idx,
                    attempt: 1,
                    prompt: "p".into(),
                    started_at: now_rfc3339(),
                    account: None,
                })
                .await
                .expect("start");
            store
                .finish_session(&id, &common::session(idx), None)
                .await
                .expect("finish");
        }
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

async fn measure<F, Fut>(iters: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    Stats {
        p50: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

fn row(name: &str, s: &Stats) {
    println!(
        "  {name:<34} p50 {:>8.2} ms   p99 {:>8.2} ms",
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, iters) = if full { (10_000, 200) } else { (300, 20) };
    let dir = tempfile::tempdir().expect("tempdir");
    let store: SharedStore = Arc::new(SqliteStore::open(dir.path()).await.expect("store"));
    bench(store, "SQLite", n, iters, dir.path()).await;
    // The same on a fleet's PostgreSQL store (a throwaway server).
    let Some(bin) = pg::available() else {
        println!("PostgreSQL is not installed: its figures were not measured");
        return;
    };
    let server = pg::PgServer::start(&bin);
    let url = server.fresh_db().await;
    let store: SharedStore = Arc::new(
        operator::store::postgres::PostgresStore::open(&url)
            .await
            .expect("store"),
    );
    bench(store, "PostgreSQL", n, iters, dir.path()).await;
}

async fn bench(store: SharedStore, backend: &str, n: usize, iters: usize, dir: &std::path::Path) {
    let t = Instant::now();
    fill(&store, n).await;
    println!(
        "GET /api/chains on {backend} with {n} chains (2 sessions each), {iters} requests per line:"
    );
    println!(
        "  (filling the store took {:.1} s)",
        t.elapsed().as_secs_f64()
    );

    let bus = operator::events::Bus::new(store.clone());
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let security = operator::api::security::for_bind(addr, None, dir, vec![]).expect("security");
    let state = operator::api::AppState {
        store: store.clone(),
        bus,
        control: None,
        security: Arc::new(security),
        metrics: Arc::new(operator::metrics::Metrics::new()),
        data_dir: dir.to_path_buf(),
        started: Instant::now(),
        daily_cap_usd: None,
        missions_dir: dir.join("missions"),
    };
    let app = operator::http::router(state.clone());
    // The cursor of the last page: the 51st oldest chain.
    let last_cursor = format!("c-20261125-{:06x}", 50.min(n - 1));

    for (label, cursor) in [
        ("first page", None),
        ("last page", Some(last_cursor.clone())),
    ] {
        println!(" {label} (50 chains):");
        let q = ChainQuery {
            include_archived: true,
            limit: 51,
            before: cursor.clone(),
            ..Default::default()
        };
        let s = measure(iters, || async {
            let page = store.list_chains(&q).await.expect("list");
            assert!(!page.is_empty());
        })
        .await;
        row("baseline: store.list_chains", &s);
        let uri = match &cursor {
            Some(c) => format!("/api/chains?archived=true&cursor={c}"),
            None => "/api/chains?archived=true".to_string(),
        };
        let s = measure(iters, || {
            let app = app.clone();
            let uri = uri.clone();
            async move {
                let req = Request::get(&uri)
                    .header("host", "127.0.0.1")
                    .body(Body::empty())
                    .expect("request");
                let resp = app.oneshot(req).await.expect("response");
                assert_eq!(resp.status(), 200);
                let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
                    .await
                    .expect("body");
                assert!(body.len() > 100);
            }
        })
        .await;
        row("router, in-process (oneshot)", &s);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let server = operator::http::Server::spawn(listener, state.clone()).expect("serve");
        let http = reqwest::Client::new();
        let url = format!("http://{}{uri}", server.addr);
        let s = measure(iters, || async {
            let resp = http.get(&url).send().await.expect("GET");
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await.expect("body");
        })
        .await;
        row("over HTTP on 127.0.0.1 (reqwest)", &s);
        server.shutdown().await;
    }
}
