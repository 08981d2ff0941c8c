//! `/api/orchestrator/*`, `/api/costs`, `/api/missions`, `/api/health`, `/api/csrf` and `/metrics`: the
//! supervisor as a whole.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::chains::parse_start;
use super::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::{AppState, OperatorStatus, StartOutcome};
use crate::signals::SignalEvent;
use crate::store::CostReport;

/// A body that may be absent; when present it must be JSON.
fn optional_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "expected a JSON body (Content-Type: application/json)".into(),
        });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Unprocessable(format!("invalid body: {e}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostsQuery {
    /// Chains listed in `byChain`, most expensive first (default 50, at most 500).
    limit: Option<u32>,
}

/// The fleet sharing the store (PostgreSQL): its workers with their last heartbeat, capacity
/// and load, and which worker holds each chain that is not over. `shared: false` on SQLite.
#[utoipa::path(get, path = "/api/fleet", tag = "operator",
    responses((status = 200, body = crate::store::Fleet)))]
pub async fn fleet(State(st): State<AppState>) -> ApiResult<axum::Json<crate::store::Fleet>> {
    Ok(axum::Json(st.store.fleet().await?))
}

/// Spending today (UTC), all time, per model, per chain and per day (last 30 days).
#[utoipa::path(get, path = "/api/costs", tag = "operator", params(CostsQuery),
    responses((status = 200, body = CostReport)))]
pub async fn costs(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<CostsQuery>,
) -> ApiResult<axum::Json<CostReport>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("`limit` must be from 1 to 500".into()));
    }
    let mut report = st.store.cost_report(limit).await?;
    report.daily_cap_usd = st.daily_cap_usd;
    Ok(axum::Json(report))
}

/// What the supervisor runs, queues, and how (mode, concurrency, daily cap).
#[utoipa::path(get, path = "/api/orchestrator/status", tag = "operator",
    responses((status = 200, body = OperatorStatus), (status = 409, body = ErrorBody)))]
pub async fn status(State(st): State<AppState>) -> ApiResult<axum::Json<OperatorStatus>> {
    Ok(axum::Json(st.control()?.status().await?))
}

/// Body of `POST /api/orchestrator/start`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StartMissionBody {
    /// The mission's name (its file in config/missions/, without `.toml`).
    mission: String,
    model: Option<String>,
    max_turns: Option<u32>,
    max_continuations: Option<u32>,
    max_budget_usd: Option<f64>,
    max_session_cost_usd: Option<f64>,
    auto_push: Option<bool>,
    pull_request: Option<bool>,
    /// Chains of the mission at once (default: the mission's own).
    concurrency: Option<u32>,
    /// Only return the plan.
    dry_run: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    /// Ids of the chains created (none for a dry run).
    pub chains: Vec<String>,
    /// The plan, for a dry run.
    pub plan: Option<Value>,
}

/// Start a mission by name, with its own settings (a few may be overridden).
#[utoipa::path(post, path = "/api/orchestrator/start", tag = "operator", request_body = StartMissionBody,
    responses((status = 201, body = StartResponse), (status = 200, description = "a dry run", body = StartResponse),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn start(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(
    StatusCode,
    axum::Extension<super::journal::Created>,
    axum::Json<StartResponse>,
)> {
    let req = parse_start(&body, &["mission", "concurrency", "dryRun"])?;
    if req.mission.is_none() {
        return Err(ApiError::Unprocessable("`mission` is required".into()));
    }
    Ok(match st.control()?.start(req).await? {
        StartOutcome::Started(chains) => (
            StatusCode::CREATED,
            axum::Extension(super::journal::Created(chains.clone())),
            axum::Json(StartResponse { chains, plan: None }),
        ),
        StartOutcome::Plan(plan) => (
            StatusCode::OK,
            axum::Extension(super::journal::Created(Vec::new())),
            axum::Json(StartResponse {
                chains: Vec::new(),
                plan: Some(plan),
            }),
        ),
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModeAck {
    /// `stopping`, `paused`, `resumed`.
    pub state: String,
}

/// Stop the operator gracefully (as SIGTERM): running sessions write their handoff, chains are
/// left resumable, the process exits.
#[utoipa::path(post, path = "/api/orchestrator/stop", tag = "operator",
    responses((status = 202, body = ModeAck), (status = 409, body = ErrorBody)))]
pub async fn stop(State(st): State<AppState>) -> ApiResult<(StatusCode, axum::Json<ModeAck>)> {
    st.control()?.signal(SignalEvent::Stop).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(ModeAck {
            state: "stopping".into(),
        }),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// Interrupt running sessions now (each writes its handoff) instead of letting them finish.
    #[serde(default)]
    now: bool,
}

/// Pause (as SIGUSR1, or `operator pause --now` with `{"now": true}`): no new session starts.
#[utoipa::path(post, path = "/api/orchestrator/pause", tag = "operator", request_body(content = PauseBody, description = "optional"),
    responses((status = 202, body = ModeAck), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, axum::Json<ModeAck>)> {
    let b: PauseBody = optional_json(&headers, &body)?;
    let control = st.control()?;
    if b.now {
        st.store.set_flag("pause_request", Some("now")).await?;
    }
    control.signal(SignalEvent::Pause).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(ModeAck {
            state: "paused".into(),
        }),
    ))
}

/// Resume a paused operator (as SIGUSR2).
#[utoipa::path(post, path = "/api/orchestrator/resume", tag = "operator",
    responses((status = 202, body = ModeAck), (status = 409, body = ErrorBody)))]
pub async fn resume(State(st): State<AppState>) -> ApiResult<(StatusCode, axum::Json<ModeAck>)> {
    st.control()?.signal(SignalEvent::Resume).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(ModeAck {
            state: "resumed".into(),
        }),
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissionInfo {
    pub name: String,
    pub description: Option<String>,
    pub chains: usize,
    /// Why the file cannot be read, if it cannot.
    pub error: Option<String>,
}

/// The mission files that `POST /api/orchestrator/start` can start.
#[utoipa::path(get, path = "/api/missions", tag = "operator",
    responses((status = 200, body = [MissionInfo])))]
pub async fn missions(State(st): State<AppState>) -> ApiResult<axum::Json<Vec<MissionInfo>>> {
    let dir = st.missions_dir.clone();
    let list = tokio::task::spawn_blocking(move || list_missions(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(list))
}

pub fn list_missions(dir: &std::path::Path) -> Vec<MissionInfo> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !crate::model::is_valid_chain_id(name) {
            continue;
        }
        let parsed = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|s| s.parse::<toml::Table>().map_err(|e| e.to_string()));
        out.push(match parsed {
            Ok(t) => MissionInfo {
                name: name.to_string(),
                description: t
                    .get("description")
                    .and_then(|d| d.as_str())
                    .map(str::to_string),
                chains: t
                    .get("chain")
                    .and_then(|c| c.as_array())
                    .map_or(0, Vec::len),
                error: None,
            },
            Err(e) => MissionInfo {
                name: name.to_string(),
                description: None,
                chains: 0,
                error: Some(e),
            },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, or `degraded` when the store does not answer.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
}

/// Liveness and the store's health; open to probes (no token needed).
#[utoipa::path(get, path = "/api/health", tag = "operator",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(State(st): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    let ok = st.store.get_flag("paused").await.is_ok();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        axum::Json(Health {
            status: if ok { "ok" } else { "degraded" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: st.started.elapsed().as_secs(),
        }),
    )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Csrf {
    /// Send as `X-CSRF-Token` with state-changing requests made without the API token.
    pub csrf_token: String,
}

/// The CSRF token of this server (readable only by same-origin and localhost pages).
#[utoipa::path(get, path = "/api/csrf", tag = "operator", responses((status = 200, body = Csrf)))]
pub async fn csrf(State(st): State<AppState>) -> axum::Json<Csrf> {
    axum::Json(Csrf {
        csrf_token: st.security.csrf().to_string(),
    })
}

/// Prometheus metrics (OpenMetrics text): chains by state, sessions by outcome, retries,
/// breaker openings, restarts, cost, session durations.
#[utoipa::path(get, path = "/metrics", tag = "operator",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = st.store.count_by_status().await?;
    let text = st
        .metrics
        .render(&counts)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missions_are_listed_by_name_with_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "description = \"x\"\n[[chain]]\nname = \"one\"\ntask = \"t\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.toml"), "this is not toml = = \n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let l = list_missions(dir.path());
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].name.as_str(), l[0].chains), ("a", 1));
        assert!(l[1].error.is_some());
    }
}
