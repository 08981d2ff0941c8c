//! `operator mcp` and `/mcp`: the MCP server driven by the SDK's own client over stdio, by raw
//! streamable HTTP requests (with and without the token, from a foreign Origin), and by the real
//! Claude Code CLI configured with `--mcp-config`, against a real `operator serve` on the sim agent.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::api::Server;
use common::fake_api::{FakeApi, Step};

use common::{Op, eventually};
use reqwest::StatusCode;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};

const MISSION: &str = r#"name = "pair"
description = "Two chains"
[defaults]
agent = "sim"
[[chain]]
name = "one"
task = "First task"
[[chain]]
name = "two"
task = "Second task"
after = ["one"]
"#;

/// A mission whose chain hangs (the operator's defaults say `complete`; a mission overrides them).
const STUCK: &str = r#"name = "stuck"
[defaults.sim]
scenario = "hang"
[[chain]]
name = "stuck"
task = "Hang until aborted"
"#;

type Client = RunningService<RoleClient, ()>;

/// `operator mcp` in `op`'s root, connected to the SDK's client.
async fn connect(op: &Op) -> (Client, tokio::process::Child) {
    let mut cmd = tokio::process::Command::from(op.cmd(&["mcp"]));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(op.root.path().join("mcp.log")).unwrap())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn operator mcp");
    let out = child.stdout.take().unwrap();
    let inp = child.stdin.take().unwrap();
    let client = ().serve((out, inp)).await.expect("MCP initialize");
    (client, child)
}

async fn call(c: &Client, name: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    c.call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A tool's successful answer, as JSON.
async fn ok(c: &Client, name: &str, args: Value) -> Value {
    let r = call(c, name, args).await;
    assert_ne!(r.is_error, Some(true), "{name} failed: {}", text(&r));
    let t = text(&r);
    serde_json::from_str(&t).unwrap_or(Value::String(t))
}

/// A tool's error message.
async fn err(c: &Client, name: &str, args: Value) -> String {
    let r = call(c, name, args).await;
    assert_eq!(r.is_error, Some(true), "{name} succeeded: {}", text(&r));
    text(&r)
}

#[tokio::test]
async fn the_sdks_client_calls_every_tool_over_stdio() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config/missions")).unwrap();
    op.write("config/missions/pair.toml", MISSION);
    op.write("config/missions/stuck.toml", STUCK);
    op.write(
        "config/operator.toml",
        "[defaults.sim]\nscenario = \"complete\"\n",
    );
    let srv = Server::start_with(
        &op,
        &["serve", "--listen", "127.0.0.1:0", "--agent", "sim"],
        &[],
    );
    let (c, _child) = connect(&op).await;

    // Tools, with schemas generated from the code.
    let tools = c.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "abort_chain",
            "answer_approval",
            "costs",
            "get_handoff",
            "get_output_tail",
            "list_approvals",
            "list_chains",
            "list_missions",
            "pause",
            "plan_mission",
            "resume",
            "resume_chain",
            "show_chain",
            "start_chain",
            "start_mission",
            "status",
            "stop"
        ]
    );
    for t in &tools {
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 30),
            "{} has no description",
            t.name
        );
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
    }
    let start = tools.iter().find(|t| t.name == "start_chain").unwrap();
    let props = start.input_schema["properties"].as_object().unwrap();
    assert_eq!(start.input_schema["required"], json!(["task"]));
    assert!(
        props["task"]["description"]
            .as_str()
            .unwrap()
            .contains("task")
    );
    assert!(!props.contains_key("permission_mode") && !props.contains_key("workdir"));

    // Reads and a start.
    assert_eq!(ok(&c, "list_chains", json!({})).await["chains"], json!([]));
    let started = ok(
        &c,
        "start_chain",
        json!({"task": "Say hello", "name": "hello"}),
    )
    .await;
    let id = started["id"]
        .as_str()
        .expect("the new chain's id")
        .to_string();
    srv.wait_status(&id, "complete").await;
    let shown = ok(&c, "show_chain", json!({"chain_id": id})).await;
    assert_eq!(
        (shown["status"].as_str(), shown["name"].as_str()),
        (Some("complete"), Some("hello"))
    );
    let handoff = ok(&c, "get_handoff", json!({"chain_id": id})).await;
    let handoff = handoff.as_str().unwrap();
    assert!(
        handoff.starts_with(&format!("<!-- chain {id}, session 1")),
        "{handoff}"
    );
    assert_eq!(
        ok(&c, "get_handoff", json!({"chain_id": id, "session": 1}))
            .await
            .as_str(),
        Some(handoff)
    );
    let tail = ok(
        &c,
        "get_output_tail",
        json!({"chain_id": id, "bytes": 2000}),
    )
    .await;
    assert!(
        tail.as_str()
            .unwrap()
            .starts_with(&format!("chain {id}, session 1 (ended;")),
        "{tail}"
    );
    let costs = ok(&c, "costs", json!({})).await;
    assert!(
        costs["forecast"].is_array() && costs["allTime"]["sessions"] == 1,
        "{costs}"
    );
    assert_eq!(ok(&c, "status", json!({})).await["mode"], "running");
    let missions = ok(&c, "list_missions", json!({})).await;
    assert_eq!(missions[0]["name"], "pair");
    let plan = ok(&c, "plan_mission", json!({"mission": "pair"})).await;
    assert!(plan.to_string().contains("Second task"), "{plan}");
    assert_eq!(
        ok(&c, "list_chains", json!({})).await["chains"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a plan starts nothing"
    );
    let mission = ok(&c, "start_mission", json!({"mission": "pair"})).await;
    let ids: Vec<String> = mission["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{mission}");
    for i in &ids {
        srv.wait_status(i, "complete").await;
    }
    let listed = ok(&c, "list_chains", json!({"mission": "pair"})).await;
    assert_eq!(listed["chains"].as_array().unwrap().len(), 2, "{listed}");
    let listed = ok(
        &c,
        "list_chains",
        json!({"since": "1h", "status": "complete"}),
    )
    .await;
    assert_eq!(listed["chains"].as_array().unwrap().len(), 3, "{listed}");
    let listed = ok(
        &c,
        "list_chains",
        json!({"since": "2000-01-01", "limit": 1}),
    )
    .await;
    assert_eq!(
        (listed["chains"].as_array().unwrap().len(), &listed["more"]),
        (1, &json!(true))
    );
    assert_eq!(
        ok(&c, "list_approvals", json!({"chain_id": id})).await,
        json!([])
    );

    // Writes that the API refuses come back as tool errors with the API's message.
    let e = err(
        &c,
        "answer_approval",
        json!({"chain_id": id, "approval_id": "ap-00ff", "decision": "approve"}),
    )
    .await;
    assert!(e.contains("ap-00ff"), "{e}");
    let e = err(&c, "abort_chain", json!({"chain_id": id})).await;
    assert_eq!(e, format!("chain `{id}` already ended (complete)"));
    let e = err(&c, "resume_chain", json!({"chain_id": id})).await;
    assert!(e.contains("complete"), "{e}");
    let e = err(
        &c,
        "start_chain",
        json!({"task": "t", "permission_mode": "bypassPermissions"}),
    )
    .await;
    assert!(e.contains("can only be set on the command line"), "{e}");
    let e = err(
        &c,
        "start_chain",
        json!({"task": "t", "model": "--dangerously-skip-permissions"}),
    )
    .await;
    assert!(e.contains("`model` has an invalid value"), "{e}");
    let e = err(&c, "start_chain", json!({"task": "t", "workdir": "/"})).await;
    assert!(e.contains("workdir"), "{e}");
    let e = err(&c, "start_mission", json!({"mission": "../../etc/passwd"})).await;
    assert!(e.contains("mission file"), "{e}");
    let e = err(
        &c,
        "show_chain",
        json!({"chain_id": "../orchestrator/stop"}),
    )
    .await;
    assert!(e.contains("is not a chain id"), "{e}");
    let e = err(&c, "show_chain", json!({"chain_id": "c-20200101-000000"})).await;
    assert_eq!(e, "no chain `c-20200101-000000`");
    let e = err(&c, "list_chains", json!({"since": "yesterday"})).await;
    assert!(e.contains("`since` is `yesterday`"), "{e}");
    // Bad arguments: the schema's types and names.
    let e = err(&c, "list_chains", json!({"bogus": 1})).await;
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = err(
        &c,
        "get_handoff",
        json!({"chain_id": id, "session": "first"}),
    )
    .await;
    assert!(e.contains("invalid type"), "{e}");
    assert!(
        c.call_tool(CallToolRequestParams::new("rm_rf"))
            .await
            .is_err(),
        "an unknown tool is a protocol error"
    );

    // Resources: the handoffs and a report.
    let templates = c.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "operator://chains/{chain_id}/handoffs/{session}")
    );
    let listed = c.list_all_resources().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r.uri == format!("operator://chains/{id}/report"))
    );
    let read = |uri: String| {
        let c = &c;
        async move {
            let r = c
                .read_resource(ReadResourceRequestParams::new(uri.clone()))
                .await
                .unwrap_or_else(|e| panic!("{uri}: {e}"));
            serde_json::to_value(&r.contents[0]).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(
        read(format!("operator://chains/{id}/handoffs/1")).await,
        handoff
    );
    let report = read(format!("operator://chains/{id}/report")).await;
    assert!(
        report.starts_with(&format!("# Chain {id} (hello)")) && report.contains(handoff),
        "{report}"
    );
    assert!(
        c.read_resource(ReadResourceRequestParams::new("file:///etc/passwd"))
            .await
            .is_err()
    );

    // A chain that hangs: aborted, resumed and aborted again through MCP.
    let stuck = ok(&c, "start_mission", json!({"mission": "stuck"})).await;
    let sid = stuck["chains"][0]
        .as_str()
        .expect("the stuck chain")
        .to_string();
    srv.wait_status(&sid, "running").await;
    let acked = ok(&c, "abort_chain", json!({"chain_id": sid})).await;
    assert_eq!(acked["state"], "aborting", "{acked}");
    srv.wait_status(&sid, "aborted").await;
    let acked = ok(&c, "resume_chain", json!({"chain_id": sid})).await;
    assert_eq!(acked["state"], "resuming", "{acked}");
    srv.wait_chain(&sid, "running its second session", |v| {
        v["status"] == "running" && v["sessions"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await;
    ok(&c, "abort_chain", json!({"chain_id": sid})).await;
    srv.wait_status(&sid, "aborted").await;
    let (_, events) = srv.get(&format!("/api/chains/{sid}/events")).await;
    let steered: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "operator:request")
        .map(|e| &e["data"]["action"])
        .collect();
    assert_eq!(
        steered,
        [
            &json!("start_mission"),
            &json!("abort_chain"),
            &json!("resume_chain"),
            &json!("abort_chain")
        ],
        "{events}"
    );

    // Pause and resume, journaled as MCP's.
    assert_eq!(ok(&c, "pause", json!({})).await["state"], "paused");
    assert_eq!(ok(&c, "status", json!({})).await["mode"], "paused");
    assert_eq!(ok(&c, "resume", json!({})).await["state"], "resumed");
    let (_, events) = srv.get(&format!("/api/chains/{id}/events")).await;
    let requests: Vec<&Value> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "operator:request")
        .collect();
    assert_eq!(requests.len(), 1, "{events}");
    assert_eq!(
        requests[0]["data"],
        json!({"action": "start_chain", "origin": "mcp"})
    );

    // Stop through MCP; then, with no operator, the read tools read the data dir.
    assert_eq!(ok(&c, "stop", json!({})).await["state"], "stopping");
    let mut srv = srv;
    assert!(
        eventually(Duration::from_secs(30), || matches!(
            srv.child.try_wait(),
            Ok(Some(_))
        )),
        "{}",
        srv.log()
    );
    let listed = ok(&c, "list_chains", json!({})).await;
    assert_eq!(listed["chains"].as_array().unwrap().len(), 4, "{listed}");
    assert_eq!(
        ok(&c, "get_handoff", json!({"chain_id": id}))
            .await
            .as_str(),
        Some(handoff)
    );
    let e = err(&c, "start_chain", json!({"task": "t"})).await;
    assert!(
        e.starts_with("no operator runs on /") && e.contains("`operator serve`"),
        "{e}"
    );
    // The journal says who stopped and paused the operator.
    let store = op.store().await;
    let all = operator::store::Store::events(&store, None, 0, 1000)
        .await
        .unwrap();
    let mine: Vec<(String, String)> = all
        .iter()
        .filter(|e| e.kind == "operator:request")
        .map(|e| {
            (
                e.data["action"].as_str().unwrap().to_string(),
                e.data["origin"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for a in [
        "start_chain",
        "start_mission",
        "plan_mission",
        "pause",
        "resume",
        "stop",
    ] {
        assert!(
            mine.contains(&(a.to_string(), "mcp".to_string())),
            "{a} not journaled: {mine:?}"
        );
    }
    c.cancel().await.unwrap();
}

/// One JSON-RPC message POSTed to `/mcp`: the status, the session id it gave, and the answer
/// (the JSON-RPC response from the event stream, or the error body).
async fn rpc(
    url: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    session: Option<&str>,
    msg: Value,
) -> (StatusCode, Option<String>, Value) {
    let mut rb = reqwest::Client::new()
        .post(format!("{url}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&msg);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(s) = session {
        rb = rb.header("mcp-session-id", s);
    }
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.expect("POST /mcp");
    let status = resp.status();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    let answer = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .or_else(|| serde_json::from_str(&body).ok())
        .unwrap_or(Value::String(body));
    (status, sid, answer)
}

/// initialize + initialized; the session id.
async fn open_session(url: &str, token: Option<&str>) -> String {
    let (st, sid, v) = rpc(url, token, &[], None, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "operator", "{v}");
    let sid = sid.expect("a session id");
    let (st, _, _) = rpc(
        url,
        token,
        &[],
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(st.is_success(), "{st}");
    sid
}

fn tool_call(id: u32, name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}})
}

#[tokio::test]
async fn mcp_over_http_needs_the_token_off_loopback_and_refuses_foreign_origins() {
    let op = Op::new();
    let token = "a-long-enough-token-0123456789";
    let mut srv = Server::start_with(
        &op,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--agent",
            "sim",
            "--scenario",
            "complete",
        ],
        &[("OPERATOR_API_TOKEN", token)],
    );
    srv.token = token.to_string();
    let url = srv.url.replace("0.0.0.0", "127.0.0.1");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});

    // Without the token, or with a wrong one: refused before MCP sees anything.
    let (st, _, v) = rpc(&url, None, &[], None, init.clone()).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{v}"
    );
    let (st, _, _) = rpc(
        &url,
        Some("wrong-token-0123456789"),
        &[],
        None,
        init.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // From a foreign page, even with the token.
    let (st, _, v) = rpc(
        &url,
        Some(token),
        &[("origin", "https://evil.example")],
        None,
        init.clone(),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cross-origin"),
        "{v}"
    );
    let (st, _, _) = reqwest::Client::new()
        .get(format!("{url}/mcp"))
        .send()
        .await
        .map(|r| (r.status(), (), ()))
        .unwrap();
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a GET without the token is no page to sign in to"
    );

    // With it: the same tools as on stdio.
    let sid = open_session(&url, Some(token)).await;
    let (st, _, v) = rpc(
        &url,
        Some(token),
        &[],
        Some(&sid),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["result"]["tools"].as_array().map(Vec::len),
        Some(17),
        "{v}"
    );
    let (_, _, v) = rpc(
        &url,
        Some(token),
        &[],
        Some(&sid),
        tool_call(3, "start_chain", json!({"task": "Over HTTP"})),
    )
    .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    let started: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    srv.wait_status(&id, "complete").await;
    let (_, _, v) = rpc(
        &url,
        Some(token),
        &[],
        Some(&sid),
        tool_call(4, "list_chains", json!({})),
    )
    .await;
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains(&id), "{v}");
    let (_, _, v) = rpc(
        &url,
        Some(token),
        &[],
        Some(&sid),
        tool_call(5, "show_chain", json!({"chain_id": "nope/../x"})),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    let (_, events) = srv.get(&format!("/api/chains/{id}/events")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "operator:request" && e["data"]["origin"] == "mcp"),
        "{events}"
    );
    drop(srv);

    // On a loopback bind reads need no token, and a write tool without it is refused as an API
    // write is.
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "complete"]);
    let sid = open_session(&srv.url, None).await;
    let (_, _, v) = rpc(
        &srv.url,
        None,
        &[],
        Some(&sid),
        tool_call(2, "list_chains", json!({})),
    )
    .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    let (_, _, v) = rpc(
        &srv.url,
        None,
        &[],
        Some(&sid),
        tool_call(3, "start_chain", json!({"task": "t"})),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("needs the API token"),
        "{v}"
    );
    let (_, _, v) = rpc(
        &srv.url,
        Some(&srv.token),
        &[],
        Some(&sid),
        tool_call(4, "start_chain", json!({"task": "t"})),
    )
    .await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    let (_, _, v) = rpc(
        &srv.url,
        Some(&srv.token),
        &[("origin", "http://localhost:5173")],
        Some(&sid),
        tool_call(5, "status", json!({})),
    )
    .await;
    assert_eq!(
        v["result"]["isError"], false,
        "a localhost page may read, as with the API: {v}"
    );
}

/// The real Claude Code CLI, as a user configures it (`--mcp-config` naming `operator mcp`), told
/// by the fake Messages API to list the chains and then start one: the chain runs and completes
/// on the operator, and the CLI sends each tool's result back to the model.
#[tokio::test]
async fn claude_code_lists_and_starts_a_chain_through_operator_mcp() {
    let Some(claude) = common::cli::claude_bin() else {
        return;
    };
    let op = Op::new();
    let srv = Server::start(&op, &["--scenario", "complete"]);
    let api = FakeApi::start(
        vec![
            // MCP tools are deferred: the model first fetches their schemas.
            Step::tool(
                "ToolSearch",
                json!({"query": "select:mcp__operator__list_chains,mcp__operator__start_chain", "max_results": 5}),
            ),
            Step::tool("mcp__operator__list_chains", json!({})),
            Step::tool(
                "mcp__operator__start_chain",
                json!({"task": "Write HELLO.md", "name": "from-claude"}),
            ),
            Step::text("I started the chain."),
        ],
        Step::text("Nothing more to do."),
    )
    .await;
    let config = op.write(
        "mcp.json",
        &json!({"mcpServers": {"operator": {
            "command": common::BIN, "args": ["mcp"],
            "env": {"OPERATOR_DATA_DIR": op.data_dir()}
        }}})
        .to_string(),
    );
    let home = op.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = std::process::Command::new(&claude);
    cmd.current_dir(op.root.path())
        .args([
            "-p",
            "List my operator chains, then start one that writes HELLO.md",
        ])
        .arg("--mcp-config")
        .arg(&config)
        .args([
            "--strict-mcp-config",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .args([
            "--allowedTools",
            "mcp__operator__list_chains,mcp__operator__start_chain",
        ])
        .env("ANTHROPIC_BASE_URL", &api.url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "2")
        .env("HOME", &home)
        .env_remove("CLAUDECODE")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OPERATOR_") {
            cmd.env_remove(k);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run claude");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "claude failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let reqs = api.scripted();
    assert_eq!(reqs.len(), 4, "{stdout}");
    // The CLI told the model of our tools (deferred: by name, until it asks for them).
    assert!(
        reqs[0].to_string().contains("mcp__operator__start_chain"),
        "{}",
        reqs[0]
    );
    // Each tool's result went back to the model in the next request.
    let results = |r: &Value| -> String {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["type"] == "tool_result")
            .map(|c| c["content"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        results(&reqs[1]).contains("mcp__operator__start_chain"),
        "{}",
        results(&reqs[1])
    );
    // From then on the requests carry the tools with the schemas generated from our code.
    let tools = reqs[2]["tools"].as_array().expect("tools");
    let start = tools
        .iter()
        .find(|t| t["name"] == "mcp__operator__start_chain")
        .unwrap_or_else(|| panic!("start_chain's schema was not loaded: {}", reqs[2]["tools"]));
    assert_eq!(
        start["input_schema"]["required"],
        json!(["task"]),
        "{start}"
    );
    assert!(
        start["input_schema"]["properties"]["task"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("What the chain should do")),
        "{start}"
    );
    assert!(
        results(&reqs[2]).contains(r#"\"chains\": []"#),
        "{}",
        results(&reqs[2])
    );
    // The chain it started runs on the operator and completes.
    let (_, page) = srv.get("/api/chains").await;
    let chains = page["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{page}");
    assert_eq!(chains[0]["name"], "from-claude");
    let id = chains[0]["id"].as_str().unwrap();
    assert!(results(&reqs[3]).contains(id), "{}", results(&reqs[3]));
    srv.wait_status(id, "complete").await;
    let (_, events) = srv.get(&format!("/api/chains/{id}/events")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "operator:request"
                && e["data"] == json!({"action": "start_chain", "origin": "mcp"})),
        "{events}"
    );
}
