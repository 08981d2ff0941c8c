//! The Handoff actor: turns a session's output into the handoff the next session starts from (the
//! agent's, or a synthetic one), writes it as `handoff-<n>.md`, and builds each session's prompt.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::handoff::{self, prompt};
use crate::model::{HandoffRecord, now_rfc3339};
use crate::store::SharedStore;

pub enum HandoffMsg {
    /// The user prompt of session `index`, with an optional note from the operator.
    Prompt {
        index: u32,
        note: Option<String>,
        /// The session continues the agent's own session (`--resume`).
        resumed: bool,
        reply: RpcReplyPort<String>,
    },
    /// Resolves the handoff of a finished session and writes its file.
    Finalize {
        index: u32,
        output: String,
        error: Option<String>,
        reply: RpcReplyPort<HandoffRecord>,
    },
    /// The store committed this handoff: it is now the one the next prompt uses.
    Committed(HandoffRecord),
}

pub struct HandoffArgs {
    pub chain_id: String,
    pub task: String,
    pub data_dir: crate::datadir::DataDir,
    pub store: SharedStore,
}

pub struct HandoffState {
    chain_id: String,
    task: String,
    data_dir: crate::datadir::DataDir,
    last: Option<HandoffRecord>,
}

pub struct Handoffs;

/// Writes `text` to `path` atomically (temp file + rename), so a reader never sees half a file.
fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl Actor for Handoffs {
    type Msg = HandoffMsg;
    type State = HandoffState;
    type Arguments = HandoffArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<HandoffMsg>,
        a: HandoffArgs,
    ) -> Result<HandoffState, ActorProcessingErr> {
        std::fs::create_dir_all(a.data_dir.chain(&a.chain_id))?;
        let last = a.store.last_handoff(&a.chain_id).await?;
        Ok(HandoffState {
            chain_id: a.chain_id,
            task: a.task,
            data_dir: a.data_dir,
            last,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<HandoffMsg>,
        msg: HandoffMsg,
        st: &mut HandoffState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HandoffMsg::Prompt {
                index,
                note,
                resumed: true,
                reply,
            } => {
                let _ = reply.send(prompt::resume_prompt(index, note.as_deref()));
            }
            HandoffMsg::Prompt {
                index,
                note,
                resumed: false,
                reply,
            } => {
                let prev = st.last.as_ref().map(|h| prompt::PreviousHandoff {
                    index: h.index,
                    text: &h.text,
                    synthetic: h.synthetic,
                    note: note.as_deref(),
                });
                let _ = reply.send(prompt::session_prompt(&st.task, index, prev.as_ref()));
            }
            HandoffMsg::Finalize {
                index,
                output,
                error,
                reply,
            } => {
                crate::fault::check("handoff:finalize");
                let (h, reason) = match handoff::extract(&output) {
                    Ok(h) => (h, None),
                    Err(invalid) => {
                        let reason = invalid.to_string();
                        (
                            handoff::synthetic(index, &reason, error.as_deref(), &output),
                            Some(reason),
                        )
                    }
                };
                let file = st.data_dir.handoff(&st.chain_id, index);
                write_atomic(&file, &format!("{}\n", h.text))?;
                crate::fault::check("handoff:written");
                let rec = HandoffRecord {
                    chain_id: st.chain_id.clone(),
                    index,
                    text: h.text,
                    complete: h.complete,
                    synthetic: reason.is_some(),
                    reason,
                    file: file.display().to_string(),
                    created_at: now_rfc3339(),
                };
                let _ = reply.send(rec);
            }
            HandoffMsg::Committed(h) => st.last = Some(h),
        }
        Ok(())
    }
}
