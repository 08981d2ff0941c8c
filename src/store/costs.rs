//! The cost report's assembly, shared by both stores: the time windows it sums over, and the rows
//! of each store's queries turned into a [`CostReport`]. Each store keeps only its SQL dialect.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{ChainCost, CostLine, CostReport, DayCost, ModelCost, StoreError, StoreResult};
use crate::model::ChainStatus;

/// The start of each window the report sums over (RFC 3339, milliseconds, UTC), bound in this
/// order to the totals query: today, the last 7 days, the last hour, the last 24 hours; and the
/// start of the daily series (30 days).
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    pub today: String,
    pub week: String,
    pub hour: String,
    pub day: String,
    pub month: String,
}

impl Windows {
    pub fn at(now: SystemTime) -> Self {
        let ago = |secs: u64| {
            humantime::format_rfc3339_millis(now - Duration::from_secs(secs)).to_string()
        };
        let stamp = humantime::format_rfc3339_millis(now).to_string();
        Self {
            today: format!("{}T00:00:00.000Z", &stamp[..10]),
            week: ago(7 * 86_400),
            hour: ago(3_600),
            day: ago(86_400),
            month: ago(30 * 86_400),
        }
    }
}

/// A sum and a count at columns `at` and `at + 1`.
fn line<R>(r: &R, at: usize) -> StoreResult<CostLine>
where
    R: Row,
    usize: ColumnIndex<R>,
    f64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(CostLine {
        cost_usd: r.try_get(at)?,
        sessions: u64::try_from(r.try_get::<i64, _>(at + 1)?).unwrap_or(0),
    })
}

/// The rows of a store's five cost queries.
pub struct Rows<R> {
    /// One row: all time, then today, week, hour and day, each a sum and a count.
    pub totals: R,
    /// `(mission, sum, count)`.
    pub by_mission: Vec<R>,
    /// `(model, sum, count)`.
    pub by_model: Vec<R>,
    /// `(chain id, name, status, sum, count)`.
    pub by_chain: Vec<R>,
    /// `(day, sum, count)`.
    pub by_day: Vec<R>,
}

/// The report from the rows.
pub fn assemble<R>(rows: Rows<R>) -> StoreResult<CostReport>
where
    R: Row,
    usize: ColumnIndex<R>,
    f64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let named = |rs: &[R]| -> StoreResult<Vec<ModelCost>> {
        rs.iter()
            .map(|r| {
                Ok(ModelCost {
                    model: r.try_get(0)?,
                    cost: line(r, 1)?,
                })
            })
            .collect()
    };
    let by_chain = rows
        .by_chain
        .iter()
        .map(|r| {
            let status: String = r.try_get(2)?;
            Ok(ChainCost {
                chain_id: r.try_get(0)?,
                name: r.try_get(1)?,
                status: ChainStatus::from_str(&status).map_err(StoreError::Corrupt)?,
                cost: line(r, 3)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let by_day = rows
        .by_day
        .iter()
        .map(|r| {
            Ok(DayCost {
                day: r.try_get(0)?,
                cost: line(r, 1)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let t = &rows.totals;
    Ok(CostReport {
        today: line(t, 2)?,
        week: line(t, 4)?,
        last_hour: line(t, 6)?,
        last_day: line(t, 8)?,
        all_time: line(t, 0)?,
        by_mission: named(&rows.by_mission)?,
        by_model: named(&rows.by_model)?,
        by_chain,
        by_day,
        daily_cap_usd: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_at_midnight_and_count_back_from_now() {
        // 2027-01-15T12:30:00Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_016_200);
        let w = Windows::at(now);
        assert_eq!(w.today, "2027-01-15T00:00:00.000Z");
        assert_eq!(w.hour, "2027-01-15T11:30:00.000Z");
        assert_eq!(w.day, "2027-01-14T12:30:00.000Z");
        assert_eq!(w.week, "2027-01-08T12:30:00.000Z");
        assert_eq!(w.month, "2026-12-16T12:30:00.000Z");
    }
}
