//! The chain's side of tool calls held for a person: it records each one in the store, shows the
//! chain `awaiting-approval`, watches the store for an answer (dashboard, API, `operator
//! approve|deny`) or the `approval_timeout`, and hands the answer to the session.

use std::time::{Duration, SystemTime};

use crate::events::Body;
use ractor::{ActorProcessingErr, ActorRef};

use super::{ChainMsg, ChainState, unix_now};
use crate::model::{ChainStatus, now_rfc3339};
use crate::permissions::{Approval, ApprovalStatus};
use crate::session::{HeldCall, SessionMsg};
use crate::store::approvals;

/// How often the chain looks for answers while a call is held.
const POLL: Duration = Duration::from_millis(500);

/// A call the running session holds for a person.
#[derive(Debug, Clone)]
pub struct Held {
    pub approval_id: String,
    pub request_id: String,
    pub index: u32,
}

fn new_id() -> String {
    format!("ap-{:08x}", fastrand::u32(..))
}

/// Settles the approvals a chain left pending when its actor or the operator died: the agent that
/// asked is gone, so nobody's answer could reach it.
pub(super) async fn settle_stale(store: &dyn crate::store::Store, chain_id: &str) {
    let Ok(list) = approvals::list(store, Some(chain_id)).await else {
        return;
    };
    for a in list
        .into_iter()
        .filter(|a| a.status == ApprovalStatus::Pending)
    {
        let c = a.cancelled(
            "The session that asked ended (the operator or the chain restarted) before anyone answered.",
            &now_rfc3339(),
        );
        if let Err(e) = approvals::save(store, &c).await {
            tracing::warn!(chain.id = chain_id, cause = %e, "could not settle a stale approval");
        }
    }
}

impl ChainState {
    /// Tells the session how its held call was settled.
    fn answer_session(&self, h: &Held, allow: bool, message: String, by: String) {
        if let Some(a) = self
            .session
            .as_ref()
            .filter(|r| r.index == h.index)
            .and_then(|r| r.actor.as_ref())
        {
            let _ = a.cast(SessionMsg::Answer {
                request_id: h.request_id.clone(),
                allow,
                message,
                by,
            });
        }
    }

    /// A session holds a call: record it, show the chain waiting, and start watching.
    pub(super) async fn approval_requested(
        &mut self,
        me: &ActorRef<ChainMsg>,
        r: HeldCall,
    ) -> Result<(), ActorProcessingErr> {
        let deadline = SystemTime::now() + self.settings.approval_timeout;
        let a = Approval {
            id: new_id(),
            chain_id: self.id.clone(),
            session: r.index,
            tool: r.tool,
            summary: r.summary,
            input: r.input,
            rule: r.rule,
            status: ApprovalStatus::Pending,
            requested_at: now_rfc3339(),
            deadline: unix_now() + self.settings.approval_timeout.as_secs().max(1),
            answered_by: None,
            answered_at: None,
            message: None,
        };
        let held = Held {
            approval_id: a.id.clone(),
            request_id: r.request_id,
            index: r.index,
        };
        if let Err(e) = approvals::save(&*self.ctx.store, &a).await {
            // Nobody could answer a call we cannot record: deny it now, the run goes on.
            tracing::warn!(parent: &self.span, cause = %e, "could not record a held tool call; denying it");
            self.answer_session(
                &held,
                false,
                "The operator could not hold this call for approval; it was denied.".into(),
                "operator".into(),
            );
            return Ok(());
        }
        let until = humantime::format_rfc3339_seconds(deadline).to_string();
        let reason = format!(
            "{} `{}` waits for approval ({}; denied at {until} without an answer)",
            a.tool, a.summary, a.id
        );
        tracing::warn!(parent: &self.span, approval = %a.id, tool = %a.tool, input = %a.summary, "a tool call waits for approval: `operator approve {} {}`", self.id, a.id);
        self.set_status(ChainStatus::AwaitingApproval, Some(&reason))
            .await?;
        self.ctx
            .bus
            .emit(
                Some(&self.id),
                Some(a.session),
                Body::ApprovalRequested {
                    approval_id: a.id.clone(),
                    tool: a.tool.clone(),
                    input: a.summary.clone(),
                    rule: a.rule.clone(),
                    deadline: until,
                    url: self.page_url(),
                },
            )
            .await;
        let first = self.held.is_empty();
        self.held.push(held);
        if first {
            me.send_after(POLL, || ChainMsg::CheckApprovals);
        }
        Ok(())
    }

    /// The chain's dashboard page: absolute when this operator serves its API, else the path.
    fn page_url(&self) -> String {
        let path = format!("/chains/{}", self.id);
        match crate::datadir::DataDir::new(&self.ctx.data_dir).api_url() {
            Some(base) => format!("{base}{path}"),
            None => path,
        }
    }

    /// Looks for answers and deadlines of the held calls.
    pub(super) async fn check_approvals(
        &mut self,
        me: &ActorRef<ChainMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.held.is_empty() {
            return Ok(());
        }
        let mut still = Vec::new();
        for h in std::mem::take(&mut self.held) {
            let a = match approvals::load(&*self.ctx.store, &self.id, &h.approval_id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(parent: &self.span, cause = %e, "could not read a held tool call");
                    still.push(h);
                    continue;
                }
            };
            let settled = match a.expired(unix_now(), &now_rfc3339()) {
                Some(t) => {
                    approvals::save(&*self.ctx.store, &t).await?;
                    Some(t)
                }
                None if a.status == ApprovalStatus::Pending => None,
                None => Some(a),
            };
            match settled {
                None => still.push(h),
                Some(a) => self.settled(&h, &a).await,
            }
        }
        self.held = still;
        if self.held.is_empty() {
            if self.session.is_some() && !self.machine.finished {
                self.set_status(ChainStatus::Running, None).await?;
            }
        } else {
            me.send_after(POLL, || ChainMsg::CheckApprovals);
        }
        Ok(())
    }

    async fn settled(&self, h: &Held, a: &Approval) {
        let by = a.answered_by.clone().unwrap_or_default();
        tracing::info!(parent: &self.span, approval = %a.id, status = a.status.as_str(), by = %by, "a held tool call was settled");
        self.ctx
            .bus
            .emit(
                Some(&self.id),
                Some(a.session),
                Body::ApprovalAnswered {
                    approval_id: a.id.clone(),
                    tool: a.tool.clone(),
                    input: a.summary.clone(),
                    status: a.status.as_str().to_string(),
                    by: by.clone(),
                },
            )
            .await;
        self.answer_session(h, a.allowed(), a.message.clone().unwrap_or_default(), by);
    }

    /// Settles every held call without a person: the session ends, or the operator stops,
    /// pauses now or aborts (the agent is told, so its turn can end).
    pub(super) async fn cancel_approvals(&mut self, why: &str) {
        for h in std::mem::take(&mut self.held) {
            let Ok(a) = approvals::load(&*self.ctx.store, &self.id, &h.approval_id).await else {
                continue;
            };
            if a.status != ApprovalStatus::Pending {
                self.settled(&h, &a).await;
                continue;
            }
            let c = a.cancelled(why, &now_rfc3339());
            if let Err(e) = approvals::save(&*self.ctx.store, &c).await {
                tracing::warn!(parent: &self.span, cause = %e, "could not record a cancelled approval");
            }
            self.settled(&h, &c).await;
        }
    }
}
