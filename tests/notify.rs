//! Webhook notifications against a real HTTP server on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use common::{Op, chains, stderr};
use operator::model::ChainStatus;
use operator::store::Store;

/// One request as the receiver saw it.
#[derive(Debug)]
struct Received {
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves `statuses` in order (one per request; 0 = never answer) and sends each request back to
/// the test.
fn server(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for status in statuses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut len = 0usize;
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = tx.send(Received {
                line: request_line.trim().to_string(),
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            if status == 0 {
                // A receiver that hangs: keep the connection open, answer nothing.
                held.push(stream);
                continue;
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(held);
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
    let r = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(r.line, "POST /hook HTTP/1.1");
    assert_eq!(r.header("x-operator-event"), Some("chain:complete"));
    assert_eq!(
        r.header("x-operator-signature"),
        None,
        "no secret, no signature"
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
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

/// The signature a receiver computes, independently of the operator's code.
fn expected_signature(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn a_signed_delivery_is_retried_after_a_500_and_verifies() {
    let op = Op::new();
    let (url, rx) = server(vec![500, 200]);
    let out = op
        .cmd(&[
            "run",
            "--task",
            "Sign it",
            "--scenario",
            "complete",
            "--json",
            "--notify-webhook",
            &url,
        ])
        .env("OPERATOR_NOTIFY_SECRET", "s3cret-shared-with-the-receiver")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = chains(&out)[0].id.clone();
    let got: Vec<Received> = rx.try_iter().collect();
    assert_eq!(got.len(), 2, "a 500 then a success");
    for r in &got {
        let sig = r.header("x-operator-signature").expect("signed");
        assert_eq!(
            sig,
            expected_signature("s3cret-shared-with-the-receiver", &r.body)
        );
        assert_ne!(sig, expected_signature("another-secret", &r.body));
    }
    let events = op.store().await.events(Some(&id), 0, 100).await.unwrap();
    let d = events
        .iter()
        .find(|e| e.kind == "notify:delivered")
        .expect("delivered");
    assert_eq!(d.data["attempts"], 2);
    assert!(!stderr(&out).contains("s3cret"), "the secret was logged");
}

#[tokio::test]
async fn a_hanging_receiver_is_timed_out_and_the_chain_is_unaffected() {
    let op = Op::new();
    let (url, rx) = server(vec![0, 0, 0]);
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "complete",
            "--json",
            "--notify-webhook",
            &url,
        ])
        .env("OPERATOR_NOTIFY_TIMEOUT", "300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Complete);
    assert_eq!(rx.try_iter().count(), 3, "three attempts, each timed out");
    let events = op.store().await.events(Some(&c.id), 0, 100).await.unwrap();
    let failed = events
        .iter()
        .find(|e| e.kind == "notify:failed")
        .expect("journaled");
    assert_eq!(failed.data["error"], "timed out");
}

#[tokio::test]
async fn a_missions_slack_webhook_hears_failures_and_the_end() {
    let op = Op::new();
    let (url, rx) = server(vec![200; 8]);
    let m = op.write(
        "m.toml",
        &format!(
            "name = \"m\"\n[defaults]\nsim = {{ scenario = \"error\" }}\nmax_attempts = 1\n\
             webhooks = [{{ url = \"{url}?key=secret-in-url\", format = \"slack\", on = [\"failure\", \"end\"] }}]\n\
             [[chain]]\nname = \"flaky\"\ntask = \"Break things\"\n"
        ),
    );
    let out = op.run(&["run", m.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let got: Vec<serde_json::Value> = rx
        .try_iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let texts: Vec<&str> = got
        .iter()
        .map(|v| v["text"].as_str().expect("slack text"))
        .collect();
    assert_eq!(
        texts.len(),
        4,
        "three failed sessions and the end: {texts:?}"
    );
    assert!(
        texts[0].contains("`flaky`") && texts[0].contains("session 1 failed"),
        "{}",
        texts[0]
    );
    assert!(texts[3].contains("ended failed"), "{}", texts[3]);
    assert!(!stderr(&out).contains("secret-in-url"));
    let id = chains(&out)[0].id.clone();
    let events = op.store().await.events(Some(&id), 0, 200).await.unwrap();
    for e in events.iter().filter(|e| e.kind.starts_with("notify:")) {
        assert!(!e.data.to_string().contains("secret-in-url"), "{e:?}");
    }
}
