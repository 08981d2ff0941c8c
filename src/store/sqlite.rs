//! The embedded SQLite store: WAL mode, numbered migrations tracked in `PRAGMA user_version`,
//! one small transaction per write.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{ChainQuery, NewChain, SessionStart, Store, StoreError, StoreResult};
use crate::model::{
    ChainRecord, ChainStatus, ErrorKind, EventRecord, HandoffRecord, SessionRecord, SessionStatus,
    Totals, now_rfc3339,
};

/// Each entry moves the schema one version up; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
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
        archived INTEGER NOT NULL DEFAULT 0,
        owner_pid INTEGER,
        session_base INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX chains_by_start ON chains (archived, started_at DESC, id DESC);
    CREATE INDEX chains_by_status ON chains (status, started_at DESC);
    CREATE TABLE sessions (
        chain_id TEXT NOT NULL REFERENCES chains (id),
        idx INTEGER NOT NULL,
        session_id TEXT,
        status TEXT NOT NULL,
        turns INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        hit_max_turns INTEGER NOT NULL DEFAULT 0,
        pre_compacted INTEGER NOT NULL DEFAULT 0,
        handoff_complete INTEGER NOT NULL DEFAULT 0,
        handoff_synthetic INTEGER NOT NULL DEFAULT 0,
        asked_again INTEGER NOT NULL DEFAULT 0,
        handoff_file TEXT,
        error TEXT,
        error_kind TEXT,
        prompt TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE handoffs (
        chain_id TEXT NOT NULL REFERENCES chains (id),
        idx INTEGER NOT NULL,
        text TEXT NOT NULL,
        complete INTEGER NOT NULL,
        synthetic INTEGER NOT NULL,
        reason TEXT,
        file TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain_id TEXT,
        session_idx INTEGER,
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
    // 2: retries of a session keep its index and count attempts.
    r#"
    ALTER TABLE sessions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    "#,
    // 3: the agent's process group, so one left behind by a dead operator can be stopped.
    r#"
    ALTER TABLE sessions ADD COLUMN agent_pgid INTEGER;
    ALTER TABLE sessions ADD COLUMN agent_program TEXT;
    "#,
    // 4: pages of all chains (archived included) in time order without a sort.
    r#"
    CREATE INDEX chains_by_time ON chains (started_at DESC, id DESC);
    "#,
    // 5: the verify gates' last results.
    r#"
    ALTER TABLE chains ADD COLUMN verify TEXT;
    "#,
];

/// The SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/operator.db` and migrates it.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        Self::open_file(&crate::datadir::DataDir::new(data_dir).db()).await
    }

    /// Opens and migrates the database. A new database opened by several processes at once
    /// (an `operator run` starting while `operator list` reads) can answer "database is
    /// locked" while another switches it to WAL or migrates it, before the busy timeout
    /// applies: such an open is retried for a few seconds.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        let mut attempt = 0u32;
        loop {
            match Self::try_open(path).await {
                Err(StoreError::Db(e)) if is_busy(&e) && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 + 10 * u64::from(attempt.min(10))))
                        .await;
                }
                other => return other,
            }
        }
    }

    async fn try_open(path: &Path) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives a crash of the process (kill -9),
            // which is the failure the supervisor must survive; only a power loss can
            // lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Each connection is a thread with its own page cache and statement cache: a few
            // small ones are plenty for one writer (measured in benches/memory.rs).
            .pragma("cache_size", "-512")
            .statement_cache_capacity(32);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            // A transaction that failed (disk full, an I/O error) can leave its connection holding
            // the write lock, or believing it is in a transaction SQLite already rolled back; every
            // later write would then wait out the busy timeout. Such a connection is closed
            // (which rolls back whatever it held) instead of going back to the pool.
            .after_release(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(opts)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        // IMMEDIATE: two processes opening a new store at once must not both migrate it.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query("PRAGMA user_version")
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
            let bump = format!("PRAGMA user_version = {}", i + 1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(bump))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pool, for benches and tests that inspect the database directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("5" | "6")),
        _ => false,
    }
}

super::rows::row_mappers!(SqliteRow);

/// A chain row with its totals, aggregated from its sessions (indexed by chain id).
const CHAIN_SELECT: &str = "SELECT c.*, \
    (SELECT COUNT(*) FROM sessions s WHERE s.chain_id = c.id) AS n_sessions, \
    (SELECT COALESCE(SUM(turns), 0) FROM sessions s WHERE s.chain_id = c.id) AS n_turns, \
    (SELECT COALESCE(SUM(cost_usd), 0.0) FROM sessions s WHERE s.chain_id = c.id) AS sum_cost, \
    (SELECT COALESCE(SUM(duration_ms), 0) FROM sessions s WHERE s.chain_id = c.id) AS sum_duration \
    FROM chains c";

async fn touch(tx: &mut Transaction<'_, Sqlite>, chain_id: &str) -> StoreResult<()> {
    sqlx::query("UPDATE chains SET updated_at = ?1 WHERE id = ?2")
        .bind(now_rfc3339())
        .bind(chain_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_chain(&self, c: &NewChain) -> StoreResult<()> {
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO chains (id, name, mission, task, status, started_at, updated_at, config) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
        )
        .bind(&c.id)
        .bind(&c.name)
        .bind(&c.mission)
        .bind(&c.task)
        .bind(c.status.as_str())
        .bind(&now)
        .bind(c.config.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_chain(&self, id: &str) -> StoreResult<Option<ChainRecord>> {
        let sql = format!("{CHAIN_SELECT} WHERE c.id = ?1");
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
               WHERE (?1 IS NULL OR status = ?1) AND (?2 OR archived = 0) \
               AND (?3 IS NULL OR (started_at, id) < \
                    (SELECT started_at, id FROM chains WHERE id = ?3)) \
               AND (?5 IS NULL OR mission = ?5) AND (?6 IS NULL OR started_at >= ?6) \
               ORDER BY started_at DESC, id DESC LIMIT ?4) p ON p.page_id = c.id \
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
        sqlx::query(
            "UPDATE chains SET status = ?1, reason = ?2, updated_at = ?3, \
             owner_pid = COALESCE(?4, owner_pid) WHERE id = ?5",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(now_rfc3339())
        .bind(owner_pid.map(i64::from))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_chain_config(&self, id: &str, config: &serde_json::Value) -> StoreResult<()> {
        sqlx::query("UPDATE chains SET config = ?1, updated_at = ?2 WHERE id = ?3")
            .bind(config.to_string())
            .bind(now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn chain_owner(&self, id: &str) -> StoreResult<Option<u32>> {
        let row = sqlx::query("SELECT owner_pid FROM chains WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten())
            .map(|p| p as u32))
    }

    async fn set_session_base(&self, id: &str, base: u32) -> StoreResult<()> {
        sqlx::query("UPDATE chains SET session_base = ?1 WHERE id = ?2")
            .bind(i64::from(base))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_base(&self, id: &str) -> StoreResult<u32> {
        let row = sqlx::query("SELECT session_base FROM chains WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0) as u32)
    }

    async fn start_session(&self, s: &SessionStart) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        if s.attempt <= 1 {
            // A new session: its index must not exist yet.
            sqlx::query(
                "INSERT INTO sessions (chain_id, idx, status, prompt, started_at) \
                 VALUES (?1, ?2, 'running', ?3, ?4)",
            )
            .bind(&s.chain_id)
            .bind(i64::from(s.index))
            .bind(&s.prompt)
            .bind(&s.started_at)
            .execute(&mut *tx)
            .await?;
        } else {
            let done = sqlx::query(
                "UPDATE sessions SET status = 'running', attempts = ?1, prompt = ?2, \
                 error = NULL, error_kind = NULL, ended_at = NULL \
                 WHERE chain_id = ?3 AND idx = ?4 AND status = 'failed'",
            )
            .bind(i64::from(s.attempt))
            .bind(&s.prompt)
            .bind(&s.chain_id)
            .bind(i64::from(s.index))
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sessions SET session_id = ?1, status = ?2, turns = ?3, cost_usd = ?4, \
             duration_ms = ?5, hit_max_turns = ?6, pre_compacted = ?7, handoff_complete = ?8, \
             handoff_synthetic = ?9, asked_again = ?10, handoff_file = ?11, error = ?12, \
             error_kind = ?13, ended_at = ?14, attempts = ?17 WHERE chain_id = ?15 AND idx = ?16",
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
                "INSERT OR REPLACE INTO handoffs \
                 (chain_id, idx, text, complete, synthetic, reason, file, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
            "SELECT COALESCE(SUM(cost_usd), 0.0), COUNT(*) FROM sessions WHERE started_at >= ?1",
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
        sqlx::query("UPDATE sessions SET agent_pgid = ?1, agent_program = ?2 WHERE chain_id = ?3 AND idx = ?4")
            .bind(pgid)
            .bind(program)
            .bind(chain_id)
            .bind(i64::from(index))
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let rows = sqlx::query("SELECT * FROM sessions WHERE chain_id = ?1 ORDER BY idx")
            .bind(chain_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn session_prompt(&self, chain_id: &str, index: u32) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT prompt FROM sessions WHERE chain_id = ?1 AND idx = ?2")
            .bind(chain_id)
            .bind(i64::from(index))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn last_handoff(&self, chain_id: &str) -> StoreResult<Option<HandoffRecord>> {
        let row =
            sqlx::query("SELECT * FROM handoffs WHERE chain_id = ?1 ORDER BY idx DESC LIMIT 1")
                .bind(chain_id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(handoff_from_row).transpose()
    }

    async fn handoffs(&self, chain_id: &str) -> StoreResult<Vec<HandoffRecord>> {
        let rows = sqlx::query("SELECT * FROM handoffs WHERE chain_id = ?1 ORDER BY idx")
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
        let row = sqlx::query(
            "INSERT INTO events (chain_id, session_idx, kind, data, at) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        )
        .bind(chain_id)
        .bind(session_index.map(i64::from))
        .bind(kind)
        .bind(data.to_string())
        .bind(now_rfc3339())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn events(
        &self,
        chain_id: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE (?1 IS NULL OR chain_id = ?1) AND id > ?2 \
             ORDER BY id LIMIT ?3",
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
            "UPDATE chains SET archived = 1 WHERE archived = 0 \
             AND status NOT IN ('running', 'queued', 'paused', 'waiting', 'awaiting-approval', 'awaiting-checks', 'merging') \
             AND id NOT IN (SELECT id FROM chains ORDER BY started_at DESC, id DESC LIMIT ?1)",
        )
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn get_flag(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM flags WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn flags_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT key, value FROM flags WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
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
                sqlx::query("INSERT OR REPLACE INTO flags (key, value) VALUES (?1, ?2)")
                    .bind(key)
                    .bind(v)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM flags WHERE key = ?1")
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
        sqlx::query("UPDATE chains SET verify = ?1 WHERE id = ?2")
            .bind(v)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn archive_chain(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE chains SET archived = 1 WHERE id = ?1")
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

    async fn cost_report(&self, by_chain: u32) -> StoreResult<super::CostReport> {
        let w = super::costs::Windows::at(std::time::SystemTime::now());
        let totals = sqlx::query(
            "SELECT COALESCE(SUM(cost_usd), 0.0), COUNT(*), \
             COALESCE(SUM(CASE WHEN started_at >= ?1 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= ?1 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= ?2 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= ?2 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= ?3 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= ?3 THEN 1 END), \
             COALESCE(SUM(CASE WHEN started_at >= ?4 THEN cost_usd ELSE 0 END), 0.0), \
             COUNT(CASE WHEN started_at >= ?4 THEN 1 END) FROM sessions",
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
            "SELECT COALESCE(json_extract(c.config, '$.model'), '?') AS m, \
             COALESCE(SUM(s.cost_usd), 0.0), COUNT(*) \
             FROM sessions s JOIN chains c ON c.id = s.chain_id GROUP BY m ORDER BY 2 DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_chain = sqlx::query(
            "SELECT s.chain_id, c.name, c.status, SUM(s.cost_usd) AS cost, COUNT(*) \
             FROM sessions s JOIN chains c ON c.id = s.chain_id \
             GROUP BY s.chain_id ORDER BY cost DESC, s.chain_id LIMIT ?1",
        )
        .bind(i64::from(by_chain))
        .fetch_all(&self.pool)
        .await?;
        let by_day = sqlx::query(
            "SELECT substr(started_at, 1, 10) AS d, SUM(cost_usd), COUNT(*) FROM sessions \
             WHERE started_at >= ?1 GROUP BY d ORDER BY d",
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

#[cfg(test)]
mod tests {
    use super::*;

    // The behaviour both stores share is tested in tests/store.rs, against both; here only
    // what is SQLite's own: the file, WAL, concurrent first opens.

    fn new_chain(id: &str) -> NewChain {
        NewChain {
            id: id.into(),
            name: "main".into(),
            mission: None,
            task: "do it".into(),
            config: serde_json::json!({"model": "sonnet"}),
            status: ChainStatus::Running,
        }
    }

    #[tokio::test]
    async fn flags_and_reopen_keep_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).await.unwrap();
            s.set_flag("paused", Some("1")).await.unwrap();
            s.create_chain(&new_chain("c-1")).await.unwrap();
        }
        let s = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(s.get_flag("paused").await.unwrap().as_deref(), Some("1"));
        s.set_flag("paused", None).await.unwrap();
        assert_eq!(s.get_flag("paused").await.unwrap(), None);
        assert!(s.get_chain("c-1").await.unwrap().is_some());
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn many_openers_of_a_new_store_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let opens = (0..4).map(|_| {
                let p = dir.path().to_path_buf();
                tokio::spawn(async move { SqliteStore::open(&p).await.map(|_| ()) })
            });
            for h in opens.collect::<Vec<_>>() {
                if let Err(e) = h.await.unwrap() {
                    panic!("{e:?}");
                }
            }
        }
    }
}
