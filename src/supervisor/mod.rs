//! The Operator: the root actor. It queues chains, starts them within each mission's concurrency limit
//! and `after` ordering, and supervises them `one_for_one`: a crashed chain is restarted from the store
//! (at most `RESTART_INTENSITY` times in `RESTART_PERIOD`), without touching its siblings. A chain
//! that went down because its state cannot be written (disk full, a read-only or unreachable store)
//! waits out the outage instead (`outage`).

mod outage;

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
    /// Restart a chain that went down (by id), now that its wait is over.
    Restart(String),
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
    /// Restarts in a row that waited out an outage (the next wait grows with it).
    outage: u32,
}

/// A chain that went down and waits for its restart ([`OperatorMsg::Restart`]).
struct Down {
    job: Job,
    restarts: RestartLog,
    outage: u32,
}

pub struct OperatorState {
    ctx: Ctx,
    limits: Limits,
    queue: Vec<Job>,
    running: HashMap<ActorId, RunningChain>,
    /// Chains waiting for their restart, by chain id: they hold their place like running ones.
    down: HashMap<String, Down>,
    /// The last answer of the outage probe and when it came: chains that go down together
    /// (an outage takes them all) share one probe, which can take a busy timeout.
    probed: Option<(Instant, Result<(), String>)>,
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
    async fn spawn(
        &mut self,
        me: &ActorRef<OperatorMsg>,
        job: Job,
        restarts: RestartLog,
        outage: u32,
    ) {
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
                        outage,
                    },
                );
            }
            Err(e) => {
                let cause = format!("the chain could not start: {e}");
                self.went_down(me, job, restarts, outage, cause).await;
            }
        }
    }

    /// Whether the store and the data dir can be written (`outage::probe`), asked at most once
    /// a second.
    async fn probe(&mut self) -> Result<(), String> {
        if let Some((at, answer)) = &self.probed
            && at.elapsed() < Duration::from_secs(1)
        {
            return answer.clone();
        }
        let answer = outage::probe(&*self.ctx.store, &self.ctx.data_dir).await;
        self.probed = Some((Instant::now(), answer.clone()));
        answer
    }

    /// A chain crashed or could not start. When the store or the data dir cannot be written,
    /// it is restarted after a growing wait (`outage::delay`) for as long as that lasts, without
    /// counting against its restart intensity; otherwise it is restarted at once within its
    /// intensity (one_for_one), or given up as `failed`. A stop ends it `interrupted`.
    async fn went_down(
        &mut self,
        me: &ActorRef<OperatorMsg>,
        job: Job,
        mut restarts: RestartLog,
        outage: u32,
        cause: String,
    ) {
        let id = job.chain_id.clone();
        if *self.ctx.mode.borrow() == Mode::Stopping {
            tracing::warn!(chain.id = %id, cause = %cause, "the chain went down while the operator stops");
            let reason = format!("the operator was stopped while the chain was down: {cause}");
            self.end(&job, ChainStatus::Interrupted, Some(reason)).await;
            return;
        }
        let (wait, outage) = match self.probe().await {
            Err(why) => {
                let wait = outage::delay(outage);
                tracing::warn!(chain.id = %id, cause = %cause, "{why}; the chain restarts from the store in {} s, and again while this lasts (free disk space or repair the store; `operator stop` ends the run)", wait.as_secs());
                (wait, outage.saturating_add(1))
            }
            Ok(()) if restarts.allow(CHAIN_INTENSITY, Instant::now()) => {
                tracing::warn!(chain.id = %id, cause = %cause, "the chain crashed; restarting it from the store");
                (Duration::ZERO, 0)
            }
            Ok(()) => {
                tracing::error!(chain.id = %id, cause = %cause, "the chain crashed too often; giving up");
                let reason = format!(
                    "the chain crashed {} times in {:?}; last: {cause}",
                    restarts.len() + 1,
                    CHAIN_INTENSITY.period
                );
                self.end(&job, ChainStatus::Failed, Some(reason)).await;
                return;
            }
        };
        self.ctx
            .bus
            .emit(
                Some(&id),
                None,
                crate::events::Body::Restarted {
                    child: "chain".into(),
                    cause,
                },
            )
            .await;
        self.down.insert(
            id.clone(),
            Down {
                job,
                restarts,
                outage,
            },
        );
        if wait.is_zero() {
            let _ = me.cast(OperatorMsg::Restart(id));
        } else {
            me.send_after(wait, move || OperatorMsg::Restart(id));
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
            .map(|r| &r.job)
            .chain(self.down.values().map(|d| &d.job))
            .filter(|j| &j.mission == mission)
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
                for (_, d) in std::mem::take(&mut self.down) {
                    self.end(
                        &d.job,
                        ChainStatus::Interrupted,
                        Some(
                            "the operator was stopped while the chain waited for its restart"
                                .into(),
                        ),
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
                        self.spawn(me, job, RestartLog::default(), 0).await;
                        progressed = true;
                    }
                    _ => i += 1,
                }
            }
            if !progressed {
                break;
            }
        }
        if self.queue.is_empty() && self.running.is_empty() && self.down.is_empty() {
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
            down: HashMap::new(),
            probed: None,
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
                    let waiting = st.queue.iter_mut();
                    let down = st.down.values_mut().map(|d| &mut d.job);
                    if let Some(job) = waiting.chain(down).find(|j| j.key() == key) {
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
                } else if let Some(d) = st.down.remove(&chain_id) {
                    let reason = "aborted while it waited for its restart";
                    st.end(&d.job, ChainStatus::Aborted, Some(reason.into()))
                        .await;
                    let _ = reply.send(true);
                    st.pump(&me).await;
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
                    .chain(st.down.keys().cloned())
                    .collect();
                let queued = st.queue.iter().map(|j| j.chain_id.clone()).collect();
                let limits = st.limits.iter().map(|(m, n)| (m.clone(), *n)).collect();
                let _ = reply.send(Snapshot {
                    running,
                    queued,
                    limits,
                });
            }
            OperatorMsg::Restart(chain_id) => {
                if let Some(d) = st.down.remove(&chain_id) {
                    st.spawn(&me, d.job, d.restarts, d.outage).await;
                }
                st.pump(&me).await;
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
                if let Some(r) = st.running.remove(&cell.get_id()) {
                    let cause = err.to_string();
                    st.went_down(&me, r.job, r.restarts, r.outage, cause).await;
                    st.pump(&me).await;
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
