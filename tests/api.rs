//! The HTTP API over real HTTP on 127.0.0.1: `operator serve` with sim chains, every endpoint's happy
//! path and bad inputs, the security rules each with a failing request, and the OpenAPI document
//! checked against the real routes.

mod common;

use std::time::Duration;

use common::api::{Server, error_code};
use common::{Op, eventually, processes_in};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const UNKNOWN: &str = "c-20990101-000000";

#[tokio::test]
async fn every_documented_route_answers_and_the_m4_routes_are_documented() {
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    let (st, doc) = srv.get("/api/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    for route in [
        "GET /api/chains",
        "POST /api/chains",
        "GET /api/chains/{id}",
        "POST /api/chains/{id}/abort",
        "POST /api/chains/{id}/resume",
        "DELETE /api/chains/{id}",
        "GET /api/chains/{id}/sessions/{idx}",
        "GET /api/chains/{id}/sessions/{idx}/output",
        "GET /api/costs",
        "GET /api/orchestrator/status",
        "POST /api/orchestrator/start",
        "POST /api/orchestrator/stop",
        "POST /api/orchestrator/pause",
        "POST /api/orchestrator/resume",
        "GET /api/health",
        "GET /metrics",
        "GET /ws",
    ] {
        assert!(
            documented.contains(&route.to_string()),
            "{route} is not documented"
        );
    }
    // A route that does not exist gets the one error shape.
    let (st, v) = srv.get("/api/nope").await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::NOT_FOUND, "no_route")
    );
    let (st, v) = Server::send(srv.req(Method::PUT, "/api/chains")).await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // Every documented route exists on the server: none falls through to "no route" or
    // "method not allowed". (Stop last: it ends the server.)
    documented.sort_by_key(|r| r.ends_with("/stop"));
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", UNKNOWN).replace("{idx}", "1");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = srv.req(m, &path);
        if method == "POST" {
            rb = rb.json(&json!({}));
        }
        let (st, v) = Server::send(rb).await;
        assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{route}: {v}");
        if st == StatusCode::NOT_FOUND {
            assert_ne!(
                error_code(&v),
                "no_route",
                "{route} is documented but not served"
            );
        }
    }
    assert!(
        common::eventually(Duration::from_secs(30), || srv_exited(&op)),
        "the documented stop did not stop the server"
    );
}

fn srv_exited(op: &Op) -> bool {
    !op.data_dir().join("api.addr").exists()
}

#[tokio::test]
async fn a_chain_started_over_http_runs_and_everything_about_it_can_be_read() {
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    let (st, h) = srv.get("/api/health").await;
    assert_eq!((st, h["status"].as_str()), (StatusCode::OK, Some("ok")));

    let ids = [
        srv.start_chain("first task").await,
        srv.start_chain("second task").await,
        srv.start_chain("third task").await,
    ];
    for id in &ids {
        srv.wait_status(id, "complete").await;
    }
    // Newest first, paged by cursor.
    let (st, page) = srv.get("/api/chains?limit=2").await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let listed: Vec<&str> = page["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["nextCursor"].as_str().expect("a next page");
    let (_, page2) = srv
        .get(&format!("/api/chains?limit=2&cursor={cursor}"))
        .await;
    let listed2: Vec<&str> = page2["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed2, [ids[0].as_str()]);
    assert!(page2["nextCursor"].is_null());
    let (_, by_status) = srv.get("/api/chains?status=complete").await;
    assert_eq!(by_status["chains"].as_array().unwrap().len(), 3);
    let (_, none) = srv.get("/api/chains?status=failed").await;
    assert!(none["chains"].as_array().unwrap().is_empty());

    // One chain, with the store's JSON names.
    let id = &ids[0];
    let (_, chain) = srv.get(&format!("/api/chains/{id}")).await;
    assert_eq!(chain["task"], "first task");
    assert_eq!(chain["sessions"].as_array().unwrap().len(), 3);
    for key in ["startedAt", "updatedAt", "totals", "config"] {
        assert!(chain.get(key).is_some(), "{key} missing: {chain}");
    }
    assert!(chain["sessions"][0].get("costUsd").is_some());

    // A session with its handoff and prompt.
    let (st, s) = srv.get(&format!("/api/chains/{id}/sessions/1")).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_eq!(s["session"]["index"], 1);
    assert!(
        s["handoff"]["text"]
            .as_str()
            .unwrap()
            .contains("## HANDOFF")
    );
    assert!(s["prompt"].as_str().unwrap().contains("first task"));

    // The output, paged: pages are whole lines and add up to the transcript.
    let file = op.data_dir().join(format!("chains/{id}/session-1.jsonl"));
    let whole = std::fs::read_to_string(&file).unwrap();
    let mut got = String::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let (st, p) = srv
            .get(&format!(
                "/api/chains/{id}/sessions/1/output?offset={offset}&limit=1024"
            ))
            .await;
        assert_eq!(st, StatusCode::OK, "{p}");
        let text = p["text"].as_str().unwrap();
        assert!(
            p["eof"].as_bool().unwrap() || text.ends_with('\n'),
            "a page cut a line: {text:?}"
        );
        got.push_str(text);
        offset = p["nextOffset"].as_u64().unwrap();
        pages += 1;
        if p["eof"].as_bool().unwrap() {
            break;
        }
        assert!(pages < 10_000);
    }
    assert!(pages > 1, "the transcript should take several 1 KiB pages");
    assert_eq!(got, whole);

    // The journal of the chain.
    let (_, evs) = srv.get(&format!("/api/chains/{id}/events")).await;
    // The request that started it is journaled with who asked (`api`: the bearer token).
    let requests: Vec<&Value> = evs
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "operator:request")
        .collect();
    assert_eq!(requests.len(), 1, "{evs}");
    assert_eq!(
        requests[0]["data"],
        json!({"action": "start_chain", "origin": "api"})
    );
    let kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| *k != "operator:request")
        .collect();
    assert_eq!(kinds.first(), Some(&"chain:started"));
    assert_eq!(kinds.last(), Some(&"chain:complete"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "chain:session-complete")
            .count(),
        3
    );

    // Costs: today, all time, per model, per chain.
    let (_, costs) = srv.get("/api/costs").await;
    assert_eq!(costs["allTime"]["sessions"], 9);
    assert_eq!(costs["today"]["sessions"], 9);
    assert_eq!(costs["byModel"][0]["model"], "sonnet");
    assert_eq!(costs["byChain"].as_array().unwrap().len(), 3);
    let total: f64 = costs["byChain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["costUsd"].as_f64().unwrap())
        .sum();
    assert!((total - costs["allTime"]["costUsd"].as_f64().unwrap()).abs() < 1e-9);

    // Metrics, in Prometheus text.
    let resp = srv.req(Method::GET, "/metrics").send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    for line in [
        "operator_chains{state=\"complete\"} 3",
        "operator_sessions_total{outcome=\"completed\"} 9",
        "operator_chain_ends_total{state=\"complete\"} 3",
        "operator_session_duration_seconds_count 9",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }

    // DELETE archives: gone from the list, still readable, listed with archived=true.
    let (st, v) = Server::send(srv.req(Method::DELETE, &format!("/api/chains/{id}"))).await;
    assert_eq!(
        (st, v["state"].as_str()),
        (StatusCode::OK, Some("archived"))
    );
    let (_, page) = srv.get("/api/chains").await;
    assert_eq!(page["chains"].as_array().unwrap().len(), 2);
    let (st, chain) = srv.get(&format!("/api/chains/{id}")).await;
    assert_eq!(
        (st, chain["archived"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        chain["sessions"].as_array().unwrap().len(),
        3,
        "nothing of it was lost"
    );
    let (_, page) = srv.get("/api/chains?archived=true").await;
    assert_eq!(page["chains"].as_array().unwrap().len(), 3);

    let status = srv.stop().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn bad_requests_get_clear_errors_in_one_shape() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    op.write(
        "config/missions/typo.toml",
        "name = \"typo\"\n[[chain]]\nname = \"a\"\ntask = \"t\"\nmax_turnz = 3\n",
    );
    let srv = Server::start(&op, &["--scenario", "complete"]);
    let id = srv.start_chain("t").await;
    srv.wait_status(&id, "complete").await;
    let before = srv.get("/api/chains").await.1["chains"]
        .as_array()
        .unwrap()
        .len();

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str, &str)> = vec![
        (
            srv.req(Method::GET, "/api/chains/bad%20id"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a chain id",
        ),
        (
            srv.req(Method::GET, "/api/chains/..%2F..%2Fetc%2Fpasswd"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a chain id",
        ),
        (
            srv.req(Method::GET, &format!("/api/chains/{UNKNOWN}")),
            StatusCode::NOT_FOUND,
            "not_found",
            UNKNOWN,
        ),
        (
            srv.req(Method::GET, &format!("/api/chains/{id}/sessions/abc")),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "",
        ),
        (
            srv.req(Method::GET, &format!("/api/chains/{id}/sessions/99")),
            StatusCode::NOT_FOUND,
            "not_found",
            "no session 99",
        ),
        (
            srv.req(
                Method::GET,
                &format!("/api/chains/{id}/sessions/1/output?offset=99999999"),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "past the end",
        ),
        (
            srv.req(
                Method::GET,
                &format!("/api/chains/{id}/sessions/1/output?limit=99999999"),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            srv.req(Method::GET, "/api/chains?status=bogus"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected one of",
        ),
        (
            srv.req(Method::GET, "/api/chains?limit=0"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            srv.req(Method::GET, &format!("/api/chains?cursor={UNKNOWN}")),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown cursor",
        ),
        (
            srv.req(Method::GET, "/api/chains?colour=red"),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "colour",
        ),
        (
            srv.req(Method::POST, &format!("/api/chains/{id}/abort")),
            StatusCode::CONFLICT,
            "conflict",
            "already ended",
        ),
        (
            srv.req(Method::POST, &format!("/api/chains/{UNKNOWN}/abort")),
            StatusCode::NOT_FOUND,
            "not_found",
            "",
        ),
        (
            srv.req(Method::POST, &format!("/api/chains/{id}/resume")),
            StatusCode::CONFLICT,
            "conflict",
            "nothing to resume",
        ),
        (
            srv.req(Method::POST, &format!("/api/chains/{UNKNOWN}/resume")),
            StatusCode::NOT_FOUND,
            "not_found",
            "",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .json(&json!({"task": "x".repeat(70_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .header("content-type", "text/plain")
                .body("{\"task\": \"t\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .header("content-type", "application/json")
                .body("{\"task\": "),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "",
        ),
        (
            srv.req(Method::POST, "/api/chains").json(&json!(["task"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .json(&json!({"task": "t", "maxTurn": 3})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "did you mean `maxTurns`",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .json(&json!({"name": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "`task` is required",
        ),
        (
            srv.req(Method::POST, "/api/chains")
                .json(&json!({"task": "t", "maxBudgetUsd": "lots"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "maxBudgetUsd",
        ),
        (
            srv.req(Method::POST, "/api/orchestrator/start")
                .json(&json!({"mission": "nope"})),
            StatusCode::NOT_FOUND,
            "not_found",
            "no mission named `nope`",
        ),
        (
            srv.req(Method::POST, "/api/orchestrator/start")
                .json(&json!({"mission": "../etc"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "mission",
        ),
        (
            srv.req(Method::POST, "/api/orchestrator/start")
                .json(&json!({"mission": "typo"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "max_turnz",
        ),
        (
            srv.req(Method::POST, "/api/orchestrator/pause")
                .header("content-type", "application/json")
                .body("{\"now\": 1}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "",
        ),
    ];
    for (rb, status, code, needle) in cases {
        let req = rb.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let (st, v) =
            Server::send(reqwest::RequestBuilder::from_parts(srv.http.clone(), req)).await;
        assert_eq!(st, status, "{what}: {v}");
        assert_eq!(error_code(&v), code, "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{what}: {v}"
        );
    }
    // Nothing was created or lost by the bad requests.
    let after = srv.get("/api/chains").await.1["chains"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
    let (_, c) = srv.get(&format!("/api/chains/{id}")).await;
    assert_eq!(c["status"], "complete");
}

#[tokio::test]
async fn abort_over_http_stops_the_agent_process() {
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "hang"]);
    let id = srv.start_chain("hang around").await;
    srv.wait_status(&id, "running").await;
    assert!(
        eventually(Duration::from_secs(20), || !processes_in(&op.workdir())
            .is_empty()),
        "the agent never started"
    );
    // A running chain cannot be archived.
    let (st, v) = Server::send(srv.req(Method::DELETE, &format!("/api/chains/{id}"))).await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let (st, v) = srv
        .post(&format!("/api/chains/{id}/abort"), Value::Null)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let c = srv.wait_status(&id, "aborted").await;
    assert_eq!(c["status"], "aborted");
    assert!(
        eventually(Duration::from_secs(10), || processes_in(&op.workdir())
            .is_empty()),
        "the agent outlived the abort: {:?}",
        processes_in(&op.workdir())
    );
    let (st, _) = srv
        .post(&format!("/api/chains/{id}/abort"), Value::Null)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(
        srv.stop().await.code(),
        Some(5),
        "an aborted chain's exit code"
    );
}

/// A chain aborted through the API runs again on `resume`: a new session, in the same operator,
/// from its last handoff; a running chain cannot be resumed twice.
#[tokio::test]
async fn an_aborted_chain_resumes_over_http_with_a_new_session() {
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "hang"]);
    let id = srv.start_chain("hang around").await;
    srv.wait_status(&id, "running").await;
    let (st, v) = srv
        .post(&format!("/api/chains/{id}/resume"), Value::Null)
        .await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::CONFLICT, "conflict"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{v}"
    );
    srv.post(&format!("/api/chains/{id}/abort"), Value::Null)
        .await;
    srv.wait_status(&id, "aborted").await;
    assert!(
        eventually(Duration::from_secs(10), || processes_in(&op.workdir())
            .is_empty()),
        "the agent outlived the abort"
    );
    let (st, v) = srv
        .post(&format!("/api/chains/{id}/resume"), Value::Null)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "resuming");
    let c = srv
        .wait_chain(&id, "a second session running", |c| {
            c["status"] == "running"
                && c["sessions"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|x| x["index"] == 2 && x["status"] == "running")
                })
        })
        .await;
    assert_eq!(c["sessions"][0]["status"], "interrupted", "{c}");
    assert!(
        eventually(Duration::from_secs(20), || !processes_in(&op.workdir())
            .is_empty()),
        "the resumed chain's agent never started"
    );
    srv.post(&format!("/api/chains/{id}/abort"), Value::Null)
        .await;
    srv.wait_status(&id, "aborted").await;
    srv.stop().await;
}

#[tokio::test]
async fn pause_resume_and_stop_work_like_the_signals() {
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "complete"]);
    let (st, _) = srv.post("/api/orchestrator/pause", Value::Null).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, s) = srv.get("/api/orchestrator/status").await;
    assert_eq!(s["mode"], "paused");
    let id = srv.start_chain("wait for it").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, c) = srv.get(&format!("/api/chains/{id}")).await;
    assert!(
        c["sessions"].as_array().unwrap().is_empty(),
        "a session started while paused: {c}"
    );
    let (st, _) = srv.post("/api/orchestrator/resume", Value::Null).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    srv.wait_status(&id, "complete").await;
    let (_, s) = srv.get("/api/orchestrator/status").await;
    assert_eq!(s["mode"], "running");
    assert!(s["running"].as_array().unwrap().is_empty());
    let status = srv.stop().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn missions_start_by_name_once_at_a_time_and_dry_run_shows_the_plan() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    op.write(
        "config/missions/pair.toml",
        "name = \"pair\"\ndescription = \"two chains\"\n[defaults]\nsim = { scenario = \"hang\" }\n\
         [[chain]]\nname = \"a\"\ntask = \"A\"\n[[chain]]\nname = \"b\"\ntask = \"B\"\n",
    );
    let srv = Server::start(&op, &[]);
    let (_, list) = srv.get("/api/missions").await;
    assert_eq!(list[0]["name"], "pair");
    assert_eq!(list[0]["chains"], 2);
    let (st, plan) = srv
        .post(
            "/api/orchestrator/start",
            json!({"mission": "pair", "dryRun": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{plan}");
    assert_eq!(plan["plan"][0]["chains"].as_array().unwrap().len(), 2);
    assert!(
        srv.get("/api/chains").await.1["chains"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a dry run created chains"
    );
    let (st, started) = srv
        .post(
            "/api/orchestrator/start",
            json!({"mission": "pair", "concurrency": 2, "model": "opus"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{started}");
    let ids: Vec<String> = started["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let c = srv.wait_status(id, "running").await;
        assert_eq!(c["config"]["model"], "opus");
        assert_eq!(c["mission"], "pair");
    }
    let (st, v) = srv
        .post("/api/orchestrator/start", json!({"mission": "pair"}))
        .await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::CONFLICT, "conflict"),
        "{v}"
    );
    let (_, s) = srv.get("/api/orchestrator/status").await;
    assert_eq!(s["running"].as_array().unwrap().len(), 2);
    assert_eq!(s["concurrency"]["pair"], 2);
    for id in &ids {
        let (st, _) = srv
            .post(&format!("/api/chains/{id}/abort"), Value::Null)
            .await;
        assert_eq!(st, StatusCode::ACCEPTED);
    }
    for id in &ids {
        srv.wait_status(id, "aborted").await;
    }
    // Once ended, the mission may start again.
    let (st, v) = srv
        .post("/api/orchestrator/start", json!({"mission": "pair"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    srv.stop().await;
}

#[tokio::test]
async fn run_with_serve_exposes_the_api_while_the_mission_runs() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    op.write(
        "config/missions/solo.toml",
        "name = \"solo\"\n[defaults]\nsim = { scenario = \"hang\" }\n[[chain]]\nname = \"a\"\ntask = \"A\"\n",
    );
    let mut srv = Server::start_with(&op, &["run", "solo", "--serve", "127.0.0.1:0"], &[]);
    let mut id = String::new();
    for _ in 0..600 {
        let (_, page) = srv.get("/api/chains").await;
        if let Some(i) = page["chains"][0]["id"].as_str() {
            id = i.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !id.is_empty(),
        "the mission's chain never showed: {}",
        srv.log()
    );
    srv.wait_status(&id, "running").await;
    let (st, _) = srv
        .post(&format!("/api/chains/{id}/abort"), Value::Null)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    // The run ends with its mission (no `stop` needed), with the aborted exit code.
    assert!(
        eventually(Duration::from_secs(30), || matches!(
            srv.child.try_wait(),
            Ok(Some(_))
        )),
        "{}",
        srv.log()
    );
    assert_eq!(srv.child.try_wait().unwrap().unwrap().code(), Some(5));
    assert!(!op.data_dir().join("api.addr").exists());
}

#[tokio::test]
async fn security_rules_are_enforced_request_by_request() {
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "complete"]);
    // The generated token is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(op.data_dir().join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(srv.token.len() >= 32);
    assert!(!srv.log().contains(&srv.token), "the token was logged");

    let anon = |m: Method, p: &str| srv.http.request(m, format!("{}{p}", srv.url));
    // Reads are open on loopback; writes need the token or the CSRF token.
    let (st, _) = Server::send(anon(Method::GET, "/api/chains")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = Server::send(anon(Method::POST, "/api/chains").json(&json!({"task": "t"}))).await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (st, v) = Server::send(
        anon(Method::POST, "/api/orchestrator/stop").bearer_auth("wrong-token-wrong-token"),
    )
    .await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (_, csrf) = Server::send(anon(Method::GET, "/api/csrf")).await;
    let csrf = csrf["csrfToken"].as_str().unwrap().to_string();
    let (st, v) = Server::send(
        anon(Method::POST, "/api/chains")
            .header("x-csrf-token", &csrf)
            .json(&json!({"task": "t"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, _) = Server::send(
        anon(Method::POST, "/api/chains")
            .header("x-csrf-token", "forged")
            .json(&json!({"task": "t"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Nothing from the API may widen the agent's permissions.
    let count = srv.get("/api/chains").await.1["chains"]
        .as_array()
        .unwrap()
        .len();
    for body in [
        json!({"task": "t", "permissionMode": "bypassPermissions"}),
        json!({"task": "t", "permission_mode": "default"}),
        json!({"task": "t", "workdir": "/"}),
        json!({"task": "t", "agent": "claude"}),
        json!({"task": "t", "claudeBin": "/bin/sh"}),
        json!({"task": "t", "permissions": {"allow": ["Bash"]}}),
        json!({"task": "t", "approvalTimeout": "10y"}),
    ] {
        let (st, v) = srv.post("/api/chains", body.clone()).await;
        assert_eq!(
            (st, error_code(&v).as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{body}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("command line"),
            "{v}"
        );
    }
    // A model name never becomes an option of the agent's command line.
    for model in ["--dangerously-skip-permissions", "-p", "sonnet --verbose"] {
        let (st, v) = srv
            .post("/api/chains", json!({"task": "t", "model": model}))
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{model}: {v}");
    }
    let (st, _) = srv
        .post(
            "/api/orchestrator/start",
            json!({"mission": "x", "permissionMode": "bypassPermissions"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(
        srv.get("/api/chains").await.1["chains"]
            .as_array()
            .unwrap()
            .len(),
        count
    );

    // DNS rebinding: a name that is not an IP literal, localhost or listed is refused.
    let (st, v) = Server::send(
        srv.req(Method::GET, "/api/chains")
            .header("host", "evil.example:3100"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DNS rebinding")
    );
    let (st, _) = Server::send(
        srv.req(Method::GET, "/api/chains")
            .header("host", "localhost"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // An authority with userinfo is not an IP literal, whatever it starts with.
    let (st, _) = Server::send(
        srv.req(Method::GET, "/api/chains")
            .header("host", "127.0.0.1:3221@evil.example"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Origin: another site may not even read, let alone write (the token does not help it).
    let (st, v) = Server::send(
        srv.req(Method::GET, "/api/chains")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, _) = Server::send(
        srv.req(Method::POST, "/api/orchestrator/pause")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // CORS: answered for a localhost page only.
    let pre = |origin: &str| {
        anon(Method::OPTIONS, "/api/chains")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let ok = pre("http://localhost:5173").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "http://localhost:5173"
    );
    let evil = pre("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    srv.stop().await;
}

#[tokio::test]
async fn binding_off_loopback_needs_a_token_and_then_every_read_needs_it() {
    let op = Op::new();
    // No token anywhere: the server refuses to start, and says how to fix it.
    let out = op.run(&["serve", "--listen", "0.0.0.0:0", "--agent", "sim"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("needs an API token") && err.contains("OPERATOR_API_TOKEN"),
        "{err}"
    );
    // A short token is refused too.
    let mut short = op.cmd(&["serve", "--listen", "0.0.0.0:0", "--agent", "sim"]);
    let out = short.env("OPERATOR_API_TOKEN", "short").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("too short"));

    let token = "a-long-enough-token-0123456789";
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "0.0.0.0:0", "--agent", "sim"],
        &[("OPERATOR_API_TOKEN", token)],
    );
    assert!(!srv.log().contains(token), "the token was logged");
    let url = srv.url.replace("0.0.0.0", "127.0.0.1");
    let http = reqwest::Client::new();
    let (st, v) = Server::send(http.get(format!("{url}/api/chains"))).await;
    assert_eq!(
        (st, error_code(&v).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (st, _) = Server::send(http.get(format!("{url}/api/health"))).await;
    assert_eq!(st, StatusCode::OK, "probes need no token");
    let (st, _) = Server::send(http.get(format!("{url}/api/chains")).bearer_auth(token)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = Server::send(
        http.post(format!("{url}/api/orchestrator/stop"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
}

/// The TCP connections to `port` that process `pid` has accepted: its socket descriptors whose
/// inode is a connection on that local port in /proc/net/tcp{,6}. (Counting every socket it holds
/// also counted its own unix sockets, which come and go: 258 seen for a cap of 256.) Connections
/// still in the kernel's accept queue belong to no process and are not counted.
fn accepted_connections(pid: u32, port: u16) -> usize {
    let mut on_port = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is `HEX_IP:HEX_PORT`, st `0A` is LISTEN, field 9 the inode.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && f.get(3) != Some(&"0A")
                && let Some(inode) = f.get(9)
            {
                on_port.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| on_port.contains(l.to_string_lossy().as_ref()))
            })
            .count()
    })
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(mut s: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for a minute"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_and_cannot_take_the_servers_descriptors() {
    use tokio::io::AsyncWriteExt;
    let op = Op::new();
    let srv = Server::start(&op, &[]);
    let addr = srv.url.trim_start_matches("http://").to_string();
    let pid = srv.child.id();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();

    // Headers that never end, sent slowly.
    let mut slow_head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow_head
        .write_all(format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    // A keep-alive connection left idle after its request.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A body that stops coming.
    let mut slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/chains HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"task\":",
        srv.token
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    // And more silent connections than the server holds at once.
    let mut silent = Vec::new();
    for _ in 0..operator::http::MAX_CONNECTIONS + 100 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = accepted_connections(pid, port);
    // It holds as many as it may (the count sees them), and no more.
    assert!(
        held > operator::http::MAX_CONNECTIONS / 2 && held <= operator::http::MAX_CONNECTIONS,
        "{held} sockets for {} connections",
        silent.len() + 3
    );

    let (head, idle, body) = tokio::join!(
        read_to_close(slow_head),
        read_to_close(idle),
        read_to_close(slow_body)
    );
    assert!(head.is_empty(), "{head}");
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    assert!(
        body.starts_with("HTTP/1.1 408") && body.contains("request_timeout"),
        "{body}"
    );
    // Once the silent ones are cut, the server answers again.
    let (st, _) = srv.get("/api/health").await;
    assert_eq!(st, StatusCode::OK);
    drop(silent);
}
