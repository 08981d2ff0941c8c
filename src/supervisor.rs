//! The Operator: the root actor. It queues chains, starts them within each mission's concurrency limit
//! and `after` ordering, and supervises them `one_for_one`: a crashed chain is restarted from the store
//! (at most `RESTART_INTENSITY` times in `RESTART_PERIOD`), without touching its siblings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::chain::{Chain, ChainArgs, ChainMsg, Ctx};
use crate::config::ChainSettings;
use crate::control::Mode;
use crate::model::ChainStatus;
use crate::otp::{RestartIntensity, RestartLog};

/// OTP's restart intensity for each chain (one_for_one): at most 3 restarts in 60 s, after
/// which the chain is given up as `failed` (the Operator itself stays up).
pub const CHAIN_INTENSITY: RestartIntensity = RestartIntensity {
    intensity: 3,
    period: Duration::from_secs(60),
};

/// A chain to run (already created in the store).
#[derive(Debug, Clone)]
pub struct Job {
    pub chain_id: String,
    /// The mission the chain belongs to (`None` for `--task` and resumed chains): `after`
    /// names and concurrency limits are scoped to it.
    pub mission: Option<String>,
    pub name: String,
    pub task: String,
    pub after: Vec<String>,
    pub settings: ChainSettings,
    pub agent: Arc<dyn Agent>,
}

impl Job {
    /// The chain's name within its mission.
    pub fn key(&self) -> String {
        job_key(self.mission.as_deref(), &self.name)
    }
}

/// `mission/name`, the identity of a chain within a run.
pub fn job_key(mission: Option<&str>, name: &str) -> String {
    format!("{}/{name}", mission.unwrap_or(""))
}

/// How many chains of each mission may run at once.
pub type Limits = HashMap<Option<String>, usize>;

/// Chains to run, how many of each mission may run at once, and chains of the missions that
/// already ended in an earlier run (`--continue`), by key, for the `after` ordering.
#[derive(Debug, Default)]
pub struct Batch {
    pub jobs: Vec<Job>,
    pub limits: Limits,
    pub settled: Vec<(String, String, ChainStatus)>,
}

pub enum OperatorMsg {
    /// Queue chains; its limits set (or change) the concurrency of their missions.
    Submit(Batch),
    /// New settings (from a reload) for chains of this run, by key; they apply from each
    /// chain's next session.
    Reconfigure(Vec<(String, ChainSettings, Arc<dyn Agent>)>, Limits),
    ModeChanged,
    Abort(String, RpcReplyPort<bool>),
    Status(RpcReplyPort<Snapshot>),
}

/// What the Operator runs and queues now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub running: Vec<String>,
    pub queued: Vec<String>,
    pub limits: Vec<(Option<String>, usize)>,
}

pub struct OperatorArgs {
    pub ctx: Ctx,
    /// Told each time nothing runs and nothing waits; closed if the Operator dies.
    pub idle: mpsc::UnboundedSender<()>,
}

struct RunningChain {
    job: Job,
    actor: ActorRef<ChainMsg>,
    restarts: RestartLog,
}

pub struct OperatorState {
    ctx: Ctx,
    limits: Limits,
    queue: Vec<Job>,
    running: HashMap<ActorId, RunningChain>,
    /// Final status of each ended chain, by key (for `after`).
    ended: HashMap<String, ChainStatus>,
    idle: mpsc::UnboundedSender<()>,
}

pub struct Operator;

/// Whether a queued job may start, must wait, or can never start.
#[derive(Debug, PartialEq)]
enum Ready {
    Yes,
    Wait,
    Never(String),
}

fn readiness(job: &Job, ended: &HashMap<String, ChainStatus>) -> Ready {
    for dep in &job.after {
        match ended.get(&job_key(job.mission.as_deref(), dep)) {
            None => return Ready::Wait,
            Some(s) if s.is_success() => {}
            Some(s) => {
                return Ready::Never(format!("chain `{dep}`, which it comes after, ended {s}"));
            }
        }
    }
    Ready::Yes
}

impl OperatorState {
    async fn spawn(&mut self, me: &ActorRef<OperatorMsg>, job: Job, restarts: RestartLog) {
        let args = ChainArgs {
            chain_id: job.chain_id.clone(),
            name: job.name.clone(),
            task: job.task.clone(),
            settings: job.settings.clone(),
            agent: job.agent.clone(),
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, Chain, args, me.get_cell()).await {
            Ok((actor, _)) => {
                self.running.insert(
                    actor.get_id(),
                    RunningChain {
                        job,
                        actor,
                        restarts,
                    },
                );
            }
            Err(e) => {
                tracing::error!(chain.id = %job.chain_id, cause = %e, "the chain could not start");
                self.end(
                    &job,
                    ChainStatus::Failed,
                    Some(format!("the chain could not start: {e}")),
                )
                .await;
            }
        }
    }

    async fn end(&mut self, job: &Job, status: ChainStatus, reason: Option<String>) {
        if let Err(e) = self
            .ctx
            .store
            .set_chain_status(&job.chain_id, status, reason.as_deref(), None)
            .await
        {
            tracing::error!(chain.id = %job.chain_id, cause = %e, "could not record the chain's end");
        }
        self.ctx
            .bus
            .emit(
                Some(&job.chain_id),
                None,
                crate::events::Body::ended(status, reason.clone()),
            )
            .await;
        self.ended.insert(job.key(), status);
    }

    fn has_room(&self, mission: &Option<String>) -> bool {
        let limit = self.limits.get(mission).copied().unwrap_or(1).max(1);
        let running = self
            .running
            .values()
            .filter(|r| &r.job.mission == mission)
            .count();
        running < limit
    }

    /// Starts what may start; settles what never will; reports when all is done.
    async fn pump(&mut self, me: &ActorRef<OperatorMsg>) {
        crate::fault::check("operator:pump");
        loop {
            let stopping = *self.ctx.mode.borrow() == Mode::Stopping;
            if stopping {
                for job in std::mem::take(&mut self.queue) {
                    self.end(
                        &job,
                        ChainStatus::Interrupted,
                        Some("the operator was stopped before it started".into()),
                    )
                    .await;
                }
                break;
            }
            let mut progressed = false;
            let mut i = 0;
            while i < self.queue.len() {
                match readiness(&self.queue[i], &self.ended) {
                    Ready::Never(reason) => {
                        let job = self.queue.remove(i);
                        self.end(&job, ChainStatus::Failed, Some(reason)).await;
                        progressed = true;
                    }
                    Ready::Yes if self.has_room(&self.queue[i].mission) => {
                        let job = self.queue.remove(i);
                        self.spawn(me, job, RestartLog::default()).await;
                        progressed = true;
                    }
                    _ => i += 1,
                }
            }
            if !progressed {
                break;
            }
        }
        if self.queue.is_empty() && self.running.is_empty() {
            let _ = self.idle.send(());
        }
    }
}

impl Actor for Operator {
    type Msg = OperatorMsg;
    type State = OperatorState;
    type Arguments = OperatorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<OperatorMsg>,
        a: OperatorArgs,
    ) -> Result<OperatorState, ActorProcessingErr> {
        let mut rx = a.ctx.mode.clone();
        let me2 = me.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if me2.cast(OperatorMsg::ModeChanged).is_err() {
                    return;
                }
            }
        });
        Ok(OperatorState {
            ctx: a.ctx,
            limits: Limits::new(),
            queue: Vec::new(),
            running: HashMap::new(),
            ended: HashMap::new(),
            idle: a.idle,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<OperatorMsg>,
        msg: OperatorMsg,
        st: &mut OperatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OperatorMsg::Submit(batch) => {
                st.limits.extend(batch.limits);
                st.ended.extend(
                    batch
                        .settled
                        .into_iter()
                        .map(|(key, _, status)| (key, status)),
                );
                st.queue.extend(batch.jobs);
                st.pump(&me).await;
            }
            OperatorMsg::Reconfigure(updates, limits) => {
                st.limits.extend(limits);
                for (key, settings, agent) in updates {
                    if let Some(job) = st.queue.iter_mut().find(|j| j.key() == key) {
                        job.settings = settings;
                        job.agent = agent;
                    } else if let Some(r) = st.running.values_mut().find(|r| r.job.key() == key) {
                        r.job.settings = settings.clone();
                        r.job.agent = agent.clone();
                        let _ = r
                            .actor
                            .cast(ChainMsg::Reconfigure(Box::new(settings), agent));
                    }
                }
                st.pump(&me).await;
            }
            OperatorMsg::ModeChanged => st.pump(&me).await,
            OperatorMsg::Abort(chain_id, reply) => {
                let found = st.running.values().find(|r| r.job.chain_id == chain_id);
                if let Some(r) = found {
                    let _ = r.actor.cast(ChainMsg::Abort);
                    let _ = reply.send(true);
                } else if let Some(pos) = st.queue.iter().position(|j| j.chain_id == chain_id) {
                    let job = st.queue.remove(pos);
                    st.end(
                        &job,
                        ChainStatus::Aborted,
                        Some("aborted before it started".into()),
                    )
                    .await;
                    let _ = reply.send(true);
                    st.pump(&me).await;
                } else {
                    let _ = reply.send(false);
                }
            }
            OperatorMsg::Status(reply) => {
                let running = st
                    .running
                    .values()
                    .map(|r| r.job.chain_id.clone())
                    .collect();
                let queued = st.queue.iter().map(|j| j.chain_id.clone()).collect();
                let limits = st.limits.iter().map(|(m, n)| (m.clone(), *n)).collect();
                let _ = reply.send(Snapshot {
                    running,
                    queued,
                    limits,
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<OperatorMsg>,
        evt: SupervisionEvent,
        st: &mut OperatorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(r) = st.running.remove(&cell.get_id()) {
                    let status = match st.ctx.store.get_chain(&r.job.chain_id).await {
                        Ok(Some(c)) => c.status,
                        _ => reason
                            .as_deref()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(ChainStatus::Failed),
                    };
                    st.ended.insert(r.job.key(), status);
                    st.pump(&me).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, err)
                if err
                    .downcast_ref::<crate::store::StoreError>()
                    .is_some_and(|e| matches!(e, crate::store::StoreError::Fenced { .. })) =>
            {
                // A fleet worker lost its claim: the chain is another worker's now. It stops
                // here, unrestarted, and its record is left to the new owner.
                if let Some(r) = st.running.remove(&cell.get_id()) {
                    tracing::warn!(chain.id = %r.job.chain_id, "another worker holds this chain now; it stops here");
                    st.pump(&me).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(mut r) = st.running.remove(&cell.get_id()) {
                    // one_for_one: only this chain is restarted, from its state in the store.
                    if r.restarts.allow(CHAIN_INTENSITY, Instant::now()) {
                        tracing::warn!(chain.id = %r.job.chain_id, cause = %err, "the chain crashed; restarting it from the store");
                        st.ctx
                            .bus
                            .emit(
                                Some(&r.job.chain_id),
                                None,
                                crate::events::Body::Restarted {
                                    child: "chain".into(),
                                    cause: err.to_string(),
                                },
                            )
                            .await;
                        st.spawn(&me, r.job, r.restarts).await;
                    } else {
                        tracing::error!(chain.id = %r.job.chain_id, cause = %err, "the chain crashed too often; giving up");
                        let reason = format!(
                            "the chain crashed {} times in {:?}; last: {err}",
                            r.restarts.len() + 1,
                            CHAIN_INTENSITY.period
                        );
                        st.end(&r.job, ChainStatus::Failed, Some(reason)).await;
                        st.pump(&me).await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_after_within_a_mission() {
        let job = |mission: Option<&str>, after: &[&str]| Job {
            chain_id: "c".into(),
            mission: mission.map(str::to_string),
            name: "x".into(),
            task: "t".into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            settings: crate::config::load_operator(None, &Default::default(), &Default::default())
                .unwrap()
                .plan_for_task("t", &Default::default())
                .unwrap()
                .chains[0]
                .settings
                .clone(),
            agent: crate::agent::backend(crate::agent::AgentKind::Sim, &Default::default()),
        };
        let mut ended = HashMap::new();
        assert_eq!(readiness(&job(Some("m"), &[]), &ended), Ready::Yes);
        let j = job(Some("m"), &["a"]);
        assert_eq!(readiness(&j, &ended), Ready::Wait);
        // A chain named `a` in another mission does not count.
        ended.insert(job_key(Some("other"), "a"), ChainStatus::Complete);
        assert_eq!(readiness(&j, &ended), Ready::Wait);
        ended.insert(job_key(Some("m"), "a"), ChainStatus::Complete);
        assert_eq!(readiness(&j, &ended), Ready::Yes);
        ended.insert(job_key(Some("m"), "a"), ChainStatus::Failed);
        assert!(matches!(readiness(&j, &ended), Ready::Never(r) if r.contains("ended failed")));
    }
}
