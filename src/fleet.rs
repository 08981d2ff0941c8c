//! A fleet worker's claim loop: heartbeat, lease renewal, claims of queued or orphaned chains
//! (`FOR UPDATE SKIP LOCKED` in the PostgreSQL store), fleet-wide pause, and stopping its own
//! agents when it cannot renew its leases. The chains themselves run in the worker's ordinary
//! supervision tree (a run started through `daemon::Launch`), fed through [`FeedMsg`].

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::control::ModeRx;
use crate::daemon::{self, FeedMsg, RunOptions};
use crate::signals::SignalEvent;
use crate::store::SharedStore;
use crate::store::postgres::{PostgresStore, QUEUE_CHANNEL};
use crate::supervisor::{Batch, Limits};

/// How a worker takes work.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `<host>:<pid>`, unique in the fleet.
    pub id: String,
    /// Chains it runs at once.
    pub capacity: u32,
    /// How long a claim holds without renewal; renewed every third of it.
    pub lease: Duration,
}

/// Runs until `tx` closes (the worker's run ended).
pub async fn claim_loop(
    pg: PostgresStore,
    store: SharedStore,
    cfg: WorkerConfig,
    opts: RunOptions,
    tx: mpsc::UnboundedSender<FeedMsg>,
    mode_in: tokio::sync::oneshot::Receiver<ModeRx>,
) {
    // The run sends its mode as it starts; nothing is claimed before.
    let mode: Option<ModeRx> = mode_in.await.ok();
    let tick = cfg.lease / 3;
    let mut renewed = Instant::now();
    let mut paused = None;
    let mut refused = Vec::new();
    let mut listener = pg.listener(QUEUE_CHANNEL).await.ok();
    loop {
        if tx.is_closed() {
            return;
        }
        // A worker paused (its own SIGUSR1, or the fleet's flag) or stopping takes no more work.
        let taking = mode
            .as_ref()
            .is_some_and(|m| *m.borrow() == crate::control::Mode::Running);
        let state = Step {
            paused: &mut paused,
            refused: &mut refused,
            taking,
        };
        match step(&pg, &store, &cfg, &opts, &tx, state).await {
            Ok(()) => renewed = Instant::now(),
            Err(e) => {
                tracing::warn!(worker = %cfg.id, cause = %e, "the fleet store did not answer");
                if renewed.elapsed() >= cfg.lease {
                    // Past the lease another worker may claim these chains: stop them here.
                    for id in pg.forget_claims() {
                        let _ = tx.send(FeedMsg::Lost(id));
                    }
                }
                listener = None;
            }
        }
        // Woken by a NOTIFY from `run --enqueue`, or after a tick (polling is the fallback).
        match listener.as_mut() {
            Some(l) => {
                if let Ok(Err(_)) = tokio::time::timeout(tick, l.recv()).await {
                    listener = None;
                }
            }
            None => {
                tokio::time::sleep(tick).await;
                if renewed.elapsed() < tick * 2 {
                    listener = pg.listener(QUEUE_CHANNEL).await.ok();
                }
            }
        }
    }
}

/// What one step of the loop reads and keeps.
struct Step<'a> {
    /// The fleet's pause flag as last seen (`None` before the first read).
    paused: &'a mut Option<bool>,
    /// Chains this worker claimed and found it cannot run (their stored settings name an agent
    /// it cannot start, say): handed back, and never claimed here again.
    refused: &'a mut Vec<String>,
    /// Whether the worker takes work now (running, not paused or stopping).
    taking: bool,
}

async fn step(
    pg: &PostgresStore,
    store: &SharedStore,
    cfg: &WorkerConfig,
    opts: &RunOptions,
    tx: &mpsc::UnboundedSender<FeedMsg>,
    state: Step<'_>,
) -> Result<(), crate::store::StoreError> {
    let Step {
        paused,
        refused,
        taking,
    } = state;
    let (lost, _over) = pg.renew(cfg.lease).await?;
    for id in lost {
        let _ = tx.send(FeedMsg::Lost(id));
    }
    let held = pg.held().len() as u32;
    pg.heartbeat(&cfg.id, cfg.capacity, held).await?;
    let fleet_paused = store.get_flag("paused").await?.is_some();
    if *paused != Some(fleet_paused) {
        if paused.is_some() {
            let _ = tx.send(FeedMsg::Signal(if fleet_paused {
                SignalEvent::Pause
            } else {
                SignalEvent::Resume
            }));
        }
        *paused = Some(fleet_paused);
    }
    if fleet_paused || !taking {
        return Ok(());
    }
    let claimed = pg
        .claim(
            &cfg.id,
            cfg.capacity.saturating_sub(held),
            cfg.lease,
            refused,
        )
        .await?;
    if claimed.is_empty() {
        return Ok(());
    }
    let mut jobs = Vec::new();
    for (id, fence) in claimed {
        match daemon::claimed_job(store, &id, opts).await {
            Ok(job) => {
                tracing::info!(worker = %cfg.id, chain.id = %id, fence, "claimed");
                jobs.push(job);
            }
            // The store failed between the claim and the chain's read (PostgreSQL restarting):
            // the chain goes back at once, for this worker or another, rather than stay claimed
            // (and renewed) here without running.
            Err(crate::daemon::RunError::Store(e)) => {
                tracing::warn!(worker = %cfg.id, chain.id = %id, cause = %e, "a claimed chain could not be read; handed back");
                hand_back(pg, &cfg.id, &id, None).await;
            }
            Err(e) => {
                tracing::error!(worker = %cfg.id, chain.id = %id, cause = %e, "a claimed chain cannot run here; handed back to the other workers");
                let reason = format!("worker {} cannot run it: {e}", cfg.id);
                refused.push(id.clone());
                hand_back(pg, &cfg.id, &id, Some(&reason)).await;
            }
        }
    }
    let _ = tx.send(FeedMsg::Submit(Batch {
        jobs,
        limits: Limits::from([(None, cfg.capacity as usize)]),
        settled: Vec::new(),
    }));
    Ok(())
}

/// Hands a claimed chain back; when the store cannot be reached, the claim is forgotten here and
/// runs out with its lease.
async fn hand_back(pg: &PostgresStore, worker: &str, id: &str, reason: Option<&str>) {
    if let Err(e) = pg.hand_back(worker, id, reason).await {
        tracing::warn!(worker, chain.id = %id, cause = %e, "a chain could not be handed back; its lease will run out");
    }
}
