//! The HTTP surface: the API's routes, the dashboard's pages and MCP (`/mcp`) composed into one
//! guarded router (body limit, security guard, CORS), and the server that runs it (connection
//! cap, header and request timeouts). It sits above `api`, `web` and `mcp`, so none needs another's
//! routes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{self, ApiError, AppState, BODY_LIMIT, security};

/// The whole HTTP surface, guarded: the API and the dashboard, and MCP at `/mcp` in front of
/// them (each of its tools is a request to the guarded API, carrying the MCP request's own
/// credentials).
pub fn router(state: AppState) -> Router {
    let api = guarded_api(state.clone());
    Router::new()
        .route_service("/mcp", crate::mcp::http_service(api.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.security.clone(),
            security::guard,
        ))
        .layer(security::cors())
        .merge(api)
}

/// The API's routes and the dashboard's pages behind the security guard.
fn guarded_api(state: AppState) -> Router {
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
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        api::journal::writes,
    ))
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    .layer(axum::middleware::from_fn_with_state(
        state.security.clone(),
        security::guard,
    ))
    .layer(security::cors())
    .with_state(state)
}

/// How many connections (HTTP and WebSocket) the server holds at once; more wait in the kernel's
/// accept queue until one closes, so clients can never take the descriptors the store and the
/// agents need.
pub const MAX_CONNECTIONS: usize = 256;

/// The longest a client may take to send a request's headers, and the longest an idle
/// keep-alive connection stays open (hyper's timer starts when it waits for the next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a request may take to be answered, reading its body included (a WebSocket's
/// upgrade is answered at once; the socket then lives on).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
        let app = router(state).layer(axum::middleware::from_fn(timeout));
        let task = tokio::spawn(serve(listener, app, stopped));
        Ok(Self { addr, stop, task })
    }

    /// Stops accepting, lets requests in flight finish for up to 2 s (WebSocket clients are
    /// cut), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Answers 408 when a request is not answered within [`REQUEST_TIMEOUT`].
async fn timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Rejected {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the request was not answered within {} s (a body sent too slowly?)",
                REQUEST_TIMEOUT.as_secs()
            ),
        }
        .into_response(),
    }
}

/// The accept loop: at most [`MAX_CONNECTIONS`] at once, each an HTTP/1 connection (with
/// upgrades, for WebSockets) whose headers must arrive within [`HEADER_TIMEOUT`]. When `stopped`
/// fires it stops accepting, asks each connection to close after its request in flight, and
/// returns once they have.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped at the stop: each connection then shuts down gracefully.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    // Each connection holds a receiver: `closed()` resolves when the last one has ended.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            p = room.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // moment rather than spin.
                    tracing::warn!(cause = %e, "the API server could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Held {
            io: tcp,
            _room: permit,
        });
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(stop_rx);
    drop(open_rx);
    open_tx.closed().await;
}

/// A connection's socket with its place among [`MAX_CONNECTIONS`], given back when the socket is
/// dropped (after an upgrade, when the WebSocket ends).
struct Held {
    io: tokio::net::TcpStream,
    _room: OwnedSemaphorePermit,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
