//! `/api/chains`: list, start, show, abort, archive; a session with its handoff; a session's output in
//! pages; a chain's journal.

use std::io::SeekFrom;
use std::str::FromStr;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use super::{AppState, StartOutcome, StartRequest};
use crate::model::{
    ChainRecord, ChainStatus, EventRecord, HandoffRecord, SessionRecord, is_valid_chain_id,
};
use crate::store::ChainQuery;

/// Chains in one page at most.
pub const MAX_PAGE: u32 = 200;
/// Bytes of output in one page: the default and the most.
pub const OUTPUT_PAGE: u64 = 64 * 1024;
pub const OUTPUT_PAGE_MAX: u64 = 1024 * 1024;

/// Keys of `POST /api/chains` (and of a mission start) that change a chain's settings, with the
/// config key each sets. Nothing here can widen what the agent may do.
pub const API_SETTINGS: &[(&str, &str)] = &[
    ("model", "model"),
    ("maxTurns", "max_turns"),
    ("maxContinuations", "max_continuations"),
    ("maxBudgetUsd", "max_budget_usd"),
    ("maxSessionCostUsd", "max_session_cost_usd"),
    ("autoPush", "auto_push"),
    ("pullRequest", "pull_request"),
];

/// Settings only the command line and config files may set; asking for them through the API
/// is refused with 403, whatever the value.
pub const CLI_ONLY: &[&str] = &[
    "permissionMode",
    "workdir",
    "agent",
    "claudeBin",
    "continuation",
    "breakerThreshold",
    "idleTimeout",
    "sessionTimeout",
    "maxAttempts",
    "retryBackoff",
    "usageLimitMargin",
    "usageLimitFallback",
    "sim",
    "env",
    "dataDir",
    "dangerouslySkipPermissions",
    "allowedTools",
    "autoCommit",
    "commitAuthor",
    "exclude",
    "dirtyStart",
    "branch",
    "worktree",
    "keepWorktree",
    "webhooks",
    "verify",
    "verifyTimeout",
    "noProgressSessions",
    "noWait",
    "breakerCooldown",
    "permissions",
    "approvalTimeout",
];

/// Parses a start body: CLI-only keys are 403, unknown keys 422 (with a suggestion), and the
/// settings become config overrides. `extra` are the other keys the endpoint accepts.
pub fn parse_start(body: &Map<String, Value>, extra: &[&str]) -> ApiResult<StartRequest> {
    let snake = |k: &str| {
        let mut s = String::new();
        for c in k.chars() {
            if c.is_ascii_uppercase() {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    };
    let mut req = StartRequest::default();
    for (k, v) in body {
        let camel_of_snake = CLI_ONLY.iter().find(|c| snake(c) == *k);
        if let Some(c) = CLI_ONLY.iter().find(|c| **c == k).or(camel_of_snake) {
            return Err(ApiError::Forbidden(format!(
                "`{c}` can only be set on the command line or in config files, never through the API"
            )));
        }
        if v.as_str().is_some_and(|s| s.contains("bypassPermissions")) && k != "task" {
            return Err(ApiError::Forbidden(
                "bypassPermissions can only be set on the command line or in config files".into(),
            ));
        }
        if let Some((_, key)) = API_SETTINGS.iter().find(|(api, _)| api == k) {
            let ok = match *key {
                // Never an option: it becomes the agent's `--model` argument.
                "model" => v.as_str().is_some_and(crate::config::is_model_name),
                "max_turns" | "max_continuations" => v.as_u64().is_some_and(|n| n <= 10_000),
                "auto_push" | "pull_request" => v.is_boolean(),
                _ => v.as_f64().is_some_and(|f| f.is_finite() && f > 0.0),
            };
            if !ok {
                return Err(ApiError::Unprocessable(format!(
                    "`{k}` has an invalid value: {v}"
                )));
            }
            req.overrides.push(((*key).to_string(), v.clone()));
            continue;
        }
        match (k.as_str(), extra.contains(&k.as_str())) {
            ("task", true) => {
                let t = v.as_str().map(str::trim).unwrap_or("");
                if t.is_empty() {
                    return Err(ApiError::Unprocessable(
                        "`task` must be a non-empty string".into(),
                    ));
                }
                if t.len() > crate::model::INPUT_LIMIT {
                    return Err(ApiError::Unprocessable(format!(
                        "`task` is longer than {} KiB, as a mission file's may not be",
                        crate::model::INPUT_LIMIT / 1024
                    )));
                }
                req.task = Some(t.to_string());
            }
            ("name", true) => {
                let n = v.as_str().unwrap_or("");
                if !is_valid_chain_id(n) {
                    return Err(ApiError::Unprocessable(
                        "`name` must be 1-64 letters, digits, `-` or `_`".into(),
                    ));
                }
                req.name = Some(n.to_string());
            }
            ("mission", true) => {
                let m = v.as_str().unwrap_or("");
                if !is_valid_chain_id(m) {
                    return Err(ApiError::Unprocessable(
                        "`mission` must be the name of a mission file in config/missions/".into(),
                    ));
                }
                req.mission = Some(m.to_string());
            }
            ("concurrency", true) => match v.as_u64() {
                Some(n) if (1..=64).contains(&n) => req.concurrency = Some(n as usize),
                _ => {
                    return Err(ApiError::Unprocessable(
                        "`concurrency` must be a whole number from 1 to 64".into(),
                    ));
                }
            },
            ("dryRun", true) => match v.as_bool() {
                Some(b) => req.dry_run = b,
                None => {
                    return Err(ApiError::Unprocessable(
                        "`dryRun` must be true or false".into(),
                    ));
                }
            },
            _ => {
                let known: Vec<&str> = API_SETTINGS
                    .iter()
                    .map(|(a, _)| *a)
                    .chain(extra.iter().copied())
                    .collect();
                let hint = match crate::config::suggest(k, &known) {
                    Some(s) => format!(" (did you mean `{s}`?)"),
                    None => format!(" (expected one of: {})", known.join(", ")),
                };
                return Err(ApiError::Unprocessable(format!(
                    "unknown field `{k}`{hint}"
                )));
            }
        }
    }
    Ok(req)
}

fn check_id(id: &str) -> ApiResult<()> {
    if is_valid_chain_id(id) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "`{}` is not a chain id",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// The chain `id` as it may leave the operator: a bad id is 400, an unknown one 404.
pub(crate) async fn find(st: &AppState, id: &str) -> ApiResult<ChainRecord> {
    check_id(id)?;
    st.store
        .get_chain(id)
        .await?
        .map(ChainRecord::public)
        .ok_or_else(|| ApiError::NotFound(format!("no chain `{id}`")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only chains in this state (`running`, `complete`, …).
    status: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Chains per page (1-200, default 50).
    limit: Option<u32>,
    /// Include archived chains.
    archived: Option<bool>,
    /// Only the chains of this mission (its name, as in `mission`).
    mission: Option<String>,
    /// Only chains started since then: a duration back from now (`24h`, `7d`), a date
    /// (`2026-12-01`, UTC) or an RFC 3339 time.
    since: Option<String>,
}

/// The start of a `since` filter as the store's timestamps (RFC 3339 UTC, milliseconds).
pub fn since_bound(since: &str, now: std::time::SystemTime) -> Result<String, String> {
    let s = since.trim();
    let at = if let Ok(d) = humantime::parse_duration(s) {
        now.checked_sub(d)
            .ok_or_else(|| format!("`since` {s} reaches before 1970"))?
    } else if let Ok(t) = s.parse::<jiff::Timestamp>() {
        std::time::SystemTime::from(t)
    } else if let Ok(d) = s.parse::<jiff::civil::Date>() {
        let t = d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|e| format!("`since` {s}: {e}"))?
            .timestamp();
        std::time::SystemTime::from(t)
    } else {
        return Err(format!(
            "`since` is `{s}`; expected a duration back from now (`24h`, `7d`), a date (`2026-12-01`) or an RFC 3339 time"
        ));
    };
    // humantime formats years 1970 to 9999 only.
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) if d.as_secs() < 253_402_300_800 => {
            Ok(humantime::format_rfc3339_millis(at).to_string())
        }
        _ => Err(format!("`since` {s} is not between 1970 and 9999")),
    }
}

/// A page of chains, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainPage {
    pub chains: Vec<ChainRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List chains, newest first (without their sessions; totals included).
#[utoipa::path(get, path = "/api/chains", params(ListQuery), tag = "chains",
    responses((status = 200, body = ChainPage), (status = 400, body = super::error::ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<axum::Json<ChainPage>> {
    let status = q
        .status
        .as_deref()
        .map(ChainStatus::from_str)
        .transpose()
        .map_err(|e| {
            let all: Vec<&str> = ChainStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("{e} (expected one of: {})", all.join(", ")))
        })?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {MAX_PAGE}"
        )));
    }
    let since = q
        .since
        .as_deref()
        .map(|s| since_bound(s, std::time::SystemTime::now()))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if q.mission.as_ref().is_some_and(|m| m.len() > 200) {
        return Err(ApiError::BadRequest(
            "`mission` is longer than 200 characters".into(),
        ));
    }
    if let Some(c) = &q.cursor {
        check_id(c)?;
        if st.store.get_chain(c).await?.is_none() {
            return Err(ApiError::BadRequest(format!("unknown cursor `{c}`")));
        }
    }
    let mut chains: Vec<ChainRecord> = st
        .store
        .list_chains(&ChainQuery {
            status,
            include_archived: q.archived.unwrap_or(false),
            before: q.cursor.clone(),
            limit: limit + 1,
            with_sessions: false,
            mission: q.mission.clone(),
            since,
        })
        .await?
        .into_iter()
        .map(ChainRecord::public)
        .collect();
    let next_cursor = if chains.len() > limit as usize {
        chains.truncate(limit as usize);
        chains.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(axum::Json(ChainPage {
        chains,
        next_cursor,
    }))
}

/// Body of `POST /api/chains`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StartChainBody {
    /// What the chain should do.
    task: String,
    /// Its name (default `main`).
    name: Option<String>,
    model: Option<String>,
    max_turns: Option<u32>,
    max_continuations: Option<u32>,
    max_budget_usd: Option<f64>,
    max_session_cost_usd: Option<f64>,
    /// Push when the chain completes (a remote must exist).
    auto_push: Option<bool>,
    /// Open a pull request with `gh` after the push.
    pull_request: Option<bool>,
}

/// Start one chain on a task, with the operator's defaults. Permission mode, workdir and agent
/// come from the configuration; asking for them here is refused (403).
#[utoipa::path(post, path = "/api/chains", request_body = StartChainBody, tag = "chains",
    responses((status = 201, body = ChainRecord), (status = 403, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(
    StatusCode,
    axum::Extension<super::journal::Created>,
    axum::Json<ChainRecord>,
)> {
    let req = parse_start(&body, &["task", "name"])?;
    if req.task.is_none() {
        return Err(ApiError::Unprocessable("`task` is required".into()));
    }
    let ids = match st.control()?.start(req).await? {
        StartOutcome::Started(ids) => ids,
        StartOutcome::Plan(_) => return Err(ApiError::Internal("a dry run started".into())),
    };
    let id = ids
        .first()
        .ok_or_else(|| ApiError::Internal("no chain was created".into()))?;
    let chain = find(&st, id).await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::journal::Created(ids.clone())),
        axum::Json(chain),
    ))
}

/// One chain with its sessions.
#[utoipa::path(get, path = "/api/chains/{id}", tag = "chains",
    params(("id" = String, Path, description = "chain id")),
    responses((status = 200, body = ChainRecord), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<ChainRecord>> {
    Ok(axum::Json(find(&st, &id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub id: String,
    /// What was done: `aborting`, `resuming`, `archived`.
    pub state: String,
}

/// Abort a running or queued chain: its session is stopped at once (the agent's process group
/// killed) and the chain ends `aborted`.
#[utoipa::path(post, path = "/api/chains/{id}/abort", tag = "chains",
    params(("id" = String, Path, description = "chain id")),
    responses((status = 202, body = Ack), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn abort(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, axum::Json<Ack>)> {
    let chain = find(&st, &id).await?;
    if chain.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "chain `{id}` already ended ({})",
            chain.status
        )));
    }
    if !st.control()?.abort(&id).await? {
        return Err(ApiError::Conflict(format!(
            "chain `{id}` is {} but not run by this operator",
            chain.status
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Ack {
            id,
            state: "aborting".into(),
        }),
    ))
}

/// Resume a chain that ended without completing (failed, stopped at its session or budget
/// limit, aborted) or was interrupted: it runs again in this operator from its last handoff, with
/// the settings it was started with (nothing in the request can change them); a chain stopped
/// at a limit gets a new allowance of sessions, as with `operator run --resume`.
#[utoipa::path(post, path = "/api/chains/{id}/resume", tag = "chains",
    params(("id" = String, Path, description = "chain id")),
    responses((status = 202, body = Ack), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn resume(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, axum::Json<Ack>)> {
    find(&st, &id).await?;
    st.control()?.resume_chain(&id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Ack {
            id,
            state: "resuming".into(),
        }),
    ))
}

/// Archive a chain that is not running: it leaves the default list but stays readable
/// (`GET /api/chains/{id}`, `?archived=true`); nothing is deleted.
#[utoipa::path(delete, path = "/api/chains/{id}", tag = "chains",
    params(("id" = String, Path, description = "chain id")),
    responses((status = 200, body = Ack), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<Ack>> {
    let chain = find(&st, &id).await?;
    if !chain.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "chain `{id}` is {}; abort it first",
            chain.status
        )));
    }
    st.store.archive_chain(&id).await?;
    Ok(axum::Json(Ack {
        id,
        state: "archived".into(),
    }))
}

/// A session with its handoff and prompt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetail {
    pub chain_id: String,
    pub session: SessionRecord,
    pub handoff: Option<HandoffRecord>,
    /// The prompt the session started from (task, previous handoff, notes).
    pub prompt: Option<String>,
}

async fn find_session(st: &AppState, id: &str, idx: u32) -> ApiResult<SessionRecord> {
    let chain = find(st, id).await?;
    chain
        .sessions
        .into_iter()
        .find(|s| s.index == idx)
        .ok_or_else(|| ApiError::NotFound(format!("chain `{id}` has no session {idx}")))
}

/// One session: its record, its handoff and its prompt.
#[utoipa::path(get, path = "/api/chains/{id}/sessions/{idx}", tag = "chains",
    params(("id" = String, Path, description = "chain id"), ("idx" = u32, Path, description = "session index, from 1")),
    responses((status = 200, body = SessionDetail), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn session(
    State(st): State<AppState>,
    ApiPath((id, idx)): ApiPath<(String, u32)>,
) -> ApiResult<axum::Json<SessionDetail>> {
    let session = find_session(&st, &id, idx).await?;
    let handoff = st
        .store
        .handoffs(&id)
        .await?
        .into_iter()
        .find(|h| h.index == idx);
    let prompt = st.store.session_prompt(&id, idx).await?;
    Ok(axum::Json(SessionDetail {
        chain_id: id,
        session,
        handoff,
        prompt,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// Byte offset into the transcript (`nextOffset` of the previous page).
    offset: Option<u64>,
    /// Bytes to read (default 65536, at most 1 MiB).
    limit: Option<u64>,
}

/// A page of a session's transcript (its stream-json lines), secrets masked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputPage {
    pub chain_id: String,
    pub index: u32,
    pub offset: u64,
    /// Where the next page starts (poll it while the session runs).
    pub next_offset: u64,
    /// The transcript's size now.
    pub total: u64,
    /// This page reaches the end of what is written so far.
    pub eof: bool,
    /// The session is still running (more may come).
    pub running: bool,
    /// Whole lines, unless one line is longer than the page.
    pub text: String,
}

/// Cuts a page at its last newline so lines stay whole (unless it has none, or is the end).
pub fn page_end(buf: &[u8], at_eof: bool) -> usize {
    if at_eof {
        return buf.len();
    }
    match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => buf.len(),
    }
}

/// A session's output, in pages of bytes.
#[utoipa::path(get, path = "/api/chains/{id}/sessions/{idx}/output", tag = "chains",
    params(("id" = String, Path, description = "chain id"), ("idx" = u32, Path, description = "session index"), OutputQuery),
    responses((status = 200, body = OutputPage), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn output(
    State(st): State<AppState>,
    ApiPath((id, idx)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> ApiResult<axum::Json<OutputPage>> {
    let session = find_session(&st, &id, idx).await?;
    let limit = q.limit.unwrap_or(OUTPUT_PAGE);
    if !(1..=OUTPUT_PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {OUTPUT_PAGE_MAX}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    // The path is built from the stored chain's id and a number, never from request text.
    let path = crate::datadir::DataDir::new(&st.data_dir).transcript(&id, idx);
    let running = session.status == crate::model::SessionStatus::Running;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(axum::Json(OutputPage {
                chain_id: id,
                index: idx,
                offset: 0,
                next_offset: 0,
                total: 0,
                eof: true,
                running,
                text: String::new(),
            }));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let total = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    if offset > total {
        return Err(ApiError::BadRequest(format!(
            "`offset` {offset} is past the end of the output ({total} bytes)"
        )));
    }
    file.seek(SeekFrom::Start(offset))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let want = limit.min(total - offset);
    let mut buf = Vec::with_capacity(want as usize);
    (&mut file)
        .take(want)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let end = page_end(&buf, offset + buf.len() as u64 >= total);
    buf.truncate(end);
    let next_offset = offset + buf.len() as u64;
    let text = String::from_utf8_lossy(&buf);
    Ok(axum::Json(OutputPage {
        chain_id: id,
        index: idx,
        offset,
        next_offset,
        total,
        eof: next_offset >= total,
        running,
        text: crate::redact::redact(&text).into_owned(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this journal id.
    after: Option<i64>,
    /// At most this many (default 200, at most 1000).
    limit: Option<u32>,
}

/// A chain's journal: started, sessions, retries, waits, pauses, its end.
#[utoipa::path(get, path = "/api/chains/{id}/events", tag = "chains",
    params(("id" = String, Path, description = "chain id"), EventsQuery),
    responses((status = 200, body = [EventRecord]), (status = 404, body = super::error::ErrorBody)))]
pub async fn events(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<axum::Json<Vec<EventRecord>>> {
    find(&st, &id).await?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "`limit` must be from 1 to 1000".into(),
        ));
    }
    Ok(axum::Json(
        st.store
            .events(Some(&id), q.after.unwrap_or(0), limit)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn cli_only_settings_are_forbidden_whatever_their_spelling() {
        for key in [
            "permissionMode",
            "permission_mode",
            "workdir",
            "agent",
            "claudeBin",
            "sim",
        ] {
            let err = parse_start(&body(serde_json::json!({"task": "t", key: "x"})), &["task"])
                .unwrap_err();
            assert!(
                matches!(err, ApiError::Forbidden(ref m) if m.contains("command line")),
                "{key}: {err:?}"
            );
        }
        let err = parse_start(
            &body(serde_json::json!({"task": "t", "model": "bypassPermissions"})),
            &["task"],
        )
        .unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
    }

    #[test]
    fn settings_become_overrides_and_typos_get_suggestions() {
        let r = parse_start(
            &body(serde_json::json!({"task": " fix it ", "model": "opus", "maxTurns": 5, "maxBudgetUsd": 1.5})),
            &["task", "name"],
        )
        .unwrap();
        assert_eq!(r.task.as_deref(), Some("fix it"));
        assert!(
            r.overrides
                .contains(&("max_turns".into(), serde_json::json!(5)))
        );
        let err = parse_start(
            &body(serde_json::json!({"task": "t", "maxTurn": 5})),
            &["task"],
        )
        .unwrap_err();
        assert!(
            matches!(err, ApiError::Unprocessable(ref m) if m.contains("did you mean `maxTurns`")),
            "{err:?}"
        );
        for bad in [
            serde_json::json!({"task": ""}),
            serde_json::json!({"task": "t", "maxTurns": -1}),
            serde_json::json!({"task": "t", "maxBudgetUsd": 0}),
            serde_json::json!({"task": "t", "model": "a b"}),
            serde_json::json!({"task": "t", "name": "../x"}),
        ] {
            assert!(
                matches!(
                    parse_start(&body(bad.clone()), &["task", "name"]),
                    Err(ApiError::Unprocessable(_))
                ),
                "{bad}"
            );
        }
        // `mission` is not a key of this endpoint.
        assert!(
            parse_start(
                &body(serde_json::json!({"task": "t", "mission": "demo"})),
                &["task"]
            )
            .is_err()
        );
    }

    #[test]
    fn since_takes_a_duration_a_date_or_a_time() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        assert_eq!(
            since_bound("24h", now).unwrap(),
            humantime::format_rfc3339_millis(now - std::time::Duration::from_secs(86_400))
                .to_string()
        );
        assert_eq!(
            since_bound("2026-12-01", now).unwrap(),
            "2026-12-01T00:00:00.000Z"
        );
        assert_eq!(
            since_bound("2026-12-01T10:00:00+02:00", now).unwrap(),
            "2026-12-01T08:00:00.000Z"
        );
        let e = since_bound("yesterday", now).unwrap_err();
        assert!(e.contains("`24h`") && e.contains("yesterday"), "{e}");
        assert!(since_bound("100000000000d", now).is_err());
        assert!(since_bound("1969-12-31", now).is_err());
        assert!(since_bound("2100-01-01T00:00:00Z", now).is_ok());
    }

    #[test]
    fn output_pages_end_on_whole_lines() {
        assert_eq!(page_end(b"a\nbb\nccc", false), 5);
        assert_eq!(page_end(b"a\nbb\nccc", true), 8);
        assert_eq!(page_end(b"no newline", false), 10);
    }
}
