//! The HTTP surface: the API's routes and the dashboard's pages composed into one guarded router
//! (body limit, security guard, CORS), and the server that runs it. It sits above both `api` and
//! `web`, so neither needs the other's routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::api::{self, ApiError, AppState, BODY_LIMIT, security};

/// The whole HTTP surface, guarded.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api::routes();
    let doc = Arc::new(doc);
    api.route(
        "/api/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { axum::Json((*doc).clone()) }
        }),
    )
    .merge(crate::web::routes())
    .fallback(|uri: axum::http::Uri| async move { ApiError::NoRoute(uri.path().to_string()) })
    .method_not_allowed_fallback(|m: axum::http::Method, uri: axum::http::Uri| async move {
        ApiError::MethodNotAllowed(format!("{m} is not allowed on {}", uri.path()))
    })
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    .layer(axum::middleware::from_fn_with_state(
        state.security.clone(),
        security::guard,
    ))
    .layer(security::cors())
    .with_state(state)
}

/// A running API server.
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `state` on `listener` until [`Server::shutdown`].
    pub fn spawn(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(cause = %e, "the API server stopped");
            }
        });
        Ok(Self { addr, stop, task })
    }

    /// Stops accepting, lets requests in flight finish for up to 2 s (WebSocket clients are
    /// cut), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
