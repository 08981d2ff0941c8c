//! The Chain actor: runs a chain's sessions one after another, supervising its Session, Cost and Handoff
//! children, and records every step in the store before acting on it.
//!
//! It is a state machine driven by messages: `Next` starts a session (or ends the chain),
//! `TurnEnded` decides whether the agent is asked again for its handoff, `SessionEnded`
//! records the session and applies [`policy::decide`].

mod approvals;
pub mod cost;
pub mod gates;
pub mod handoffs;
pub mod machine;
mod messages;
pub mod policy;
pub mod vcs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::json;
use tracing::Instrument;

use crate::agent::{Agent, SessionSpec};
use crate::config::{ChainSettings, Continuation};
use crate::control::{Mode, ModeRx};
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
use machine::ChainMachine;
pub use messages::ChainMsg;
use policy::{Next, SessionFacts};

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

pub struct ChainState {
    id: String,
    task: String,
    settings: ChainSettings,
    agent: Arc<dyn Agent>,
    ctx: Ctx,
    cost: ActorRef<CostMsg>,
    handoffs: ActorRef<HandoffMsg>,
    session: Option<Running>,
    next_index: u32,
    /// The agent session the next one may continue (`continuation = "resume"`): the last
    /// session's, when it completed without a compaction.
    resumable: Option<String>,
    /// When the actor started: the machine's clock (time reaches it as a fact).
    started: std::time::Instant,
    /// Why the previous session failed, for the next prompt.
    note: Option<String>,
    aborting: bool,
    /// The running session was stopped for crossing its cost limit.
    session_over_budget: bool,
    finished: bool,
    span: tracing::Span,
    children: Supervisor<Child>,
    /// The chain's name in its mission (commit messages).
    name: String,
    /// Its git workspace, when the workdir is in a repository.
    git: Option<crate::git::Workspace>,
    /// Why the chain must not run a session (a dirty tree it was told to refuse).
    refused: Option<String>,
    /// The working tree before the running session (for progress and stale COMPLETEs).
    before: Option<gates::Fingerprint>,
    /// The last judged session's index and handoff text (the next judgement compares with it).
    last_judged: Option<(u32, String)>,
    /// The agent's account, for the quota scheduler.
    account: String,
    /// The running session was admitted by the quota scheduler (and must be released).
    admitted: bool,
    /// No session starts before this: the account is held (usage limit, caps, quiet hours).
    quota_wait: Option<std::time::Instant>,
    /// Tool calls of the running session held for a person.
    held: Vec<approvals::Held>,
    /// The last session's denied tool calls, for the next prompt.
    denied_note: Option<String>,
    /// The chain's decisions: attempts, the breaker, progress, the budget warning.
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
        if self.finished {
            return Ok(());
        }
        self.finished = true;
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

    /// Starts the next session, or ends the chain when a limit says so.
    async fn next(&mut self, me: &ActorRef<ChainMsg>) -> Result<(), ActorProcessingErr> {
        if self.finished || self.session.is_some() {
            return Ok(());
        }
        crate::fault::check("chain:next");
        let mode = *self.ctx.mode.borrow();
        let before = machine::Before {
            now_ms: self.clock_ms(),
            mode: match mode {
                Mode::Running => machine::RunMode::Running,
                Mode::Paused { .. } => machine::RunMode::Paused,
                Mode::Stopping => machine::RunMode::Stopping,
            },
            aborting: self.aborting,
            refused: self.refused.take(),
        };
        match self.machine.before_session(&before) {
            machine::Gate::NotYet => return Ok(()),
            machine::Gate::Finish(status, reason) => {
                return self.finish(me, status, Some(reason)).await;
            }
            machine::Gate::Hold { first } => {
                if first {
                    self.set_status(ChainStatus::Paused, None).await?;
                    self.ctx
                        .bus
                        .emit("chain:paused", Some(&self.id), None, json!({}))
                        .await;
                }
                return Ok(());
            }
            machine::Gate::Proceed { resumed } => {
                if resumed {
                    self.ctx
                        .bus
                        .emit("chain:resumed", Some(&self.id), None, json!({}))
                        .await;
                }
            }
        }
        // Before a session starts: would it cross the chain's budget, or the day's cap?
        // (Decided from the store, so resumes and restarts never reset a budget.)
        let total: f64 = self.ask_cost(me, CostMsg::Total).await?;
        let sessions = self.next_index - 1;
        let mut refusal =
            policy::forecast_refuses(total, sessions, self.settings.max_budget_usd, "budget");
        if let (None, Some(cap)) = (&refusal, self.ctx.daily_cap_usd) {
            // Today's spending across every chain, and today's average session as the forecast.
            let today = format!("{}T00:00:00", &now_rfc3339()[..10]);
            let (spent_today, sessions_today) = self.ctx.store.cost_since(&today).await?;
            refusal = policy::forecast_refuses(spent_today, sessions_today, cap, "daily cap");
        }
        if let Some(reason) = refusal {
            return self
                .finish(me, ChainStatus::BudgetExceeded, Some(reason))
                .await;
        }
        // The operator-wide quota: a usage limit hit by any chain of this account, caps on
        // sessions per hour and at once, quiet hours.
        if let Some(t) = self.quota_wait
            && std::time::Instant::now() < t
            && mode == Mode::Running
        {
            return Ok(());
        }
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
        match self
            .ctx
            .quota
            .admit_with(&self.account, &self.id, usage.as_ref())
        {
            crate::quota::Admission::Go => {
                self.admitted = true;
                self.quota_wait = None;
            }
            crate::quota::Admission::Wait { until, reason } => {
                let delay = until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
                    + self.ctx.quota.jitter();
                if self.quota_wait.is_none() {
                    let at = humantime::format_rfc3339_seconds(until).to_string();
                    tracing::warn!(parent: &self.span, until = %at, %reason, "the chain waits for its account");
                    self.set_status(ChainStatus::Waiting, Some(&reason)).await?;
                    self.ctx
                        .bus
                        .emit(
                            "chain:waiting",
                            Some(&self.id),
                            Some(self.next_index),
                            json!({"until": at, "reason": reason, "account": true}),
                        )
                        .await;
                }
                self.quota_wait = Some(std::time::Instant::now() + delay);
                me.send_after(delay, || ChainMsg::Next);
                return Ok(());
            }
        }
        let index = self.next_index;
        let note = match (self.note.take(), self.denied_note.take()) {
            (Some(n), Some(d)) => Some(format!("{n}\n\n{d}")),
            (n, d) => n.or(d),
        };
        let kept_note = note.clone();
        let resume_id = match self.settings.continuation {
            Continuation::Resume => self.resumable.clone(),
            Continuation::Fresh => None,
        };
        let resumed = resume_id.is_some();
        let user_prompt: String = match ask(&self.handoffs, |reply| HandoffMsg::Prompt {
            index,
            note: note.clone(),
            resumed,
            reply,
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                // The Handoff actor died between two messages: restart it from the store now
                // rather than fail the whole chain (its supervision event may still be queued).
                tracing::error!(parent: &self.span, cause = %e, "the Handoff actor is gone; restarting it from the store");
                self.restart_child(me, Child::Handoff).await?;
                ask(&self.handoffs, |reply| HandoffMsg::Prompt {
                    index,
                    note,
                    resumed,
                    reply,
                })
                .await?
            }
        };
        let started_at = now_rfc3339();
        // Committed before the agent starts: a crash from here on finds the session in the store.
        let limits = &self.ctx.quota.limits;
        let started = self
            .ctx
            .store
            .start_session(&SessionStart {
                chain_id: self.id.clone(),
                index,
                attempt: self.machine.attempt,
                prompt: user_prompt.clone(),
                started_at: started_at.clone(),
                account: Some(crate::store::SessionAccount {
                    id: self.account.clone(),
                    max_running: limits.concurrent,
                    max_per_hour: limits.per_hour,
                }),
            })
            .await;
        if let Err(crate::store::StoreError::AccountBusy { reason }) = &started {
            // Another worker of the fleet took the account's last slot a moment ago.
            self.ctx.quota.finished(&self.account, &self.id);
            self.admitted = false;
            self.note = kept_note;
            let delay = Duration::from_secs(5) + self.ctx.quota.jitter();
            tracing::info!(parent: &self.span, %reason, "the chain waits for its account");
            self.set_status(ChainStatus::Waiting, Some(reason)).await?;
            me.send_after(delay, || ChainMsg::Next);
            return Ok(());
        }
        started?;
        self.next_index += 1;
        self.set_status(ChainStatus::Running, None).await?;
        self.ctx
            .bus
            .emit(
                "chain:session-started",
                Some(&self.id),
                Some(index),
                json!({"max": self.machine.session_base + 1 + self.settings.max_continuations}),
            )
            .await;
        tracing::info!(parent: &self.span, session.index = index, max = self.machine.session_base + 1 + self.settings.max_continuations, "session started");
        self.before =
            Some(gates::fingerprint(self.workdir(), self.ctx.data_dir.clone(), self.repo()).await);
        let spec = SessionSpec {
            chain_id: self.id.clone(),
            index,
            prompt: user_prompt,
            system_prompt: prompt::CONTINUATION_PROTOCOL.to_string(),
            model: self.settings.model.clone(),
            max_turns: self.settings.max_turns,
            permission_mode: self.settings.permission_mode.clone(),
            resume_id,
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
        match Actor::spawn_linked(None, Session, args, me.get_cell()).await {
            Ok((actor, _)) => {
                self.session = Some(Running {
                    index,
                    actor: Some(actor),
                    asked_again: false,
                    started_at,
                });
            }
            Err(e) => {
                // The agent could not even start: record a failed session like any other.
                let outcome = SessionOutcome::empty(
                    index,
                    SessionFacts {
                        spawn_error: Some(e.to_string()),
                        ..Default::default()
                    },
                );
                self.session = Some(Running {
                    index,
                    actor: None,
                    asked_again: false,
                    started_at,
                });
                me.cast(ChainMsg::Session(SessionReport::Ended(Box::new(outcome))))?;
            }
        }
        Ok(())
    }

    async fn turn_ended(
        &mut self,
        index: u32,
        handoff: Result<(), String>,
        hit_max_turns: bool,
        is_error: bool,
    ) {
        let mode = *self.ctx.mode.borrow();
        let interrupted = if self.session_over_budget {
            Some(machine::Interrupted::CostLimit)
        } else if mode == (Mode::Paused { interrupt: true }) {
            Some(machine::Interrupted::Pausing)
        } else if mode == Mode::Stopping || self.aborting {
            Some(machine::Interrupted::Stopping)
        } else {
            None
        };
        let span = self.span.clone();
        let Some(run) = self.session.as_mut().filter(|r| r.index == index) else {
            return;
        };
        let turn = machine::Turn {
            handoff,
            is_error,
            hit_max_turns,
            asked_again: run.asked_again,
            interrupted,
        };
        let msg = match machine::after_turn(turn) {
            machine::AfterTurn::Close => SessionMsg::Close,
            machine::AfterTurn::AskAgain(why) => {
                run.asked_again = true;
                tracing::info!(parent: &span, session.index = index, reason = %why, "asking the agent for its handoff");
                SessionMsg::FollowUp(prompt::follow_up(&why))
            }
        };
        if let Some(a) = &run.actor {
            let _ = a.cast(msg);
        }
    }

    /// Records a failed attempt and schedules the same session again after `delay`.
    async fn retry(
        &mut self,
        me: &ActorRef<ChainMsg>,
        o: &SessionOutcome,
        run: Running,
        verdict: &policy::Verdict,
        attempt: machine::Attempt,
        delay: Duration,
    ) -> Result<(), ActorProcessingErr> {
        let mut record =
            self.unfinished_record(o, run, verdict, SessionStatus::Failed, attempt.cost);
        record.turns = attempt.turns;
        record.attempts = attempt.number;
        record.hit_max_turns = o.facts.hit_max_turns;
        self.ctx
            .store
            .finish_session(&self.id, &record, None)
            .await?;
        tracing::warn!(
            parent: &self.span,
            session.index = o.index,
            attempt = attempt.number,
            delay = %humantime::format_duration(delay),
            error = verdict.error.as_deref().unwrap_or(""),
            "transient failure; retrying the session"
        );
        self.ctx
            .bus
            .emit(
                "chain:session-retry",
                Some(&self.id),
                Some(o.index),
                json!({"attempt": attempt.number, "delayMs": delay.as_millis() as u64, "error": verdict.error}),
            )
            .await;
        self.note = attempt.note;
        self.next_index = o.index;
        let now = self.clock_ms();
        self.machine.wait(now, delay);
        me.send_after(delay, || ChainMsg::Next);
        Ok(())
    }

    async fn session_ended(
        &mut self,
        me: &ActorRef<ChainMsg>,
        o: SessionOutcome,
    ) -> Result<(), ActorProcessingErr> {
        if !self.held.is_empty() {
            self.cancel_approvals("The session ended before anyone answered.")
                .await;
        }
        let Some(run) = self.session.take() else {
            return Ok(());
        };
        if std::mem::take(&mut self.admitted) {
            self.ctx.quota.finished(&self.account, &self.id);
        }
        let verdict = policy::classify(&o.facts);
        if self.resumable.is_some() && policy::unknown_resume_id(&o.facts) {
            // Spending more attempts on a dead id helps nobody: the retry starts fresh from
            // the last handoff.
            tracing::warn!(parent: &self.span, session.index = o.index, "the agent no longer knows the session it was to resume; the next attempt starts fresh from the handoff");
            self.resumable = None;
        }
        let reported = o.reported_cost;
        let cost: f64 = self
            .ask_cost(me, |reply| CostMsg::EndSession { reported, reply })
            .await?;
        let ended = machine::Ended {
            index: o.index,
            verdict: verdict.clone(),
            cost,
            turns: o.turns,
            running: !self.aborting && *self.ctx.mode.borrow() == Mode::Running,
            now: unix_now(),
        };
        let (attempts, cost, turns) = match self.machine.session_ended(&ended) {
            machine::AfterEnd::StopAtLimit { reason, .. } => {
                let record =
                    self.unfinished_record(&o, run, &verdict, SessionStatus::Interrupted, cost);
                self.ctx
                    .store
                    .finish_session(&self.id, &record, None)
                    .await?;
                return self
                    .finish(me, ChainStatus::WaitingLimit, Some(reason))
                    .await;
            }
            machine::AfterEnd::WaitForLimit {
                delay,
                until,
                attempt,
            } => {
                // Every chain of the same account waits too (the quota scheduler holds it),
                // on every worker of a fleet (the hold is shared through the store).
                let until_time = std::time::UNIX_EPOCH + Duration::from_secs(until);
                self.ctx.quota.hold(&self.account, until_time, &self.id);
                if self.ctx.shared_store {
                    self.ctx
                        .store
                        .set_flag(&hold_flag(&self.account), Some(&until.to_string()))
                        .await?;
                }
                self.retry(me, &o, run, &verdict, attempt, delay).await?;
                let at = humantime::format_rfc3339_seconds(until_time).to_string();
                let reason = format!("usage limit; trying again at {at}");
                self.set_status(ChainStatus::Waiting, Some(&reason)).await?;
                self.ctx
                    .bus
                    .emit(
                        "chain:waiting",
                        Some(&self.id),
                        Some(o.index),
                        json!({"until": at, "reason": verdict.error}),
                    )
                    .await;
                return Ok(());
            }
            machine::AfterEnd::Retry { delay, attempt } => {
                return self.retry(me, &o, run, &verdict, attempt, delay).await;
            }
            machine::AfterEnd::Record {
                attempts,
                cost,
                turns,
            } => (attempts, cost, turns),
        };
        let (index, output, error) = (o.index, o.output, verdict.error.clone());
        let handoff = ask(&self.handoffs, |reply| HandoffMsg::Finalize {
            index,
            output,
            error,
            reply,
        })
        .await?;
        let record = SessionRecord {
            index: o.index,
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
            asked_again: run.asked_again,
            attempts,
            started_at: run.started_at,
            ended_at: Some(o.ended_at.clone()),
        };
        self.ctx
            .store
            .finish_session(&self.id, &record, Some(&handoff))
            .await?;
        self.resumable = resumable_id(&record);
        let _ = self.handoffs.cast(HandoffMsg::Committed(handoff.clone()));
        if self.settings.auto_commit
            && let Some(ws) = &self.git
        {
            vcs::commit(&self.ctx, &self.id, &self.name, o.index, ws, &handoff.text).await;
        }
        tracing::info!(
            parent: &self.span,
            session.index = o.index,
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
                Some(o.index),
                json!({"session": record, "transcriptTruncated": o.transcript_truncated}),
            )
            .await;
        if let Some(note) = crate::permissions::denial_note(&o.denied) {
            self.ctx
                .bus
                .emit(
                    "chain:permissions-denied",
                    Some(&self.id),
                    Some(o.index),
                    json!({"count": o.denied.len(), "calls": o.denied}),
                )
                .await;
            self.denied_note = Some(note);
            self.machine.denied_in_row += o.denied.len() as u32;
        } else {
            self.machine.denied_in_row = 0;
        }
        let total: f64 = self.ask_cost(me, CostMsg::Total).await?;
        let over_budget = std::mem::take(&mut self.session_over_budget);
        let decided = self.machine.decide(&machine::Recorded {
            index: o.index,
            verdict: verdict.clone(),
            complete: handoff.complete && !handoff.synthetic,
            agent_handoff: !handoff.synthetic,
            hit_max_turns: o.facts.hit_max_turns,
            total_cost: total,
            aborting: self.aborting,
            held: self.ctx.mode.borrow().is_paused() || over_budget,
        });
        if decided.note.is_some() {
            self.note = decided.note;
        }
        if decided.budget_warning {
            self.ctx
                .bus
                .emit(
                    "chain:budget-warning",
                    Some(&self.id),
                    Some(o.index),
                    json!({"spentUsd": total, "budgetUsd": self.settings.max_budget_usd}),
                )
                .await;
        }
        let decision = self
            .judge(decided.next, o.index, &handoff, verdict.status)
            .await?;
        match self.machine.breaker(decision, verdict.status, unix_now()) {
            machine::Breaker::Go(next) => self.act(me, next).await,
            machine::Breaker::Closed(next) => {
                tracing::info!(parent: &self.span, "the probe session succeeded; the breaker is closed");
                self.ctx
                    .bus
                    .emit("chain:breaker-closed", Some(&self.id), None, json!({}))
                    .await;
                self.act(me, next).await
            }
            machine::Breaker::HalfOpen { cooldown, reason } => {
                tracing::warn!(parent: &self.span, cool_down = %humantime::format_duration(cooldown), "the breaker opened; one probe session after the cool-down");
                self.set_status(ChainStatus::Waiting, Some(&reason)).await?;
                let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + cooldown)
                    .to_string();
                self.ctx
                    .bus
                    .emit(
                        "chain:breaker-half-open",
                        Some(&self.id),
                        None,
                        json!({"until": at, "failures": self.machine.consecutive_failures}),
                    )
                    .await;
                let now = self.clock_ms();
                self.machine.wait(now, cooldown);
                me.send_after(cooldown, || ChainMsg::Next);
                Ok(())
            }
        }
    }

    /// Milliseconds since the actor started: the clock of the machine's timers.
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Carries a decision out: the next session, or the chain's end.
    async fn act(&mut self, me: &ActorRef<ChainMsg>, next: Next) -> Result<(), ActorProcessingErr> {
        match next {
            Next::Continue => me.cast(ChainMsg::Next)?,
            Next::Finish(status, reason) => self.finish(me, status, reason).await?,
        }
        Ok(())
    }

    /// The record of a session attempt that ends without a handoff (retried, or stopped at a
    /// usage limit).
    fn unfinished_record(
        &self,
        o: &SessionOutcome,
        run: Running,
        verdict: &policy::Verdict,
        status: SessionStatus,
        cost: f64,
    ) -> SessionRecord {
        SessionRecord {
            index: o.index,
            session_id: o.session_id.clone(),
            status,
            turns: o.turns,
            cost_usd: cost,
            duration_ms: o.duration.as_millis() as u64,
            hit_max_turns: false,
            pre_compacted: o.pre_compacted,
            handoff_complete: false,
            handoff_file: None,
            error: verdict.error.clone(),
            error_kind: verdict.error_kind,
            handoff_synthetic: false,
            asked_again: run.asked_again,
            attempts: self.machine.attempt,
            started_at: run.started_at,
            ended_at: Some(o.ended_at.clone()),
        }
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

    /// Measures a completed session (the working tree, the handoff against the previous one,
    /// the verify gates when it says COMPLETE) and lets the machine judge it.
    async fn judge(
        &mut self,
        decision: Next,
        index: u32,
        handoff: &HandoffRecord,
        status: SessionStatus,
    ) -> Result<Next, ActorProcessingErr> {
        let before = self.before.take();
        if !ChainMachine::judged(&decision, status) {
            return Ok(decision);
        }
        let workdir = self.workdir();
        let after =
            gates::fingerprint(workdir.clone(), self.ctx.data_dir.clone(), self.repo()).await;
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
        self.last_judged = Some((index, handoff.text.clone()));
        let measured = machine::Measured {
            tree_changed: before.is_none_or(|b| b != after),
            remaining_changed: previous
                .as_deref()
                .is_none_or(|p| gates::remaining(p) != gates::remaining(&handoff.text)),
            same_handoff: previous
                .as_deref()
                .is_some_and(|p| gates::body(p) == gates::body(&handoff.text)),
            source: after.source.to_string(),
        };
        let gated = !self.settings.verify.is_empty();
        let mut gates_changed = false;
        let next = match self.machine.judge(decision, index, &measured, gated) {
            machine::Judgement::Done { next, stale, note } => {
                if stale {
                    tracing::warn!(parent: &self.span, session.index = index, "a stale COMPLETE: the same handoff as before and no change in the working tree");
                    self.ctx
                        .bus
                        .emit(
                            "chain:stale-complete",
                            Some(&self.id),
                            Some(index),
                            json!({"measured": after.source}),
                        )
                        .await;
                }
                if note.is_some() {
                    self.note = note;
                }
                next
            }
            machine::Judgement::RunGates => {
                let mut results = Vec::new();
                for cmd in &self.settings.verify {
                    results.push(
                        gates::run_gate(cmd, &workdir, self.settings.verify_timeout, index).await,
                    );
                }
                self.ctx.store.set_chain_verify(&self.id, &results).await?;
                let failed: Vec<&gates::GateResult> =
                    results.iter().filter(|r| !r.passed).collect();
                self.ctx
                    .bus
                    .emit(
                        "chain:verify",
                        Some(&self.id),
                        Some(index),
                        json!({"passed": failed.is_empty(), "results": results}),
                    )
                    .await;
                let passed: Vec<bool> = results.iter().map(|r| r.passed).collect();
                gates_changed = passed != self.machine.last_gates;
                let names: Vec<String> = failed.iter().map(|g| g.command.clone()).collect();
                let (next, any_failed) = self.machine.gated(index, &measured, &passed, &names);
                if any_failed {
                    tracing::warn!(parent: &self.span, session.index = index, failed = ?names, "COMPLETE, but verify commands failed; the chain goes on");
                    self.note = Some(gates::failure_note(&failed));
                }
                next
            }
        };
        self.ctx
            .bus
            .emit(
                "chain:progress",
                Some(&self.id),
                Some(index),
                json!({"treeChanged": measured.tree_changed, "remainingChanged": measured.remaining_changed,
                       "gatesChanged": gates_changed, "measured": after.source,
                       "sessionsWithout": self.machine.no_progress}),
            )
            .await;
        Ok(next)
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

/// The agent session a next session may continue: one that completed without a compaction
/// (after a compaction, a failure or an interruption, the next session starts fresh).
fn resumable_id(s: &SessionRecord) -> Option<String> {
    (s.status == SessionStatus::Completed && !s.pre_compacted)
        .then(|| s.session_id.clone())
        .flatten()
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
        let next_index = sessions.last().map(|s| s.index + 1).unwrap_or(1);
        let session_base = store.session_base(&a.chain_id).await?;
        let resumable = sessions.last().and_then(resumable_id);
        let machine =
            ChainMachine::restore(machine::Limits::of(&a.settings), session_base, &sessions);
        let (git, refused) = match vcs::open(&a.ctx, &a.chain_id, &a.task, &a.settings).await {
            Ok(ws) => (ws, None),
            Err(reason) => (None, Some(reason)),
        };
        let account = a.agent.account();
        // A restarted chain runs nothing yet: whatever it held is released.
        a.ctx.quota.finished(&account, &a.chain_id);
        // Calls its previous life held for a person went with that session's agent.
        approvals::settle_stale(&*a.ctx.store, &a.chain_id).await;
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
            next_index,
            resumable,
            started: std::time::Instant::now(),
            note: None,
            aborting: false,
            session_over_budget: false,
            finished: false,
            span,
            children: child_supervisor(),
            name: a.name,
            git,
            refused,
            machine,
            before: None,
            last_judged: None,
            account,
            admitted: false,
            quota_wait: None,
            held: Vec::new(),
            denied_note: None,
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
            ChainMsg::Next => st.next(&me).await?,
            ChainMsg::Session(SessionReport::TurnEnded {
                index,
                handoff,
                hit_max_turns,
                is_error,
            }) => st.turn_ended(index, handoff, hit_max_turns, is_error).await,
            ChainMsg::Session(SessionReport::Ended(o)) => st.session_ended(&me, *o).await?,
            ChainMsg::ModeChanged => {
                let mode = *st.ctx.mode.borrow();
                if matches!(mode, Mode::Stopping | Mode::Paused { interrupt: true }) {
                    st.cancel_approvals(
                        "The operator is stopping this session; this call was not approved. Write your handoff.",
                    )
                    .await;
                }
                match (&st.session, mode) {
                    (Some(run), Mode::Stopping | Mode::Paused { interrupt: true }) => {
                        if let Some(a) = &run.actor {
                            let _ = a.cast(SessionMsg::Stop {
                                grace: st.ctx.shutdown_grace,
                            });
                        }
                    }
                    (None, _) => st.next(&me).await?,
                    _ => {}
                }
            }
            ChainMsg::Session(SessionReport::Usage { model, usage }) => {
                let _ = st.cost.cast(CostMsg::Usage { model, usage });
            }
            ChainMsg::SessionOverBudget { spent } => {
                if let Some(run) = &st.session
                    && !st.session_over_budget
                {
                    tracing::warn!(parent: &st.span, session.index = run.index, spent_usd = spent, "the session crossed its cost limit; asking for its handoff");
                    st.session_over_budget = true;
                    if let Some(a) = &run.actor {
                        let _ = a.cast(SessionMsg::Stop {
                            grace: st.ctx.shutdown_grace,
                        });
                    }
                }
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
                st.machine.limits = machine::Limits::of(&st.settings);
                st.agent = agent;
            }
            ChainMsg::Session(SessionReport::ApprovalRequested(call)) => {
                st.approval_requested(&me, call).await?
            }
            ChainMsg::CheckApprovals => st.check_approvals(&me).await?,
            ChainMsg::Abort => {
                st.aborting = true;
                st.cancel_approvals("The chain was aborted; this call was not approved.")
                    .await;
                match &st.session {
                    Some(run) => {
                        if let Some(a) = &run.actor {
                            let _ = a.cast(SessionMsg::Stop {
                                grace: Duration::from_secs(2),
                            });
                        }
                    }
                    None => st.next(&me).await?,
                }
            }
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
