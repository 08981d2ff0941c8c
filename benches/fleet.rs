//! Fleet claims on PostgreSQL: N queued chains claimed by 4 concurrent workers (each its own
//! pool, claiming 4 at a time, as `operator worker --capacity 4` does) until none is left, against
//! a baseline in the same run: the same number of bare round trips (`SELECT 1`) by 4 concurrent
//! clients. Checked: every chain claimed exactly once.
//!
//! `cargo bench --bench fleet` queues 10,000 chains; without `--bench` (under `cargo test
//! --all-targets`) a quick pass over 200, so CI notices a bench that no longer runs. Needs a
//! PostgreSQL installation (`.ci/run` installs it); the server is a throwaway one.

#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use operator::store::postgres::PostgresStore;

const WORKERS: usize = 4;
const CAPACITY: u32 = 4;

async fn queue(url: &str, n: usize) -> PostgresStore {
    let s = PostgresStore::open(url).await.expect("store");
    sqlx::query(
        "INSERT INTO chains (id, name, task, status, started_at, updated_at, config) \
         SELECT 'c-' || lpad(i::text, 6, '0'), 'main', 'task ' || i, 'queued', \
                to_char(now() + i * interval '1 ms', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                '2026-11-26T00:00:00.000Z', '{}' \
         FROM generate_series(1, $1) AS i",
    )
    .bind(n as i64)
    .execute(s.pool())
    .await
    .expect("queue chains");
    s
}

async fn claim_all(url: &str) -> (Duration, usize, usize) {
    let mut stores = Vec::new();
    for _ in 0..WORKERS {
        stores.push(PostgresStore::open(url).await.expect("store"));
    }
    let start = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                let (mut claimed, mut calls) = (0, 0);
                loop {
                    let got = s
                        .claim(&format!("w{i}"), CAPACITY, Duration::from_secs(600), &[])
                        .await
                        .expect("claim");
                    calls += 1;
                    if got.is_empty() {
                        return (claimed, calls);
                    }
                    claimed += got.len();
                    // The worker would now run them; here it forgets them and claims again.
                    s.forget_claims();
                }
            })
        })
        .collect();
    let (mut claimed, mut calls) = (0, 0);
    for t in tasks {
        let (c, k) = t.await.expect("claimer");
        claimed += c;
        calls += k;
    }
    (start.elapsed(), claimed, calls)
}

async fn round_trips(url: &str, total: usize) -> Duration {
    let mut pools = Vec::new();
    for _ in 0..WORKERS {
        pools.push(sqlx::PgPool::connect(url).await.expect("pool"));
    }
    let start = Instant::now();
    let tasks: Vec<_> = pools
        .into_iter()
        .map(|p| {
            tokio::spawn(async move {
                for _ in 0..total / WORKERS {
                    sqlx::query("SELECT 1").execute(&p).await.expect("select");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 10_000 } else { 200 };
    let Some(bin) = pg::available() else {
        println!("PostgreSQL is not installed: the fleet bench did not run");
        return;
    };
    let server = pg::PgServer::start(&bin);
    let url = server.fresh_db().await;
    let s = queue(&url, n).await;
    let (took, claimed, calls) = claim_all(&url).await;
    assert_eq!(claimed, n, "every queued chain is claimed");
    let (once,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chains WHERE fence = 1")
        .fetch_one(s.pool())
        .await
        .expect("count");
    assert_eq!(once as usize, n, "each chain was claimed exactly once");
    let base = round_trips(&url, calls).await;
    println!(
        "claims on PostgreSQL: {n} queued chains, {WORKERS} workers claiming {CAPACITY} at a time:"
    );
    println!(
        "  claims                   : {:>8.0} chains/s ({calls} claim queries in {:.2} s, {:.2} ms each)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 * WORKERS as f64 / calls as f64
    );
    println!(
        "  baseline: SELECT 1       : {:>8.0} queries/s ({calls} in {:.2} s, {:.2} ms each)",
        calls as f64 / base.as_secs_f64(),
        base.as_secs_f64(),
        base.as_secs_f64() * 1e3 * WORKERS as f64 / calls as f64
    );
}
