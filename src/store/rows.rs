//! Row mappers shared by the SQLite and PostgreSQL stores: the same columns decode the same way
//! (sqlx without its macros has no shared `FromRow`), generated for each backend's row type.

/// Defines `session_from_row`, `handoff_from_row` and `chain_from_row` for `$row`.
macro_rules! row_mappers {
    ($row:ty) => {
        fn session_from_row(r: &$row) -> StoreResult<SessionRecord> {
            let status: String = r.try_get("status")?;
            let error_kind: Option<String> = r.try_get("error_kind")?;
            Ok(SessionRecord {
                index: r.try_get::<i64, _>("idx")? as u32,
                session_id: r.try_get("session_id")?,
                status: SessionStatus::from_str(&status).map_err(StoreError::Corrupt)?,
                turns: r.try_get::<i64, _>("turns")? as u32,
                cost_usd: r.try_get("cost_usd")?,
                duration_ms: r.try_get::<i64, _>("duration_ms")? as u64,
                hit_max_turns: r.try_get("hit_max_turns")?,
                pre_compacted: r.try_get("pre_compacted")?,
                handoff_complete: r.try_get("handoff_complete")?,
                handoff_file: r.try_get("handoff_file")?,
                error: r.try_get("error")?,
                error_kind: match error_kind.as_deref() {
                    Some("transient") => Some(ErrorKind::Transient),
                    Some("fatal") => Some(ErrorKind::Fatal),
                    _ => None,
                },
                handoff_synthetic: r.try_get("handoff_synthetic")?,
                asked_again: r.try_get("asked_again")?,
                attempts: r.try_get::<i64, _>("attempts")? as u32,
                started_at: r.try_get("started_at")?,
                ended_at: r.try_get("ended_at")?,
            })
        }

        fn handoff_from_row(r: &$row) -> StoreResult<HandoffRecord> {
            Ok(HandoffRecord {
                chain_id: r.try_get("chain_id")?,
                index: r.try_get::<i64, _>("idx")? as u32,
                text: r.try_get("text")?,
                complete: r.try_get("complete")?,
                synthetic: r.try_get("synthetic")?,
                reason: r.try_get("reason")?,
                file: r.try_get("file")?,
                created_at: r.try_get("created_at")?,
            })
        }

        fn chain_from_row(r: &$row) -> StoreResult<ChainRecord> {
            let status: String = r.try_get("status")?;
            let config: String = r.try_get("config")?;
            Ok(ChainRecord {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                mission: r.try_get("mission")?,
                task: r.try_get("task")?,
                status: ChainStatus::from_str(&status).map_err(StoreError::Corrupt)?,
                reason: r.try_get("reason")?,
                started_at: r.try_get("started_at")?,
                updated_at: r.try_get("updated_at")?,
                config: serde_json::from_str(&config)
                    .map_err(|e| StoreError::Corrupt(format!("config of a chain: {e}")))?,
                sessions: Vec::new(),
                totals: Totals {
                    sessions: r.try_get::<i64, _>("n_sessions")? as u32,
                    turns: r.try_get::<i64, _>("n_turns")? as u64,
                    cost_usd: r.try_get("sum_cost")?,
                    duration_ms: r.try_get::<i64, _>("sum_duration")? as u64,
                },
                archived: r.try_get("archived")?,
                verify: match r.try_get::<Option<String>, _>("verify")? {
                    Some(v) => serde_json::from_str(&v).map_err(|e| {
                        StoreError::Corrupt(format!("verify results of a chain: {e}"))
                    })?,
                    None => Vec::new(),
                },
            })
        }
    };
}

pub(super) use row_mappers;
