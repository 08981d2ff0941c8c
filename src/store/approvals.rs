//! Tool calls held for a person, kept in the store's flags (`approval:<chain>:<id>`) so that the
//! running chain, the API, the dashboard and `operator approve|deny` in another terminal share them.

use crate::permissions::approval::{self, AnswerError, Approval, ApprovalStatus};

use super::{Store, StoreError};

/// Why an approval could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("chain {chain} has no approval `{id}`")]
    NoSuch { chain: String, id: String },
    #[error("chain {0} has no tool call waiting for approval")]
    NonePending(String),
    #[error("chain {chain} has {} tool calls waiting for approval ({}): name one", ids.len(), ids.join(", "))]
    Several { chain: String, ids: Vec<String> },
    #[error("{0}")]
    Answered(#[from] AnswerError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("approval record {key} is unreadable: {why}")]
    Corrupt { key: String, why: String },
}

fn parse(key: &str, value: &str) -> Result<Approval, ApprovalError> {
    serde_json::from_str(value).map_err(|e| ApprovalError::Corrupt {
        key: key.to_string(),
        why: e.to_string(),
    })
}

/// Writes (or replaces) an approval.
pub async fn save(store: &dyn Store, a: &Approval) -> Result<(), StoreError> {
    let value = serde_json::to_string(a).unwrap_or_default();
    store
        .set_flag(&approval::flag_key(&a.chain_id, &a.id), Some(&value))
        .await
}

/// One approval.
pub async fn load(store: &dyn Store, chain: &str, id: &str) -> Result<Approval, ApprovalError> {
    let key = approval::flag_key(chain, id);
    match store.get_flag(&key).await? {
        Some(v) => parse(&key, &v),
        None => Err(ApprovalError::NoSuch {
            chain: chain.to_string(),
            id: id.to_string(),
        }),
    }
}

/// A chain's approvals (every chain's with `None`), oldest first; unreadable records skipped.
pub async fn list(store: &dyn Store, chain: Option<&str>) -> Result<Vec<Approval>, StoreError> {
    let prefix = match chain {
        Some(c) => approval::chain_prefix(c),
        None => approval::prefix().to_string(),
    };
    let mut out: Vec<Approval> = store
        .flags_with_prefix(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, v)| parse(&k, &v).ok())
        .collect();
    out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// A person's answer to the approval `id` of `chain`, or to its only pending one.
pub async fn answer(
    store: &dyn Store,
    chain: &str,
    id: Option<&str>,
    approve: bool,
    by: &str,
    message: Option<&str>,
) -> Result<Approval, ApprovalError> {
    let current = match id {
        Some(id) => load(store, chain, id).await?,
        None => {
            let mut pending: Vec<Approval> = list(store, Some(chain))
                .await?
                .into_iter()
                .filter(|a| a.status == ApprovalStatus::Pending)
                .collect();
            match pending.len() {
                0 => return Err(ApprovalError::NonePending(chain.to_string())),
                1 => pending.remove(0),
                _ => {
                    return Err(ApprovalError::Several {
                        chain: chain.to_string(),
                        ids: pending.into_iter().map(|a| a.id).collect(),
                    });
                }
            }
        }
    };
    let answered = current.answer(approve, by, message, &crate::model::now_rfc3339())?;
    save(store, &answered).await?;
    Ok(answered)
}
