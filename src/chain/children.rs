//! The chain's long-lived children (Cost, Handoff): their supervision policy, spawning, restarts
//! from the store, and calls that survive a crashed child.

use super::*;

/// The chain's long-lived children (Session actors are `temporary`: a crashed one is a failed
/// session attempt, decided by the chain, not restarted by policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Cost,
    Handoff,
}

/// Cost and Handoff are independent (each rebuilds its state from the store), so a crash of
/// one never needs the other restarted: `one_for_one`, permanent, 5 restarts in 10 s.
pub(super) fn child_supervisor() -> Supervisor<Child> {
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
    /// Asks the Cost actor; if it died (its supervision event may still be queued behind this
    /// message), restarts it from the store and asks again.
    pub(super) async fn ask_cost<T: Send + 'static>(
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
    pub(super) async fn restart_child(
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
                            Some(&self.id),
                            None,
                            Body::ChildRestarted {
                                child: name.to_string(),
                            },
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

    pub(super) async fn respawn_cost(
        &mut self,
        me: &ActorRef<ChainMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.cost = spawn_cost(me, &self.id, &self.ctx, self.settings.max_session_cost_usd).await?;
        Ok(())
    }

    pub(super) async fn respawn_handoffs(
        &mut self,
        me: &ActorRef<ChainMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.handoffs = spawn_handoffs(me, &self.id, &self.task, &self.ctx).await?;
        Ok(())
    }
}

pub(super) async fn spawn_cost(
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

pub(super) async fn spawn_handoffs(
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
