//! The dashboard: server-rendered pages (minijinja templates, auto-escaped), htmx and Pico CSS served from
//! the binary, live updates over the API's WebSocket. Pages only read (the store and the supervisor's
//! status); every action goes through the API with its security rules (the CSRF token is in each page).

pub mod chart;
pub mod markdown;
pub mod transcript;

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use minijinja::{Environment, context};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::chains::{find, parse_start};
use crate::api::error::ApiPath;
use crate::api::{ApiError, AppState, StartOutcome};
use crate::model::ChainRecord;
use crate::store::ChainQuery;

const HTMX: &[u8] = include_bytes!("assets/htmx-2.0.11.min.js");
const PICO: &[u8] = include_bytes!("assets/pico-2.1.1.min.css");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const APP_CSS: &[u8] = include_bytes!("assets/app.css");

/// Transcript bytes shown in the handoff viewer at most (the API pages through the rest).
const VIEWER_OUTPUT: u64 = 512 * 1024;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("home.html", include_str!("templates/home.html")),
    ("home_live.html", include_str!("templates/home_live.html")),
    ("chain.html", include_str!("templates/chain.html")),
    ("chain_live.html", include_str!("templates/chain_live.html")),
    ("handoff.html", include_str!("templates/handoff.html")),
    ("report.html", include_str!("templates/report.html")),
    ("missions.html", include_str!("templates/missions.html")),
    ("plan.html", include_str!("templates/plan.html")),
    (
        "orchestrator.html",
        include_str!("templates/orchestrator.html"),
    ),
    (
        "orchestrator_live.html",
        include_str!("templates/orchestrator_live.html"),
    ),
    ("login.html", include_str!("templates/login.html")),
];

/// The templates, parsed once. They are part of the binary, so a broken one is a bug caught by
/// the tests (every page is rendered in them), not an input error.
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = Environment::new();
        e.add_filter("money", |v: Option<f64>| format!("${:.2}", v.unwrap_or(0.0)));
        e.add_filter("truncate", |s: String, n: usize| {
            if s.chars().count() <= n {
                s
            } else {
                format!("{}…", s.chars().take(n).collect::<String>().trim_end())
            }
        });
        for (name, src) in TEMPLATES {
            if let Err(err) = e.add_template(name, src) {
                tracing::error!(template = name, cause = %err, "a dashboard template does not parse");
            }
        }
        e
    })
}

/// A page or fragment, or the error it ran into.
pub struct Page(Result<String, ApiError>);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let (status, body) = match self.0 {
            Ok(b) => (StatusCode::OK, b),
            Err(e) => {
                let status = e.status();
                if let ApiError::Internal(c) = &e {
                    tracing::error!(cause = %c, "a dashboard page failed");
                }
                let msg = e.to_string();
                let body = env()
                    .get_template("base.html")
                    .and_then(|_| {
                        env().render_str(
                            "{% extends \"base.html\" %}{% block content %}<h1>{{ status }}</h1><p class=\"reason\">{{ msg }}</p><p><a href=\"/\">Home</a></p>{% endblock %}",
                            context! { status => status.as_u16(), msg => msg, csrf => "", ws => "0" },
                        )
                    })
                    .unwrap_or(msg);
                (status, body)
            }
        };
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // No inline script can run, whatever a page contains.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        resp
    }
}

fn render(name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            let mut msg = format!("template {name}: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            ApiError::Internal(msg)
        })
}

/// The routes of the dashboard.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/fragments/home", get(home_fragment))
        .route("/chains/{id}", get(chain_page))
        .route("/fragments/chains/{id}", get(chain_fragment))
        .route("/chains/{id}/sessions/{idx}/handoff", get(handoff_page))
        .route("/chains/{id}/report", get(report_page))
        .route("/missions", get(missions_page))
        .route("/fragments/plan", get(plan_fragment))
        .route("/orchestrator", get(orchestrator_page))
        .route("/fragments/orchestrator", get(orchestrator_fragment))
        .route("/login", get(login_page).post(login))
        .route("/assets/{name}", get(asset))
}

async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    let (body, ty) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript"),
        "app.js" => (APP_JS, "text/javascript"),
        "pico.min.css" => (PICO, "text/css"),
        "app.css" => (APP_CSS, "text/css"),
        _ => return ApiError::NoRoute(format!("/assets/{name}")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn base(st: &AppState) -> minijinja::Value {
    context! { csrf => st.security.csrf(), ws => "1" }
}

fn money_row(c: &ChainRecord) -> Value {
    let max = c.config["max_continuations"].as_u64().unwrap_or(0) + 1;
    json!({
        "id": c.id, "name": c.name, "task": c.task, "status": c.status,
        "session": format!("{}/{max}", c.totals.sessions), "sessions": c.totals.sessions,
        "cost": c.totals.cost_usd,
    })
}

async fn status_json(st: &AppState) -> Value {
    match &st.control {
        Some(c) => match c.status().await {
            Ok(s) => serde_json::to_value(s).unwrap_or_default(),
            Err(_) => json!({"mode": "stopping", "running": [], "queued": [], "concurrency": {}}),
        },
        None => json!({"mode": "read-only", "running": [], "queued": [], "concurrency": {}}),
    }
}

async fn home_ctx(st: &AppState) -> Result<minijinja::Value, ApiError> {
    let chains = st
        .store
        .list_chains(&ChainQuery {
            limit: 200,
            ..Default::default()
        })
        .await?;
    let (active, ended): (Vec<_>, Vec<_>) = chains.iter().partition(|c| !c.status.is_terminal());
    // The merge queue: the branch landing first, then those waiting, in the order they joined
    // (their reason says since when).
    let mut queue: Vec<&ChainRecord> = chains
        .iter()
        .filter(|c| c.status == crate::model::ChainStatus::Merging)
        .collect();
    queue.sort_by_key(|c| {
        let landing = c
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("landing"));
        (!landing, c.reason.clone())
    });
    let mut costs = st.store.cost_report(10).await?;
    costs.daily_cap_usd = st.daily_cap_usd;
    let points: Vec<(String, f64)> = costs
        .by_day
        .iter()
        .map(|d| (d.day.clone(), d.cost.cost_usd))
        .collect();
    Ok(context! {
        status => status_json(st).await,
        costs => serde_json::to_value(&costs).unwrap_or_default(),
        active => active.iter().map(|c| money_row(c)).collect::<Vec<_>>(),
        recent => ended.iter().take(10).map(|c| money_row(c)).collect::<Vec<_>>(),
        queue => queue
            .iter()
            .map(|c| json!({"id": c.id, "name": c.name, "reason": c.reason}))
            .collect::<Vec<_>>(),
        chart => chart::bars(&points, "$"),
    })
}

async fn home(State(st): State<AppState>) -> Page {
    Page(match home_ctx(&st).await {
        Ok(ctx) => render("home.html", context! { ..base(&st), ..ctx }),
        Err(e) => Err(e),
    })
}

async fn home_fragment(State(st): State<AppState>) -> Page {
    Page(match home_ctx(&st).await {
        Ok(ctx) => render("home_live.html", ctx),
        Err(e) => Err(e),
    })
}

fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Events shown as the chain's retry, wait and error history.
fn is_history(kind: &str) -> bool {
    matches!(
        kind,
        "chain:session-retry"
            | "chain:waiting"
            | "chain:error"
            | "chain:restarted"
            | "chain:child-restarted"
            | "chain:budget-warning"
            | "chain:permissions-denied"
            | "chain:approval-answered"
            | "git:dirty"
            | "git:commit-failed"
            | "git:push-failed"
            | "git:pr-failed"
            | "git:error"
            | "notify:failed"
    )
}

async fn chain_ctx(st: &AppState, id: &str) -> Result<minijinja::Value, ApiError> {
    let chain = find(st, id).await?;
    let handoffs = st.store.handoffs(id).await?;
    let longest = chain
        .sessions
        .iter()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let sessions: Vec<Value> = chain
        .sessions
        .iter()
        .map(|s| {
            let h = handoffs.iter().find(|h| h.index == s.index);
            json!({
                "index": s.index, "status": s.status, "turns": s.turns, "costUsd": s.cost_usd,
                "attempts": s.attempts, "error": s.error.as_deref().map(|e| crate::redact::redact(e).into_owned()),
                "duration": human(s.duration_ms),
                "pct": (s.duration_ms as f64 / longest as f64 * 100.0).round().max(1.0),
                "handoff_html": h.map(|h| markdown::render(&h.text)).unwrap_or_default(),
            })
        })
        .collect();
    let history: Vec<Value> = st
        .store
        .events(Some(id), 0, 1000)
        .await?
        .into_iter()
        .filter(|e| is_history(&e.kind))
        .map(|e| {
            let detail = e.data["error"]
                .as_str()
                .or(e.data["reason"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| e.data.to_string());
            json!({"at": e.at, "kind": e.kind, "session": e.session_index,
                   "detail": crate::redact::redact(&detail).into_owned()})
        })
        .collect();
    let events = st.store.events(Some(id), 0, 100_000).await?;
    let decisions = |idx: u32| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e.kind == "session:permission" && e.session_index == Some(idx))
            .map(|e| e.data.clone())
            .collect()
    };
    let sessions: Vec<Value> = sessions
        .into_iter()
        .map(|mut s| {
            let idx = s["index"].as_u64().unwrap_or(0) as u32;
            s["permissions"] = Value::Array(decisions(idx));
            s
        })
        .collect();
    let approvals = crate::store::approvals::list(&*st.store, Some(id)).await?;
    let pending: Vec<&crate::permissions::Approval> = approvals
        .iter()
        .filter(|a| a.status == crate::permissions::ApprovalStatus::Pending)
        .collect();
    let model = chain.config["model"].as_str().unwrap_or("?").to_string();
    let active = !chain.status.is_terminal();
    // What `POST /api/chains/{id}/resume` takes: a chain that ended without succeeding.
    let resumable = chain.status.is_terminal() && !chain.status.is_success();
    let worker = st.store.holder(id).await?;
    Ok(
        context! { chain => chain, sessions => sessions, history => history, model => model, active => active, resumable => resumable, worker => worker, pending => pending, approvals => approvals },
    )
}

async fn chain_page(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> Page {
    Page(match chain_ctx(&st, &id).await {
        Ok(ctx) => render("chain.html", context! { ..base(&st), ..ctx }),
        Err(e) => Err(e),
    })
}

async fn chain_fragment(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> Page {
    Page(match chain_ctx(&st, &id).await {
        Ok(ctx) => render("chain_live.html", ctx),
        Err(e) => Err(e),
    })
}

async fn handoff_page(
    State(st): State<AppState>,
    ApiPath((id, idx)): ApiPath<(String, u32)>,
) -> Page {
    Page(handoff_inner(&st, &id, idx).await)
}

async fn handoff_inner(st: &AppState, id: &str, idx: u32) -> Result<String, ApiError> {
    let chain = find(st, id).await?;
    if !chain.sessions.iter().any(|s| s.index == idx) {
        return Err(ApiError::NotFound(format!(
            "chain `{id}` has no session {idx}"
        )));
    }
    let handoffs = st.store.handoffs(id).await?;
    let text = |i: u32| {
        handoffs
            .iter()
            .find(|h| h.index == i)
            .map(|h| h.text.clone())
    };
    let before = if idx > 1 {
        text(idx - 1).unwrap_or_else(|| "(no handoff)".into())
    } else {
        chain.task.clone()
    };
    let after = text(idx).unwrap_or_else(|| "(no handoff yet)".into());
    // The path comes from the stored chain's id and a number, never from request text.
    let path = crate::datadir::DataDir::new(&st.data_dir).transcript(&chain.id, idx);
    let output = transcript::read_readable(&path, VIEWER_OUTPUT).await;
    let has_next = chain.sessions.iter().any(|s| s.index == idx + 1);
    render(
        "handoff.html",
        context! { ..base(st), ..context! {
            chain => chain, index => idx, has_next => has_next,
            before => markdown::render(&before), after => markdown::render(&after),
            output => crate::redact::redact(&output).into_owned(),
        }},
    )
}

async fn report_page(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> Page {
    Page(
        async {
            let chain = find(&st, &id).await?;
            let handoffs: Vec<Value> = st
                .store
                .handoffs(&id)
                .await?
                .into_iter()
                .map(|h| json!({"index": h.index, "synthetic": h.synthetic, "html": markdown::render(&h.text)}))
                .collect();
            render(
                "report.html",
                context! { ..base(&st), ..context! { chain => chain, handoffs => handoffs } },
            )
        }
        .await,
    )
}

async fn missions_page(State(st): State<AppState>) -> Page {
    let dir = st.missions_dir.clone();
    let list = tokio::task::spawn_blocking(move || crate::api::orchestrator::list_missions(&dir))
        .await
        .unwrap_or_default();
    Page(render(
        "missions.html",
        context! { ..base(&st), ..context! {
            missions => list, dir => st.missions_dir.display().to_string(),
        }},
    ))
}

/// The launcher's form fields (strings from a query) as the JSON body the API takes.
pub fn form_to_body(q: &HashMap<String, String>) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in q {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let value = match k.as_str() {
            "autoPush" | "pullRequest" => Value::Bool(matches!(v, "on" | "true" | "1")),
            "concurrency" | "maxTurns" | "maxContinuations" => v
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
            "maxBudgetUsd" | "maxSessionCostUsd" => v
                .parse::<f64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
            _ => Value::String(v.to_string()),
        };
        m.insert(k.clone(), value);
    }
    m
}

async fn plan_fragment(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let result = async {
        let mut req = parse_start(&form_to_body(&q), &["mission", "concurrency", "dryRun"])?;
        req.dry_run = true;
        let control = st
            .control
            .as_ref()
            .ok_or_else(|| ApiError::Conflict("this server is read-only".into()))?;
        match control.start(req).await? {
            StartOutcome::Plan(v) => Ok(v),
            StartOutcome::Started(_) => Err(ApiError::Internal("a dry run started chains".into())),
        }
    }
    .await;
    Page(match result {
        Ok(plans) => render("plan.html", context! { plans => plans }),
        Err(e) => render("plan.html", context! { error => e.to_string() }),
    })
}

async fn orchestrator_ctx(st: &AppState) -> Result<minijinja::Value, ApiError> {
    let status = status_json(st).await;
    let named = |key: &str| {
        let ids: Vec<String> = status[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ids
    };
    let (running_ids, queued_ids) = (named("running"), named("queued"));
    let mut running = Vec::new();
    for id in running_ids {
        if let Some(c) = st.store.get_chain(&id).await? {
            running.push(json!({"id": c.id, "name": c.name, "status": c.status}));
        }
    }
    let mut queued = Vec::new();
    for id in queued_ids {
        if let Some(c) = st.store.get_chain(&id).await? {
            queued.push(json!({"id": c.id, "name": c.name}));
        }
    }
    let costs = st.store.cost_report(1).await?;
    let fleet = st.store.fleet().await?;
    Ok(context! {
        status => status, running => running, queued => queued,
        costs => serde_json::to_value(&costs).unwrap_or_default(),
        fleet => serde_json::to_value(&fleet).unwrap_or_default(),
    })
}

async fn orchestrator_page(State(st): State<AppState>) -> Page {
    Page(match orchestrator_ctx(&st).await {
        Ok(ctx) => render("orchestrator.html", context! { ..base(&st), ..ctx }),
        Err(e) => Err(e),
    })
}

async fn orchestrator_fragment(State(st): State<AppState>) -> Page {
    Page(match orchestrator_ctx(&st).await {
        Ok(ctx) => render("orchestrator_live.html", ctx),
        Err(e) => Err(e),
    })
}

async fn login_page(State(st): State<AppState>) -> Page {
    Page(render(
        "login.html",
        context! { ..base(&st), ..context! { failed => false, ws => "0" } },
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Signs a browser in on a non-loopback bind: the token becomes an `HttpOnly`, `SameSite=Strict`
/// cookie (writes still need the page's CSRF token).
async fn login(State(st): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    if !st.security.token_matches(f.token.trim()) {
        tracing::warn!("a dashboard sign-in with a wrong token");
        return Page(render(
            "login.html",
            context! { ..base(&st), ..context! { failed => true, ws => "0" } },
        ))
        .into_response();
    }
    let cookie = format!(
        "operator_token={}; HttpOnly; SameSite=Strict; Path=/",
        f.token.trim()
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(env().get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn launcher_fields_become_typed_json() {
        let q: HashMap<String, String> = [
            ("mission", "demo"),
            ("concurrency", "2"),
            ("autoPush", "on"),
            ("model", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let b = form_to_body(&q);
        assert_eq!(b["concurrency"], 2);
        assert_eq!(b["autoPush"], true);
        assert!(!b.contains_key("model"));
        assert!(parse_start(&b, &["mission", "concurrency", "dryRun"]).is_ok());
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(250), "250 ms");
        assert_eq!(human(61_000), "1 min 1 s");
        assert_eq!(human(7_260_000), "2 h 1 min");
    }
}
