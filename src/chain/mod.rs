//! The Chain actor: a thin shell around the pure [`ChainMachine`] that runs a chain's sessions one
//! after another, supervising its Session, Cost and Handoff children.
//!
//! Each message becomes a machine [`Event`]; the shell carries the machine's [`Cmd`]s out in order
//! (store writes before the acts they record, bus events, timers, the session actor) and answers
//! the commands that ask the world something (the budget, the quota, the handoff, the working
//! tree, the gates) with the next event. The decisions are all in `machine`.

mod approvals;
mod children;
pub mod cost;
mod exec;
pub mod gates;
pub mod handoffs;
mod land;
pub mod machine;
mod messages;
pub mod policy;
mod sessions;
pub mod vcs;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::Instrument;

use crate::agent::{Agent, SessionSpec};
use crate::config::ChainSettings;
use crate::control::ModeRx;
use crate::events::{Body, Bus};
use crate::handoff::prompt;
use crate::model::{ChainStatus, HandoffRecord, SessionRecord, SessionStatus, now_rfc3339};
use crate::otp::{
    Action, ChildSpec, Exit, Restart, RestartIntensity, Shutdown, Strategy, Supervisor,
};
use crate::process::Registry;
use crate::session::{Session, SessionArgs, SessionMsg, SessionOutcome, SessionReport};
use crate::store::{SessionStart, SharedStore};
use children::{Child, child_supervisor, spawn_cost, spawn_handoffs};
use cost::{Cost, CostArgs, CostMsg};
use handoffs::{HandoffArgs, HandoffMsg, Handoffs};
use machine::{ChainMachine, Cmd, Event, Grace, Moment, QuotaAnswer};
pub use messages::ChainMsg;
use policy::SessionFacts;

/// Timeout of calls from the chain to its own children.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks a child and waits for its answer.
async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    f: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ActorProcessingErr> {
    match actor.call(f, Some(CALL_TIMEOUT)).await {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err("a child actor did not answer in time".into()),
        Ok(CallResult::SenderError) => Err("a child actor dropped the call".into()),
        Err(e) => Err(format!("a child actor is gone: {e}").into()),
    }
}

/// What every chain shares with the operator.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub store: SharedStore,
    pub bus: Bus,
    pub registry: Registry,
    pub data_dir: PathBuf,
    pub mode: ModeRx,
    pub shutdown_grace: Duration,
    /// Spending across all chains per UTC day.
    pub daily_cap_usd: Option<f64>,
    pub pricing: std::sync::Arc<crate::cost::Pricing>,
    /// The operator-wide scheduler of usage limits and session caps.
    pub quota: std::sync::Arc<crate::quota::Quota>,
    /// The store is a fleet's: an account's usage-limit hold is shared through it.
    pub shared_store: bool,
    /// Where the agent CLIs are (a chain builds its fallback agents from it).
    pub backend: crate::agent::BackendOptions,
}

pub struct ChainArgs {
    pub chain_id: String,
    /// The chain's name in its mission (commit messages).
    pub name: String,
    pub task: String,
    pub settings: ChainSettings,
    pub agent: Arc<dyn Agent>,
    pub ctx: Ctx,
}

struct Running {
    index: u32,
    /// `None` when the agent could not be started.
    actor: Option<ActorRef<SessionMsg>>,
    asked_again: bool,
    started_at: String,
}

/// A session whose start is being recorded: its prompt waits for [`Cmd::Spawn`].
struct Prepared {
    index: u32,
    prompt: String,
    resume_id: Option<String>,
    started_at: String,
}

/// A session between its end and the decision about it: what the shell needs to record it.
struct Over {
    outcome: SessionOutcome,
    started_at: String,
    asked_again: bool,
    /// Its handoff, once recorded.
    handoff: Option<HandoffRecord>,
}

pub struct ChainState {
    id: String,
    task: String,
    settings: ChainSettings,
    /// The agent running the chain's sessions now: one of `agents`.
    agent: Arc<dyn Agent>,
    /// The chain's own agent, then its fallbacks (`fallback_agents`), in order.
    agents: Vec<Arc<dyn Agent>>,
    /// The kind of agent that ran the chain's last session (its resume id is that agent's).
    last_ran: Option<crate::agent::AgentKind>,
    ctx: Ctx,
    cost: ActorRef<CostMsg>,
    handoffs: ActorRef<HandoffMsg>,
    session: Option<Running>,
    prepared: Option<Prepared>,
    over: Option<Over>,
    /// When the actor started: the machine's clock (time reaches it as a fact).
    started: std::time::Instant,
    span: tracing::Span,
    children: Supervisor<Child>,
    /// The chain's name in its mission (commit messages).
    name: String,
    /// Its git workspace, when the workdir is in a repository.
    git: Option<crate::git::Workspace>,
    /// The working tree before the running session (for progress and stale COMPLETEs).
    before: Option<gates::Fingerprint>,
    /// The last judged session's index and handoff text (the next judgement compares with it).
    last_judged: Option<(u32, String)>,
    /// The agent's account, for the quota scheduler.
    account: String,
    /// Tool calls of the running session held for a person.
    held: Vec<approvals::Held>,
    /// The chain's state and decisions.
    machine: ChainMachine,
    /// The landing in progress (its task), and whether the chain landed.
    landing: Option<tokio::task::AbortHandle>,
    landed: bool,
}

pub struct Chain;

/// The agents a chain may run on, in order of preference: its own, then its fallbacks (each
/// kind once).
fn lineup(
    own: &Arc<dyn Agent>,
    s: &ChainSettings,
    backend: &crate::agent::BackendOptions,
) -> Vec<Arc<dyn Agent>> {
    let mut out = vec![own.clone()];
    for kind in &s.fallback_agents {
        if !out.iter().any(|a| a.kind() == *kind) {
            out.push(crate::agent::backend(*kind, backend));
        }
    }
    out
}

impl ChainState {
    async fn set_status(
        &self,
        status: ChainStatus,
        reason: Option<&str>,
    ) -> Result<(), ActorProcessingErr> {
        self.ctx
            .store
            .set_chain_status(&self.id, status, reason, Some(std::process::id()))
            .await?;
        Ok(())
    }

    async fn finish(
        &mut self,
        me: &ActorRef<ChainMsg>,
        status: ChainStatus,
        reason: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(h) = self.landing.take() {
            h.abort();
        }
        if status == ChainStatus::Complete {
            // A landing ticked a file item already (this finds it done); an issue is closed
            // only now that the work is in.
            let said = format!(
                "Done by operator, chain `{}`: {}",
                self.id,
                reason.as_deref().unwrap_or("complete")
            );
            for forge in [false, true] {
                vcs::check_off(
                    &self.ctx,
                    &self.id,
                    &self.settings,
                    self.git.as_ref(),
                    forge,
                    &said,
                )
                .await;
            }
        }
        if let Some(ws) = &self.git {
            vcs::finish(&self.ctx, &self.id, &self.settings, ws, status, self.landed).await;
        }
        self.set_status(status, reason.as_deref()).await?;
        if !matches!(
            status,
            ChainStatus::Interrupted | ChainStatus::ChecksTimeout
        ) {
            // Over, and recorded so: a resume starts afresh (a stopped or timed-out landing
            // lands again; one that dies before this line lands again and finds it done).
            for key in [land::landing_flag(&self.id), land::evictions_flag(&self.id)] {
                if let Err(e) = self.ctx.store.set_flag(&key, None).await {
                    tracing::warn!(parent: &self.span, cause = %e, "could not clear the landing's record");
                }
            }
        }
        self.ctx
            .bus
            .emit(Some(&self.id), None, Body::ended(status, reason.clone()))
            .await;
        tracing::info!(parent: &self.span, status = %status, reason = reason.as_deref().unwrap_or(""), "chain ended");
        me.stop(Some(status.as_str().to_string()));
        Ok(())
    }

    /// The top of the chain's git repository (or worktree), if it works in one.
    fn repo(&self) -> Option<PathBuf> {
        self.git.as_ref().map(|g| g.repo.clone())
    }

    /// Where the agent works: the configured workdir, or its place in the chain's worktree.
    fn workdir(&self) -> PathBuf {
        self.git
            .as_ref()
            .map(|g| g.workdir.clone())
            .unwrap_or_else(|| self.settings.workdir.clone())
    }
}

/// Now, in Unix seconds (the machine takes time as a fact).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Actor for Chain {
    type Msg = ChainMsg;
    type State = ChainState;
    type Arguments = ChainArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ChainMsg>,
        a: ChainArgs,
    ) -> Result<ChainState, ActorProcessingErr> {
        let span = tracing::info_span!("chain", chain.id = %a.chain_id, agent = %a.agent.kind());
        let store = a.ctx.store.clone();
        // The chain's state lives in the store: a restarted chain rebuilds itself from it.
        let mut sessions = store.sessions(&a.chain_id).await?;
        for s in sessions
            .iter_mut()
            .filter(|s| s.status == SessionStatus::Running)
        {
            // Left running by an operator that died: it will not finish now.
            s.status = SessionStatus::Interrupted;
            s.error = Some("the operator stopped during this session".into());
            s.ended_at = Some(now_rfc3339());
            store.finish_session(&a.chain_id, s, None).await?;
        }
        let session_base = store.session_base(&a.chain_id).await?;
        let limits = machine::Limits::of(&a.settings).with_daily_cap(a.ctx.daily_cap_usd);
        let mut machine = ChainMachine::restore(limits, session_base, &sessions);
        let (git, refused) = match vcs::open(&a.ctx, &a.chain_id, &a.task, &a.settings).await {
            Ok(ws) => (ws, None),
            Err(reason) => (None, Some(reason)),
        };
        let account = a.agent.account();
        // A restarted chain runs nothing yet: whatever it held is released.
        a.ctx.quota.finished(&account, &a.chain_id);
        // Calls its previous life held for a person went with that session's agent.
        approvals::settle_stale(&*a.ctx.store, &a.chain_id).await;
        machine.refused = refused;
        // It was landing when its previous life ended: it lands again before anything else.
        machine.land_pending = store
            .get_flag(&land::landing_flag(&a.chain_id))
            .await?
            .is_some();
        let next_index = machine.next_index;
        let cost = spawn_cost(&me, &a.chain_id, &a.ctx, a.settings.max_session_cost_usd).await?;
        let handoffs = spawn_handoffs(&me, &a.chain_id, &a.task, &a.ctx).await?;
        let agents = lineup(&a.agent, &a.settings, &a.ctx.backend);
        let st = ChainState {
            id: a.chain_id,
            task: a.task,
            settings: a.settings,
            agent: a.agent,
            agents,
            last_ran: None,
            ctx: a.ctx,
            cost,
            handoffs,
            session: None,
            prepared: None,
            over: None,
            started: std::time::Instant::now(),
            span,
            children: child_supervisor(),
            name: a.name,
            git,
            machine,
            before: None,
            last_judged: None,
            account,
            held: Vec::new(),
            landing: None,
            landed: false,
        };
        st.set_status(ChainStatus::Running, None).await?;
        // Forward run-mode changes (pause, resume, stop) as messages.
        let mut rx = st.ctx.mode.clone();
        let me2 = me.clone();
        tokio::spawn(
            async move {
                while rx.changed().await.is_ok() {
                    if me2.cast(ChainMsg::ModeChanged).is_err() {
                        return;
                    }
                }
            }
            .instrument(st.span.clone()),
        );
        st.ctx
            .bus
            .emit(
                Some(&st.id),
                None,
                Body::Started {
                    resumed_at: (next_index > 1).then_some(next_index),
                },
            )
            .await;
        me.cast(ChainMsg::Next)?;
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<ChainMsg>,
        msg: ChainMsg,
        st: &mut ChainState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChainMsg::Next => st.step(&me, Event::Next).await?,
            ChainMsg::Session(SessionReport::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            }) => {
                let ev = Event::TurnEnded {
                    index,
                    handoff,
                    is_error,
                    hit_max_turns,
                };
                st.step(&me, ev).await?
            }
            ChainMsg::Session(SessionReport::Ended(o)) => st.session_ended(&me, *o).await?,
            ChainMsg::ModeChanged => st.step(&me, Event::ModeChanged).await?,
            ChainMsg::Session(SessionReport::Usage { model, usage }) => {
                let _ = st.cost.cast(CostMsg::Usage { model, usage });
            }
            ChainMsg::SessionOverBudget { spent } => {
                st.step(&me, Event::OverBudget { spent }).await?
            }
            ChainMsg::Session(SessionReport::AgentStarted {
                index,
                pgid,
                program,
            }) => {
                if let Err(e) = st
                    .ctx
                    .store
                    .set_session_agent(&st.id, index, pgid, &program)
                    .await
                {
                    tracing::warn!(parent: &st.span, cause = %e, "could not record the agent's process group");
                }
            }
            ChainMsg::Reconfigure(settings, agent) => {
                tracing::info!(parent: &st.span, "new settings from a reload apply from the next session");
                let config =
                    crate::store::update_chain_settings(&*st.ctx.store, &st.id, &settings).await;
                if let Err(e) = config {
                    tracing::warn!(parent: &st.span, cause = %e, "could not store the reloaded settings");
                }
                st.settings = *settings;
                st.agents = lineup(&agent, &st.settings, &st.ctx.backend);
                st.account = agent.account();
                st.agent = agent;
                let limits = machine::Limits::of(&st.settings).with_daily_cap(st.ctx.daily_cap_usd);
                st.step(&me, Event::Reconfigure(limits)).await?
            }
            ChainMsg::Session(SessionReport::ApprovalRequested(call)) => {
                st.approval_requested(&me, call).await?
            }
            ChainMsg::CheckApprovals => st.check_approvals(&me).await?,
            ChainMsg::Abort => st.step(&me, Event::Abort).await?,
            ChainMsg::Landed(l) => st.landed(&me, l).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ChainMsg>,
        evt: SupervisionEvent,
        st: &mut ChainState,
    ) -> Result<(), ActorProcessingErr> {
        // The default would stop the chain when any child ends: every parent overrides it.
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let id = cell.get_id();
                if id == st.cost.get_id() {
                    tracing::error!(parent: &st.span, cause = %err, "the Cost actor crashed; restarting it from the store");
                    st.restart_child(&me, Child::Cost).await?;
                } else if id == st.handoffs.get_id() {
                    tracing::error!(parent: &st.span, cause = %err, "the Handoff actor crashed; restarting it from the store");
                    st.restart_child(&me, Child::Handoff).await?;
                } else if let Some(run) = st
                    .session
                    .as_ref()
                    .filter(|r| r.actor.as_ref().is_some_and(|a| a.get_id() == id))
                {
                    // The session actor crashed: its process group died with its state.
                    tracing::error!(parent: &st.span, session.index = run.index, cause = %err, "the Session actor crashed");
                    let outcome = SessionOutcome::empty(
                        run.index,
                        SessionFacts {
                            saw_result: false,
                            stderr_tail: format!("session actor crashed: {err}"),
                            ..Default::default()
                        },
                    );
                    me.cast(ChainMsg::Session(SessionReport::Ended(Box::new(outcome))))?;
                }
            }
            SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorStarted(_) => {}
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ChainMsg>,
        st: &mut ChainState,
    ) -> Result<(), ActorProcessingErr> {
        st.cost.stop(None);
        st.handoffs.stop(None);
        Ok(())
    }
}
