//! `/api/chains/{id}/approvals`: the tool calls a chain holds for a person, and a person's answer
//! (the running chain picks it up from the store). An answer settles one held call; nothing here
//! can change a chain's permission rules.

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::chains::find;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult};
use super::journal::origin;
use crate::permissions::Approval;
use crate::store::approvals::{self, ApprovalError};

/// Body of `POST /api/chains/{id}/approvals/{approval_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// `approve` or `deny`.
    pub decision: String,
    /// What the agent is told with a denial.
    #[serde(default)]
    pub message: Option<String>,
}

/// The chain's held tool calls, pending and settled, oldest first.
#[utoipa::path(get, path = "/api/chains/{id}/approvals", tag = "chains",
    params(("id" = String, Path, description = "chain id")),
    responses((status = 200, body = Vec<Approval>), (status = 404, body = super::error::ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<Vec<Approval>>> {
    find(&st, &id).await?;
    Ok(axum::Json(approvals::list(&*st.store, Some(&id)).await?))
}

/// Answers one held call (`approve` or `deny`); 409 when it was already settled.
pub async fn settle(
    st: &AppState,
    id: &str,
    approval: &str,
    approve: bool,
    message: Option<&str>,
    by: &str,
) -> ApiResult<Approval> {
    find(st, id).await?;
    if !approval.starts_with("ap-")
        || approval.len() > 16
        || !approval[3..].chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(ApiError::BadRequest(format!(
            "`{approval}` is not an approval id (ap-…)"
        )));
    }
    if message.is_some_and(|m| m.len() > 2000) {
        return Err(ApiError::Unprocessable(
            "`message` is longer than 2,000 characters".into(),
        ));
    }
    let done = approvals::answer(&*st.store, id, Some(approval), approve, by, message)
        .await
        .map_err(|e| match e {
            ApprovalError::NoSuch { .. } => ApiError::NotFound(e.to_string()),
            ApprovalError::Answered(_) => ApiError::Conflict(e.to_string()),
            ApprovalError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        })?;
    st.bus
        .emit(
            Some(id),
            Some(done.session),
            crate::events::Body::Approval {
                approval_id: done.id.clone(),
                status: done.status.as_str().to_string(),
                origin: by.to_string(),
            },
        )
        .await;
    Ok(done)
}

/// Approve or deny a tool call the chain holds for a person.
#[utoipa::path(post, path = "/api/chains/{id}/approvals/{approval_id}", tag = "chains",
    request_body = AnswerBody,
    params(("id" = String, Path, description = "chain id"),
        ("approval_id" = String, Path, description = "approval id (ap-…)")),
    responses((status = 200, body = Approval), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn answer(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiPath((id, approval)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<AnswerBody>,
) -> ApiResult<axum::Json<Approval>> {
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiError::Unprocessable(format!(
                "`decision` is `{other}`; expected `approve` or `deny`"
            )));
        }
    };
    let done = settle(
        &st,
        &id,
        &approval,
        approve,
        body.message.as_deref(),
        origin(&headers),
    )
    .await?;
    Ok(axum::Json(done))
}
