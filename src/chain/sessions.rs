//! What the shell does for a session when the machine asks: build its prompt and record its start,
//! start its agent, record it with its handoff, measure the working tree, run the verify gates.

use super::*;

impl ChainState {
    /// Builds the session's prompt and records its start before the agent runs: a crash from
    /// here on finds the session in the store.
    pub(super) async fn start_session(
        &mut self,
        me: &ActorRef<ChainMsg>,
        index: u32,
        attempt: u32,
        note: Option<String>,
        resume_id: Option<String>,
    ) -> Result<Event, ActorProcessingErr> {
        // Another agent cannot continue this one's session (after a switch to a fallback).
        let resume_id = resume_id.filter(|_| self.last_ran.is_none_or(|k| k == self.agent.kind()));
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
    pub(super) async fn spawn(
        &mut self,
        me: &ActorRef<ChainMsg>,
        index: u32,
    ) -> Result<(), ActorProcessingErr> {
        let Some(p) = self.prepared.take().filter(|p| p.index == index) else {
            return Ok(());
        };
        self.last_ran = Some(self.agent.kind());
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
    pub(super) async fn session_ended(
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
    pub(super) async fn finalize(
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
                Some(&self.id),
                Some(index),
                Body::SessionComplete {
                    session: record.clone(),
                    transcript_truncated: o.transcript_truncated,
                },
            )
            .await;
        let denied_note = crate::permissions::denial_note(&o.denied);
        if denied_note.is_some() {
            self.ctx
                .bus
                .emit(
                    Some(&self.id),
                    Some(index),
                    Body::PermissionsDenied {
                        count: o.denied.len(),
                        calls: o.denied.clone(),
                    },
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
    pub(super) async fn measure(&mut self, index: u32) -> Result<Event, ActorProcessingErr> {
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
    pub(super) async fn run_gates(&mut self, index: u32) -> Result<Event, ActorProcessingErr> {
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
                Some(&self.id),
                Some(index),
                Body::Verify {
                    passed: failed.is_empty(),
                    results: serde_json::to_value(&results).unwrap_or_default(),
                },
            )
            .await;
        Ok(Event::Gated {
            passed: results.iter().map(|r| r.passed).collect(),
            failed: failed.iter().map(|g| g.command.clone()).collect(),
            note: (!failed.is_empty()).then(|| gates::failure_note(&failed)),
        })
    }
}
