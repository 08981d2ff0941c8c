//! Property tests over generated input: the agents' stream parsers, the handoff parser and the
//! handoffs the operator writes (which must parse back to themselves), the dashboard's markdown,
//! mission and operator files, and the API's requests (its start body, and whole requests through
//! the real router). Each property takes 10,000 inputs per run (`PROPTEST_CASES` sets another
//! number: `PROPTEST_CASES=1000000 cargo test --release --test properties` is the long mode).
//! Inputs are built from the words each parser looks for, mixed with arbitrary text, so they reach
//! past the first check. A failure's seed is kept in `tests/properties.proptest-regressions` and
//! replayed first on every later run.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Map, Value, json};

/// 10,000 cases, or `PROPTEST_CASES`.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Words the parsers look for (the CLIs' line types and fields, handoff and config words).
const WORDS: &[&str] = &[
    "type",
    "subtype",
    "system",
    "init",
    "assistant",
    "user",
    "result",
    "success",
    "error",
    "error_during_execution",
    "message",
    "content",
    "text",
    "tool_use",
    "tool_result",
    "usage",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "total_cost_usd",
    "session_id",
    "is_error",
    "num_turns",
    "model",
    "id",
    "name",
    "input",
    "control_request",
    "control_response",
    "request",
    "request_id",
    "can_use_tool",
    "tool_name",
    "rate_limit_event",
    "rate_limit_info",
    "status",
    "rejected",
    "resetsAt",
    "stream_event",
    "delta",
    "thread.started",
    "thread_id",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "item.started",
    "item.completed",
    "item",
    "agent_message",
    "command_execution",
    "file_change",
    "cached_input_tokens",
    "init",
    "tool_call",
    "stats",
    "models",
    "tokens",
    "prompt",
    "candidates",
    "cached",
    "role",
    "api_error_status",
    "terminal_reason",
    "errors",
    "usage limit",
    "try again at 7:33 PM",
    "Quota exceeded",
    "Reconnecting... 1/5",
    "401",
    "## HANDOFF",
    "COMPLETE",
    "",
    " ",
    "\n",
    "\u{1b}[2J",
    "é",
    "日本",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u32..100_000).prop_map(|n| json!(n)),
    ]
}

/// JSON values whose keys and strings are mostly the parsers' words.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..7)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One line of an agent's stdout: mostly a JSON object with a `type`, sometimes anything.
fn stream_line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::sample::select(WORDS), json(), any::<bool>()).prop_map(|(t, v, typed)| {
            let mut o = match v {
                Value::Object(o) => o,
                other => Map::from_iter([("message".to_string(), other)]),
            };
            if typed {
                o.insert("type".into(), Value::String(t.to_string()));
            }
            Value::Object(o).to_string()
        }),
        1 => json().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => "[{}\\[\\]\",:0-9a-z ]{0,40}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn agent_stream_lines_never_panic_a_parser(line in stream_line()) {
        let _ = operator::agent::stream::parse_line(&line);
        let _ = operator::agent::codex::parse_line(&line);
        let _ = operator::agent::gemini::parse_line(&line);
    }
}

/// Lines a handoff is made of: headings in many spellings, fences, labels, list items, text.
const HANDOFF_LINES: &[&str] = &[
    "## HANDOFF",
    "## HANDOFF: COMPLETE",
    "# Handoff",
    "**HANDOFF**",
    "### Accomplished",
    "### Remaining",
    "### Context",
    "### Next steps",
    "**Accomplished:**",
    "Remaining:",
    "__Context__: see below",
    "Summary: did things",
    "```",
    "```text",
    "~~~",
    "````",
    "- item",
    "* item",
    "None",
    "n/a",
    "",
    "   ",
    "Wrote the parser and its tests, all green.",
];

fn handoff_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(HANDOFF_LINES).prop_map(str::to_string),
            1 => any::<String>(),
        ],
        0..30,
    )
    .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn handoff_parsing_never_panics_and_finds_a_block_it_can_parse_again(text in handoff_text()) {
        if let Some(h) = operator::handoff::parse(&text) {
            // The block found is a handoff in its own right: parsing it again finds the same.
            let again = operator::handoff::parse(&h.text);
            prop_assert_eq!(again.as_ref(), Some(&h), "block: {:?}", h.text);
            let _ = operator::handoff::validate(&h);
        }
        let _ = operator::handoff::extract(&text);
    }

    /// The handoff the operator writes when the agent wrote none parses back to itself, whatever
    /// the agent printed and whatever error the session ended with.
    #[test]
    fn a_synthetic_handoff_parses_back_to_itself(
        index in 1u32..10_000,
        reason in prop::sample::select(&["no handoff", "max turns", "the agent crashed", "timed out"][..]),
        error in proptest::option::of(handoff_text()),
        output in handoff_text(),
    ) {
        let h = operator::handoff::synthetic(index, reason, error.as_deref(), &output);
        let parsed = operator::handoff::parse(&h.text);
        prop_assert_eq!(parsed.as_ref(), Some(&h));
        prop_assert!(operator::handoff::validate(&h).is_ok());
    }

    /// What the dashboard renders from a handoff or a task is inert HTML.
    #[test]
    fn rendered_markdown_is_inert(text in prop_oneof![
        handoff_text(),
        prop::collection::vec(prop::sample::select(&[
            "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))",
            "<a href=\"javascript:x\">a</a>", "<iframe src=//evil>", "<svg onload=alert(1)>",
            "<style>*{}</style>", "```", "**b**", "# h", "\u{0}", "<", ">", "&",
        ][..]).prop_map(str::to_string), 0..12).prop_map(|v| v.concat()),
    ]) {
        let html = operator::web::markdown::render(&text).to_ascii_lowercase();
        // Escaped text (`&lt;script&gt;`) is inert; what matters is the tags themselves.
        for tag in html.split('<').skip(1).map(|t| t.split('>').next().unwrap_or("")) {
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').find(|n| !n.is_empty());
            prop_assert!(
                !matches!(name, Some("script" | "iframe" | "style" | "svg" | "object" | "embed")),
                "<{}> in {}", tag, html
            );
            prop_assert!(!tag.contains("javascript:"), "<{}> in {}", tag, html);
            let attrs = tag.split_whitespace().skip(1);
            prop_assert!(attrs.clone().all(|a| !a.starts_with("on")), "<{}> in {}", tag, html);
        }
    }
}

/// Values a configuration key may be given in TOML, good and bad.
const TOML_VALUES: &[&str] = &[
    "1",
    "0",
    "-1",
    "3",
    "99999999999",
    "1e309",
    "-0.0",
    "nan",
    "inf",
    "0.5",
    "true",
    "false",
    "\"\"",
    "\"1s\"",
    "\"30m\"",
    "\"forever\"",
    "\"584542046090y\"",
    "\"sonnet\"",
    "\"-x\"",
    "\"--dangerously-skip-permissions\"",
    "\"sim\"",
    "\"codx\"",
    "\"plan\"",
    "\"bypassPermissions\"",
    "\"complete\"",
    "\"Bash(rm:*)\"",
    "\"a b\"",
    "[]",
    "[\"1s\", \"2s\"]",
    "[1, \"x\"]",
    "[\"Bash(git:*)\", \"Edit\"]",
    "{}",
    "{ scenario = \"complete\" }",
    "\"\\u0000\"",
];

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(operator::config::keys::CHAIN_KEYS.to_vec()).prop_map(str::to_string),
        1 => "[a-z_]{1,12}",
        1 => Just("sim.step".to_string()),
    ]
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(TOML_VALUES).prop_map(str::to_string),
        1 => any::<String>().prop_map(|s| format!("{:?}", s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// A mission file: `[defaults]` and `[[chain]]` tables of generated keys, sometimes garbage.
fn mission_text() -> impl Strategy<Value = String> {
    let pairs = || prop::collection::vec((toml_key(), toml_value()), 0..6);
    let chain = (
        proptest::option::of("[a-z0-9_-]{0,10}"),
        proptest::option::of(word()),
        proptest::option::of(prop::collection::vec("[a-z]{1,3}", 0..3)),
        pairs(),
    )
        .prop_map(|(name, task, after, kv)| {
            let mut s = String::from("[[chain]]\n");
            if let Some(n) = name {
                s += &format!("name = {n:?}\n");
            }
            if let Some(t) = task {
                s += &format!("task = {t:?}\n");
            }
            if let Some(a) = after {
                s += &format!("after = {a:?}\n");
            }
            for (k, v) in kv {
                s += &format!("{k} = {v}\n");
            }
            s
        });
    prop_oneof![
        8 => (
            proptest::option::of(toml_value()),
            pairs(),
            prop::collection::vec(chain, 0..4),
        )
            .prop_map(|(concurrency, defaults, chains)| {
                let mut s = String::new();
                if let Some(c) = concurrency {
                    s += &format!("concurrency = {c}\n");
                }
                s += "[defaults]\n";
                for (k, v) in defaults {
                    s += &format!("{k} = {v}\n");
                }
                s + &chains.concat()
            }),
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A mission file and an operator.toml, whatever they hold, give a plan or errors that each
    /// name the file, never a panic.
    #[test]
    fn configuration_files_give_a_plan_or_errors_naming_the_file(
        mission in mission_text(),
        operator_file in mission_text(),
    ) {
        use operator::config::{Env, Overrides, load_operator};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let env = Env(
            [("OPERATOR_WORKDIR".to_string(), dir.path().join("work").display().to_string())]
                .into(),
        );
        let m = dir.path().join("m.toml");
        std::fs::write(&m, &mission).unwrap();
        let op = dir.path().join("operator.toml");
        std::fs::write(&op, &operator_file).unwrap();
        for file in [None, Some(op.as_path())] {
            match load_operator(file, &env, &Overrides::default()) {
                Ok(loaded) => match loaded.plan_for_mission(&m, &Overrides::default()) {
                    Ok(plan) => prop_assert!(!plan.chains.is_empty()),
                    Err(e) => {
                        prop_assert!(!e.0.is_empty());
                        prop_assert!(e.0.iter().all(|i| !i.message.is_empty()), "{}", e);
                    }
                },
                Err(e) => prop_assert!(e.0.iter().all(|i| i.file.is_some() && !i.message.is_empty()), "{}", e),
            }
        }
    }
}

/// Keys a start request may carry: the API's, the CLI-only ones in both spellings, others.
fn start_key() -> impl Strategy<Value = String> {
    use operator::api::chains::{API_SETTINGS, CLI_ONLY};
    prop_oneof![
        3 => prop::sample::select(API_SETTINGS).prop_map(|(k, _)| k.to_string()),
        2 => prop::sample::select(CLI_ONLY).prop_map(str::to_string),
        1 => prop::sample::select(CLI_ONLY).prop_map(|k| {
            k.chars().flat_map(|c| if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }).collect()
        }),
        2 => prop::sample::select(&["task", "name", "mission", "concurrency", "dryRun", "permissions"][..])
            .prop_map(str::to_string),
        1 => word(),
    ]
}

fn start_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => json(),
        1 => prop::sample::select(vec![
            "bypassPermissions".to_string(), "--dangerously-skip-permissions".into(), "sonnet".into(),
            "-m".into(), "opus 4".into(), "claude-opus-4-5@20250929".into(), "x".repeat(70_000),
        ]).prop_map(Value::String),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Nothing from the API widens what an agent may do: a start request that is accepted sets
    /// only the settings the API may set, with values that cannot become options of the agent.
    #[test]
    fn a_start_request_sets_only_what_the_api_may_set(
        body in prop::collection::vec((start_key(), start_value()), 0..8),
    ) {
        use operator::api::chains::{API_SETTINGS, parse_start};
        let body: Map<String, Value> = body.into_iter().collect();
        if let Ok(req) = parse_start(&body, &["task", "name"]) {
            for (key, value) in &req.overrides {
                prop_assert!(API_SETTINGS.iter().any(|(_, k)| k == key), "{key} was set");
                if key == "model" {
                    let m = value.as_str().unwrap_or("");
                    prop_assert!(operator::config::is_model_name(m), "model {m:?}");
                }
                prop_assert!(!value.to_string().contains("bypassPermissions"));
            }
            prop_assert!(req.task.as_ref().is_none_or(|t| t.len() <= operator::model::INPUT_LIMIT));
        }
    }
}

/// A whole request through the real router (in-process, on a real SQLite store).
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Req> {
    let segment = prop_oneof![
        4 => prop::sample::select(&[
            "api", "chains", "sessions", "output", "events", "costs", "orchestrator", "pause",
            "resume", "stop", "missions", "health", "csrf", "fleet", "approvals", "openapi.json",
            "metrics", "c-20261125-000001", "1", "0", "-1", "99999999999", "..", "%2e%2e", "%00",
            "ws", "chain", "mission", "static", "",
        ][..]).prop_map(str::to_string),
        1 => "[a-zA-Z0-9%._~-]{0,12}",
    ];
    let query = prop_oneof![
        3 => Just(String::new()),
        1 => prop::collection::vec(
            (prop::sample::select(&["offset", "limit", "cursor", "since", "status", "archived", "q"][..]),
             prop_oneof![Just("1".to_string()), Just("-1".to_string()), Just("99999999999999999999".to_string()),
                         Just("true".to_string()), "[a-z0-9%]{0,8}"]),
            1..4,
        ).prop_map(|kv| format!("?{}", kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))),
    ];
    let header = prop_oneof![
        prop_oneof![
            Just("127.0.0.1".to_string()),
            Just("localhost:3100".to_string()),
            Just("evil.example".to_string()),
            Just("127.0.0.1:3221@evil.example".to_string()),
            "[a-z0-9.:@\\[\\]-]{0,20}"
        ]
        .prop_map(|v| ("host", v)),
        prop_oneof![
            Just("http://127.0.0.1".to_string()),
            Just("https://evil.example".to_string()),
            Just("null".to_string())
        ]
        .prop_map(|v| ("origin", v)),
        prop_oneof![
            Just("application/json".to_string()),
            Just("text/plain".to_string()),
            Just("application/x-www-form-urlencoded".to_string())
        ]
        .prop_map(|v| ("content-type", v)),
        "[a-zA-Z0-9 ]{0,30}".prop_map(|v| ("authorization", v)),
        "[a-f0-9]{0,64}".prop_map(|v| ("x-csrf-token", v)),
    ];
    let body = prop_oneof![
        2 => Just(Vec::new()),
        3 => prop::collection::vec((start_key(), start_value()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()).to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (
        prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"][..]),
        prop::collection::vec(segment, 0..6),
        query,
        prop::collection::vec(header, 0..5),
        body,
    )
        .prop_map(|(method, segs, query, headers, body)| Req {
            method,
            path: format!("/{}{query}", segs.join("/")),
            headers,
            body,
        })
}

#[test]
fn requests_through_the_router_get_an_answer_never_a_panic_or_a_500() {
    use axum::body::Body;
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = rt.block_on(async {
        let store = operator::store::open(dir.path(), None, None).await.unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:3100".parse().unwrap();
        let security = operator::api::security::for_bind(addr, None, dir.path(), vec![]).unwrap();
        let state = operator::api::AppState {
            store: store.clone(),
            bus: operator::events::Bus::new(store),
            control: None,
            security: Arc::new(security),
            metrics: Arc::new(operator::metrics::Metrics::new()),
            data_dir: dir.path().to_path_buf(),
            started: std::time::Instant::now(),
            daily_cap_usd: None,
            missions_dir: dir.path().join("missions"),
        };
        operator::http::router(state)
    });
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&request(), |r| {
        let Ok(uri) = r.path.parse::<axum::http::Uri>() else {
            return Ok(());
        };
        let mut builder = axum::http::Request::builder().method(r.method).uri(uri);
        for (k, v) in &r.headers {
            builder = builder.header(*k, v.as_str());
        }
        let Ok(req) = builder.body(Body::from(r.body.clone())) else {
            return Ok(());
        };
        let (status, body) = rt.block_on(async {
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
                .await
                .unwrap();
            (status, body)
        });
        prop_assert!(status.as_u16() != 500, "{r:?}: {status} {body:?}");
        if status.is_client_error() && r.path.starts_with("/api/") && r.method != "HEAD" {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            prop_assert!(v["error"]["code"].is_string(), "{r:?}: {status} {body:?}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
