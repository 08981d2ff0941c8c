//! The store: the `Store` trait over chains, sessions, handoffs and the events journal, and its backends
//! (`sqlite`, embedded default; `postgres` for fleets of workers over one database).
//!
//! Every call is one small transaction: recording a session or an event never rewrites
//! anything else, so the cost of a write does not grow with the number of chains.

pub mod approvals;
mod costs;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{ChainRecord, ChainStatus, EventRecord, HandoffRecord, SessionRecord};

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's own message is in the text and not repeated as a `source` (error chains
    /// printed with `{:#}` said it three times).
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
    #[error(
        "the store was written by a newer operator (schema version {found}, this one knows up to {known})"
    )]
    TooNew { found: i64, known: i64 },
    #[error(
        "store URL {0}: only postgres:// (or postgresql://) URLs are supported; leave it unset for the SQLite store in the data dir"
    )]
    BadUrl(String),
    #[error(
        "chain {chain}: this worker's claim (fence {fence}) was taken over by another worker; the write was refused"
    )]
    Fenced { chain: String, fence: i64 },
    #[error("the account is at its cap across the fleet: {reason}")]
    AccountBusy { reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The store cannot be reached or written now (a full disk, a lock held past the busy
    /// timeout, a read-only file, an I/O error, a database server that is down): the same
    /// request may succeed later.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(d)) => {
                // SQLite's primary codes: BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN; and
                // PostgreSQL's classes 08 (connection), 53 (insufficient resources), 57P (shutdown).
                let code = d.code().unwrap_or_default();
                let primary = code.parse::<i64>().map(|c| c & 0xff);
                matches!(primary, Ok(5 | 6 | 8 | 10 | 13 | 14))
                    || code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
            }
            StoreError::Db(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

/// A chain to create.
#[derive(Debug, Clone)]
pub struct NewChain {
    pub id: String,
    pub name: String,
    pub mission: Option<String>,
    pub task: String,
    pub config: serde_json::Value,
    pub status: ChainStatus,
}

/// Which chains `list_chains` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct ChainQuery {
    pub status: Option<ChainStatus>,
    pub include_archived: bool,
    /// Only chains started strictly before this (id of the last chain of the previous page).
    pub before: Option<String>,
    /// Page size; 0 means the default page of `KEEP_UNARCHIVED` (50).
    pub limit: u32,
    /// Include each chain's sessions (otherwise only totals).
    pub with_sessions: bool,
    /// Only the chains of this mission.
    pub mission: Option<String>,
    /// Only chains started at or after this time (RFC 3339 UTC, as [`crate::model::now_rfc3339`]).
    pub since: Option<String>,
}

/// The session's state recorded at its start, before the agent runs.
#[derive(Debug, Clone)]
pub struct SessionStart {
    pub chain_id: String,
    pub index: u32,
    /// 1 for a new session (its index must be new); more for a retry of the same session.
    pub attempt: u32,
    pub prompt: String,
    pub started_at: String,
    /// The agent account the session uses, with the caps to hold across a fleet.
    pub account: Option<SessionAccount>,
}

/// A session's agent account and the operator's caps on it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionAccount {
    /// A hash of the agent's credentials (never the secret).
    pub id: String,
    /// `max_concurrent_sessions`.
    pub max_running: Option<u32>,
    /// `max_sessions_per_hour`.
    pub max_per_hour: Option<u32>,
}

/// One account's sessions across a fleet (from the shared store).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountUsage {
    /// Chains with a session of the account running now.
    pub running: Vec<String>,
    /// When the account's sessions since the asked time started (RFC 3339, oldest first).
    pub started: Vec<String>,
}

/// The agent of a session recorded as running.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningAgent {
    pub chain_id: String,
    pub index: u32,
    pub pgid: i32,
    pub program: String,
    pub owner_pid: Option<u32>,
}

/// How many chains to keep listed by default; older ones are archived, never deleted.
pub const KEEP_UNARCHIVED: u32 = 50;

/// The persistence the supervisor relies on.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    async fn create_chain(&self, chain: &NewChain) -> StoreResult<()>;
    async fn get_chain(&self, id: &str) -> StoreResult<Option<ChainRecord>>;
    async fn list_chains(&self, q: &ChainQuery) -> StoreResult<Vec<ChainRecord>>;
    /// Sets status and reason; records which process owns the chain while it runs.
    async fn set_chain_status(
        &self,
        id: &str,
        status: ChainStatus,
        reason: Option<&str>,
        owner_pid: Option<u32>,
    ) -> StoreResult<()>;
    /// Replaces the chain's stored settings (after a reload).
    async fn set_chain_config(&self, id: &str, config: &serde_json::Value) -> StoreResult<()>;
    /// The process that last ran the chain, if it recorded one.
    async fn chain_owner(&self, id: &str) -> StoreResult<Option<u32>>;
    /// Sessions of a run are counted from here (set when a finished chain is resumed).
    async fn set_session_base(&self, id: &str, base: u32) -> StoreResult<()>;
    async fn session_base(&self, id: &str) -> StoreResult<u32>;
    async fn start_session(&self, s: &SessionStart) -> StoreResult<()>;
    /// Records a session's end and its handoff in one transaction.
    async fn finish_session(
        &self,
        chain_id: &str,
        s: &SessionRecord,
        handoff: Option<&HandoffRecord>,
    ) -> StoreResult<()>;
    async fn sessions(&self, chain_id: &str) -> StoreResult<Vec<SessionRecord>>;
    /// What all sessions started at or after `since` (RFC 3339) cost, and how many there were.
    async fn cost_since(&self, since: &str) -> StoreResult<(f64, u32)>;
    /// Records the process group of a session's agent.
    async fn set_session_agent(
        &self,
        chain_id: &str,
        index: u32,
        pgid: i32,
        program: &str,
    ) -> StoreResult<()>;
    /// Agents of sessions recorded as running.
    async fn running_agents(&self) -> StoreResult<Vec<RunningAgent>>;
    async fn session_prompt(&self, chain_id: &str, index: u32) -> StoreResult<Option<String>>;
    async fn last_handoff(&self, chain_id: &str) -> StoreResult<Option<HandoffRecord>>;
    async fn handoffs(&self, chain_id: &str) -> StoreResult<Vec<HandoffRecord>>;
    async fn append_event(
        &self,
        chain_id: Option<&str>,
        session_index: Option<u32>,
        kind: &str,
        data: &serde_json::Value,
    ) -> StoreResult<i64>;
    async fn events(
        &self,
        chain_id: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>>;
    /// The newest journal id (0 when the journal is empty).
    async fn last_event_id(&self) -> StoreResult<i64>;
    /// Archives all but the newest `keep` chains that are not running.
    async fn archive_old(&self, keep: u32) -> StoreResult<u64>;
    /// Operator-wide flags that must survive a restart (e.g. `paused`).
    async fn get_flag(&self, key: &str) -> StoreResult<Option<String>>;
    async fn set_flag(&self, key: &str, value: Option<&str>) -> StoreResult<()>;
    /// Flags whose key starts with `prefix` (e.g. a chain's held tool calls), by key.
    async fn flags_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>>;
    /// Records the verify gates' results after a COMPLETE.
    async fn set_chain_verify(
        &self,
        id: &str,
        results: &[crate::model::GateResult],
    ) -> StoreResult<()>;
    /// Archives one chain (it stays readable). `false` if there is no such chain.
    async fn archive_chain(&self, id: &str) -> StoreResult<bool>;
    /// How many chains are in each state (archived included).
    async fn count_by_status(&self) -> StoreResult<Vec<(ChainStatus, u64)>>;
    /// Spending today (UTC), all time, per model, per chain (the `by_chain` most expensive)
    /// and per day over the last 30 days.
    async fn cost_report(&self, by_chain: u32) -> StoreResult<CostReport>;
    /// The fleet sharing this store: its workers and which of them holds each chain that is
    /// not over. Empty for a store no worker can share (SQLite).
    async fn fleet(&self) -> StoreResult<Fleet> {
        Ok(Fleet::default())
    }
    /// The account's running sessions and its sessions started since `since`, across the
    /// fleet; `None` for a store no worker shares (the local scheduler counts alone).
    async fn account_usage(
        &self,
        _account: &str,
        _since: &str,
    ) -> StoreResult<Option<AccountUsage>> {
        Ok(None)
    }
    /// The fleet worker that holds (or last held) the chain; `None` without a fleet.
    async fn holder(&self, _chain_id: &str) -> StoreResult<Option<String>> {
        Ok(None)
    }
    /// Tells idle fleet workers that chains were queued (no-op without a fleet).
    async fn wake_workers(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// A worker as the fleet sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub capacity: u32,
    /// Chains it holds now.
    pub load: u32,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Seconds since its last heartbeat.
    pub silent_secs: f64,
}

/// Which worker holds a chain, and until when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    pub chain_id: String,
    pub worker: String,
    /// RFC 3339; `None` for a chain run by the process that created it (`operator run`).
    pub lease_until: Option<String>,
}

/// `GET /api/fleet`.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    /// The store is shared by workers (PostgreSQL).
    pub shared: bool,
    pub workers: Vec<WorkerRecord>,
    pub chains: Vec<Holding>,
}

/// Cost and session count of one slice of the ledger.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CostLine {
    pub cost_usd: f64,
    pub sessions: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCost {
    pub model: String,
    #[serde(flatten)]
    pub cost: CostLine,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainCost {
    pub chain_id: String,
    pub name: String,
    pub status: ChainStatus,
    #[serde(flatten)]
    pub cost: CostLine,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayCost {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    #[serde(flatten)]
    pub cost: CostLine,
}

/// The cost ledger, as `GET /api/costs` shows it.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CostReport {
    pub today: CostLine,
    /// The last 7 days.
    pub week: CostLine,
    /// The last hour and the last 24 hours, for the burn rate.
    pub last_hour: CostLine,
    pub last_day: CostLine,
    pub all_time: CostLine,
    /// Per mission (`""` for chains started on a task).
    #[serde(default)]
    pub by_mission: Vec<ModelCost>,
    pub by_model: Vec<ModelCost>,
    pub by_chain: Vec<ChainCost>,
    pub by_day: Vec<DayCost>,
    pub daily_cap_usd: Option<f64>,
}

impl CostReport {
    /// What the burn rate forecasts, in lines (`operator costs`, the terminal view).
    pub fn forecast(&self, cap: Option<f64>) -> Vec<String> {
        let r = self;
        let mut out = Vec::new();
        if r.all_time.sessions > 0 {
            out.push(format!(
                "about ${:.4} a session ({} sessions so far)",
                r.all_time.cost_usd / r.all_time.sessions as f64,
                r.all_time.sessions
            ));
        }
        let hourly = r.last_day.cost_usd / 24.0;
        out.push(format!(
            "${:.4} in the last hour; ${hourly:.4} an hour averaged over the last 24 h",
            r.last_hour.cost_usd
        ));
        if let Some(cap) = cap {
            let left = (cap - r.today.cost_usd).max(0.0);
            let rate = r.last_hour.cost_usd.max(hourly);
            out.push(if rate > 0.0 {
                format!(
                    "daily cap ${cap:.2}: ${left:.4} left today, about {:.1} h at the last hour's rate",
                    left / rate
                )
            } else {
                format!("daily cap ${cap:.2}: ${left:.4} left today")
            });
        }
        out
    }
}

pub type SharedStore = Arc<dyn Store>;

/// Stores a chain's new settings (after a reload, or flags given with `--resume`), keeping its
/// place in the mission.
pub async fn update_chain_settings(
    store: &dyn Store,
    id: &str,
    settings: &crate::config::ChainSettings,
) -> StoreResult<()> {
    let Some(c) = store.get_chain(id).await? else {
        return Ok(());
    };
    let after = crate::config::stored::after_of(&c.config);
    store
        .set_chain_config(
            id,
            &crate::config::stored::to_stored(&c.name, &after, settings),
        )
        .await
}

/// A URL the PostgreSQL store takes.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store: PostgreSQL at `url` (`postgres://…`) when one is given, else SQLite in
/// `data_dir`. `owner`: chains created through this store are run by that process itself and
/// never claimed by a fleet worker (`PostgresStore::owned_by`).
pub async fn open(
    data_dir: &std::path::Path,
    url: Option<&str>,
    owner: Option<String>,
) -> StoreResult<SharedStore> {
    match url {
        Some(u) if is_postgres_url(u) => {
            let pg = postgres::PostgresStore::open(u).await?;
            Ok(Arc::new(match owner {
                Some(o) => pg.owned_by(o),
                None => pg,
            }))
        }
        Some(u) => Err(StoreError::BadUrl(crate::model::mask_url(u))),
        None => Ok(Arc::new(sqlite::SqliteStore::open(data_dir).await?)),
    }
}

#[cfg(test)]
mod error_tests {
    use super::StoreError;

    #[tokio::test]
    async fn a_database_error_says_its_cause_once() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let e = sqlx::query("SELECT * FROM no_such_table")
            .execute(&pool)
            .await
            .unwrap_err();
        let e = StoreError::from(e);
        assert!(!e.is_outage(), "a bad query is a bug, not an outage");
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chain.matches("no such table").count(), 1, "{chain}");
    }

    #[tokio::test]
    async fn a_store_locked_by_another_connection_is_an_outage() {
        use sqlx::ConnectOptions;
        let dir = tempfile::tempdir().unwrap();
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("x.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = opts.connect().await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (x); BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .await
            .unwrap();
        let mut other = opts.connect().await.unwrap();
        let e = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(StoreError::from(e).is_outage());
    }
}
