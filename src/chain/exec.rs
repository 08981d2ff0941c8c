//! The shell's loop: feeds an event to the machine and carries its commands out, answering the
//! ones that ask the world something (the budget, the quota) with the next event.

use super::*;

impl ChainState {
    /// The moment an event reaches the machine.
    pub(super) fn moment(&self) -> Moment {
        Moment {
            ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            unix: unix_now(),
            mode: *self.ctx.mode.borrow(),
        }
    }

    /// Feeds one event to the machine and carries its commands out; a command that asks the
    /// world something feeds the answer back, and its commands run before the rest.
    pub(super) async fn step(
        &mut self,
        me: &ActorRef<ChainMsg>,
        ev: Event,
    ) -> Result<(), ActorProcessingErr> {
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
    pub(super) async fn exec(
        &mut self,
        me: &ActorRef<ChainMsg>,
        cmd: Cmd,
    ) -> Result<Option<Event>, ActorProcessingErr> {
        match cmd {
            Cmd::SetStatus(status, reason) => self.set_status(status, reason.as_deref()).await?,
            Cmd::Emit { index, body } => self.ctx.bus.emit(Some(&self.id), index, body).await,
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
            Cmd::AskQuota => {
                self.choose_agent().await?;
                return Ok(Some(Event::Quota(self.ask_quota().await?)));
            }
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
            Cmd::Land { index } => return self.land(me, index).await,
        }
        Ok(None)
    }

    /// Starts landing session `index`'s COMPLETE in a task of its own (it answers with
    /// [`ChainMsg::Landed`]); a chain with nothing to land on is complete at once.
    async fn land(
        &mut self,
        me: &ActorRef<ChainMsg>,
        index: u32,
    ) -> Result<Option<Event>, ActorProcessingErr> {
        let way = self
            .git
            .as_ref()
            .and_then(|ws| land::Way::of(&self.settings, ws).map(|w| (w, ws.clone())));
        let Some((way, ws)) = way else {
            tracing::info!(parent: &self.span, "nothing to land on (no branch or worktree of its own): complete");
            return Ok(Some(Event::Landed(machine::Landed::Done(None))));
        };
        self.ctx
            .store
            .set_flag(&land::landing_flag(&self.id), Some(way.as_str()))
            .await?;
        self.set_status(way.status(), None).await?;
        let job = land::Job {
            ctx: self.ctx.clone(),
            id: self.id.clone(),
            index,
            settings: self.settings.clone(),
            ws,
        };
        let me = me.clone();
        let task = tokio::spawn(
            async move {
                let l = land::run(job, way).await;
                let _ = me.cast(ChainMsg::Landed(l));
            }
            .instrument(self.span.clone()),
        );
        self.landing = Some(task.abort_handle());
        Ok(None)
    }

    /// The landing answered.
    pub(super) async fn landed(
        &mut self,
        me: &ActorRef<ChainMsg>,
        l: machine::Landed,
    ) -> Result<(), ActorProcessingErr> {
        self.landing = None;
        match &l {
            machine::Landed::Done(_) => self.landed = true,
            machine::Landed::Again { .. } => {
                // Back to sessions: a restart runs the next one, not the landing.
                self.ctx
                    .store
                    .set_flag(&land::landing_flag(&self.id), None)
                    .await?;
            }
            machine::Landed::Failed(..) => {}
        }
        self.step(me, Event::Landed(l)).await
    }

    /// The operator-wide quota's answer for the next session: a usage limit hit by any chain
    /// of this account (on any worker of a fleet), caps on sessions per hour and at once, quiet
    /// hours.
    pub(super) async fn ask_quota(&self) -> Result<QuotaAnswer, ActorProcessingErr> {
        if self.ctx.shared_store {
            self.fleet_hold(&self.account).await?;
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

    /// With fallback agents: runs the next session on the first agent (in order of preference)
    /// whose account no usage limit holds. When every one is held, the agent stays, and the
    /// quota's answer is to wait for its reset.
    async fn choose_agent(&mut self) -> Result<(), ActorProcessingErr> {
        if self.agents.len() < 2 {
            return Ok(());
        }
        let mut held = Vec::with_capacity(self.agents.len());
        for a in &self.agents {
            let account = a.account();
            if self.ctx.shared_store {
                self.fleet_hold(&account).await?;
            }
            held.push(self.ctx.quota.is_held(&account));
        }
        let current = self
            .agents
            .iter()
            .position(|a| a.kind() == self.agent.kind())
            .unwrap_or(0);
        let Some(next) = policy::pick_agent(&held, current, self.settings.prefer_primary)
            .filter(|n| *n != current)
        else {
            return Ok(());
        };
        let (from, to) = (self.agent.kind(), self.agents[next].kind());
        let reason = if held[current] {
            format!("the {from} account is held by a usage limit")
        } else {
            format!("the {to} account is free again")
        };
        tracing::warn!(parent: &self.span, from = %from, to = %to, reason = %reason, "the chain switches agents");
        self.agent = self.agents[next].clone();
        self.account = self.agent.account();
        self.ctx
            .bus
            .emit(
                Some(&self.id),
                None,
                Body::AgentSwitched {
                    agent: to.to_string(),
                    from: from.to_string(),
                    reason,
                },
            )
            .await;
        Ok(())
    }

    /// Takes over a usage-limit hold another worker of the fleet recorded for `account`.
    pub(super) async fn fleet_hold(&self, account: &str) -> Result<(), ActorProcessingErr> {
        let until = self
            .ctx
            .store
            .get_flag(&hold_flag(account))
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
        if let Some(until) = until.filter(|u| *u > std::time::SystemTime::now()) {
            self.ctx.quota.hold(account, until, "another worker");
        }
        Ok(())
    }
}

/// The shared store's flag that holds an account's chains across a fleet (epoch seconds).
fn hold_flag(account: &str) -> String {
    format!("hold:{account}")
}
