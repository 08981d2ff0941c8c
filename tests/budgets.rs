//! Budgets: the forecast that refuses a session a chain cannot afford, the live per-session cost
//! limit, and the daily cap across chains — on the real binary and the sim agent.

mod common;

use common::{Op, chains, stderr};
use operator::model::{ChainStatus, SessionStatus};

#[test]
fn the_forecast_refuses_a_session_the_budget_cannot_cover() {
    let op = Op::new();
    // A sim session costs $0.039; the budget is $0.10.
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "incomplete",
            "--max-budget-usd",
            "0.1",
            "--json",
        ])
        .env("OPERATOR_SIM__COMPLETE_AFTER", "9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::BudgetExceeded);
    assert_eq!(
        c.sessions.len(),
        2,
        "a third session would have crossed the budget"
    );
    assert!(c.totals.cost_usd < 0.1, "{}", c.totals.cost_usd);
    assert!(
        c.reason
            .as_deref()
            .unwrap()
            .contains("would cross the $0.10 budget"),
        "{:?}",
        c.reason
    );
    // Resuming never resets a budget: the resumed chain is refused at once.
    let again = op.run(&["run", "--resume", &c.id, "--json"]);
    let r = &chains(&again)[0];
    assert_eq!(r.status, ChainStatus::BudgetExceeded);
    assert_eq!(r.sessions.len(), 2);
}

#[test]
fn a_session_over_its_cost_limit_is_interrupted_for_its_handoff() {
    let op = Op::new();
    let out = op
        .cmd(&[
            "run",
            "--task",
            "T",
            "--scenario",
            "slow",
            "--max-session-cost-usd",
            "0.05",
            "--max-continuations",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(
        c.sessions.len(),
        2,
        "the chain goes on after an interrupted session"
    );
    for s in &c.sessions {
        assert_eq!(s.status, SessionStatus::Interrupted, "{s:?}");
        assert!(s.asked_again && !s.handoff_synthetic, "{s:?}");
        // Stopped soon after the limit (one message, plus the handoff, past it).
        assert!(s.cost_usd >= 0.05 && s.cost_usd < 0.08, "{}", s.cost_usd);
    }
}

#[test]
fn the_daily_cap_holds_across_chains() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config")).unwrap();
    op.write("config/operator.toml", "daily_cap_usd = 0.1\n");
    let run = || op.run(&["run", "--task", "T", "--scenario", "complete", "--json"]);
    let first = run();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = run();
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    // $0.078 spent today; a third $0.039 session would cross $0.10.
    let third = run();
    assert_eq!(third.status.code(), Some(4), "{}", stderr(&third));
    let c = &chains(&third)[0];
    assert_eq!(c.status, ChainStatus::BudgetExceeded);
    assert!(c.sessions.is_empty());
    assert!(
        c.reason.as_deref().unwrap().contains("daily cap"),
        "{:?}",
        c.reason
    );
}

#[test]
fn the_pricing_table_in_operator_toml_prices_live_usage() {
    let op = Op::new();
    std::fs::create_dir_all(op.root.path().join("config")).unwrap();
    // Sonnet at a thousand times its price: the first message crosses a $1 session limit.
    op.write(
        "config/operator.toml",
        "[pricing.sonnet]\ninput = 3000.0\noutput = 15000.0\ncache_write = 0.0\ncache_read = 0.0\n",
    );
    let out = op.run(&[
        "run",
        "--task",
        "T",
        "--scenario",
        "complete",
        "--max-session-cost-usd",
        "1.0",
        "--max-continuations",
        "0",
        "--json",
    ]);
    let c = &chains(&out)[0];
    assert_eq!(
        c.sessions[0].status,
        SessionStatus::Interrupted,
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("crossed its cost limit"),
        "{}",
        stderr(&out)
    );
    // A typo in a price is a configuration error naming the field.
    op.write(
        "config/operator.toml",
        "[pricing.sonnet]\ninput = 3.0\noutptu = 15.0\ncache_write = 0.0\ncache_read = 0.0\n",
    );
    let out = op.run(&["run", "--task", "T", "--scenario", "complete"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("outptu"), "{}", stderr(&out));
}
