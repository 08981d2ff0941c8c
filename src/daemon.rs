//! The supervisor as a library function: `run` takes prepared chains, starts the Operator actor, answers
//! signals and returns the chains' final records. `main` and the tests call the same function.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{self, Agent, AgentError, BackendOptions};
use crate::chain::Ctx;
use crate::config::{ChainSettings, ConfigErrors, Plan};
use crate::control::{self, Mode};
use crate::events::Bus;
use crate::model::{ChainRecord, ChainStatus, new_chain_id};
use crate::notify;
use crate::process::Registry;
use crate::signals::SignalEvent;
use crate::store::{ChainQuery, KEEP_UNARCHIVED, NewChain, SharedStore, StoreError};
use crate::supervisor::{Job, Operator, OperatorArgs};

/// Errors that stop a run before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("no chain `{0}` in the store")]
    UnknownChain(String),
    #[error("chain {id} is {status}; there is nothing to resume")]
    NotResumable { id: String, status: ChainStatus },
    #[error("no incomplete chain to resume")]
    NothingToResume,
    #[error("chain {id} is being run by another operator (pid {pid})")]
    Busy { id: String, pid: u32 },
    #[error("the stored settings of chain {id} cannot be read: {cause}")]
    BadStoredConfig { id: String, cause: String },
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("the supervisor could not start: {0}")]
    Spawn(String),
}

/// How the run ended.
#[derive(Debug)]
pub struct RunReport {
    pub chains: Vec<ChainRecord>,
    /// A second SIGINT stopped everything at once.
    pub immediate: bool,
}

/// Operator-wide options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: PathBuf,
    pub shutdown_grace: Duration,
    pub concurrency: usize,
    pub backend: BackendOptions,
    pub notify_webhook: Option<String>,
}

/// The stored JSON config of a chain: its settings plus its place in the mission.
fn chain_config(name: &str, after: &[String], settings: &ChainSettings) -> serde_json::Value {
    let mut v = serde_json::to_value(settings).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), name.into());
        o.insert("after".into(), serde_json::json!(after));
    }
    v
}

fn backends(
    settings: &[&ChainSettings],
    opts: &BackendOptions,
) -> Result<Vec<Arc<dyn Agent>>, AgentError> {
    let mut out = Vec::new();
    for s in settings {
        let a = agent::backend(s.agent, opts);
        a.preflight()?;
        out.push(a);
    }
    Ok(out)
}

/// Creates the plan's chains in the store (status `queued`) and returns them as jobs.
/// Agents are checked first: a missing binary fails before anything is written.
pub async fn prepare_new(
    store: &SharedStore,
    plan: &Plan,
    opts: &RunOptions,
) -> Result<Vec<Job>, RunError> {
    let agents = backends(
        &plan.chains.iter().map(|c| &c.settings).collect::<Vec<_>>(),
        &opts.backend,
    )?;
    let mut jobs = Vec::new();
    for (c, agent) in plan.chains.iter().zip(agents) {
        let id = new_chain_id();
        store
            .create_chain(&NewChain {
                id: id.clone(),
                name: c.name.clone(),
                mission: plan.mission.clone(),
                task: c.task.clone(),
                config: chain_config(&c.name, &c.after, &c.settings),
                status: ChainStatus::Queued,
            })
            .await?;
        jobs.push(Job {
            chain_id: id,
            name: c.name.clone(),
            task: c.task.clone(),
            after: c.after.clone(),
            settings: c.settings.clone(),
            agent,
        });
    }
    store.archive_old(KEEP_UNARCHIVED).await?;
    Ok(jobs)
}

/// Chains that look incomplete, newest first (for the warning at start).
pub async fn incomplete_chains(store: &SharedStore) -> Result<Vec<ChainRecord>, StoreError> {
    let recent = store
        .list_chains(&ChainQuery {
            limit: 50,
            ..Default::default()
        })
        .await?;
    Ok(recent
        .into_iter()
        .filter(|c| c.status.is_resumable())
        .collect())
}

/// Prepares `operator run --resume [ID]`: the named chain, or the newest resumable one.
/// `apply` may change the stored settings (flags given with `--resume`).
pub async fn prepare_resume(
    store: &SharedStore,
    id: Option<&str>,
    opts: &RunOptions,
    apply: impl Fn(ChainSettings) -> Result<ChainSettings, ConfigErrors>,
) -> Result<Vec<Job>, RunError> {
    let chain = match id {
        Some(id) => store
            .get_chain(id)
            .await?
            .ok_or_else(|| RunError::UnknownChain(id.to_string()))?,
        None => {
            let candidates = incomplete_chains(store).await?;
            let mut found = None;
            for c in candidates {
                let owner = store.chain_owner(&c.id).await?;
                if !owner_is_live(owner) {
                    found = Some(c);
                    break;
                }
            }
            found.ok_or(RunError::NothingToResume)?
        }
    };
    if chain.status.is_success() {
        return Err(RunError::NotResumable {
            id: chain.id,
            status: chain.status,
        });
    }
    if matches!(
        chain.status,
        ChainStatus::Running | ChainStatus::Paused | ChainStatus::Waiting
    ) && let Some(pid) = store
        .chain_owner(&chain.id)
        .await?
        .filter(|p| owner_is_live(Some(*p)))
    {
        return Err(RunError::Busy { id: chain.id, pid });
    }
    let settings: ChainSettings =
        serde_json::from_value(chain.config.clone()).map_err(|e| RunError::BadStoredConfig {
            id: chain.id.clone(),
            cause: e.to_string(),
        })?;
    let settings = apply(settings)?;
    let agent = backends(&[&settings], &opts.backend)?.remove(0);
    if matches!(
        chain.status,
        ChainStatus::MaxContinuations
            | ChainStatus::BudgetExceeded
            | ChainStatus::Failed
            | ChainStatus::Aborted
    ) {
        // An explicit resume of an ended chain grants it a new allowance of sessions.
        store
            .set_session_base(&chain.id, chain.sessions.len() as u32)
            .await?;
    }
    store
        .set_chain_status(&chain.id, ChainStatus::Queued, None, None)
        .await?;
    Ok(vec![Job {
        chain_id: chain.id.clone(),
        name: chain.name.clone(),
        task: chain.task.clone(),
        // A resumed chain runs alone: what it came after has already run.
        after: Vec::new(),
        settings,
        agent,
    }])
}

/// A chain's owner is live when it is another operator that still runs.
fn owner_is_live(owner: Option<u32>) -> bool {
    owner.is_some_and(crate::process::is_other_live_operator)
}

/// Runs `jobs` to the end (or until stopped by `signals`), and returns the final records.
pub async fn run(
    store: SharedStore,
    jobs: Vec<Job>,
    opts: &RunOptions,
    mut signals: mpsc::UnboundedReceiver<SignalEvent>,
    bus: Bus,
) -> Result<RunReport, RunError> {
    let ids: Vec<String> = jobs.iter().map(|j| j.chain_id.clone()).collect();
    let paused = store.get_flag("paused").await?.is_some();
    let (mode_tx, mode_rx) = control::channel(if paused { Mode::Paused } else { Mode::Running });
    if paused {
        tracing::warn!("the operator is paused (send SIGUSR2 or run `operator resume` to go on)");
    }
    let registry = Registry::default();
    let ctx = Ctx {
        store: store.clone(),
        bus: bus.clone(),
        registry: registry.clone(),
        data_dir: opts.data_dir.clone(),
        mode: mode_rx,
        shutdown_grace: opts.shutdown_grace,
    };
    let notifier = opts
        .notify_webhook
        .clone()
        .map(|url| notify::spawn(url, store.clone(), bus.clone()));
    let (done_tx, mut done_rx) = oneshot::channel();
    let (operator, handle) = Actor::spawn(
        None,
        Operator,
        OperatorArgs {
            ctx,
            concurrency: opts.concurrency,
            done: done_tx,
        },
    )
    .await
    .map_err(|e| RunError::Spawn(e.to_string()))?;
    operator
        .cast(crate::supervisor::OperatorMsg::Submit(jobs))
        .map_err(|e| RunError::Spawn(e.to_string()))?;

    let mut immediate = false;
    let mut stops = 0;
    loop {
        tokio::select! {
            _ = &mut done_rx => break,
            sig = signals.recv() => match sig {
                Some(SignalEvent::Stop) => {
                    stops += 1;
                    if stops == 1 {
                        tracing::warn!(grace = ?opts.shutdown_grace, "stopping: running sessions get a grace period (send SIGINT again to stop at once)");
                        let _ = mode_tx.send(Mode::Stopping);
                    } else {
                        tracing::warn!("stopping at once");
                        immediate = true;
                        registry.signal_all(nix::sys::signal::Signal::SIGKILL);
                        break;
                    }
                }
                Some(SignalEvent::Pause) => {
                    if *mode_tx.borrow() == Mode::Running {
                        store.set_flag("paused", Some("1")).await?;
                        bus.emit("orchestrator:paused", None, None, serde_json::json!({})).await;
                        tracing::warn!("paused: no new session starts until SIGUSR2");
                        let _ = mode_tx.send(Mode::Paused);
                    }
                }
                Some(SignalEvent::Resume) => {
                    if *mode_tx.borrow() == Mode::Paused {
                        store.set_flag("paused", None).await?;
                        bus.emit("orchestrator:resumed", None, None, serde_json::json!({})).await;
                        tracing::warn!("resumed");
                        let _ = mode_tx.send(Mode::Running);
                    }
                }
                Some(SignalEvent::Reload) => {
                    tracing::warn!("SIGHUP: configuration reload is not supported yet; the running configuration is kept");
                }
                None => {
                    // No more signals can arrive; wait for the chains.
                    let _ = (&mut done_rx).await;
                    break;
                }
            }
        }
    }
    operator.stop(None);
    let _ = handle.await;
    let mut chains = Vec::new();
    for id in &ids {
        if let Some(mut c) = store.get_chain(id).await? {
            if immediate && !c.status.is_terminal() {
                store
                    .set_chain_status(
                        id,
                        ChainStatus::Interrupted,
                        Some("stopped at once by a second SIGINT"),
                        None,
                    )
                    .await?;
                c.status = ChainStatus::Interrupted;
            }
            chains.push(c);
        }
    }
    if let Some(n) = notifier {
        n.finish(Duration::from_secs(15)).await;
    }
    Ok(RunReport { chains, immediate })
}

/// The pid file that lets `operator pause|resume|stop` find a running operator.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("operator.pid")
}
