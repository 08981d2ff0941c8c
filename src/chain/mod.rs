//! The Chain actor: a thin shell around the pure [`ChainMachine`] that runs a chain's sessions one
//! after another, supervising its Session, Cost and Handoff children.
//!
//! Each message becomes a machine [`Event`]; the shell carries the machine's [`Cmd`]s out in order
//! (store writes before the acts they record, bus events, timers, the session actor) and answers
//! the commands that ask the world something (the budget, the quota, the handoff, the working
//! tree, the gates) with the next event. The decisions are all in `machine`.

mod approvals;
pub mod cost;
pub mod gates;
pub mod handoffs;
pub mod machine;
mod messages;
pub mod policy;
pub mod vcs;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::json;
use tracing::Instrument;

use crate::agent::{Agent, SessionSpec};
use crate::config::ChainSettings;
use crate::control::ModeRx;
use crate::events::Bus;
use crate::handoff::prompt;
use crate::model::{ChainStatus, HandoffRecord, SessionRecord, SessionStatus, now_rfc3339};
use crate::otp::{
    Action, ChildSpec, Exit, Restart, RestartIntensity, Shutdown, Strategy, Supervisor,
};
use crate::process::Registry;
use crate::session::{Session, SessionArgs, SessionMsg, SessionOutcome, SessionReport};
use crate::store::{SessionStart, SharedStore};
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
    agent: Arc<dyn Agent>,
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
}

pub struct Chain;

/// The chain's long-lived children (Session actors are `temporary`: a crashed one is a failed
/// session attempt, decided by the chain, not restarted by policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Cost,
    Handoff,
}

/// Cost and Handoff are independent (each rebuilds its state from the store), so a crash of
/// one never needs the other restarted: `one_for_one`, permanent, 5 restarts in 10 s.
fn child_supervisor() -> Supervisor<Child> {
    let spec = |id| ChildSpec {
        id,
        restart: Restart::Permanent,
        shutdown: Shutdown::Timeout(Duration::from_secs(5)),
    };
    Supervisor::new(
        Strategy::OneForOne,
        RestartIntensity {
            intensity: 5,
            period: Duration::from_secs(10),
        },
        vec![spec(Child::Cost), spec(Child::Handoff)],
    )
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
        if let Some(ws) = &self.git {
            vcs::finish(&self.ctx, &self.id, &self.settings, ws, status).await;
        }
        self.set_status(status, reason.as_deref()).await?;
        self.ctx
            .bus
            .emit(
                crate::events::final_kind(status),
                Some(&self.id),
                None,
                json!({"status": status, "reason": reason}),
            )
            .await;
        tracing::info!(parent: &self.span, status = %status, reason = reason.as_deref().unwrap_or(""), "chain ended");
        me.stop(Some(status.as_str().to_string()));
        Ok(())
    }

    /// Asks the Cost actor; if it died (its supervision event may still be queued behind this
    /// message), restarts it from the store and asks again.
    async fn ask_cost<T: Send + 'static>(
        &mut self,
        me: &ActorRef<ChainMsg>,
        f: impl Fn(RpcReplyPort<T>) -> CostMsg,
    ) -> Result<T, ActorProcessingErr> {
        match ask(&self.cost, &f).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::error!(parent: &self.span, cause = %e, "the Cost actor is gone; restarting it from the store");
                self.restart_child(me, Child::Cost).await?;
                ask(&self.cost, f).await
            }
        }
    }

    /// Restarts a crashed child as the chain's supervision policy says (one_for_one, 5 in
    /// 10 s); past that intensity the chain fails itself and the Operator decides.
    async fn restart_child(
        &mut self,
        me: &ActorRef<ChainMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        match self
            .children
            .on_exit(&child, Exit::Failed, std::time::Instant::now())
        {
            Action::Ignore => Ok(()),
            Action::Escalate(reason) => {
                Err(format!("the chain's children keep crashing: {reason}").into())
            }
            Action::Restart(ids) => {
                for id in ids {
                    let name = match id {
                        Child::Cost => "cost",
                        Child::Handoff => "handoff",
                    };
                    self.ctx
                        .bus
                        .emit(
                            "chain:child-restarted",
                            Some(&self.id),
                            None,
                            json!({"child": name}),
                        )
                        .await;
                    match id {
                        Child::Cost => self.respawn_cost(me).await?,
                        Child::Handoff => self.respawn_handoffs(me).await?,
                    }
                    tracing::info!(parent: &self.span, child = name, "the child actor was restarted");
                }
                Ok(())
            }
        }
    }

    async fn respawn_cost(&mut self, me: &ActorRef<ChainMsg>) -> Result<(), ActorProcessingErr> {
        self.cost = spawn_cost(me, &self.id, &self.ctx, self.settings.max_session_cost_usd).await?;
        Ok(())
    }

    async fn respawn_handoffs(
        &mut self,
        me: &ActorRef<ChainMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.handoffs = spawn_handoffs(me, &self.id, &self.task, &self.ctx).await?;
        Ok(())
    }

    /// The moment an event reaches the machine.
    fn moment(&self) -> Moment {
        Moment {
            ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            unix: unix_now(),
            mode: *self.ctx.mode.borrow(),
        }
    }

    /// Feeds one event to the machine and carries its commands out; a command that asks the
    /// world something feeds the answer back, and its commands run before the rest.
    async fn step(&mut self, me: &ActorRef<ChainMsg>, ev: Event) -> Result<(), ActorProcessingErr> {
        if matches!(ev, Event::Next | Event::ModeChanged | Event::Abort)
            && self.session.is_none()
            && !self.machine.finished
        {
            crate::fault::check("chain:next");
        }
        let mut queue: VecDeque<Cmd> = self.machine.handle(self.moment(), ev).into();
        while let Some(cmd) = queue.pop_front() {
            if let Some(answer) = self.exec(me, cmd).await? {
                let more = self.machine.handle(self.moment(), answer);
                for c in more.into_iter().rev() {
                    queue.push_front(c);
                }
            }
        }
        Ok(())
    }

    /// Carries one command out.
    async fn exec(
        &mut self,
        me: &ActorRef<ChainMsg>,
        cmd: Cmd,
    ) -> Result<Option<Event>, ActorProcessingErr> {
        match cmd {
            Cmd::SetStatus(status, reason) => self.set_status(status, reason.as_deref()).await?,
            Cmd::Emit { kind, index, data } => {
                self.ctx.bus.emit(kind, Some(&self.id), index, data).await
            }
            Cmd::Log {
                warn,
                index,
                message,
            } => match (warn, index) {
                (true, Some(i)) => {
                    tracing::warn!(parent: &self.span, session.index = i, "{message}")
                }
                (true, None) => tracing::warn!(parent: &self.span, "{message}"),
                (false, Some(i)) => {
                    tracing::info!(parent: &self.span, session.index = i, "{message}")
                }
                (false, None) => tracing::info!(parent: &self.span, "{message}"),
            },
            Cmd::Arm(delay) => {
                me.send_after(delay, || ChainMsg::Next);
            }
            Cmd::Next => me.cast(ChainMsg::Next)?,
            Cmd::Finish(status, reason) => self.finish(me, status, reason).await?,
            Cmd::CheckBudget => {
                let total: f64 = self.ask_cost(me, CostMsg::Total).await?;
                let today = match self.ctx.daily_cap_usd {
                    Some(_) => {
                        let today = format!("{}T00:00:00", &now_rfc3339()[..10]);
                        Some(self.ctx.store.cost_since(&today).await?)
                    }
                    None => None,
                };
                return Ok(Some(Event::Budget { total, today }));
            }
            Cmd::AskQuota => return Ok(Some(Event::Quota(self.ask_quota().await?))),
            Cmd::ReleaseAccount => self.ctx.quota.finished(&self.account, &self.id),
            Cmd::HoldAccount { until } => {
                let until_time = std::time::UNIX_EPOCH + Duration::from_secs(until);
                self.ctx.quota.hold(&self.account, until_time, &self.id);
                if self.ctx.shared_store {
                    self.ctx
                        .store
                        .set_flag(&hold_flag(&self.account), Some(&until.to_string()))
                        .await?;
                }
            }
            Cmd::StartSession {
                index,
                attempt,
                note,
                resume_id,
            } => {
                return self
                    .start_session(me, index, attempt, note, resume_id)
                    .await
                    .map(Some);
            }
            Cmd::Spawn { index } => self.spawn(me, index).await?,
            Cmd::FollowUp { index, text } => {
                if let Some(run) = self.session.as_mut().filter(|r| r.index == index) {
                    run.asked_again = true;
                    if let Some(a) = &run.actor {
                        let _ = a.cast(SessionMsg::FollowUp(text));
                    }
                }
            }
            Cmd::Close { index } => {
                if let Some(a) = self
                    .session
                    .as_ref()
                    .filter(|r| r.index == index)
                    .and_then(|r| r.actor.as_ref())
                {
                    let _ = a.cast(SessionMsg::Close);
                }
            }
            Cmd::StopSession(grace) => {
                let grace = match grace {
                    Grace::Shutdown => self.ctx.shutdown_grace,
                    Grace::Abort => Duration::from_secs(2),
                };
                if let Some(a) = self.session.as_ref().and_then(|r| r.actor.as_ref()) {
                    let _ = a.cast(SessionMsg::Stop { grace });
                }
            }
            Cmd::CancelApprovals(why) => {
                if !self.held.is_empty() {
                    self.cancel_approvals(why).await;
                }
            }
            Cmd::RecordAttempt {
                status,
                verdict,
                attempts,
                cost,
                turns,
                hit_max_turns,
            } => {
                if let Some(over) = self.over.take() {
                    let o = &over.outcome;
                    let record = SessionRecord {
                        index: o.index,
                        session_id: o.session_id.clone(),
                        status,
                        turns,
                        cost_usd: cost,
                        duration_ms: o.duration.as_millis() as u64,
                        hit_max_turns,
                        pre_compacted: o.pre_compacted,
                        handoff_complete: false,
                        handoff_file: None,
                        error: verdict.error,
                        error_kind: verdict.error_kind,
                        handoff_synthetic: false,
                        asked_again: over.asked_again,
                        attempts,
                        started_at: over.started_at,
                        ended_at: Some(o.ended_at.clone()),
                    };
                    self.ctx
                        .store
                        .finish_session(&self.id, &record, None)
                        .await?;
                }
            }
            Cmd::Finalize {
                verdict,
                attempts,
                cost,
                turns,
            } => {
                return self
                    .finalize(me, verdict, attempts, cost, turns)
                    .await
                    .map(Some);
            }
            Cmd::Measure { index } => return self.measure(index).await.map(Some),
            Cmd::RunGates { index } => return self.run_gates(index).await.map(Some),
        }
        Ok(None)
    }

    /// The operator-wide quota's answer for the next session: a usage limit hit by any chain
    /// of this account (on any worker of a fleet), caps on sessions per hour and at once, quiet
    /// hours.
    async fn ask_quota(&self) -> Result<QuotaAnswer, ActorProcessingErr> {
        if self.ctx.shared_store {
            self.fleet_hold().await?;
        }
        let limits = &self.ctx.quota.limits;
        let capped = limits.concurrent.is_some() || limits.per_hour.is_some();
        let usage = if self.ctx.shared_store && capped {
            let hour_ago = humantime::format_rfc3339_millis(
                std::time::SystemTime::now() - Duration::from_secs(3600),
            )
            .to_string();
            self.ctx
                .store
                .account_usage(&self.account, &hour_ago)
                .await?
        } else {
            None
        };
        Ok(
            match self
                .ctx
                .quota
                .admit_with(&self.account, &self.id, usage.as_ref())
            {
                crate::quota::Admission::Go => QuotaAnswer::Go,
                crate::quota::Admission::Wait { until, reason } => QuotaAnswer::Wait {
                    until: until
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    delay: until
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                        + self.ctx.quota.jitter(),
                    reason,
                },
            },
        )
    }

    /// Builds the session's prompt and records its start before the agent runs: a crash from
    /// here on finds the session in the store.
    async fn start_session(
        &mut self,
        me: &ActorRef<ChainMsg>,
        index: u32,
        attempt: u32,
        note: Option<String>,
        resume_id: Option<String>,
    ) -> Result<Event, ActorProcessingErr> {
        let resumed = resume_id.is_some();
        let prompt_msg = |reply| HandoffMsg::Prompt {
            index,
            note: note.clone(),
            resumed,
            reply,
        };
        let prompt: String = match ask(&self.handoffs, prompt_msg).await {
            Ok(p) => p,
            Err(e) => {
                // The Handoff actor died between two messages: restart it from the store now
                // rather than fail the whole chain (its supervision event may still be queued).
                tracing::error!(parent: &self.span, cause = %e, "the Handoff actor is gone; restarting it from the store");
                self.restart_child(me, Child::Handoff).await?;
                ask(&self.handoffs, prompt_msg).await?
            }
        };
        let started_at = now_rfc3339();
        let limits = &self.ctx.quota.limits;
        let started = self
            .ctx
            .store
            .start_session(&SessionStart {
                chain_id: self.id.clone(),
                index,
                attempt,
                prompt: prompt.clone(),
                started_at: started_at.clone(),
                account: Some(crate::store::SessionAccount {
                    id: self.account.clone(),
                    max_running: limits.concurrent,
                    max_per_hour: limits.per_hour,
                }),
            })
            .await;
        if let Err(crate::store::StoreError::AccountBusy { reason }) = started {
            // Another worker of the fleet took the account's last slot a moment ago.
            let delay = Duration::from_secs(5) + self.ctx.quota.jitter();
            return Ok(Event::AccountBusy { reason, delay });
        }
        started?;
        self.prepared = Some(Prepared {
            index,
            prompt,
            resume_id,
            started_at,
        });
        Ok(Event::Started)
    }

    /// Measures the working tree and starts the prepared session's agent.
    async fn spawn(
        &mut self,
        me: &ActorRef<ChainMsg>,
        index: u32,
    ) -> Result<(), ActorProcessingErr> {
        let Some(p) = self.prepared.take().filter(|p| p.index == index) else {
            return Ok(());
        };
        self.before =
            Some(gates::fingerprint(self.workdir(), self.ctx.data_dir.clone(), self.repo()).await);
        let spec = SessionSpec {
            chain_id: self.id.clone(),
            index,
            prompt: p.prompt,
            system_prompt: prompt::CONTINUATION_PROTOCOL.to_string(),
            model: self.settings.model.clone(),
            max_turns: self.settings.max_turns,
            permission_mode: self.settings.permission_mode.clone(),
            resume_id: p.resume_id,
            workdir: self.workdir(),
            sim: self.settings.sim.clone(),
        };
        let args = SessionArgs {
            spec,
            agent: self.agent.clone(),
            chain: me.get_derived(),
            bus: self.ctx.bus.clone(),
            registry: self.ctx.registry.clone(),
            transcript: crate::datadir::DataDir::new(&self.ctx.data_dir)
                .transcript(&self.id, index),
            attempt: self.machine.attempt,
            watchdog: crate::session::Watchdog {
                idle_timeout: self.settings.idle_timeout,
                session_timeout: self.settings.session_timeout,
            },
            // The operator answers the agent's permission requests, unless the chain was
            // explicitly configured to bypass them.
            policy: (self.settings.permission_mode != "bypassPermissions").then(|| {
                Arc::new(crate::permissions::Policy::new(
                    &self.settings.permissions,
                    &self.workdir(),
                    &self.ctx.data_dir,
                ))
            }),
        };
        let actor = match Actor::spawn_linked(None, Session, args, me.get_cell()).await {
            Ok((actor, _)) => Some(actor),
            Err(e) => {
                // The agent could not even start: record a failed session like any other.
                let outcome = SessionOutcome::empty(
                    index,
                    SessionFacts {
                        spawn_error: Some(e.to_string()),
                        ..Default::default()
                    },
                );
                me.cast(ChainMsg::Session(SessionReport::Ended(Box::new(outcome))))?;
                None
            }
        };
        self.session = Some(Running {
            index,
            actor,
            asked_again: false,
            started_at: p.started_at,
        });
        Ok(())
    }

    /// The running session ended: settle its cost and let the machine decide.
    async fn session_ended(
        &mut self,
        me: &ActorRef<ChainMsg>,
        o: SessionOutcome,
    ) -> Result<(), ActorProcessingErr> {
        let Some(run) = self.session.take_if(|r| r.index == o.index) else {
            return Ok(());
        };
        let reported = o.reported_cost;
        let cost: f64 = self
            .ask_cost(me, |reply| CostMsg::EndSession { reported, reply })
            .await?;
        let ev = Event::SessionEnded {
            index: o.index,
            facts: Box::new(o.facts.clone()),
            cost,
            turns: o.turns,
        };
        self.over = Some(Over {
            outcome: o,
            started_at: run.started_at,
            asked_again: run.asked_again,
            handoff: None,
        });
        let stepped = self.step(me, ev).await;
        if !self.machine.deciding() {
            self.over = None;
        }
        stepped
    }

    /// Resolves the session's handoff, records the session with it, commits, and tells the
    /// machine what the handoff says.
    async fn finalize(
        &mut self,
        me: &ActorRef<ChainMsg>,
        verdict: policy::Verdict,
        attempts: u32,
        cost: f64,
        turns: u32,
    ) -> Result<Event, ActorProcessingErr> {
        let Some(mut over) = self.over.take() else {
            return Err("a session was to be recorded, but none had ended".into());
        };
        let o = &mut over.outcome;
        let (index, output, error) = (
            o.index,
            std::mem::take(&mut o.output),
            verdict.error.clone(),
        );
        let handoff = ask(&self.handoffs, |reply| HandoffMsg::Finalize {
            index,
            output,
            error,
            reply,
        })
        .await?;
        let record = SessionRecord {
            index,
            session_id: o.session_id.clone(),
            status: verdict.status,
            turns,
            cost_usd: cost,
            duration_ms: o.duration.as_millis() as u64,
            hit_max_turns: o.facts.hit_max_turns,
            pre_compacted: o.pre_compacted,
            handoff_complete: handoff.complete,
            handoff_file: Some(handoff.file.clone()),
            error: verdict.error.clone(),
            error_kind: verdict.error_kind,
            handoff_synthetic: handoff.synthetic,
            asked_again: over.asked_again,
            attempts,
            started_at: over.started_at.clone(),
            ended_at: Some(o.ended_at.clone()),
        };
        self.ctx
            .store
            .finish_session(&self.id, &record, Some(&handoff))
            .await?;
        let _ = self.handoffs.cast(HandoffMsg::Committed(handoff.clone()));
        if self.settings.auto_commit
            && let Some(ws) = &self.git
        {
            vcs::commit(&self.ctx, &self.id, &self.name, index, ws, &handoff.text).await;
        }
        tracing::info!(
            parent: &self.span,
            session.index = index,
            status = verdict.status.as_str(),
            turns = o.turns,
            cost_usd = cost,
            handoff = if handoff.synthetic { "synthetic" } else if handoff.complete { "complete" } else { "written" },
            "session ended"
        );
        self.ctx
            .bus
            .emit(
                "chain:session-complete",
                Some(&self.id),
                Some(index),
                json!({"session": record, "transcriptTruncated": o.transcript_truncated}),
            )
            .await;
        let denied_note = crate::permissions::denial_note(&o.denied);
        if denied_note.is_some() {
            self.ctx
                .bus
                .emit(
                    "chain:permissions-denied",
                    Some(&self.id),
                    Some(index),
                    json!({"count": o.denied.len(), "calls": o.denied}),
                )
                .await;
        }
        let denied = o.denied.len() as u32;
        let handed = machine::Handed {
            complete: handoff.complete && !handoff.synthetic,
            agent_handoff: !handoff.synthetic,
            resumable: machine::resumable_id(&record),
            denied,
            denied_note,
            total_cost: 0.0,
        };
        over.handoff = Some(handoff);
        self.over = Some(over);
        let total_cost: f64 = self.ask_cost(me, CostMsg::Total).await?;
        Ok(Event::Recorded(machine::Handed {
            total_cost,
            ..handed
        }))
    }

    /// Measures a completed session: the working tree against its start, the handoff against
    /// the previous session's.
    async fn measure(&mut self, index: u32) -> Result<Event, ActorProcessingErr> {
        let before = self.before.take();
        let text = self
            .over
            .as_ref()
            .and_then(|o| o.handoff.as_ref())
            .map(|h| h.text.clone())
            .unwrap_or_default();
        let after =
            gates::fingerprint(self.workdir(), self.ctx.data_dir.clone(), self.repo()).await;
        // The previous session's handoff: kept from the last judgement, read from the store
        // only after a start or a session that was not judged.
        let previous = match self.last_judged.take() {
            Some((i, text)) if i + 1 == index => Some(text),
            _ => self
                .ctx
                .store
                .handoffs(&self.id)
                .await?
                .into_iter()
                .find(|h| h.index + 1 == index)
                .map(|h| h.text),
        };
        let measured = machine::Measured {
            tree_changed: before.is_none_or(|b| b != after),
            remaining_changed: previous
                .as_deref()
                .is_none_or(|p| gates::remaining(p) != gates::remaining(&text)),
            same_handoff: previous
                .as_deref()
                .is_some_and(|p| gates::body(p) == gates::body(&text)),
            source: after.source.to_string(),
        };
        self.last_judged = Some((index, text));
        Ok(Event::Measured(measured))
    }

    /// Runs the verify gates of a COMPLETE and records their results.
    async fn run_gates(&mut self, index: u32) -> Result<Event, ActorProcessingErr> {
        let workdir = self.workdir();
        let mut results = Vec::new();
        for cmd in &self.settings.verify {
            results.push(gates::run_gate(cmd, &workdir, self.settings.verify_timeout, index).await);
        }
        self.ctx.store.set_chain_verify(&self.id, &results).await?;
        let failed: Vec<&gates::GateResult> = results.iter().filter(|r| !r.passed).collect();
        self.ctx
            .bus
            .emit(
                "chain:verify",
                Some(&self.id),
                Some(index),
                json!({"passed": failed.is_empty(), "results": results}),
            )
            .await;
        Ok(Event::Gated {
            passed: results.iter().map(|r| r.passed).collect(),
            failed: failed.iter().map(|g| g.command.clone()).collect(),
            note: (!failed.is_empty()).then(|| gates::failure_note(&failed)),
        })
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

/// The shared store's flag that holds an account's chains across a fleet (epoch seconds).
fn hold_flag(account: &str) -> String {
    format!("hold:{account}")
}

impl ChainState {
    /// Takes over a usage-limit hold another worker of the fleet recorded for this account.
    async fn fleet_hold(&self) -> Result<(), ActorProcessingErr> {
        let until = self
            .ctx
            .store
            .get_flag(&hold_flag(&self.account))
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
        if let Some(until) = until.filter(|u| *u > std::time::SystemTime::now()) {
            self.ctx.quota.hold(&self.account, until, "another worker");
        }
        Ok(())
    }
}

async fn spawn_cost(
    me: &ActorRef<ChainMsg>,
    id: &str,
    ctx: &Ctx,
    session_limit: Option<f64>,
) -> Result<ActorRef<CostMsg>, ActorProcessingErr> {
    let args = CostArgs {
        chain: me.clone(),
        chain_id: id.to_string(),
        store: ctx.store.clone(),
        session_limit_usd: session_limit,
        pricing: ctx.pricing.clone(),
    };
    Ok(Actor::spawn_linked(None, Cost, args, me.get_cell())
        .await?
        .0)
}

async fn spawn_handoffs(
    me: &ActorRef<ChainMsg>,
    id: &str,
    task: &str,
    ctx: &Ctx,
) -> Result<ActorRef<HandoffMsg>, ActorProcessingErr> {
    let args = HandoffArgs {
        chain_id: id.to_string(),
        task: task.to_string(),
        data_dir: crate::datadir::DataDir::new(&ctx.data_dir),
        store: ctx.store.clone(),
    };
    Ok(Actor::spawn_linked(None, Handoffs, args, me.get_cell())
        .await?
        .0)
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
        let next_index = machine.next_index;
        let cost = spawn_cost(&me, &a.chain_id, &a.ctx, a.settings.max_session_cost_usd).await?;
        let handoffs = spawn_handoffs(&me, &a.chain_id, &a.task, &a.ctx).await?;
        let st = ChainState {
            id: a.chain_id,
            task: a.task,
            settings: a.settings,
            agent: a.agent,
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
                "chain:started",
                Some(&st.id),
                None,
                json!({"resumedAt": if next_index > 1 { Some(next_index) } else { None }}),
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
                st.agent = agent;
                let limits = machine::Limits::of(&st.settings).with_daily_cap(st.ctx.daily_cap_usd);
                st.step(&me, Event::Reconfigure(limits)).await?
            }
            ChainMsg::Session(SessionReport::ApprovalRequested(call)) => {
                st.approval_requested(&me, call).await?
            }
            ChainMsg::CheckApprovals => st.check_approvals(&me).await?,
            ChainMsg::Abort => st.step(&me, Event::Abort).await?,
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
