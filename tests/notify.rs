//! Webhook notifications against a real HTTP server on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use common::{Op, chains, stderr};
use operator::model::ChainStatus;
use operator::store::Store;

/// Serves `statuses` in order (one per request) and sends each request's body back to the test.
fn server(statuses: Vec<u16>) -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = tx.send((
                request_line.trim().to_string(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_summary_is_posted_when_a_chain_ends() {
    let op = Op::new();
    let (url, rx) = server(vec![200]);
    let out = op.run(&[
        "run",
        "--task",
        "Notify me",
        "--scenario",
        "complete",
        "--json",
        "--notify-webhook",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = chains(&out)[0].id.clone();
    let (line, body) = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(line, "POST /hook HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], "chain:complete");
    assert_eq!(v["chain"]["id"], id.as_str());
    assert_eq!(v["chain"]["status"], "complete");
    assert_eq!(v["chain"]["sessions"].as_array().unwrap().len(), 1);
    let events = op.store().await.events(Some(&id), 0, 100).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "notify:delivered"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_failing_receiver_is_retried_and_never_fails_the_chain() {
    let op = Op::new();
    let (url, rx) = server(vec![500, 500, 500]);
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "complete",
        "--json",
        "--notify-webhook",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(rx.try_iter().count(), 3, "three attempts expected");
    let events = op.store().await.events(Some(&c.id), 0, 100).await.unwrap();
    let failed = events
        .iter()
        .find(|e| e.kind == "notify:failed")
        .expect("a failed delivery is journaled");
    assert_eq!(failed.data["error"], "HTTP 500 Internal Server Error");
    assert!(
        !stderr(&out).contains(&url),
        "the webhook URL must not be logged"
    );
}
