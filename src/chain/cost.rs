//! The Cost actor: live USD from the stream's usage, reconciled with the agent's own total at the end of
//! each session; chain totals rebuilt from the store when it (re)starts.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::ChainMsg;
use crate::agent::stream::Usage;
use crate::cost;
use crate::store::SharedStore;

pub enum CostMsg {
    Usage {
        model: String,
        usage: Usage,
    },
    /// Ends the live session: replies with its cost (reported figure or estimate).
    EndSession {
        reported: Option<f64>,
        reply: RpcReplyPort<f64>,
    },
    /// Chain total so far, the live session included.
    Total(RpcReplyPort<f64>),
}

pub struct CostArgs {
    pub chain: ActorRef<ChainMsg>,
    pub chain_id: String,
    pub store: SharedStore,
    /// `max_session_cost_usd`: the chain is told when the live session crosses it.
    pub session_limit_usd: Option<f64>,
    pub pricing: std::sync::Arc<cost::Pricing>,
}

pub struct CostState {
    /// Sum over recorded sessions.
    recorded: f64,
    live: f64,
    chain: ActorRef<ChainMsg>,
    session_limit: Option<f64>,
    pricing: std::sync::Arc<cost::Pricing>,
    /// The chain was told that the live session crossed its limit.
    told: bool,
}

pub struct Cost;

impl Actor for Cost {
    type Msg = CostMsg;
    type State = CostState;
    type Arguments = CostArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<CostMsg>,
        args: CostArgs,
    ) -> Result<CostState, ActorProcessingErr> {
        // Rebuilt from the store, never from memory: a restarted Cost actor has the right totals.
        let recorded = args
            .store
            .sessions(&args.chain_id)
            .await?
            .iter()
            .map(|s| s.cost_usd)
            .sum();
        Ok(CostState {
            recorded,
            live: 0.0,
            chain: args.chain,
            session_limit: args.session_limit_usd,
            pricing: args.pricing,
            told: false,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<CostMsg>,
        msg: CostMsg,
        st: &mut CostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CostMsg::Usage { model, usage } => {
                crate::fault::check("cost:usage");
                st.live += st.pricing.price(&model, &usage);
                if let Some(limit) = st.session_limit
                    && st.live >= limit
                    && !st.told
                {
                    st.told = true;
                    let _ = st
                        .chain
                        .cast(ChainMsg::SessionOverBudget { spent: st.live });
                }
            }
            CostMsg::EndSession { reported, reply } => {
                let c = cost::reconcile(reported, st.live);
                st.recorded += c;
                st.live = 0.0;
                st.told = false;
                let _ = reply.send(c);
            }
            CostMsg::Total(reply) => {
                let _ = reply.send(st.recorded + st.live);
            }
        }
        Ok(())
    }
}
