//! The PostgreSQL store, for fleets of workers over one database: the same behaviour as the
//! SQLite store (the same store tests run against both), numbered migrations tracked in a
//! `schema_version` table, one small transaction per write. The fleet's leasing (claims, fences,
//! heartbeats, NOTIFY) is in [`lease`].

mod lease;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{ChainQuery, Fleet, Holding, NewChain, SessionStart, Store, StoreError, StoreResult};
use crate::model::{
    ChainRecord, ChainStatus, ErrorKind, EventRecord, HandoffRecord, SessionRecord, SessionStatus,
    Totals, now_rfc3339,
};

/// Each entry moves the schema one version up; never edit a released one. Times are RFC 3339
/// text, as in SQLite, so both stores order and compare them the same way.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's migrations 1-5.
    r#"
    CREATE TABLE chains (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mission TEXT,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        config TEXT NOT NULL,
        archived BOOLEAN NOT NULL DEFAULT FALSE,
        owner_pid BIGINT,
        session_base BIGINT NOT NULL DEFAULT 0,
        verify TEXT
    );
    CREATE INDEX chains_by_start ON chains (archived, started_at DESC, id DESC);
    CREATE INDEX chains_by_status ON chains (status, started_at DESC);
    CREATE INDEX chains_by_time ON chains (started_at DESC, id DESC);
    CREATE TABLE sessions (
        chain_id TEXT NOT NULL REFERENCES chains (id),
        idx BIGINT NOT NULL,
        session_id TEXT,
        status TEXT NOT NULL,
        turns BIGINT NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        duration_ms BIGINT NOT NULL DEFAULT 0,
        hit_max_turns BOOLEAN NOT NULL DEFAULT FALSE,
        pre_compacted BOOLEAN NOT NULL DEFAULT FALSE,
        handoff_complete BOOLEAN NOT NULL DEFAULT FALSE,
        handoff_synthetic BOOLEAN NOT NULL DEFAULT FALSE,
        asked_again BOOLEAN NOT NULL DEFAULT FALSE,
        handoff_file TEXT,
        error TEXT,
        error_kind TEXT,
        prompt TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        attempts BIGINT NOT NULL DEFAULT 1,
        agent_pgid BIGINT,
        agent_program TEXT,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE INDEX sessions_by_start ON sessions (started_at);
    CREATE TABLE handoffs (
        chain_id TEXT NOT NULL REFERENCES chains (id),
        idx BIGINT NOT NULL,
        text TEXT NOT NULL,
        complete BOOLEAN NOT NULL,
        synthetic BOOLEAN NOT NULL,
        reason TEXT,
        file TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        chain_id TEXT,
        session_idx BIGINT,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX events_by_chain ON events (chain_id, id);
    CREATE TABLE flags (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: fleets. A chain is claimed by one worker at a time, for a lease renewed by heartbeat;
    // `fence` grows on every claim and every write of a worker checks it.
    r#"
    ALTER TABLE chains ADD COLUMN worker TEXT;
    ALTER TABLE chains ADD COLUMN lease_until TIMESTAMPTZ;
    ALTER TABLE chains ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX chains_claimable ON chains (status, started_at) WHERE NOT archived;
    ALTER TABLE sessions ADD COLUMN worker TEXT;
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        capacity BIGINT NOT NULL,
        load BIGINT NOT NULL DEFAULT 0,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    "#,
    // 3: claims walk an index in order instead of sorting every live chain: queued chains
    // nobody holds by start time, and held chains by lease end.
    r#"
    DROP INDEX chains_claimable;
    CREATE INDEX chains_queued ON chains (started_at, id)
        WHERE worker IS NULL AND status = 'queued' AND NOT archived;
    CREATE INDEX chains_leases ON chains (lease_until) WHERE lease_until IS NOT NULL;
    ALTER TABLE sessions ADD COLUMN account TEXT;
    CREATE INDEX sessions_by_account ON sessions (account, started_at);
    "#,
];

/// The channel `run --enqueue` notifies and idle fleet workers listen on.
pub const QUEUE_CHANNEL: &str = "operator_queue";

/// Statuses of chains that are not over (a worker may hold or claim them).
const LIVE: &str = "('queued', 'running', 'paused', 'waiting', 'awaiting-approval', 'awaiting-checks', 'merging', 'waiting-limit', 'interrupted')";

/// Serialises migrations of one database across processes (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6f70_6572_6174_6f72; // "operator"

/// The PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// This process's claims: chain id → fence. Writes for these chains check the fence.
    fences: Arc<RwLock<HashMap<String, i64>>>,
    /// Who creates chains here and runs them itself (`operator run`): such chains are never
    /// claimed by a worker. `None`: chains are left queued for the fleet (`--enqueue`, serve).
    owner: Option<String>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and migrates the database.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let store = Self {
            pool,
            fences: Arc::default(),
            owner: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Chains created from now on are run by `owner` itself and never claimed by a worker.
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM schema_version")
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pool, for benches and tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

super::rows::row_mappers!(PgRow);

/// Refuses a session start that would take the account over a cap (`AccountBusy`), holding
/// the account's advisory lock until the transaction ends.
async fn account_caps(
    tx: &mut Transaction<'static, Postgres>,
    a: &super::SessionAccount,
    chain_id: &str,
) -> StoreResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(&a.id)
        .execute(&mut **tx)
        .await?;
    if let Some(max) = a.max_running {
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT chain_id) FROM sessions \
             WHERE account = $1 AND status = 'running' AND chain_id <> $2",
        )
        .bind(&a.id)
        .bind(chain_id)
        .fetch_one(&mut **tx)
        .await?;
        if running >= i64::from(max) {
            return Err(StoreError::AccountBusy {
                reason: format!("{max} session(s) of this account already run in the fleet"),
            });
        }
    }
    if let Some(max) = a.max_per_hour {
        let hour_ago = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() - Duration::from_secs(3600),
        )
        .to_string();
        let started: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE account = $1 AND started_at >= $2",
        )
        .bind(&a.id)
        .bind(hour_ago)
        .fetch_one(&mut **tx)
        .await?;
        if started >= i64::from(max) {
            return Err(StoreError::AccountBusy {
                reason: format!(
                    "{max} session(s) of this account started in the fleet in the last hour"
                ),
            });
        }
    }
    Ok(())
}

/// A chain row with its totals, aggregated from its sessions (indexed by chain id).
const CHAIN_SELECT: &str = "SELECT c.*, \
    (SELECT COUNT(*) FROM sessions s WHERE s.chain_id = c.id) AS n_sessions, \
    (SELECT COALESCE(SUM(turns), 0)::BIGINT FROM sessions s WHERE s.chain_id = c.id) AS n_turns, \
    (SELECT COALESCE(SUM(cost_usd), 0.0) FROM sessions s WHERE s.chain_id = c.id) AS sum_cost, \
    (SELECT COALESCE(SUM(duration_ms), 0)::BIGINT FROM sessions s WHERE s.chain_id = c.id) AS sum_duration \
    FROM chains c";

async fn touch(tx: &mut Transaction<'_, Postgres>, chain_id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE chains SET updated_at = $1 WHERE id = $2")
        .bind(now_rfc3339())
        .bind(chain_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_chain(&self, c: &NewChain) -> StoreResult<()> {
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO chains \
             (id, name, mission, task, status, started_at, updated_at, config, worker) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
        )
        .bind(&c.id)
        .bind(&c.name)
        .bind(&c.mission)
        .bind(&c.task)
        .bind(c.status.as_str())
        .bind(&now)
        .bind(c.config.to_string())
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_chain(&self, id: &str) -> StoreResult<Option<ChainRecord>> {
        let sql = format!("{CHAIN_SELECT} WHERE c.id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut chain = chain_from_row(&row)?;
        chain.sessions = self.sessions(id).await?;
        Ok(Some(chain))
    }

    async fn list_chains(&self, q: &ChainQuery) -> StoreResult<Vec<ChainRecord>> {
        // The cursor is the id of the last chain of the previous page; order is
        // (started_at, id) descending so the cursor is stable under equal timestamps.
        // The page's ids are chosen first (walking the time index, no sort), so the totals
        // are aggregated for the page's chains only.
        let sql = format!(
            "{CHAIN_SELECT} JOIN (SELECT id AS page_id FROM chains \
               WHERE ($1 IS NULL OR status = $1) AND ($2 OR NOT archived) \
               AND ($3 IS NULL OR (started_at, id) < \
                    (SELECT started_at, id FROM chains WHERE id = $3)) \
               AND ($5::TEXT IS NULL OR mission = $5) AND ($6::TEXT IS NULL OR started_at >= $6) \
               ORDER BY started_at DESC, id DESC LIMIT $4) p ON p.page_id = c.id \
             ORDER BY c.started_at DESC, c.id DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(q.status.map(|s| s.as_str()))
            .bind(q.include_archived)
            .bind(q.before.as_deref())
            .bind(i64::from(if q.limit == 0 {
                super::KEEP_UNARCHIVED
            } else {
                q.limit
            }))
            .bind(q.mission.as_deref())
            .bind(q.since.as_deref())
            .fetch_all(&self.pool)
            .await?;
        let mut chains = rows
            .iter()
            .map(chain_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        if q.with_sessions {
            for c in &mut chains {
                c.sessions = self.sessions(&c.id).await?;
            }
        }
        Ok(chains)
    }

    async fn set_chain_status(
        &self,
        id: &str,
        status: ChainStatus,
        reason: Option<&str>,
        owner_pid: Option<u32>,
    ) -> StoreResult<()> {
        self.fenced_execute(
            id,
            sqlx::query(
                "UPDATE chains SET status = $1, reason = $2, updated_at = $3, \
                 owner_pid = COALESCE($4, owner_pid) WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(reason)
            .bind(now_rfc3339())
            .bind(owner_pid.map(i64::from))
            .bind(id),
        )
        .await
    }

    async fn set_chain_config(&self, id: &str, config: &serde_json::Value) -> StoreResult<()> {
        self.fenced_execute(
            id,
            sqlx::query("UPDATE chains SET config = $1, updated_at = $2 WHERE id = $3")
                .bind(config.to_string())
                .bind(now_rfc3339())
                .bind(id),
        )
        .await
    }

    async fn chain_owner(&self, id: &str) -> StoreResult<Option<u32>> {
        let row = sqlx::query("SELECT owner_pid FROM chains WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten())
            .map(|p| p as u32))
    }

    async fn set_session_base(&self, id: &str, base: u32) -> StoreResult<()> {
        self.fenced_execute(
            id,
            sqlx::query("UPDATE chains SET session_base = $1 WHERE id = $2")
                .bind(i64::from(base))
                .bind(id),
        )
        .await
    }

    async fn session_base(&self, id: &str) -> StoreResult<u32> {
        let row = sqlx::query("SELECT session_base FROM chains WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0) as u32)
    }

    async fn start_session(&self, s: &SessionStart) -> StoreResult<()> {
        let mut tx = self.fenced(&s.chain_id).await?;
        if let Some(a) = &s.account
            && (a.max_running.is_some() || a.max_per_hour.is_some())
        {
            // The fleet's caps, checked and taken in one step: workers starting sessions of
            // the same account at once queue on the account's lock.
            account_caps(&mut tx, a, &s.chain_id).await?;
        }
        if s.attempt <= 1 {
            // A new session: its index must not exist yet.
            sqlx::query(
                "INSERT INTO sessions (chain_id, idx, status, prompt, started_at, account, worker) \
                 VALUES ($1, $2, 'running', $3, $4, $5, (SELECT worker FROM chains WHERE id = $1))",
            )
            .bind(&s.chain_id)
            .bind(i64::from(s.index))
            .bind(&s.prompt)
            .bind(&s.started_at)
            .bind(s.account.as_ref().map(|a| a.id.as_str()))
            .execute(&mut *tx)
            .await?;
        } else {
            let done = sqlx::query(
                "UPDATE sessions SET status = 'running', attempts = $1, prompt = $2, \
                 error = NULL, error_kind = NULL, ended_at = NULL, account = $5, \
                 worker = (SELECT worker FROM chains WHERE id = $3) \
                 WHERE chain_id = $3 AND idx = $4 AND status = 'failed'",
            )
            .bind(i64::from(s.attempt))
            .bind(&s.prompt)
            .bind(&s.chain_id)
            .bind(i64::from(s.index))
            .bind(s.account.as_ref().map(|a| a.id.as_str()))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Corrupt(format!(
                    "retry of session {} of chain {}: no failed session to retry",
                    s.index, s.chain_id
                )));
            }
        }
        touch(&mut tx, &s.chain_id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_session(
        &self,
        chain_id: &str,
        s: &SessionRecord,
        handoff: Option<&HandoffRecord>,
    ) -> StoreResult<()> {
        let mut tx = self.fenced(chain_id).await?;
        sqlx::query(
            "UPDATE sessions SET session_id = $1, status = $2, turns = $3, cost_usd = $4, \
             duration_ms = $5, hit_max_turns = $6, pre_compacted = $7, handoff_complete = $8, \
             handoff_synthetic = $9, asked_again = $10, handoff_file = $11, error = $12, \
             error_kind = $13, ended_at = $14, attempts = $17 WHERE chain_id = $15 AND idx = $16",
        )
        .bind(&s.session_id)
        .bind(s.status.as_str())
        .bind(i64::from(s.turns))
        .bind(s.cost_usd)
        .bind(s.duration_ms as i64)
        .bind(s.hit_max_turns)
        .bind(s.pre_compacted)
        .bind(s.handoff_complete)
        .bind(s.handoff_synthetic)
        .bind(s.asked_again)
        .bind(&s.handoff_file)
        .bind(&s.error)
        .bind(s.error_kind.map(|k| match k {
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
        }))
        .bind(&s.ended_at)
        .bind(chain_id)
        .bind(i64::from(s.index))
        .bind(i64::from(s.attempts))
        .execute(&mut *tx)
        .await?;
        if let Some(h) = handoff {
            sqlx::query(
                "INSERT INTO handoffs \
                 (chain_id, idx, text, complete, synthetic, reason, file, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (chain_id, idx) DO UPDATE \
                 SET text = EXCLUDED.text, complete = EXCLUDED.complete, \
                 synthetic = EXCLUDED.synthetic, reason = EXCLUDED.reason, \
                 file = EXCLUDED.file, created_at = EXCLUDED.created_at",
            )
            .bind(&h.chain_id)
            .bind(i64::from(h.index))
            .bind(&h.text)
            .bind(h.complete)
            .bind(h.synthetic)
            .bind(&h.reason)
            .bind(&h.file)
            .bind(&h.created_at)
            .execute(&mut *tx)
            .await?;
        }
        touch(&mut tx, chain_id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cost_since(&self, since: &str) -> StoreResult<(f64, u32)> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(cost_usd), 0.0), COUNT(*) FROM sessions WHERE started_at >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get::<i64, _>(1)? as u32))
    }

    async fn set_session_agent(
        &self,
        chain_id: &str,
        index: u32,
        pgid: i32,
        program: &str,
    ) -> StoreResult<()> {
        self.fenced_execute(
            chain_id,
            sqlx::query(
                "UPDATE sessions SET agent_pgid = $1, agent_program = $2 \
                 WHERE chain_id = $3 AND idx = $4",
            )
            .bind(i64::from(pgid))
            .bind(program)
            .bind(chain_id)
            .bind(i64::from(index)),
        )
        .await
    }

    async fn running_agents(&self) -> StoreResult<Vec<super::RunningAgent>> {
        let rows = sqlx::query(
            "SELECT s.chain_id, s.idx, s.agent_pgid, s.agent_program, c.owner_pid FROM sessions s \
             JOIN chains c ON c.id = s.chain_id \
             WHERE s.status = 'running' AND s.agent_pgid IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(super::RunningAgent {
                    chain_id: r.try_get("chain_id")?,
                    index: r.try_get::<i64, _>("idx")? as u32,
                    pgid: r.try_get::<i64, _>("agent_pgid")? as i32,
                    program: r
                        .try_get::<Option<String>, _>("agent_program")?
                        .unwrap_or_default(),
                    owner_pid: r.try_get::<Option<i64>, _>("owner_pid")?.map(|p| p as u32),
                })
            })
            .collect()
    }

    async fn sessions(&self, chain_id: &str) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query("SELECT * FROM sessions WHERE chain_id = $1 ORDER BY idx")
            .bind(chain_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn session_prompt(&self, chain_id: &str, index: u32) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT prompt FROM sessions WHERE chain_id = $1 AND idx = $2")
            .bind(chain_id)
            .bind(i64::from(index))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn last_handoff(&self, chain_id: &str) -> StoreResult<Option<HandoffRecord>> {
        let row =
            sqlx::query("SELECT * FROM handoffs WHERE chain_id = $1 ORDER BY idx DESC LIMIT 1")
                .bind(chain_id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(handoff_from_row).transpose()
    }

    async fn handoffs(&self, chain_id: &str) -> StoreResult<Vec<HandoffRecord>> {
        let rows = sqlx::query("SELECT * FROM handoffs WHERE chain_id = $1 ORDER BY idx")
            .bind(chain_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(handoff_from_row).collect()
    }

    async fn append_event(
        &self,
        chain_id: Option<&str>,
        session_index: Option<u32>,
        kind: &str,
        data: &serde_json::Value,
    ) -> StoreResult<i64> {
        let mut tx = match chain_id {
            Some(c) => self.fenced(c).await?,
            None => self.pool.begin().await?,
        };
        let row = sqlx::query(
            "INSERT INTO events (chain_id, session_idx, kind, data, at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(chain_id)
        .bind(session_index.map(i64::from))
        .bind(kind)
        .bind(data.to_string())
        .bind(now_rfc3339())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.try_get(0)?)
    }

    async fn events(
        &self,
        chain_id: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE ($1 IS NULL OR chain_id = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(chain_id)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data")?;
                Ok(EventRecord {
                    id: r.try_get("id")?,
                    chain_id: r.try_get("chain_id")?,
                    session_index: r
                        .try_get::<Option<i64>, _>("session_idx")?
                        .map(|i| i as u32),
                    kind: r.try_get("kind")?,
                    data: serde_json::from_str(&data)
                        .map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    async fn last_event_id(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    async fn archive_old(&self, keep: u32) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE chains SET archived = TRUE WHERE NOT archived \
             AND status NOT IN ('running', 'queued', 'paused', 'waiting', 'awaiting-approval', 'awaiting-checks', 'merging') \
             AND id NOT IN (SELECT id FROM chains ORDER BY started_at DESC, id DESC LIMIT $1)",
        )
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn get_flag(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM flags WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn flags_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT key, value FROM flags WHERE left(key, length($1)) = $1 ORDER BY key",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn set_flag(&self, key: &str, value: Option<&str>) -> StoreResult<()> {
        match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO flags (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(key)
                .bind(v)
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM flags WHERE key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(())
    }

    async fn set_chain_verify(
        &self,
        id: &str,
        results: &[crate::model::GateResult],
    ) -> StoreResult<()> {
        let v = serde_json::to_string(results)
            .map_err(|e| StoreError::Corrupt(format!("verify results: {e}")))?;
        self.fenced_execute(
            id,
            sqlx::query("UPDATE chains SET verify = $1 WHERE id = $2")
                .bind(v)
                .bind(id),
        )
        .await
    }

    async fn archive_chain(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE chains SET archived = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_by_status(&self) -> StoreResult<Vec<(ChainStatus, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM chains GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                Ok((
                    ChainStatus::from_str(&s).map_err(StoreError::Corrupt)?,
                    r.try_get::<i64, _>(1)? as u64,
                ))
            })
            .collect()
    }

    async fn fleet(&self) -> StoreResult<Fleet> {
        let sql = format!(
            "SELECT id, worker, to_char(lease_until AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM chains \
             WHERE worker IS NOT NULL AND status IN {LIVE} ORDER BY started_at DESC, id DESC LIMIT 1000"
        );
        let chains = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Holding {
                    chain_id: r.try_get(0)?,
                    worker: r.try_get(1)?,
                    lease_until: r.try_get(2)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Fleet {
            shared: true,
            workers: self.workers().await?,
            chains,
        })
    }

    async fn account_usage(
        &self,
        account: &str,
        since: &str,
    ) -> StoreResult<Option<super::AccountUsage>> {
        let running = sqlx::query_scalar(
            "SELECT DISTINCT chain_id FROM sessions WHERE account = $1 AND status = 'running'",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        let started = sqlx::query_scalar(
            "SELECT started_at FROM sessions WHERE account = $1 AND started_at >= $2 \
             ORDER BY started_at",
        )
        .bind(account)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(super::AccountUsage { running, started }))
    }

    async fn holder(&self, chain_id: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, Option<String>>("SELECT worker FROM chains WHERE id = $1")
                .bind(chain_id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    async fn wake_workers(&self) -> StoreResult<()> {
        self.notify(QUEUE_CHANNEL).await
    }

    async fn cost_report(&self, by_chain: u32) -> StoreResult<super::CostReport> {
        let w = super::costs::Windows::at(std::time::SystemTime::now());
        let totals = sqlx::query(
            "SELECT COALESCE(SUM(cost_usd), 0.0), COUNT(*), \
             COALESCE(SUM(CASE WHEN started_at >= $1 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= $1 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= $2 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= $2 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= $3 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= $3 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= $4 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= $4 THEN 1 END) FROM sessions",
        )
        .bind(&w.today)
        .bind(&w.week)
        .bind(&w.hour)
        .bind(&w.day)
        .fetch_one(&self.pool)
        .await?;
        let by_mission = sqlx::query(
            "SELECT COALESCE(c.mission, '') AS m, COALESCE(SUM(s.cost_usd), 0.0), COUNT(*) \
             FROM sessions s JOIN chains c ON c.id = s.chain_id GROUP BY m ORDER BY 2 DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_model = sqlx::query(
            "SELECT COALESCE(c.config::jsonb ->> 'model', '?') AS m, \
             COALESCE(SUM(s.cost_usd), 0.0), COUNT(*) \
             FROM sessions s JOIN chains c ON c.id = s.chain_id GROUP BY m ORDER BY 2 DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_chain = sqlx::query(
            "SELECT s.chain_id, c.name, c.status, SUM(s.cost_usd) AS cost, COUNT(*) \
             FROM sessions s JOIN chains c ON c.id = s.chain_id \
             GROUP BY s.chain_id, c.name, c.status ORDER BY cost DESC, s.chain_id LIMIT $1",
        )
        .bind(i64::from(by_chain))
        .fetch_all(&self.pool)
        .await?;
        let by_day = sqlx::query(
            "SELECT substr(started_at, 1, 10) AS d, SUM(cost_usd), COUNT(*) FROM sessions \
             WHERE started_at >= $1 GROUP BY d ORDER BY d",
        )
        .bind(&w.month)
        .fetch_all(&self.pool)
        .await?;
        super::costs::assemble(super::costs::Rows {
            totals,
            by_mission,
            by_model,
            by_chain,
            by_day,
        })
    }
}
