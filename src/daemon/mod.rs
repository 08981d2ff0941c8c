//! The supervisor as a library function: `run` takes prepared chains, starts the Operator actor, answers
//! signals and returns the chains' final records. Every caller puts a run together through
//! [`Launch`] (`launch.rs`), the one composition root.

mod launch;

pub use launch::Launch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{self, Agent, AgentError, BackendOptions};
use crate::api::{self, ControlError, OperatorStatus, StartOutcome, StartRequest};
use crate::chain::Ctx;
use crate::config::{ChainSettings, ConfigErrors, Plan};
use crate::control::{self, Mode};
use crate::events::{Body, Bus};
use crate::model::{ChainRecord, ChainStatus, new_chain_id};
use crate::notify;
use crate::process::Registry;
use crate::signals::SignalEvent;
use crate::store::{ChainQuery, KEEP_UNARCHIVED, NewChain, SharedStore, StoreError};
use crate::supervisor::{Job, Limits, Operator, OperatorArgs, OperatorMsg, job_key};
use ractor::ActorRef;

/// Errors that stop a run before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("no chain `{0}` in the store (`operator list --all` shows the chains there)")]
    UnknownChain(String),
    #[error("chain {id} is {status}; there is nothing to resume")]
    NotResumable { id: String, status: ChainStatus },
    #[error(
        "no incomplete chain to resume (complete, assumed-complete and aborted chains are final; `operator list` shows the chains)"
    )]
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

pub use crate::supervisor::Batch;

/// Re-reads operator.toml and the missions of the run (SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<Vec<Plan>, ConfigErrors> + Send + Sync>;

/// Why a start asked through the API has no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no mission named `{0}` in the missions folder")]
    UnknownMission(String),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
}

/// Plans for a start asked through the API, from the current configuration files.
pub type Planner = Box<dyn Fn(&StartRequest) -> Result<Vec<Plan>, PlanError> + Send + Sync>;

/// The API to serve inside the run.
pub struct ApiSetup {
    pub listener: tokio::net::TcpListener,
    pub security: api::Security,
    pub missions_dir: PathBuf,
}

/// What a run may do besides its batch: reload (SIGHUP), start chains (API), serve the API,
/// take work from a fleet's store (a worker).
#[derive(Default)]
pub struct Hooks {
    pub reloader: Option<Reloader>,
    pub planner: Option<Planner>,
    pub api: Option<ApiSetup>,
    pub feeder: Option<mpsc::UnboundedReceiver<FeedMsg>>,
    /// Receives the run's mode (running, paused, stopping) once it starts (a worker's claim
    /// loop claims nothing while its worker is paused or stopping).
    pub mode_out: Option<oneshot::Sender<control::ModeRx>>,
}

/// What a worker's claim loop tells its run.
#[derive(Debug)]
pub enum FeedMsg {
    /// Chains claimed from the shared store.
    Submit(Batch),
    /// A claim was lost (another worker holds the chain now): stop it here, agent included.
    Lost(String),
    /// A fleet-wide pause or resume seen in the shared store.
    Signal(SignalEvent),
}

/// Requests from the API to the run's loop (the signals' path, plus starts).
enum ControlMsg {
    /// Acknowledged once acted on, so a status read after it sees the new mode.
    Signal(SignalEvent, oneshot::Sender<()>),
    Start(
        StartRequest,
        oneshot::Sender<Result<StartOutcome, ControlError>>,
    ),
    Resume(String, oneshot::Sender<Result<(), ControlError>>),
}

/// The API's handle on this run.
struct DaemonControl {
    tx: mpsc::UnboundedSender<ControlMsg>,
    operator: ActorRef<OperatorMsg>,
    mode: control::ModeRx,
    stays: bool,
    daily_cap_usd: Option<f64>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn gone() -> ControlError {
    ControlError::Gone
}

/// Why a start or a resume asked through the API cannot be done, as the API answers it: the
/// chain unknown (404), not resumable or busy (409), its settings or agent invalid (422), the
/// store (its own status), a failure of ours (500).
impl From<RunError> for ControlError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Store(s) => ControlError::Store(s),
            RunError::UnknownChain(_) => ControlError::UnknownChain(e.to_string()),
            RunError::NotResumable { .. } | RunError::NothingToResume | RunError::Busy { .. } => {
                ControlError::Busy(e.to_string())
            }
            RunError::Config(c) => ControlError::Invalid(c.to_string().trim_end().to_string()),
            RunError::Agent(_) | RunError::BadStoredConfig { .. } => {
                ControlError::Invalid(e.to_string())
            }
            RunError::Spawn(_) => ControlError::Internal(e.to_string()),
        }
    }
}

/// What the Operator runs and queues now.
async fn snapshot(
    operator: &ActorRef<OperatorMsg>,
) -> Result<crate::supervisor::Snapshot, ControlError> {
    operator
        .call(OperatorMsg::Status, Some(CALL_TIMEOUT))
        .await
        .map_err(|_| gone())?
        .success_or(gone())
}

#[async_trait::async_trait]
impl api::Control for DaemonControl {
    async fn status(&self) -> Result<OperatorStatus, ControlError> {
        let snap = snapshot(&self.operator).await?;
        let mode = match *self.mode.borrow() {
            Mode::Running => "running",
            Mode::Paused { interrupt: false } => "paused",
            Mode::Paused { interrupt: true } => "paused-now",
            Mode::Stopping => "stopping",
        };
        Ok(OperatorStatus {
            mode: mode.into(),
            running: snap.running,
            queued: snap.queued,
            concurrency: snap
                .limits
                .into_iter()
                .map(|(m, n)| (m.unwrap_or_default(), n))
                .collect(),
            pid: std::process::id(),
            stays: self.stays,
            daily_cap_usd: self.daily_cap_usd,
        })
    }

    async fn abort(&self, chain_id: &str) -> Result<bool, ControlError> {
        let id = chain_id.to_string();
        self.operator
            .call(|reply| OperatorMsg::Abort(id, reply), Some(CALL_TIMEOUT))
            .await
            .map_err(|_| gone())?
            .success_or(gone())
    }

    async fn start(&self, req: StartRequest) -> Result<StartOutcome, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ControlMsg::Start(req, reply))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn resume_chain(&self, chain_id: &str) -> Result<(), ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ControlMsg::Resume(chain_id.to_string(), reply))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn signal(&self, ev: SignalEvent) -> Result<(), ControlError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(ControlMsg::Signal(ev, ack))
            .map_err(|_| gone())?;
        // A stop may end the run before it answers; that is an answer too.
        let _ = acked.await;
        Ok(())
    }
}

/// How the run ended.
#[derive(Debug)]
pub struct RunReport {
    pub chains: Vec<ChainRecord>,
    /// A second SIGINT stopped everything at once.
    pub immediate: bool,
    /// The root supervisor itself crashed: everything was stopped, the chains are resumable.
    pub root_failed: bool,
}

/// Operator-wide options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data_dir: PathBuf,
    pub shutdown_grace: Duration,
    /// `--concurrency`: replaces every mission's own limit.
    pub concurrency: Option<usize>,
    /// `--continue`: resume the missions' chains that a stop interrupted, skip those that
    /// ended, start the others.
    pub continue_missions: bool,
    pub backend: BackendOptions,
    pub notify: notify::NotifyConfig,
    /// Spending across all chains per UTC day.
    pub daily_cap_usd: Option<f64>,
    /// Price overrides from operator.toml.
    pub pricing: std::collections::BTreeMap<String, crate::cost::Rates>,
    /// Keep running when no chain is left (`operator serve`), until stopped.
    pub stay: bool,
    /// The store is shared with other machines (PostgreSQL): process ids and groups recorded
    /// in it may be another machine's.
    pub shared_store: bool,
    /// Chains are queued for a fleet's workers instead of run here (`serve --enqueue`).
    pub enqueue: bool,
    /// Session caps per account, quiet hours, the release jitter after a usage limit.
    pub quota: crate::quota::Limits,
    /// The operator binary that guards the agents' process groups (`operator guard`), so that
    /// a `kill -9` of the operator takes everything its agents started with it. `None` (a run
    /// inside another program, as in tests): the parent-death signal alone.
    pub guard_exe: Option<PathBuf>,
}

impl RunOptions {
    /// A plain local run in `data_dir` with the defaults of `operator.toml`: no webhooks, no
    /// daily cap, no quota, the store not shared.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            shutdown_grace: Duration::from_secs(10),
            concurrency: None,
            continue_missions: false,
            backend: BackendOptions::default(),
            notify: notify::NotifyConfig {
                global: None,
                secret: None,
                timeout: Duration::from_secs(10),
            },
            daily_cap_usd: None,
            pricing: Default::default(),
            stay: false,
            shared_store: false,
            enqueue: false,
            quota: Default::default(),
            guard_exe: None,
        }
    }
}

fn backends(
    settings: &[&ChainSettings],
    opts: &BackendOptions,
) -> Result<Vec<Arc<dyn Agent>>, AgentError> {
    let mut out = Vec::new();
    for s in settings {
        let a = agent::backend(s.agent, opts);
        a.preflight()?;
        // A fallback agent that cannot start would only be found at the first usage limit.
        for kind in &s.fallback_agents {
            agent::backend(*kind, opts).preflight()?;
        }
        out.push(a);
    }
    Ok(out)
}

/// Creates the plans' chains in the store (status `queued`) and returns them as jobs.
/// Agents of every chain are checked first: a missing binary fails before anything is written.
pub async fn prepare_new(
    store: &SharedStore,
    plans: &[Plan],
    opts: &RunOptions,
) -> Result<Batch, RunError> {
    let all: Vec<&ChainSettings> = plans
        .iter()
        .flat_map(|p| p.chains.iter().map(|c| &c.settings))
        .collect();
    let mut agents = backends(&all, &opts.backend)?.into_iter();
    let mut batch = Batch::default();
    for plan in plans {
        let concurrency = opts.concurrency.unwrap_or(plan.concurrency);
        batch.limits.insert(plan.mission.clone(), concurrency);
        // Chains of the mission that would share a repository at once get a worktree each.
        let workdirs: Vec<_> = plan
            .chains
            .iter()
            .map(|c| {
                (
                    c.settings
                        .workdir
                        .canonicalize()
                        .unwrap_or(c.settings.workdir.clone()),
                    c.settings.worktree,
                )
            })
            .collect();
        let own_worktree = crate::git::needs_worktrees(concurrency, &workdirs);
        let mut plan = plan.clone();
        for i in own_worktree {
            plan.chains[i].settings.worktree = crate::config::WorktreeMode::Always;
        }
        let plan = &plan;
        for c in &plan.chains {
            let agent = agents
                .next()
                .ok_or_else(|| RunError::Spawn("agent list out of step".into()))?;
            let config = crate::config::stored::to_stored(&c.name, &c.after, &c.settings);
            let earlier = match (opts.continue_missions, &plan.mission) {
                (true, Some(m)) => latest_of(store, m, &c.name).await?,
                _ => None,
            };
            let id = match earlier {
                Some(e) if stopped_by_operator(e.status) => {
                    if let Some(pid) = store
                        .chain_owner(&e.id)
                        .await?
                        .filter(|p| owner_is_live(Some(*p)))
                    {
                        return Err(RunError::Busy { id: e.id, pid });
                    }
                    tracing::info!(chain.id = %e.id, name = %c.name, "continuing the chain a stop interrupted");
                    store.set_chain_config(&e.id, &config).await?;
                    store
                        .set_chain_status(&e.id, ChainStatus::Queued, None, None)
                        .await?;
                    e.id
                }
                Some(e) => {
                    tracing::info!(chain.id = %e.id, name = %c.name, status = %e.status, "the chain already ended; not run again");
                    batch
                        .settled
                        .push((job_key(plan.mission.as_deref(), &c.name), e.id, e.status));
                    continue;
                }
                None => {
                    let id = new_chain_id();
                    store
                        .create_chain(&NewChain {
                            id: id.clone(),
                            name: c.name.clone(),
                            mission: plan.mission.clone(),
                            task: c.task.clone(),
                            config,
                            status: ChainStatus::Queued,
                        })
                        .await?;
                    id
                }
            };
            batch.jobs.push(Job {
                chain_id: id,
                mission: plan.mission.clone(),
                name: c.name.clone(),
                task: c.task.clone(),
                after: c.after.clone(),
                settings: c.settings.clone(),
                agent,
            });
        }
    }
    store.archive_old(KEEP_UNARCHIVED).await?;
    Ok(batch)
}

/// Ended by a stop or a crash of the operator, not by its own outcome.
fn stopped_by_operator(status: ChainStatus) -> bool {
    matches!(
        status,
        ChainStatus::Queued
            | ChainStatus::Running
            | ChainStatus::Paused
            | ChainStatus::Waiting
            | ChainStatus::AwaitingApproval
            | ChainStatus::AwaitingChecks
            | ChainStatus::Merging
            | ChainStatus::Interrupted
    )
}

/// The newest chain of `mission` named `name`, if any.
async fn latest_of(
    store: &SharedStore,
    mission: &str,
    name: &str,
) -> Result<Option<ChainRecord>, StoreError> {
    let mut before = None;
    loop {
        let page = store
            .list_chains(&ChainQuery {
                include_archived: true,
                before: before.clone(),
                limit: 200,
                ..Default::default()
            })
            .await?;
        if let Some(c) = page
            .iter()
            .find(|c| c.mission.as_deref() == Some(mission) && c.name == name)
        {
            return Ok(Some(c.clone()));
        }
        match page.last() {
            Some(last) if page.len() == 200 => before = Some(last.id.clone()),
            _ => return Ok(None),
        }
    }
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
) -> Result<Batch, RunError> {
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
        ChainStatus::Running
            | ChainStatus::Paused
            | ChainStatus::Waiting
            | ChainStatus::AwaitingApproval
            | ChainStatus::AwaitingChecks
            | ChainStatus::Merging
    ) && let Some(pid) = store
        .chain_owner(&chain.id)
        .await?
        .filter(|p| owner_is_live(Some(*p)))
    {
        return Err(RunError::Busy { id: chain.id, pid });
    }
    let settings = apply(stored_settings(&chain)?)?;
    let agent = backends(&[&settings], &opts.backend)?.remove(0);
    // The limits given with `--resume` are the chain's from now on (show, the API, a later resume).
    crate::store::update_chain_settings(&**store, &chain.id, &settings).await?;
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
    Ok(Batch {
        jobs: vec![Job {
            chain_id: chain.id.clone(),
            // A resumed chain runs alone: what it came after has already run.
            mission: None,
            name: chain.name.clone(),
            task: chain.task.clone(),
            after: Vec::new(),
            settings,
            agent,
        }],
        limits: Limits::from([(None, 1)]),
        settled: Vec::new(),
    })
}

fn stored_settings(chain: &ChainRecord) -> Result<ChainSettings, RunError> {
    crate::config::stored::from_stored(&chain.config).map_err(|e| RunError::BadStoredConfig {
        id: chain.id.clone(),
        cause: e.to_string(),
    })
}

/// The job for a chain a fleet worker claimed: it goes on from its stored state (the last
/// handoff), with its stored settings, alone (what it came after has already run).
pub async fn claimed_job(
    store: &SharedStore,
    id: &str,
    opts: &RunOptions,
) -> Result<Job, RunError> {
    let chain = store
        .get_chain(id)
        .await?
        .ok_or_else(|| RunError::UnknownChain(id.to_string()))?;
    let settings = stored_settings(&chain)?;
    let agent = backends(&[&settings], &opts.backend)?.remove(0);
    store
        .set_chain_status(&chain.id, ChainStatus::Queued, None, None)
        .await?;
    Ok(Job {
        chain_id: chain.id.clone(),
        mission: None,
        name: chain.name.clone(),
        task: chain.task.clone(),
        after: Vec::new(),
        settings,
        agent,
    })
}

/// A chain's owner is live when it is another operator that still runs.
fn owner_is_live(owner: Option<u32>) -> bool {
    owner.is_some_and(crate::process::is_other_live_operator)
}

/// Stops agents that an operator which died (`kill -9`, a crash, a reboot of a container)
/// left running: sessions recorded as running whose chain's owner is no live operator, and
/// whose process group leader is still that agent program. Returns how many were stopped.
pub async fn stop_stale_agents(store: &SharedStore) -> Result<usize, StoreError> {
    let mut stopped = 0;
    for a in store.running_agents().await? {
        if owner_is_live(a.owner_pid) {
            continue;
        }
        // What the agent started carries its session's mark, even when the agent (its group's
        // leader) is already gone: a build, a test run, a background `sleep`.
        for pid in crate::process::marked(&format!("{}/{}", a.chain_id, a.index)) {
            tracing::warn!(chain.id = %a.chain_id, session.index = a.index, pid, "stopping a process an agent left behind when its operator died");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            stopped += 1;
        }
        if a.pgid <= 1 || a.program.is_empty() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pgid)).unwrap_or_default();
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(first).ends_with(&a.program) {
            continue;
        }
        tracing::warn!(chain.id = %a.chain_id, session.index = a.index, pgid = a.pgid, "stopping an agent left running by an operator that died");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(a.pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        stopped += 1;
    }
    Ok(stopped)
}

/// What a reload changes: settings of chains already in the run, and new chains.
async fn reload(
    store: &SharedStore,
    opts: &RunOptions,
    reloader: &Reloader,
    known: &mut std::collections::HashSet<String>,
) -> Result<(Vec<(String, ChainSettings, Arc<dyn Agent>)>, Batch), RunError> {
    let plans = reloader()?;
    // Check every agent before anything changes.
    let all: Vec<&ChainSettings> = plans
        .iter()
        .flat_map(|p| p.chains.iter().map(|c| &c.settings))
        .collect();
    let agents = backends(&all, &opts.backend)?;
    let mut updates = Vec::new();
    let mut fresh: Vec<Plan> = Vec::new();
    let mut agents = agents.into_iter();
    for plan in &plans {
        let mut new_chains = Vec::new();
        for c in &plan.chains {
            let agent = agents
                .next()
                .ok_or_else(|| RunError::Spawn("agent list out of step".into()))?;
            let key = job_key(plan.mission.as_deref(), &c.name);
            if known.contains(&key) {
                updates.push((key, c.settings.clone(), agent));
            } else {
                new_chains.push(c.clone());
            }
        }
        fresh.push(Plan {
            chains: new_chains,
            ..plan.clone()
        });
    }
    let batch = prepare_new(store, &fresh, opts).await?;
    for j in &batch.jobs {
        known.insert(j.key());
    }
    Ok((updates, batch))
}

/// Runs `batch` to the end (or until stopped by `signals`), and returns the final records.
/// With a `reloader`, SIGHUP re-reads the configuration: new chains start, changed settings
/// apply from each chain's next session, and an invalid file changes nothing.
async fn run(
    store: SharedStore,
    batch: Batch,
    opts: &RunOptions,
    mut signals: mpsc::UnboundedReceiver<SignalEvent>,
    bus: Bus,
    hooks: Hooks,
) -> Result<RunReport, RunError> {
    let Hooks {
        reloader,
        planner,
        api: api_setup,
        feeder,
        mode_out,
    } = hooks;
    let (mut feeder, mut feeding) = match feeder {
        Some(f) => (f, true),
        None => (mpsc::unbounded_channel().1, false),
    };
    let ids: Vec<String> = batch
        .jobs
        .iter()
        .map(|j| j.chain_id.clone())
        .chain(batch.settled.iter().map(|(_, id, _)| id.clone()))
        .collect();
    let known: std::collections::HashSet<String> = batch
        .jobs
        .iter()
        .map(Job::key)
        .chain(batch.settled.iter().map(|(key, _, _)| key.clone()))
        .collect();
    // Process groups recorded by other machines of a fleet mean nothing here.
    if !opts.shared_store {
        stop_stale_agents(&store).await?;
    }
    let paused = store.get_flag("paused").await?.is_some();
    let initial = if paused {
        Mode::Paused { interrupt: false }
    } else {
        Mode::Running
    };
    let (mode_tx, mode_rx) = control::channel(initial);
    if let Some(out) = mode_out {
        let _ = out.send(mode_rx.clone());
    }
    if paused {
        tracing::warn!("the operator is paused (send SIGUSR2 or run `operator resume` to go on)");
    }
    let registry = match &opts.guard_exe {
        Some(exe) => Registry::guarded(exe).map_err(|e| {
            RunError::Spawn(format!(
                "could not start the process guard `{} guard`: {e}",
                exe.display()
            ))
        })?,
        None => Registry::default(),
    };
    let ctx = Ctx {
        store: store.clone(),
        bus: bus.clone(),
        registry: registry.clone(),
        data_dir: opts.data_dir.clone(),
        mode: mode_rx,
        shutdown_grace: opts.shutdown_grace,
        daily_cap_usd: opts.daily_cap_usd,
        pricing: std::sync::Arc::new(crate::cost::Pricing::with(&opts.pricing)),
        quota: std::sync::Arc::new(crate::quota::Quota::new(opts.quota.clone())),
        shared_store: opts.shared_store,
        backend: opts.backend.clone(),
    };
    let notifier = notify::spawn(opts.notify.clone(), store.clone(), bus.clone());
    let (stop_log, stop_log_rx) = oneshot::channel();
    let event_log = crate::eventlog::spawn(&bus, opts.data_dir.clone(), stop_log_rx);
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel();
    let mode_for_api = ctx.mode.clone();
    let (operator, handle) = Actor::spawn(None, Operator, OperatorArgs { ctx, idle: idle_tx })
        .await
        .map_err(|e| RunError::Spawn(e.to_string()))?;
    if opts.enqueue {
        // The fleet's workers run them; this process serves and watches.
        store.wake_workers().await?;
    } else {
        operator
            .cast(OperatorMsg::Submit(batch))
            .map_err(|e| RunError::Spawn(e.to_string()))?;
    }
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<ControlMsg>();
    let (server, metrics_task) = match api_setup {
        None => (None, None),
        Some(setup) => {
            let control = DaemonControl {
                tx: ctl_tx.clone(),
                operator: operator.clone(),
                mode: mode_for_api,
                stays: opts.stay,
                daily_cap_usd: opts.daily_cap_usd,
            };
            let (server, metrics) = serve_api(setup, control, &store, &bus, opts)?;
            (Some(server), Some(metrics))
        }
    };
    // With a shared store, what the fleet's workers journal reaches the API's WebSocket.
    let relay = (opts.shared_store && server.is_some())
        .then(|| crate::events::relay_journal(store.clone(), bus.clone()));
    let mut d = Daemon {
        store: store.clone(),
        opts,
        bus: bus.clone(),
        operator: operator.clone(),
        mode_tx,
        registry,
        reloader,
        planner,
        ids,
        known,
        api_missions: Default::default(),
        immediate: false,
        root_failed: false,
        stops: 0,
    };
    let mut signals_open = true;
    let mut pending_ack: Option<oneshot::Sender<()>> = None;
    loop {
        if let Some(ack) = pending_ack.take() {
            let _ = ack.send(());
        }
        // Each input is one method; a signal (from the OS, the API or the fleet) goes on to
        // `on_signal`, with whether the mode it sets is kept in the store.
        let signal = tokio::select! {
            idle = idle_rx.recv() => match d.on_idle(idle) {
                Flow::Stop => break,
                Flow::Go => None,
            },
            sig = signals.recv(), if signals_open => match sig {
                // No more signals can arrive; the chains (and the API) go on.
                None => {
                    signals_open = false;
                    None
                }
                // A worker's own pause or resume is its own, not the fleet's.
                Some(ev) => Some((ev, !opts.shared_store)),
            },
            feed = feeder.recv(), if feeding => match feed {
                None => {
                    feeding = false;
                    None
                }
                Some(f) => d.on_feed(f).await.map(|ev| (ev, false)),
            },
            cmd = ctl_rx.recv() => match cmd {
                Some(ControlMsg::Signal(ev, ack)) => {
                    pending_ack = Some(ack);
                    Some((ev, true))
                }
                Some(ControlMsg::Start(req, reply)) => {
                    let answer = d.on_start(req).await;
                    let _ = reply.send(answer);
                    None
                }
                Some(ControlMsg::Resume(id, reply)) => {
                    let _ = reply.send(d.on_resume(&id).await);
                    None
                }
                None => None,
            },
        };
        if let Some((ev, persist)) = signal
            && d.on_signal(ev, persist).await? == Flow::Stop
        {
            break;
        }
    }
    // The daemon (and the run mode's sender) lives until the Operator has stopped.
    let (ids, immediate, root_failed) = (std::mem::take(&mut d.ids), d.immediate, d.root_failed);
    operator.stop(None);
    let _ = handle.await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(t) = relay {
        t.abort();
    }
    let chains = final_records(&store, &ids, immediate, root_failed).await?;
    notifier.finish(Duration::from_secs(15)).await;
    let _ = stop_log.send(());
    let _ = event_log.await;
    drop(d);
    Ok(RunReport {
        chains,
        immediate,
        root_failed,
    })
}

/// Serves the API and the dashboard inside the run, with `/metrics` counting the bus.
fn serve_api(
    setup: ApiSetup,
    control: DaemonControl,
    store: &SharedStore,
    bus: &Bus,
    opts: &RunOptions,
) -> Result<(crate::http::Server, tokio::task::JoinHandle<()>), RunError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let counting = metrics.spawn(bus);
    let state = api::AppState {
        store: store.clone(),
        bus: bus.clone(),
        control: Some(Arc::new(control)),
        security: Arc::new(setup.security),
        metrics,
        data_dir: opts.data_dir.clone(),
        started: std::time::Instant::now(),
        daily_cap_usd: opts.daily_cap_usd,
        missions_dir: setup.missions_dir,
    };
    let server = crate::http::Server::spawn(setup.listener, state)
        .map_err(|e| RunError::Spawn(format!("the API server: {e}")))?;
    Ok((server, counting))
}

/// The run's chains as they ended. After a stop at once (a second SIGINT, or the root supervisor
/// crashed) a chain that was not over is recorded `interrupted`, and its running session too: its
/// agent was killed with it.
async fn final_records(
    store: &SharedStore,
    ids: &[String],
    immediate: bool,
    root_failed: bool,
) -> Result<Vec<ChainRecord>, RunError> {
    let mut chains = Vec::new();
    for id in ids {
        if let Some(mut c) = store.get_chain(id).await? {
            if immediate && !c.status.is_terminal() {
                store
                    .set_chain_status(
                        id,
                        ChainStatus::Interrupted,
                        Some(if root_failed {
                            "stopped: the operator's root supervisor crashed"
                        } else {
                            "stopped at once by a second SIGINT"
                        }),
                        None,
                    )
                    .await?;
                c.status = ChainStatus::Interrupted;
            }
            if immediate {
                // Its agent was killed with it: the session is over, not running.
                for s in c
                    .sessions
                    .iter_mut()
                    .filter(|s| s.status == crate::model::SessionStatus::Running)
                {
                    s.status = crate::model::SessionStatus::Interrupted;
                    s.error = Some("stopped at once; the agent was killed".into());
                    s.ended_at = Some(crate::model::now_rfc3339());
                    store.finish_session(id, s, None).await?;
                }
            }
            chains.push(c);
        }
    }
    Ok(chains)
}

/// Whether the daemon's loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// A run in progress: what the loop's inputs act on. One method per input.
struct Daemon<'a> {
    store: SharedStore,
    opts: &'a RunOptions,
    bus: Bus,
    operator: ActorRef<OperatorMsg>,
    mode_tx: tokio::sync::watch::Sender<Mode>,
    registry: Registry,
    reloader: Option<Reloader>,
    planner: Option<Planner>,
    /// Every chain of the run, for the report.
    ids: Vec<String>,
    /// `mission/name` of every chain, for reloads.
    known: std::collections::HashSet<String>,
    /// Missions started through the API, with their chains (one run of a mission at a time).
    api_missions: std::collections::HashMap<String, Vec<String>>,
    /// Stopped at once (a second SIGINT, or the root supervisor crashed).
    immediate: bool,
    root_failed: bool,
    stops: u32,
}

impl Daemon<'_> {
    /// The Operator says it has nothing left to run (`Some`), or died (`None`).
    fn on_idle(&mut self, idle: Option<()>) -> Flow {
        match idle {
            None => {
                // The root supervisor died (a bug of ours): there is no one left to supervise
                // the chains, so stop everything now and leave them resumable.
                tracing::error!(
                    "the root supervisor crashed; stopping every agent (the chains stay resumable)"
                );
                self.root_failed = true;
                self.immediate = true;
                let _ = self.mode_tx.send(Mode::Stopping);
                self.registry.signal_all(nix::sys::signal::Signal::SIGKILL);
                Flow::Stop
            }
            Some(()) if !self.opts.stay || *self.mode_tx.borrow() == Mode::Stopping => Flow::Stop,
            Some(()) => Flow::Go,
        }
    }

    /// A fleet worker's claim loop: chains it claimed, a claim it lost, the fleet's pause.
    async fn on_feed(&mut self, feed: FeedMsg) -> Option<SignalEvent> {
        match feed {
            FeedMsg::Submit(batch) => {
                self.ids
                    .extend(batch.jobs.iter().map(|j| j.chain_id.clone()));
                self.known.extend(batch.jobs.iter().map(Job::key));
                let _ = self.operator.cast(OperatorMsg::Submit(batch));
                None
            }
            FeedMsg::Lost(id) => {
                tracing::warn!(chain.id = %id, "this worker's claim on the chain was lost; stopping it here");
                let _ = self
                    .operator
                    .call(|r| OperatorMsg::Abort(id, r), Some(CALL_TIMEOUT))
                    .await;
                None
            }
            FeedMsg::Signal(ev) => Some(ev),
        }
    }

    /// A start asked through the API.
    async fn on_start(&mut self, req: StartRequest) -> Result<StartOutcome, ControlError> {
        let mode = *self.mode_tx.borrow();
        let answer = api_start(
            &self.store,
            self.opts,
            self.planner.as_ref(),
            req,
            mode,
            &mut self.api_missions,
        )
        .await;
        if let Ok((StartOutcome::Started(new_ids), batch)) = &answer {
            self.ids.extend(new_ids.iter().cloned());
            if let Some(b) = batch {
                self.known.extend(b.jobs.iter().map(Job::key));
            }
        }
        let (outcome, batch) = answer?;
        let Some(batch) = batch else {
            return Ok(outcome);
        };
        let mut missions: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for j in &batch.jobs {
            if let Some(m) = &j.mission {
                missions
                    .entry(m.clone())
                    .or_default()
                    .push(j.chain_id.clone());
            }
        }
        for (m, chains) in missions {
            self.bus
                .emit(None, None, Body::MissionStarted { mission: m, chains })
                .await;
        }
        if self.opts.enqueue {
            if let Err(e) = self.store.wake_workers().await {
                tracing::warn!(cause = %e, "could not wake the fleet's workers; they find the chains at their next heartbeat");
            }
        } else {
            let _ = self.operator.cast(OperatorMsg::Submit(batch));
        }
        Ok(outcome)
    }

    /// A chain resumed through the API: run here again from its last handoff.
    async fn on_resume(&mut self, id: &str) -> Result<(), ControlError> {
        if *self.mode_tx.borrow() == Mode::Stopping {
            return Err(ControlError::Busy(
                "the operator is stopping; resume the chain with `operator run --resume` later"
                    .into(),
            ));
        }
        if self.opts.enqueue {
            return Err(ControlError::Busy(
                "this operator queues chains for a fleet and runs none; resume the chain with \
                 `operator run --store URL --resume ID`"
                    .into(),
            ));
        }
        let snap = snapshot(&self.operator).await?;
        if snap.running.iter().chain(&snap.queued).any(|c| c == id) {
            return Err(ControlError::Busy(format!(
                "chain {id} is already running in this operator"
            )));
        }
        let batch = prepare_resume(&self.store, Some(id), self.opts, Ok).await?;
        tracing::info!(chain.id = %id, "resumed through the API");
        if !self.ids.iter().any(|c| c == id) {
            self.ids.push(id.to_string());
        }
        self.known.extend(batch.jobs.iter().map(Job::key));
        let _ = self.operator.cast(OperatorMsg::Submit(batch));
        Ok(())
    }

    /// A stop, pause, resume or reload — from a signal, the API, or the fleet. `persist`: a
    /// pause or resume is kept in the store (for a restart, and for a fleet's workers).
    async fn on_signal(&mut self, sig: SignalEvent, persist: bool) -> Result<Flow, RunError> {
        match sig {
            SignalEvent::Stop => {
                self.stops += 1;
                if self.stops == 1 {
                    tracing::warn!(grace = ?self.opts.shutdown_grace, "stopping: running sessions get a grace period (send SIGINT again to stop at once)");
                    self.bus.emit(None, None, Body::Stopping {}).await;
                    let _ = self.mode_tx.send(Mode::Stopping);
                } else {
                    tracing::warn!("stopping at once");
                    self.immediate = true;
                    self.registry.signal_all(nix::sys::signal::Signal::SIGKILL);
                    return Ok(Flow::Stop);
                }
            }
            SignalEvent::Pause => {
                // `operator pause --now` leaves its request in the store before signalling.
                let now = self.store.get_flag("pause_request").await?.as_deref() == Some("now");
                self.store.set_flag("pause_request", None).await?;
                let current = *self.mode_tx.borrow();
                if current == Mode::Running
                    || (now && current == (Mode::Paused { interrupt: false }))
                {
                    if persist {
                        self.store.set_flag("paused", Some("1")).await?;
                    }
                    self.bus
                        .emit(None, None, Body::OperatorPaused { now })
                        .await;
                    if now {
                        tracing::warn!(
                            "paused now: running sessions are interrupted and write their handoff; SIGUSR2 resumes"
                        );
                    } else {
                        tracing::warn!(
                            "paused: running sessions finish, no new session starts until SIGUSR2"
                        );
                    }
                    let _ = self.mode_tx.send(Mode::Paused { interrupt: now });
                }
            }
            SignalEvent::Resume if self.mode_tx.borrow().is_paused() => {
                if persist {
                    self.store.set_flag("paused", None).await?;
                }
                self.bus.emit(None, None, Body::OperatorResumed {}).await;
                tracing::warn!("resumed");
                let _ = self.mode_tx.send(Mode::Running);
            }
            SignalEvent::Resume => {}
            SignalEvent::Reload => self.on_reload().await,
        }
        Ok(Flow::Go)
    }

    /// SIGHUP: the files again; new chains start, changed settings apply from the next session.
    async fn on_reload(&mut self) {
        let Some(r) = &self.reloader else {
            tracing::warn!("SIGHUP: a resumed chain has no mission to reload; nothing changes");
            return;
        };
        match reload(&self.store, self.opts, r, &mut self.known).await {
            Ok((updates, fresh)) => {
                let (changed, added) = (updates.len(), fresh.jobs.len());
                self.ids
                    .extend(fresh.jobs.iter().map(|j| j.chain_id.clone()));
                let limits = fresh.limits.clone();
                let _ = self
                    .operator
                    .cast(OperatorMsg::Reconfigure(updates, limits));
                let _ = self.operator.cast(OperatorMsg::Submit(fresh));
                self.bus
                    .emit(
                        None,
                        None,
                        Body::Reloaded {
                            chains: changed,
                            added,
                        },
                    )
                    .await;
                tracing::warn!(
                    chains = changed,
                    added,
                    "configuration reloaded; changed settings apply from each chain's next session"
                );
            }
            Err(e) => {
                self.bus
                    .emit(
                        None,
                        None,
                        Body::ReloadFailed {
                            error: e.to_string(),
                        },
                    )
                    .await;
                tracing::warn!(
                    "configuration reload refused; the running configuration is kept: {e}"
                );
            }
        }
    }
}

/// A start asked through the API: plans from the configuration, checked, created in the store
/// as `queued`. Returns the outcome and the batch to submit.
async fn api_start(
    store: &SharedStore,
    opts: &RunOptions,
    planner: Option<&Planner>,
    req: StartRequest,
    mode: Mode,
    active: &mut std::collections::HashMap<String, Vec<String>>,
) -> Result<(StartOutcome, Option<Batch>), ControlError> {
    if mode == Mode::Stopping {
        return Err(ControlError::Busy("the operator is stopping".into()));
    }
    let planner =
        planner.ok_or_else(|| ControlError::Busy("this run cannot start new chains".into()))?;
    let plans = match planner(&req) {
        Ok(p) => p,
        Err(PlanError::UnknownMission(m)) => {
            return Err(ControlError::UnknownMission(format!(
                "no mission named `{m}` in the missions folder"
            )));
        }
        Err(PlanError::Config(e)) => {
            return Err(ControlError::Invalid(e.to_string().trim_end().to_string()));
        }
    };
    if req.dry_run {
        let v = serde_json::to_value(&plans).map_err(|e| ControlError::Internal(e.to_string()))?;
        return Ok((StartOutcome::Plan(v), None));
    }
    for plan in &plans {
        let Some(m) = &plan.mission else { continue };
        for id in active.get(m).into_iter().flatten() {
            if let Some(c) = store.get_chain(id).await?
                && !c.status.is_terminal()
            {
                return Err(ControlError::Busy(format!(
                    "mission `{m}` is already running (chain {id} is {}); abort it or wait",
                    c.status
                )));
            }
        }
    }
    let mut opts = opts.clone();
    opts.concurrency = req.concurrency.or(opts.concurrency);
    opts.continue_missions = false;
    let batch = prepare_new(store, &plans, &opts).await?;
    let ids: Vec<String> = batch.jobs.iter().map(|j| j.chain_id.clone()).collect();
    for j in &batch.jobs {
        tracing::info!(chain.id = %j.chain_id, name = %j.name, mission = j.mission.as_deref().unwrap_or("-"), "chain started through the API");
    }
    // This run of each mission replaces its previous one (all ended: checked above).
    for m in plans.iter().filter_map(|p| p.mission.as_ref()) {
        let chains = batch.jobs.iter().filter(|j| j.mission.as_ref() == Some(m));
        active.insert(m.clone(), chains.map(|j| j.chain_id.clone()).collect());
    }
    Ok((StartOutcome::Started(ids), Some(batch)))
}

/// The pid file that lets `operator pause|resume|stop` find a running operator.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    crate::datadir::DataDir::new(data_dir).pid_file()
}
