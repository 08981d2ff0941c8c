//! The fleet's leasing on the PostgreSQL store: claims of queued or orphaned chains (`FOR UPDATE SKIP
//! LOCKED`), a fence per claim that every write of the holder checks, leases renewed by heartbeat,
//! hand-backs, and the queue's LISTEN/NOTIFY.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::{Postgres, Row, Transaction};

use super::{LIVE, PostgresStore};
use crate::model::ChainStatus;
use crate::store::{StoreError, StoreResult, WorkerRecord};

impl PostgresStore {
    pub(super) fn fence_of(&self, chain_id: &str) -> Option<i64> {
        self.fences.read().ok()?.get(chain_id).copied()
    }

    /// A transaction for a write about `chain_id`: when this process holds a claim on the
    /// chain, the claim's fence must still be the chain's, or the write is refused.
    pub(super) async fn fenced(
        &self,
        chain_id: &str,
    ) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = self.fence_of(chain_id) {
            let ok = sqlx::query("SELECT 1 FROM chains WHERE id = $1 AND fence = $2 FOR SHARE")
                .bind(chain_id)
                .bind(fence)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !ok {
                return Err(StoreError::Fenced {
                    chain: chain_id.to_string(),
                    fence,
                });
            }
        }
        Ok(tx)
    }

    /// One statement as a write of `chain_id`, in its own transaction behind the fence.
    pub(super) async fn fenced_execute(
        &self,
        chain_id: &str,
        statement: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> StoreResult<()> {
        let mut tx = self.fenced(chain_id).await?;
        statement.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Registers (or refreshes) a worker.
    pub async fn heartbeat(&self, worker: &str, capacity: u32, load: u32) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, capacity, load) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET capacity = EXCLUDED.capacity, load = EXCLUDED.load, \
             heartbeat_at = now()",
        )
        .bind(worker)
        .bind(crate::host::hostname())
        .bind(i64::from(std::process::id()))
        .bind(i64::from(capacity))
        .bind(i64::from(load))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims up to `n` chains for `worker` for `lease`: queued chains nobody holds, and
    /// chains whose holder's lease ran out, except the chains in `skip` (those this worker
    /// found it cannot run). Each claim increments the chain's fence; the claims are remembered
    /// so this process's writes are fenced.
    pub async fn claim(
        &self,
        worker: &str,
        n: u32,
        lease: Duration,
        skip: &[String],
    ) -> StoreResult<Vec<(String, i64)>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // Orphans first (their holder's lease ran out), then queued chains nobody holds;
        // each an index walk that skips rows another worker is claiming.
        let orphans = format!(
            "SELECT id FROM chains WHERE lease_until < now() AND status IN {LIVE} \
             AND NOT archived AND NOT (id = ANY($4)) ORDER BY lease_until \
             FOR UPDATE SKIP LOCKED LIMIT $3"
        );
        let queued = "SELECT id FROM chains WHERE worker IS NULL AND status = 'queued' \
             AND NOT archived AND NOT (id = ANY($4)) ORDER BY started_at, id \
             FOR UPDATE SKIP LOCKED LIMIT $3";
        let mut claimed: Vec<(String, i64)> = Vec::new();
        for pick in [orphans.as_str(), queued] {
            let want = n as usize - claimed.len();
            if want == 0 {
                break;
            }
            let sql = format!(
                "UPDATE chains SET worker = $1, fence = fence + 1, \
                   lease_until = now() + make_interval(secs => $2), owner_pid = NULL \
                 WHERE id IN ({pick}) RETURNING id, fence"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(worker)
                .bind(lease.as_secs_f64())
                .bind(want as i64)
                .bind(skip)
                .fetch_all(&self.pool)
                .await?;
            for r in &rows {
                claimed.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        if let Ok(mut f) = self.fences.write() {
            f.extend(claimed.iter().cloned());
        }
        Ok(claimed)
    }

    /// Renews the leases this process holds; returns the chains it has lost (another worker
    /// claimed them) and forgets those, and the chains that are over.
    pub async fn renew(&self, lease: Duration) -> StoreResult<(Vec<String>, Vec<String>)> {
        let held = self.held_fences();
        let (mut lost, mut over) = (Vec::new(), Vec::new());
        for (id, fence) in held {
            let row = sqlx::query(
                "UPDATE chains SET lease_until = now() + make_interval(secs => $3) \
                 WHERE id = $1 AND fence = $2 RETURNING status",
            )
            .bind(&id)
            .bind(fence)
            .bind(lease.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
            match row {
                None => lost.push(id),
                Some(r) => {
                    let status: String = r.try_get(0)?;
                    if ChainStatus::from_str(&status).is_ok_and(|s| s.is_terminal()) {
                        over.push(id);
                    }
                }
            }
        }
        if let Ok(mut f) = self.fences.write() {
            for id in lost.iter().chain(&over) {
                f.remove(id);
            }
        }
        Ok((lost, over))
    }

    pub(super) fn held_fences(&self) -> Vec<(String, i64)> {
        self.fences
            .read()
            .map(|f| f.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// The chains this process holds.
    pub fn held(&self) -> Vec<String> {
        self.fences
            .read()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every claim (the worker could not renew in time: others may hold them now).
    pub fn forget_claims(&self) -> Vec<String> {
        self.fences
            .write()
            .map(|mut f| f.drain().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }

    /// Hands back the chains `worker` holds that are not over (a graceful stop): queued
    /// again, for any worker to claim at once.
    pub async fn release(&self, worker: &str) -> StoreResult<u64> {
        let mut n = 0;
        for (id, _) in self.held_fences() {
            n += u64::from(self.hand_back(worker, &id, None).await?);
        }
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    /// Hands back one chain `worker` claimed (it could not start it here): forgotten by this
    /// process at once, then queued again with `reason` when the claim is still this worker's
    /// and the chain not over. When the store cannot be reached the claim is forgotten all
    /// the same: its lease runs out and another worker claims it as an orphan. Returns whether
    /// the chain was queued again.
    pub async fn hand_back(
        &self,
        worker: &str,
        chain_id: &str,
        reason: Option<&str>,
    ) -> StoreResult<bool> {
        let fence = self
            .fences
            .write()
            .ok()
            .and_then(|mut f| f.remove(chain_id));
        let Some(fence) = fence else {
            return Ok(false);
        };
        let sql = format!(
            "UPDATE chains SET worker = NULL, lease_until = NULL, status = 'queued', \
             reason = $4 WHERE id = $1 AND fence = $2 AND worker = $3 AND status IN {LIVE}"
        );
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(chain_id)
            .bind(fence)
            .bind(worker)
            .bind(reason)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// A connection listening for notifications on `channel`.
    pub async fn listener(&self, channel: &str) -> StoreResult<sqlx::postgres::PgListener> {
        let mut l = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        l.listen(channel).await?;
        Ok(l)
    }

    /// Wakes the workers listening on `channel`.
    pub async fn notify(&self, channel: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The fleet's workers, most recently heard first.
    pub async fn workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        let rows = sqlx::query(
            "SELECT id, host, pid, capacity, load, \
             to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS started, \
             to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS beat, \
             EXTRACT(EPOCH FROM (now() - heartbeat_at))::DOUBLE PRECISION AS silent \
             FROM workers ORDER BY heartbeat_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get::<i64, _>("pid")? as u32,
                    capacity: r.try_get::<i64, _>("capacity")? as u32,
                    load: r.try_get::<i64, _>("load")? as u32,
                    started_at: r.try_get("started")?,
                    heartbeat_at: r.try_get("beat")?,
                    silent_secs: r.try_get("silent")?,
                })
            })
            .collect()
    }

    /// Which worker holds each of `ids` (chains nobody holds are left out).
    pub async fn holders(&self, ids: &[String]) -> StoreResult<HashMap<String, String>> {
        let rows =
            sqlx::query("SELECT id, worker FROM chains WHERE id = ANY($1) AND worker IS NOT NULL")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
