//! API security: the token (configured, or generated into the data dir with mode 0600), the Host allowlist
//! against DNS rebinding, the Origin check, CSRF for state-changing requests, and CORS for localhost.
//!
//! Rules (each tested in `tests/api.rs`):
//! - Every request: its `Host` must be an IP literal, `localhost`, or in `allowed_hosts` (a DNS
//!   rebinding attack needs a name the attacker controls); an `Origin`, when sent, must be a
//!   localhost origin or the request's own host.
//! - Reads: free on a loopback bind; on any other bind they need the token.
//! - Writes (POST, DELETE, …): the token as `Authorization: Bearer`, or the CSRF token of this
//!   process in `X-CSRF-Token` (what the dashboard's forms send; same-origin pages read it from
//!   `/api/csrf`, which other origins cannot read).
//! - `/mcp` is let in as a read (free on a loopback bind, the token elsewhere): each of its tools
//!   is then a request to the API, with the MCP request's `Authorization`, judged by these same
//!   rules (a write tool without the token is refused as a write is).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The shortest token accepted from configuration.
pub const MIN_TOKEN_LEN: usize = 16;

/// The name of the token file in the data dir.
/// Why the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "binding the API to {addr} (not a loopback address) needs an API token: set OPERATOR_API_TOKEN or `api_token` in operator.toml, or create {file} with `operator token`"
    )]
    TokenRequired { addr: SocketAddr, file: String },
    #[error("the API token from {source_name} is too short (at least {MIN_TOKEN_LEN} characters)")]
    TokenTooShort { source_name: String },
    #[error("{file} can be read by other users (mode {mode:o}); run `chmod 600 {file}`")]
    TokenFileOpen { file: String, mode: u32 },
    #[error("cannot read or write the API token file {file}: {source}")]
    TokenFile {
        file: String,
        source: std::io::Error,
    },
}

/// What the guard enforces; built once when the server starts.
#[derive(Clone)]
pub struct Security {
    token: String,
    /// Reads need the token too (the bind is not loopback).
    pub token_required: bool,
    pub allowed_hosts: Vec<String>,
    csrf: String,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("token", &"<hidden>")
            .field("token_required", &self.token_required)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl Security {
    pub fn new(token: String, token_required: bool, allowed_hosts: Vec<String>) -> Self {
        Self {
            token,
            token_required,
            allowed_hosts,
            csrf: random_hex(32),
        }
    }

    /// The CSRF token of this process (the dashboard embeds it in its pages).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Is `given` the API token (compared in constant time)?
    pub fn token_matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    fn token_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), self.token.as_bytes()))
    }
}

/// 32 random bytes from the OS, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: refuse to produce a guessable token.
        panic!("the operating system gave no random bytes for a token");
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn token_file(data_dir: &Path) -> PathBuf {
    crate::datadir::DataDir::new(data_dir).token_file()
}

/// Reads the token file (refusing one other users can read), creating it when `create`.
pub fn read_or_create_token(
    data_dir: &Path,
    create: bool,
) -> Result<Option<String>, SecurityError> {
    let file = token_file(data_dir);
    let name = file.display().to_string();
    let io = |source| SecurityError::TokenFile {
        file: name.clone(),
        source,
    };
    match std::fs::metadata(&file) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecurityError::TokenFileOpen { file: name, mode });
            }
            let token = std::fs::read_to_string(&file)
                .map_err(io)?
                .trim()
                .to_string();
            if token.len() < MIN_TOKEN_LEN {
                return Err(SecurityError::TokenTooShort { source_name: name });
            }
            Ok(Some(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let token = random_hex(32);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(io)?;
            writeln!(f, "{token}").map_err(io)?;
            Ok(Some(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// The server's security settings for a bind address: a configured token wins; else the data
/// dir's token file, created on a loopback bind; a non-loopback bind without any token refuses.
pub fn for_bind(
    addr: SocketAddr,
    configured_token: Option<&str>,
    data_dir: &Path,
    allowed_hosts: Vec<String>,
) -> Result<Security, SecurityError> {
    let loopback = addr.ip().is_loopback();
    let token = match configured_token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) if t.len() < MIN_TOKEN_LEN => {
            return Err(SecurityError::TokenTooShort {
                source_name: "the configuration (api_token / OPERATOR_API_TOKEN)".into(),
            });
        }
        Some(t) => t.to_string(),
        None => match read_or_create_token(data_dir, loopback)? {
            Some(t) => t,
            None => {
                return Err(SecurityError::TokenRequired {
                    addr,
                    file: token_file(data_dir).display().to_string(),
                });
            }
        },
    };
    Ok(Security::new(token, !loopback, allowed_hosts))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The host part of a `Host` header or URL authority (no port, no brackets), lowercased.
fn host_of(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if a.matches(':').count() > 1 {
        a // a bare IPv6 address
    } else {
        a.split(':').next().unwrap_or("")
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A `Host` header that is an authority and nothing more: `name[:port]`, `ip[:port]`,
/// `[v6][:port]` — never userinfo (`127.0.0.1:3221@evil.example`), a path or spaces.
fn valid_authority(a: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok();
    if let Some(rest) = a.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    if a.matches(':').count() > 1 {
        return a.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let (host, port) = match a.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (a, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port.is_none_or(port_ok)
}

fn is_local_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// May a request with this `Host` be served? IP literals and localhost names can never be a
/// DNS rebinding attack (that needs a name the attacker controls); other names must be listed.
pub fn host_allowed(host_header: &str, allowed: &[String]) -> bool {
    if !valid_authority(host_header.trim()) {
        return false;
    }
    let host = host_of(host_header);
    !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || is_local_name(&host)
            || allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)))
}

/// The authority of an `Origin` (`scheme://host[:port]`), if it is one.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.contains('/') || rest.is_empty() {
        return None;
    }
    Some(rest)
}

/// A page on this machine (`http://localhost:5173`, `http://127.0.0.1:8080`, `http://[::1]`).
pub fn is_localhost_origin(origin: &str) -> bool {
    origin_authority(origin).is_some_and(|a| {
        let h = host_of(a);
        is_local_name(&h) || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// May a request carrying this `Origin` be served? Same origin as the request's `Host`, a
/// localhost page, or a listed host.
pub fn origin_allowed(origin: &str, host_header: &str, allowed: &[String]) -> bool {
    let Some(authority) = origin_authority(origin) else {
        return false;
    };
    authority.eq_ignore_ascii_case(host_header.trim())
        || is_localhost_origin(origin)
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&host_of(authority)))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The `operator_token` cookie (set by the dashboard's sign-in on non-loopback binds).
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "operator_token")
        .map(|(_, v)| v)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Paths served to anyone who passes the Host and Origin checks (probes).
fn is_public(path: &str) -> bool {
    path == "/api/health" || path == "/login" || path.starts_with("/assets/")
}

/// Pages people open in a browser (not the API, the WebSocket or metrics).
fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/ws" || path == "/metrics" || path == "/mcp")
}

/// The decision for one request, apart from the framework (unit-tested).
pub fn check(
    sec: &Security,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, &sec.allowed_hosts) {
        return Err(ApiError::Forbidden(format!(
            "host `{host}` is not allowed (DNS rebinding protection); list it in allowed_hosts"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !origin_allowed(o, host, &sec.allowed_hosts) {
            return Err(ApiError::Forbidden(format!(
                "cross-origin request from `{o}` refused"
            )));
        }
    }
    if is_public(path) {
        return Ok(());
    }
    let method = if path == "/mcp" { &Method::GET } else { method };
    let by_bearer = sec.token_ok(bearer(headers));
    let by_cookie = sec.token_ok(cookie_token(headers));
    if bearer(headers).is_some() && !by_bearer {
        return Err(ApiError::Unauthorized("the API token is wrong".into()));
    }
    if is_safe(method) {
        if sec.token_required && !by_bearer && !by_cookie {
            return Err(ApiError::Unauthorized(
                "this API needs its token (Authorization: Bearer <token>)".into(),
            ));
        }
        return Ok(());
    }
    if by_bearer {
        return Ok(());
    }
    let csrf_ok = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| constant_time_eq(v.as_bytes(), sec.csrf.as_bytes()));
    if csrf_ok && (!sec.token_required || by_cookie) {
        return Ok(());
    }
    if sec.token_required && !by_cookie {
        return Err(ApiError::Unauthorized(
            "this API needs its token (Authorization: Bearer <token>)".into(),
        ));
    }
    Err(ApiError::Forbidden(
        "a state-changing request needs the API token (Authorization: Bearer) or this server's CSRF token (X-CSRF-Token)".into(),
    ))
}

/// The middleware around every route.
pub async fn guard(State(sec): State<Arc<Security>>, req: Request, next: Next) -> Response {
    match check(&sec, req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(ApiError::Unauthorized(_))
            if req.method() == Method::GET && is_page(req.uri().path()) =>
        {
            axum::response::Redirect::to("/login").into_response()
        }
        Err(e) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = %e, "API request refused");
            e.into_response()
        }
    }
}

/// CORS: only pages on localhost may read responses or send credentials cross-origin.
pub fn cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(|origin, _| {
            origin.to_str().is_ok_and(is_localhost_origin)
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("x-csrf-token"),
        ])
        .allow_credentials(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn sec(required: bool) -> Security {
        Security::new("t".repeat(32), required, vec!["op.example.com".into()])
    }

    #[test]
    fn hosts_must_be_ip_literals_localhost_or_listed() {
        let allowed = vec!["op.example.com".to_string()];
        for ok in [
            "127.0.0.1:3100",
            "localhost:3100",
            "[::1]:3100",
            "192.168.1.5",
            "op.example.com:3100",
            "OP.EXAMPLE.COM",
            "app.localhost",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example:3100",
            "",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.0.0.1:3221@evil.example",
            "localhost:80@evil.example",
            "127.0.0.1:abc",
            "127.0.0.1/x",
            "127.0.0.1 evil",
            "[::1",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn origins_must_be_same_origin_or_localhost() {
        assert!(origin_allowed(
            "http://127.0.0.1:3100",
            "127.0.0.1:3100",
            &[]
        ));
        assert!(origin_allowed(
            "http://localhost:5173",
            "127.0.0.1:3100",
            &[]
        ));
        assert!(origin_allowed("http://[::1]:9", "127.0.0.1:3100", &[]));
        assert!(origin_allowed("http://10.0.0.2:3100", "10.0.0.2:3100", &[]));
        assert!(!origin_allowed(
            "https://evil.example",
            "127.0.0.1:3100",
            &[]
        ));
        assert!(!origin_allowed("null", "127.0.0.1:3100", &[]));
        assert!(!origin_allowed(
            "http://10.0.0.3:3100",
            "10.0.0.2:3100",
            &[]
        ));
        assert!(is_localhost_origin("http://localhost:5173"));
        assert!(!is_localhost_origin("http://localhost.evil.example"));
        assert!(!is_localhost_origin("file://"));
    }

    #[test]
    fn reads_are_free_on_loopback_and_writes_need_token_or_csrf() {
        let s = sec(false);
        let host = ("host", "127.0.0.1:3100");
        assert!(check(&s, &Method::GET, "/api/chains", &headers(&[host])).is_ok());
        let err = check(&s, &Method::POST, "/api/chains", &headers(&[host])).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)), "{err:?}");
        let bearer = format!("Bearer {}", "t".repeat(32));
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("authorization", &bearer)])
            )
            .is_ok()
        );
        let csrf = s.csrf().to_string();
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("x-csrf-token", &csrf)])
            )
            .is_ok()
        );
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("x-csrf-token", "nope")])
            )
            .is_err()
        );
        let wrong = check(
            &s,
            &Method::GET,
            "/x",
            &headers(&[host, ("authorization", "Bearer nope")]),
        );
        assert!(matches!(wrong, Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn a_public_bind_needs_the_token_for_everything_but_health() {
        let s = sec(true);
        let host = ("host", "10.0.0.2:3100");
        assert!(matches!(
            check(&s, &Method::GET, "/api/chains", &headers(&[host])),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(check(&s, &Method::GET, "/api/health", &headers(&[host])).is_ok());
        let cookie = format!("a=b; operator_token={}", "t".repeat(32));
        assert!(
            check(
                &s,
                &Method::GET,
                "/api/chains",
                &headers(&[host, ("cookie", &cookie)])
            )
            .is_ok()
        );
        // A cookie alone is ambient: a write also needs the CSRF token.
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("cookie", &cookie)])
            )
            .is_err()
        );
        let csrf = s.csrf().to_string();
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("cookie", &cookie), ("x-csrf-token", &csrf)])
            )
            .is_ok()
        );
        // The CSRF token without the cookie is not enough off loopback.
        assert!(
            check(
                &s,
                &Method::POST,
                "/x",
                &headers(&[host, ("x-csrf-token", &csrf)])
            )
            .is_err()
        );
    }

    #[test]
    fn mcp_is_let_in_as_a_read_and_its_tools_are_judged_as_api_requests() {
        let local = headers(&[("host", "127.0.0.1:3100")]);
        let bearer = format!("Bearer {}", "t".repeat(32));
        // Loopback: open, like a read (the write tools' own API requests need the token).
        assert!(check(&sec(false), &Method::POST, "/mcp", &local).is_ok());
        assert!(check(&sec(false), &Method::POST, "/api/chains", &local).is_err());
        // Elsewhere: the token, for everything.
        let e = check(&sec(true), &Method::POST, "/mcp", &local);
        assert!(matches!(e, Err(ApiError::Unauthorized(_))), "{e:?}");
        let with = headers(&[("host", "127.0.0.1:3100"), ("authorization", &bearer)]);
        assert!(check(&sec(true), &Method::POST, "/mcp", &with).is_ok());
        // A foreign page, never.
        let foreign = headers(&[
            ("host", "127.0.0.1:3100"),
            ("origin", "https://evil.example"),
            ("authorization", &bearer),
        ]);
        let e = check(&sec(false), &Method::POST, "/mcp", &foreign);
        assert!(matches!(e, Err(ApiError::Forbidden(_))), "{e:?}");
    }

    #[test]
    fn bad_hosts_and_origins_are_refused_before_anything_else() {
        let s = sec(false);
        let bearer = format!("Bearer {}", "t".repeat(32));
        let e = check(
            &s,
            &Method::GET,
            "/api/health",
            &headers(&[("host", "evil.example")]),
        );
        assert!(matches!(e, Err(ApiError::Forbidden(m)) if m.contains("DNS rebinding")));
        let e = check(
            &s,
            &Method::POST,
            "/x",
            &headers(&[
                ("host", "127.0.0.1:3100"),
                ("origin", "https://evil.example"),
                ("authorization", &bearer),
            ]),
        );
        assert!(matches!(e, Err(ApiError::Forbidden(m)) if m.contains("cross-origin")));
    }

    #[test]
    fn the_token_file_is_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_or_create_token(dir.path(), false).unwrap(), None);
        let t = read_or_create_token(dir.path(), true).unwrap().unwrap();
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(token_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_or_create_token(dir.path(), false).unwrap(), Some(t));
        std::fs::set_permissions(
            token_file(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            read_or_create_token(dir.path(), false),
            Err(SecurityError::TokenFileOpen { .. })
        ));
        let public: SocketAddr = "0.0.0.0:3100".parse().unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            for_bind(public, None, empty.path(), vec![]),
            Err(SecurityError::TokenRequired { .. })
        ));
        assert!(matches!(
            for_bind(public, Some("short"), empty.path(), vec![]),
            Err(SecurityError::TokenTooShort { .. })
        ));
        let s = for_bind(public, Some(&"x".repeat(20)), empty.path(), vec![]).unwrap();
        assert!(s.token_required);
    }
}
