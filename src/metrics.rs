//! Prometheus metrics (prometheus-client): counters fed from the event bus, chains by state read from the
//! store at each scrape.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Body, Bus, Event};
use crate::model::ChainStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct What {
    what: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    chains: Family<State, Gauge>,
    chain_ends: Family<State, Counter>,
    sessions: Family<Outcome, Counter>,
    retries: Counter,
    waits: Counter,
    breaker_openings: Counter,
    restarts: Family<What, Counter>,
    cost: Counter<f64, AtomicU64>,
    duration: Histogram,
    permissions: Family<Decision, Counter>,
    /// Tokio tasks alive now (set at each scrape): flat over a long run, or something leaks.
    tasks: Gauge,
    /// Encoding needs `&Registry` while the chain gauges are set: one scrape at a time.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("operator");
        let chains = Family::<State, Gauge>::default();
        registry.register("chains", "Chains in the store by state", chains.clone());
        let chain_ends = Family::<State, Counter>::default();
        registry.register(
            "chain_ends",
            "Chains that ended, by final state",
            chain_ends.clone(),
        );
        let sessions = Family::<Outcome, Counter>::default();
        registry.register(
            "sessions",
            "Sessions that ended, by outcome",
            sessions.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "session_retries",
            "Attempts of a session retried after a transient failure",
            retries.clone(),
        );
        let waits = Counter::default();
        registry.register(
            "usage_limit_waits",
            "Waits for a usage or rate limit to reset",
            waits.clone(),
        );
        let breaker_openings = Counter::default();
        registry.register(
            "breaker_openings",
            "Chains stopped by their circuit breaker",
            breaker_openings.clone(),
        );
        let restarts = Family::<What, Counter>::default();
        registry.register(
            "actor_restarts",
            "Actors restarted by their supervisor (chain, cost, handoff)",
            restarts.clone(),
        );
        let cost = Counter::<f64, AtomicU64>::default();
        registry.register(
            "cost_usd",
            "Dollars spent by the sessions that ended",
            cost.clone(),
        );
        let duration = Histogram::new([
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "session_duration_seconds",
            "How long sessions ran",
            duration.clone(),
        );
        let permissions = Family::<Decision, Counter>::default();
        registry.register(
            "permission_decisions",
            "Tool calls decided by the permission policy or a person, by decision (allow, deny, ask)",
            permissions.clone(),
        );
        let tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Tokio tasks alive in the operator at the scrape",
            tasks.clone(),
        );
        Self {
            registry,
            permissions,
            tasks,
            chains,
            chain_ends,
            sessions,
            retries,
            waits,
            breaker_openings,
            restarts,
            cost,
            duration,
            scrape: Mutex::new(()),
        }
    }

    /// Counts one event.
    pub fn observe(&self, ev: &Event) {
        match &ev.body {
            Body::SessionComplete { session: s, .. } => {
                let outcome = s.status.as_str().to_string();
                self.sessions.get_or_create(&Outcome { outcome }).inc();
                if s.cost_usd.is_finite() && s.cost_usd >= 0.0 {
                    self.cost.inc_by(s.cost_usd);
                }
                self.duration.observe(s.duration_ms as f64 / 1000.0);
            }
            Body::SessionRetry { .. } => {
                self.retries.inc();
            }
            Body::Permission { decision, .. } => {
                let decision = match decision.as_str() {
                    d @ ("allow" | "deny" | "ask") => d.to_string(),
                    _ => "unknown".to_string(),
                };
                self.permissions.get_or_create(&Decision { decision }).inc();
            }
            Body::Waiting { .. } => {
                self.waits.inc();
            }
            Body::Restarted { child, .. } | Body::ChildRestarted { child } => {
                let what = child.clone();
                self.restarts.get_or_create(&What { what }).inc();
            }
            body => {
                if let Some((status, reason)) = body.ending() {
                    if reason.is_some_and(|r| r.starts_with("circuit-open")) {
                        self.breaker_openings.inc();
                    }
                    let state = status.as_str().to_string();
                    self.chain_ends.get_or_create(&State { state }).inc();
                }
            }
        }
    }

    /// Counts the bus's events until it closes.
    pub fn spawn(self: &std::sync::Arc<Self>, bus: &Bus) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut rx = bus.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => me.observe(&ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "metrics fell behind the event bus");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// The text exposition, with chains by state as counted in the store now.
    pub fn render(&self, counts: &[(ChainStatus, u64)]) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for st in ChainStatus::ALL {
            let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
            self.chains
                .get_or_create(&State {
                    state: st.as_str().to_string(),
                })
                .set(n as i64);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(body: Body) -> Event {
        Event {
            id: Some(1),
            chain_id: Some("c".into()),
            session_index: Some(1),
            body,
            at: String::new(),
        }
    }

    #[test]
    fn events_become_counters() {
        let m = Metrics::new();
        let session = serde_json::from_value(json!({"index": 1, "sessionId": null,
            "status": "completed", "turns": 3, "costUsd": 0.25, "durationMs": 2000,
            "hitMaxTurns": false, "preCompacted": false, "handoffComplete": false,
            "handoffFile": null, "error": null, "errorKind": null, "handoffSynthetic": false,
            "askedAgain": false, "attempts": 1, "startedAt": "", "endedAt": null}))
        .unwrap();
        m.observe(&ev(Body::SessionComplete {
            session,
            transcript_truncated: false,
        }));
        m.observe(&ev(Body::SessionRetry {
            attempt: 1,
            delay_ms: 1000,
            error: None,
        }));
        m.observe(&ev(Body::ended(
            ChainStatus::Failed,
            Some("circuit-open: 3 consecutive failed sessions".into()),
        )));
        m.observe(&ev(Body::Restarted {
            child: "chain".into(),
            cause: "boom".into(),
        }));
        for d in ["allow", "allow", "deny", "ask"] {
            m.observe(&ev(Body::Permission {
                tool: "Bash".into(),
                input: "ls".into(),
                decision: d.into(),
                rule: String::new(),
            }));
        }
        let text = m.render(&[(ChainStatus::Running, 2)]).unwrap();
        for line in [
            "operator_permission_decisions_total{decision=\"allow\"} 2",
            "operator_permission_decisions_total{decision=\"deny\"} 1",
            "operator_permission_decisions_total{decision=\"ask\"} 1",
            "operator_chains{state=\"awaiting-approval\"} 0",
            "operator_sessions_total{outcome=\"completed\"} 1",
            "operator_session_retries_total 1",
            "operator_breaker_openings_total 1",
            "operator_actor_restarts_total{what=\"chain\"} 1",
            "operator_cost_usd_total 0.25",
            "operator_chains{state=\"running\"} 2",
            "operator_chains{state=\"queued\"} 0",
            "operator_chain_ends_total{state=\"failed\"} 1",
            "operator_session_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
