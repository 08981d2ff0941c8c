//! What must hold of a data dir after any fault: checked from the store and the files.

use std::path::Path;

use operator::model::{ChainRecord, SessionStatus};
use operator::store::{ChainQuery, Store};

/// Checks every chain of the store in `data_dir` and returns them: session indices are 1..=n (no
/// gap, none recorded twice), every completed session has its handoff in the store and on disk,
/// the cost ledger equals the sum of the sessions' costs, and no process runs in `workdir` (no
/// agent and nothing an agent started outlived its operator).
pub async fn check(data_dir: &Path, workdir: &Path) -> Vec<ChainRecord> {
    let store = operator::store::sqlite::SqliteStore::open(data_dir)
        .await
        .expect("open the store");
    let chains = store
        .list_chains(&ChainQuery {
            limit: 1000,
            include_archived: true,
            with_sessions: true,
            ..Default::default()
        })
        .await
        .expect("list chains");
    let mut sum = 0.0;
    for c in &chains {
        let idx: Vec<u32> = c.sessions.iter().map(|s| s.index).collect();
        let want: Vec<u32> = (1..=idx.len() as u32).collect();
        assert_eq!(idx, want, "{}: session indices", c.id);
        let handoffs = store.handoffs(&c.id).await.expect("handoffs");
        for s in c
            .sessions
            .iter()
            .filter(|s| s.status == SessionStatus::Completed)
        {
            let h = handoffs.iter().find(|h| h.index == s.index);
            let h = h.unwrap_or_else(|| panic!("{}: session {} has no handoff", c.id, s.index));
            assert!(
                Path::new(&h.file).exists(),
                "{}: {} is missing",
                c.id,
                h.file
            );
        }
        sum += c.sessions.iter().map(|s| s.cost_usd).sum::<f64>();
    }
    let ledger = store.cost_report(1000).await.expect("costs").all_time;
    assert!(
        (ledger.cost_usd - sum).abs() < 1e-6,
        "the ledger says {} and the sessions {sum}",
        ledger.cost_usd
    );
    let left = super::processes_in(workdir);
    assert!(left.is_empty(), "processes left in the workdir: {left:?}");
    chains
}
