//! Every write accepted through the API is journaled (`operator:request`) with what it did and
//! who asked: a program with the token (`api`), the dashboard's forms (`dashboard`) or an MCP
//! client (`mcp`, through `operator mcp` or `/mcp`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::events::Body;

/// The header an MCP front end sets on the API requests it makes for its tools.
pub const CLIENT_HEADER: &str = "x-operator-client";

/// The chains a write created, for its journal entries (a response extension set by the
/// handlers that start chains).
#[derive(Debug, Clone)]
pub struct Created(pub Vec<String>);

/// Who asked: an MCP front end says so; otherwise a bearer token is a program (`api`) and the
/// CSRF token the dashboard's forms. (The label is for the journal; the security guard decides
/// what may be done, whatever a client calls itself.)
pub fn origin(headers: &HeaderMap) -> &'static str {
    if headers
        .get(CLIENT_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"mcp"))
    {
        "mcp"
    } else if headers.contains_key(axum::http::header::AUTHORIZATION) {
        "api"
    } else {
        "dashboard"
    }
}

/// What a write does (`None`: not a write to journal here; held calls journal their answer as
/// `operator:approval`), and the chain it concerns when its path names one.
pub fn action<'a>(
    method: &Method,
    path: &'a str,
    status: StatusCode,
) -> Option<(&'static str, Option<&'a str>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let a = match (method, segs.as_slice()) {
        (&Method::POST, ["api", "chains"]) => ("start_chain", None),
        (&Method::POST, ["api", "chains", id, "abort"]) => ("abort_chain", Some(*id)),
        (&Method::POST, ["api", "chains", id, "resume"]) => ("resume_chain", Some(*id)),
        (&Method::DELETE, ["api", "chains", id]) => ("archive_chain", Some(*id)),
        (&Method::POST, ["api", "orchestrator", "start"]) if status == StatusCode::OK => {
            ("plan_mission", None)
        }
        (&Method::POST, ["api", "orchestrator", "start"]) => ("start_mission", None),
        (&Method::POST, ["api", "orchestrator", "stop"]) => ("stop", None),
        (&Method::POST, ["api", "orchestrator", "pause"]) => ("pause", None),
        (&Method::POST, ["api", "orchestrator", "resume"]) => ("resume", None),
        _ => return None,
    };
    Some(a)
}

/// The middleware: after a write succeeds, one `operator:request` per chain it concerns (or one
/// for the operator).
pub async fn writes(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let by = origin(req.headers());
    let res = next.run(req).await;
    let status = res.status();
    if !status.is_success() {
        return res;
    }
    let Some((action, chain)) = action(&method, &path, status) else {
        return res;
    };
    let mut chains: Vec<String> = chain.map(str::to_string).into_iter().collect();
    if let Some(Created(ids)) = res.extensions().get::<Created>() {
        chains.extend(ids.iter().cloned());
    }
    let body = |action: &str| Body::Request {
        action: action.to_string(),
        origin: by.to_string(),
    };
    if chains.is_empty() {
        st.bus.emit(None, None, body(action)).await;
    }
    for id in &chains {
        st.bus.emit(Some(id), None, body(action)).await;
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_is_named_and_reads_are_not() {
        let ok = StatusCode::ACCEPTED;
        assert_eq!(
            action(&Method::POST, "/api/chains/c-1/abort", ok),
            Some(("abort_chain", Some("c-1")))
        );
        assert_eq!(
            action(&Method::DELETE, "/api/chains/c-1", ok),
            Some(("archive_chain", Some("c-1")))
        );
        assert_eq!(
            action(&Method::POST, "/api/chains", StatusCode::CREATED),
            Some(("start_chain", None))
        );
        assert_eq!(
            action(&Method::POST, "/api/orchestrator/start", StatusCode::OK),
            Some(("plan_mission", None))
        );
        assert_eq!(
            action(
                &Method::POST,
                "/api/orchestrator/start",
                StatusCode::CREATED
            ),
            Some(("start_mission", None))
        );
        assert_eq!(action(&Method::GET, "/api/chains", StatusCode::OK), None);
        assert_eq!(
            action(
                &Method::POST,
                "/api/chains/c-1/approvals/ap-1",
                StatusCode::OK
            ),
            None
        );
    }

    #[test]
    fn the_origin_is_mcp_api_or_dashboard() {
        let mut h = HeaderMap::new();
        assert_eq!(origin(&h), "dashboard");
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer x".parse().unwrap(),
        );
        assert_eq!(origin(&h), "api");
        h.insert(CLIENT_HEADER, "MCP".parse().unwrap());
        assert_eq!(origin(&h), "mcp");
        h.insert(CLIENT_HEADER, "root".parse().unwrap());
        assert_eq!(origin(&h), "api");
    }
}
