//! The store's behaviour, the same for both backends: every test here runs against SQLite (a
//! temp dir) and against PostgreSQL (a fresh database on a throwaway server, tests/common/pg.rs).

mod common;

use operator::model::{
    ChainStatus, GateResult, HandoffRecord, SessionRecord, SessionStatus, now_rfc3339,
};
use operator::store::{ChainQuery, NewChain, SessionStart, Store, StoreError};

use common::pg;

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

fn session(index: u32, cost: f64) -> SessionRecord {
    SessionRecord {
        cost_usd: cost,
        duration_ms: 100,
        ..common::records::session(index)
    }
}

fn start(chain: &str, index: u32) -> SessionStart {
    SessionStart {
        chain_id: chain.into(),
        index,
        attempt: 1,
        prompt: format!("prompt {index}"),
        started_at: now_rfc3339(),
        account: None,
    }
}

/// Runs a test body against both backends.
macro_rules! both {
    ($name:ident, |$s:ident| $body:block) => {
        mod $name {
            use super::*;

            async fn check($s: &dyn Store) $body

            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let s = operator::store::sqlite::SqliteStore::open(dir.path()).await.unwrap();
                check(&s).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(server) = pg::shared() else { return };
                let url = server.fresh_db().await;
                let s = operator::store::postgres::PostgresStore::open(&url).await.unwrap();
                check(&s).await;
            }
        }
    };
}

both!(chain_session_and_handoff_round_trip, |s| {
    s.create_chain(&new_chain("c-1")).await.unwrap();
    for i in 1..=2 {
        s.start_session(&SessionStart {
            chain_id: "c-1".into(),
            index: i,
            attempt: 1,
            prompt: format!("prompt {i}"),
            started_at: now_rfc3339(),
            account: None,
        })
        .await
        .unwrap();
        let h = HandoffRecord {
            chain_id: "c-1".into(),
            index: i,
            text: format!("## HANDOFF {i}"),
            complete: i == 2,
            synthetic: false,
            reason: None,
            file: format!("handoff-{i}.md"),
            created_at: now_rfc3339(),
        };
        s.finish_session("c-1", &session(i, 0.5), Some(&h))
            .await
            .unwrap();
    }
    let c = s.get_chain("c-1").await.unwrap().unwrap();
    assert_eq!(c.sessions.len(), 2);
    assert_eq!(c.totals.sessions, 2);
    assert_eq!(c.totals.turns, 6);
    assert!((c.totals.cost_usd - 1.0).abs() < 1e-9);
    assert_eq!(c.config["model"], "sonnet");
    let last = s.last_handoff("c-1").await.unwrap().unwrap();
    assert_eq!(last.index, 2);
    assert!(last.complete);
    assert_eq!(
        s.session_prompt("c-1", 1).await.unwrap().as_deref(),
        Some("prompt 1")
    );
    assert!(s.get_chain("nope").await.unwrap().is_none());
});

both!(a_session_index_is_never_used_twice, |s| {
    s.create_chain(&new_chain("c-1")).await.unwrap();
    let start = SessionStart {
        chain_id: "c-1".into(),
        index: 1,
        attempt: 1,
        prompt: "p".into(),
        started_at: now_rfc3339(),
        account: None,
    };
    s.start_session(&start).await.unwrap();
    assert!(s.start_session(&start).await.is_err());
    // A retry needs a failed session to retry.
    let retry = SessionStart {
        attempt: 2,
        ..start.clone()
    };
    assert!(s.start_session(&retry).await.is_err());
    let mut failed = session(1, 0.1);
    failed.status = SessionStatus::Failed;
    s.finish_session("c-1", &failed, None).await.unwrap();
    s.start_session(&retry).await.unwrap();
    let row = &s.sessions("c-1").await.unwrap()[0];
    assert_eq!((row.status, row.attempts), (SessionStatus::Running, 2));
});

both!(list_pages_newest_first_and_archives_without_deleting, |s| {
    for i in 0..7 {
        s.create_chain(&new_chain(&format!("c-{i}"))).await.unwrap();
        s.set_chain_status(&format!("c-{i}"), ChainStatus::Complete, None, None)
            .await
            .unwrap();
    }
    let q = ChainQuery {
        limit: 3,
        ..Default::default()
    };
    let p1 = s.list_chains(&q).await.unwrap();
    assert_eq!(
        p1.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c-6", "c-5", "c-4"]
    );
    let p2 = s
        .list_chains(&ChainQuery {
            before: Some("c-4".into()),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        p2.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c-3", "c-2", "c-1"]
    );
    assert_eq!(s.archive_old(5).await.unwrap(), 2);
    let visible = s
        .list_chains(&ChainQuery {
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(visible.len(), 5);
    let all = s
        .list_chains(&ChainQuery {
            limit: 50,
            include_archived: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    assert!(s.get_chain("c-0").await.unwrap().unwrap().archived);
});

both!(events_are_appended_and_read_back_in_order, |s| {
    let a = s
        .append_event(
            Some("c"),
            Some(1),
            "chain:started",
            &serde_json::json!({"x": 1}),
        )
        .await
        .unwrap();
    let b = s
        .append_event(None, None, "orchestrator:paused", &serde_json::json!({}))
        .await
        .unwrap();
    assert!(b > a);
    let all = s.events(None, 0, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(s.events(Some("c"), 0, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.events(None, a, 10).await.unwrap()[0].kind,
        "orchestrator:paused"
    );
});

both!(flags_are_set_and_cleared, |s| {
    assert_eq!(s.get_flag("paused").await.unwrap(), None);
    s.set_flag("paused", Some("1")).await.unwrap();
    s.set_flag("paused", Some("2")).await.unwrap();
    assert_eq!(s.get_flag("paused").await.unwrap().as_deref(), Some("2"));
    s.set_flag("paused", None).await.unwrap();
    assert_eq!(s.get_flag("paused").await.unwrap(), None);
});

both!(status_owner_config_base_and_verify_are_kept, |s| {
    s.create_chain(&new_chain("c-1")).await.unwrap();
    s.set_chain_status("c-1", ChainStatus::Waiting, Some("usage limit"), Some(4242))
        .await
        .unwrap();
    // No owner given: the last one is kept.
    s.set_chain_status("c-1", ChainStatus::Running, None, None)
        .await
        .unwrap();
    assert_eq!(s.chain_owner("c-1").await.unwrap(), Some(4242));
    s.set_chain_config("c-1", &serde_json::json!({"model": "opus", "max_turns": 5}))
        .await
        .unwrap();
    s.set_session_base("c-1", 7).await.unwrap();
    assert_eq!(s.session_base("c-1").await.unwrap(), 7);
    assert_eq!(s.session_base("nope").await.unwrap(), 0);
    let gate = GateResult {
        command: "cargo test".into(),
        passed: false,
        exit_code: Some(101),
        duration_ms: 1200,
        output_tail: "1 failed".into(),
        session: 3,
    };
    s.set_chain_verify("c-1", std::slice::from_ref(&gate))
        .await
        .unwrap();
    let c = s.get_chain("c-1").await.unwrap().unwrap();
    assert_eq!(c.status, ChainStatus::Running);
    assert_eq!(c.reason, None);
    assert_eq!(c.config["model"], "opus");
    assert_eq!(c.verify, vec![gate]);
    assert!(!c.archived);
    assert!(s.archive_chain("c-1").await.unwrap());
    assert!(!s.archive_chain("nope").await.unwrap());
    assert!(s.get_chain("c-1").await.unwrap().unwrap().archived);
    let counts = s.count_by_status().await.unwrap();
    assert_eq!(counts, vec![(ChainStatus::Running, 1)]);
});

both!(running_agents_and_prompts_are_recorded, |s| {
    s.create_chain(&new_chain("c-1")).await.unwrap();
    s.set_chain_status("c-1", ChainStatus::Running, None, Some(99))
        .await
        .unwrap();
    s.start_session(&start("c-1", 1)).await.unwrap();
    s.set_session_agent("c-1", 1, 31337, "claude")
        .await
        .unwrap();
    let agents = s.running_agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (
            agents[0].index,
            agents[0].pgid,
            agents[0].program.as_str(),
            agents[0].owner_pid
        ),
        (1, 31337, "claude", Some(99))
    );
    s.finish_session("c-1", &session(1, 0.2), None)
        .await
        .unwrap();
    assert!(s.running_agents().await.unwrap().is_empty());
    assert_eq!(
        s.session_prompt("c-1", 1).await.unwrap().as_deref(),
        Some("prompt 1")
    );
    assert_eq!(s.session_prompt("c-1", 2).await.unwrap(), None);
});

both!(a_rewritten_handoff_replaces_the_old_one, |s| {
    s.create_chain(&new_chain("c-1")).await.unwrap();
    s.start_session(&start("c-1", 1)).await.unwrap();
    let mut h = HandoffRecord {
        chain_id: "c-1".into(),
        index: 1,
        text: "first".into(),
        complete: false,
        synthetic: true,
        reason: Some("no handoff".into()),
        file: "handoff-1.md".into(),
        created_at: now_rfc3339(),
    };
    s.finish_session("c-1", &session(1, 0.1), Some(&h))
        .await
        .unwrap();
    h.text = "second".into();
    h.synthetic = false;
    h.reason = None;
    s.finish_session("c-1", &session(1, 0.1), Some(&h))
        .await
        .unwrap();
    let all = s.handoffs("c-1").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].text.as_str(), all[0].synthetic), ("second", false));
});

both!(the_cost_ledger_adds_up, |s| {
    for (id, mission) in [("c-1", Some("m")), ("c-2", None)] {
        let mut c = new_chain(id);
        c.mission = mission.map(String::from);
        s.create_chain(&c).await.unwrap();
    }
    let since = now_rfc3339();
    for (chain, i, cost) in [("c-1", 1, 0.25), ("c-1", 2, 0.5), ("c-2", 1, 1.0)] {
        s.start_session(&start(chain, i)).await.unwrap();
        s.finish_session(chain, &session(i, cost), None)
            .await
            .unwrap();
    }
    let (spent, n) = s.cost_since(&since).await.unwrap();
    assert!((spent - 1.75).abs() < 1e-9 && n == 3, "{spent} {n}");
    let r = s.cost_report(10).await.unwrap();
    assert!((r.all_time.cost_usd - 1.75).abs() < 1e-9);
    assert_eq!(r.all_time.sessions, 3);
    assert_eq!(r.today.sessions, 3);
    assert_eq!(r.by_chain[0].chain_id, "c-2");
    assert_eq!(r.by_chain.len(), 2);
    assert_eq!(r.by_model.len(), 1);
    assert_eq!(r.by_model[0].model, "sonnet");
    assert_eq!(r.by_mission.len(), 2);
    assert_eq!(r.by_day.len(), 1);
    assert_eq!(r.by_day[0].cost.sessions, 3);
});

#[tokio::test]
async fn a_bad_store_url_says_what_it_takes_and_hides_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let err = operator::store::open(dir.path(), Some("mysql://me:hunter2@db/ops"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("postgres://") && !msg.contains("hunter2"),
        "{msg}"
    );
}

#[tokio::test]
async fn postgres_migrations_are_applied_once_by_concurrent_openers() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let opens = (0..4).map(|_| {
        let u = url.clone();
        tokio::spawn(async move {
            operator::store::postgres::PostgresStore::open(&u)
                .await
                .map(|_| ())
        })
    });
    for h in opens.collect::<Vec<_>>() {
        h.await.unwrap().unwrap();
    }
    let s = operator::store::postgres::PostgresStore::open(&url)
        .await
        .unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert_eq!(versions.len(), 1);
}
