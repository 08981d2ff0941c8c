//! The WebSocket `/ws`: a real client (tokio-tungstenite) receives a sim chain's events in order,
//! re-syncs from the journal after a reconnect, and a client that stops reading is told it lagged
//! while the supervisor goes on.

mod common;

use std::time::Duration;

use common::Op;
use common::api::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// The next JSON message, within 30 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("JSON");
        }
    }
}

/// Messages until one of `kind` (included).
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next(ws).await;
        let done = v["kind"] == kind;
        out.push(v);
        if done {
            return out;
        }
    }
}

fn kinds(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn a_client_gets_a_chains_events_in_order_and_can_replay_them() {
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    let mut ws = connect(&srv.ws_url("/ws?subscribe=chain:*,orchestrator:*")).await;
    assert_eq!(next(&mut ws).await["kind"], "subscribed");
    let mut out = connect(&srv.ws_url("/ws")).await;
    out.send(Message::text(
        json!({"subscribe": ["session:output:*", "no-such-pattern"]}).to_string(),
    ))
    .await
    .unwrap();
    let first = next(&mut out).await;
    assert_eq!(first["kind"], "error");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("no-such-pattern")
    );
    assert_eq!(next(&mut out).await["kind"], "subscribed");

    let id = srv.start_chain("stream me").await;
    let evs = until(&mut ws, "chain:complete").await;
    let ks = kinds(&evs);
    assert_eq!(ks[0], "chain:started", "{ks:?}");
    // Each session: started, then complete, in order; three sessions for `incomplete`.
    let sessions: Vec<&str> = ks
        .iter()
        .copied()
        .filter(|k| *k == "chain:session-started" || *k == "chain:session-complete")
        .collect();
    assert_eq!(
        sessions,
        ["chain:session-started", "chain:session-complete"].repeat(3),
        "{ks:?}"
    );
    assert!(evs.iter().all(|e| e["chainId"] == id.as_str()));
    let ids: Vec<i64> = evs
        .iter()
        .map(|e| e["id"].as_i64().expect("journaled"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {ids:?}"
    );
    assert_eq!(evs.last().unwrap()["data"]["status"], "complete");

    // Live output of the sessions arrived on the other socket.
    let o = next(&mut out).await;
    assert_eq!(
        (o["kind"].as_str(), o["chainId"].as_str()),
        (Some("session:output"), Some(id.as_str()))
    );
    assert!(o["id"].is_null(), "live output is not journaled");

    // A client reconnecting with `since` gets what it missed from the journal, in order.
    let since = ids[2];
    let mut again = connect(&srv.ws_url(&format!("/ws?subscribe=chain:{id}&since={since}"))).await;
    let replay = until(&mut again, "chain:complete").await;
    let replayed: Vec<i64> = replay.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(replayed, ids[3..].to_vec());
    assert_eq!(next(&mut again).await["kind"], "subscribed");

    // orchestrator:* events reach their subscribers.
    srv.post("/api/orchestrator/pause", Value::Null).await;
    assert_eq!(until(&mut ws, "orchestrator:paused").await.len(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_websocket_from_another_site_is_refused() {
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    let mut req = srv.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = srv.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut().insert("origin", srv.url.parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "same origin is fine"
    );
    srv.stop().await;
}

/// In-process: the daemon's own `run` with its API on 127.0.0.1:0, and a flood of live events
/// while a client does not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_is_told_it_lagged_and_never_slows_the_bus() {
    use operator::daemon::{self, ApiSetup, Hooks, RunOptions};
    let dir = tempfile::tempdir().unwrap();
    let store: operator::store::SharedStore = std::sync::Arc::new(
        operator::store::sqlite::SqliteStore::open(dir.path())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let security = operator::api::security::for_bind(addr, None, dir.path(), vec![]).unwrap();
    let opts = RunOptions {
        shutdown_grace: Duration::from_secs(1),
        stay: true,
        ..RunOptions::new(dir.path().to_path_buf())
    };
    let (signals_tx, signals) = tokio::sync::mpsc::unbounded_channel();
    let hooks = Hooks {
        api: Some(ApiSetup {
            listener,
            security,
            missions_dir: dir.path().join("missions"),
        }),
        ..Default::default()
    };
    let launch = daemon::Launch::new(store, opts)
        .with_signals(signals)
        .with_hooks(hooks);
    let bus = launch.bus().clone();
    let run = tokio::spawn(launch.run(Default::default()));

    let mut ws = connect(&format!("ws://{addr}/ws?subscribe=session:output:*")).await;
    assert_eq!(next(&mut ws).await["kind"], "subscribed");
    // The client reads nothing while 100,000 events of 1 KB go out: far more than the socket
    // buffers and the bus's 1,024 slots hold. Emitting never waits for it.
    let text = "x".repeat(1000);
    let started = std::time::Instant::now();
    for i in 0..100_000u32 {
        bus.live(
            "c-flood",
            1,
            operator::events::Body::Output {
                text: text.clone(),
                turns: i,
            },
        );
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let emitting = started.elapsed();
    // The API still answers while the client is stuck.
    let health = reqwest::get(format!("http://{addr}/api/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Reading now: events, then a `lagged` notice with how many were dropped, then events again.
    let mut lagged = None;
    let mut after = 0;
    for _ in 0..200_000 {
        let v = next(&mut ws).await;
        if v["kind"] == "lagged" {
            lagged = Some(v["missed"].as_u64().unwrap());
        } else if lagged.is_some() {
            after += 1;
            if after == 10 {
                break;
            }
        }
    }
    let missed = lagged.expect("the client was told it lagged");
    assert!(missed > 0);
    assert_eq!(after, 10, "events flow again after the notice");
    eprintln!("emitted 100,000 events in {emitting:?}; the slow client missed {missed}");
    signals_tx
        .send(operator::signals::SignalEvent::Stop)
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.chains.is_empty());
}
