//! The HTTP API (axum): REST under `/api`, live events on `/ws`, Prometheus on `/metrics`, an OpenAPI
//! document generated from the handlers at `/api/openapi.json`, all behind one security guard.
//!
//! The API never talks to actors directly: it reads the store and steers the supervisor through
//! the [`Control`] trait, which the daemon implements with the same code paths as the signals.

pub mod approvals;
pub mod chains;
pub mod error;
pub mod journal;
pub mod orchestrator;
pub mod security;
pub mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::Router;
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::Bus;
use crate::metrics::Metrics;
use crate::signals::SignalEvent;
use crate::store::SharedStore;
pub use error::{ApiError, ApiResult};
pub use security::Security;

/// The largest request body accepted: the same as a mission file's.
pub const BODY_LIMIT: usize = crate::model::INPUT_LIMIT;

/// What the API asks of the supervisor it runs in.
#[async_trait]
pub trait Control: Send + Sync {
    async fn status(&self) -> Result<OperatorStatus, ControlError>;
    /// `Ok(false)`: this operator does not run (or queue) that chain.
    async fn abort(&self, chain_id: &str) -> Result<bool, ControlError>;
    async fn start(&self, req: StartRequest) -> Result<StartOutcome, ControlError>;
    /// Runs an ended or interrupted chain again from its last handoff, with its stored settings.
    async fn resume_chain(&self, chain_id: &str) -> Result<(), ControlError>;
    /// Pause, resume or stop, exactly as the signals do.
    async fn signal(&self, ev: SignalEvent) -> Result<(), ControlError>;
}

/// Why the supervisor could not do what the API asked; the API gives each its status, so the
/// supervisor never speaks HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The supervisor is shutting down (503).
    #[error("the supervisor is shutting down")]
    Gone,
    /// Not now: the operator is stopping, the mission already runs… (409).
    #[error("{0}")]
    Busy(String),
    /// No such mission (404).
    #[error("{0}")]
    UnknownMission(String),
    /// No such chain (404).
    #[error("{0}")]
    UnknownChain(String),
    /// The request, or the configuration it would run with, is invalid (422).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A bug of ours (500; the cause is logged, never sent).
    #[error("{0}")]
    Internal(String),
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Gone => ApiError::Unavailable(e.to_string()),
            ControlError::Busy(m) => ApiError::Conflict(m),
            ControlError::UnknownMission(m) | ControlError::UnknownChain(m) => {
                ApiError::NotFound(m)
            }
            ControlError::Invalid(m) => ApiError::Unprocessable(m),
            ControlError::Store(s) => s.into(),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// A start asked through the API, already checked: nothing here can widen permissions.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// A mission by name (a file in config/missions/), or
    pub mission: Option<String>,
    /// one chain on a task.
    pub task: Option<String>,
    pub name: Option<String>,
    /// Config keys (snake_case) and values; only keys the API may set.
    pub overrides: Vec<(String, serde_json::Value)>,
    pub concurrency: Option<usize>,
    pub dry_run: bool,
}

#[derive(Debug)]
pub enum StartOutcome {
    Started(Vec<String>),
    /// A dry run: the plans, as JSON.
    Plan(serde_json::Value),
}

/// The supervisor's state, as `GET /api/orchestrator/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    /// `running`, `paused`, `paused-now` or `stopping`.
    pub mode: String,
    /// Chains with a live Chain actor (running, waiting or paused between sessions).
    pub running: Vec<String>,
    /// Chains waiting for their turn (concurrency, ordering).
    pub queued: Vec<String>,
    /// Chains at once, by mission (`""` for chains started on a task).
    pub concurrency: std::collections::BTreeMap<String, usize>,
    pub pid: u32,
    /// The server stays up when no chain runs (`operator serve`).
    pub stays: bool,
    pub daily_cap_usd: Option<f64>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub bus: Bus,
    /// `None`: a read-only server (no supervisor in this process).
    pub control: Option<Arc<dyn Control>>,
    pub security: Arc<Security>,
    pub metrics: Arc<Metrics>,
    pub data_dir: PathBuf,
    pub started: Instant,
    pub daily_cap_usd: Option<f64>,
    /// Where mission files are looked up by name.
    pub missions_dir: PathBuf,
}

impl AppState {
    fn control(&self) -> ApiResult<&Arc<dyn Control>> {
        self.control.as_ref().ok_or_else(|| {
            ApiError::Conflict("this server is read-only: no supervisor runs in it".into())
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "operator",
        description = "Watch and steer a running operator: chains, sessions, costs, the supervisor. \
            Reads are open on a loopback bind; writes need `Authorization: Bearer <token>` \
            (the token is in <data_dir>/api-token) or the CSRF token from /api/csrf."
    ),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

/// The routes and their OpenAPI document, from the same handler annotations.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(chains::list, chains::create))
        .routes(routes!(chains::get_one, chains::delete))
        .routes(routes!(chains::abort))
        .routes(routes!(chains::resume))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::answer))
        .routes(routes!(chains::session))
        .routes(routes!(chains::output))
        .routes(routes!(chains::events))
        .routes(routes!(orchestrator::costs))
        .routes(routes!(orchestrator::fleet))
        .routes(routes!(orchestrator::status))
        .routes(routes!(orchestrator::start))
        .routes(routes!(orchestrator::stop))
        .routes(routes!(orchestrator::pause))
        .routes(routes!(orchestrator::resume))
        .routes(routes!(orchestrator::missions))
        .routes(routes!(orchestrator::health))
        .routes(routes!(orchestrator::csrf))
        .routes(routes!(orchestrator::metrics))
        .routes(routes!(ws::handler))
        .split_for_parts()
}

/// The OpenAPI document (also served at `/api/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    async fn read_only() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            crate::store::sqlite::SqliteStore::open(dir.path())
                .await
                .unwrap(),
        );
        let addr: SocketAddr = "127.0.0.1:3100".parse().unwrap();
        let state = AppState {
            store: store.clone(),
            bus: Bus::new(store),
            control: None,
            security: Arc::new(security::for_bind(addr, None, dir.path(), vec![]).unwrap()),
            metrics: Arc::new(Metrics::new()),
            data_dir: dir.path().to_path_buf(),
            started: Instant::now(),
            daily_cap_usd: None,
            missions_dir: dir.path().join("missions"),
        };
        (dir, crate::http::router(state))
    }

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:3100")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_server_without_a_supervisor_reads_but_cannot_steer() {
        let (_dir, app) = read_only().await;
        let (st, v) = call(&app, "GET", "/api/chains").await;
        assert_eq!(
            (st, v["chains"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(0))
        );
        let (st, v) = call(&app, "GET", "/api/orchestrator/status").await;
        assert_eq!(st, StatusCode::CONFLICT);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("read-only")
        );
        let (st, v) = call(&app, "GET", "/api/openapi.json").await;
        assert_eq!(st, StatusCode::OK);
        assert!(v["paths"]["/api/chains"]["post"].is_object());
        let (st, v) = call(&app, "GET", "/nope").await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("no_route"))
        );
    }

    #[test]
    fn the_document_names_every_parameter_of_the_paths() {
        let doc = serde_json::to_value(openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                let named: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                    .unwrap_or_default();
                for seg in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = seg.trim_matches(|c| c == '{' || c == '}');
                    assert!(named.contains(&name), "{path}: `{name}` is not described");
                }
            }
        }
    }
}
