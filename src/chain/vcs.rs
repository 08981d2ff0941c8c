//! A chain's git steps: open its workspace at start (branch, worktree, the dirty-tree check), commit
//! after each session, push and open a pull request at the end. Each step is reported on the bus
//! (`git:*` events, journaled); none can fail the chain's record.

use crate::events::Body;

use super::Ctx;
use crate::config::{ChainSettings, DirtyStart};
use crate::git::{self, Push, Workspace};
use crate::model::ChainStatus;

/// Opens the workspace; `Err` holds the reason to refuse the chain (a dirty tree with
/// `dirty_start = "refuse"`).
pub async fn open(
    ctx: &Ctx,
    id: &str,
    task: &str,
    s: &ChainSettings,
) -> Result<Option<Workspace>, String> {
    let ws = match git::open(s, id, task, &ctx.data_dir).await {
        Ok(Some(ws)) => ws,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(chain.id = id, cause = %e, "git: the chain works without its git steps");
            ctx.bus
                .emit(
                    Some(id),
                    None,
                    Body::GitError {
                        error: e.to_string(),
                    },
                )
                .await;
            return Ok(None);
        }
    };
    if let Some(path) = &ws.worktree {
        ctx.bus
            .emit(
                Some(id),
                None,
                Body::GitWorktree {
                    path: path.display().to_string(),
                    branch: ws.branch.clone(),
                },
            )
            .await;
    } else {
        if let Some(b) = &ws.branch {
            ctx.bus
                .emit(Some(id), None, Body::GitBranch { branch: b.clone() })
                .await;
        }
        match ws.changes().await {
            Ok(files) if !files.is_empty() => {
                let refuse = s.dirty_start == DirtyStart::Refuse;
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitDirty {
                            files: files.len(),
                            sample: files.iter().take(10).cloned().collect(),
                            refused: refuse,
                        },
                    )
                    .await;
                tracing::warn!(
                    chain.id = id,
                    files = files.len(),
                    "git: the working tree has uncommitted changes at the chain's start"
                );
                if refuse {
                    return Err(format!(
                        "the working tree of {} has {} uncommitted change(s) (dirty_start = \"refuse\"); commit or stash them first",
                        ws.repo.display(),
                        files.len()
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => {
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitError {
                            error: e.to_string(),
                        },
                    )
                    .await;
            }
        }
    }
    Ok(Some(ws))
}

/// Commits what the session changed, with its handoff as the message.
pub async fn commit(ctx: &Ctx, id: &str, name: &str, index: u32, ws: &Workspace, handoff: &str) {
    let message = git::commit_message(name, id, index, handoff);
    match ws.commit(&message).await {
        Ok(Some(c)) => {
            tracing::info!(chain.id = id, session.index = index, sha = %c.sha, files = c.files, "git: session committed");
            ctx.bus
                .emit(
                    Some(id),
                    Some(index),
                    Body::GitCommitted {
                        sha: c.sha.clone(),
                        files: c.files,
                        branch: ws.branch.clone(),
                    },
                )
                .await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(chain.id = id, session.index = index, cause = %e, "git: the session could not be committed");
            ctx.bus
                .emit(
                    Some(id),
                    Some(index),
                    Body::GitCommitFailed {
                        error: e.to_string(),
                    },
                )
                .await;
        }
    }
}

/// Checks the chain's backlog item off, if it has one: a file's change is folded into the
/// chain's last commit (so the item is ticked in the commit that finished it); with `forge`, an
/// issue is commented on (`summary`) and closed. Reported on the bus; never fails the chain.
pub async fn check_off(
    ctx: &Ctx,
    id: &str,
    s: &ChainSettings,
    ws: Option<&Workspace>,
    forge: bool,
    summary: &str,
) {
    let Some(item) = s.backlog_item.clone() else {
        return;
    };
    let is_forge = matches!(
        crate::backlog::Source::parse(&item.spec),
        Ok(crate::backlog::Source::GitHub { .. })
    );
    if is_forge != forge {
        return;
    }
    let base = ws
        .map(|w| w.workdir.clone())
        .unwrap_or_else(|| s.workdir.clone());
    let summary = summary.to_string();
    let it = item.clone();
    let done = tokio::task::spawn_blocking(move || crate::backlog::check_off(&it, &base, &summary))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let how = match done {
        Ok(crate::backlog::CheckedOff::Nothing) => return,
        Ok(crate::backlog::CheckedOff::Forge(how)) => Ok(how),
        Ok(crate::backlog::CheckedOff::Files(paths)) => match ws {
            Some(ws) => {
                let abs: Vec<std::path::PathBuf> =
                    paths.iter().map(|p| ws.workdir.join(p)).collect();
                let message = format!(
                    "operator: check off {}\n\nOperator-Chain: {id}\n",
                    git::summary(&item.title, 60)
                );
                match ws.fold_in(&abs, id, &message).await {
                    Ok(Some(sha)) => Ok(format!("ticked in {}", &sha[..sha.len().min(10)])),
                    Ok(None) => Ok("ticked (nothing to commit)".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Ok("ticked in the file (not a git repository)".into()),
        },
        Err(e) => Err(e),
    };
    let body = match how {
        Ok(how) => {
            tracing::info!(chain.id = id, item = %item.title, %how, "backlog item checked off");
            Body::BacklogCheckedOff {
                item: item.title,
                how,
            }
        }
        Err(error) => {
            tracing::warn!(chain.id = id, item = %item.title, %error, "the backlog item could not be checked off");
            Body::BacklogCheckOffFailed {
                item: item.title,
                error,
            }
        }
    };
    ctx.bus.emit(Some(id), None, body).await;
}

/// Whether a chain that ended so is pushed.
pub fn pushes(status: ChainStatus) -> bool {
    matches!(
        status,
        ChainStatus::Complete | ChainStatus::AssumedComplete | ChainStatus::MaxContinuations
    )
}

/// The body of a pull request: the chain's outcome, its sessions and its last handoff.
pub fn pr_body(chain: &crate::model::ChainRecord, last_handoff: Option<&str>) -> String {
    let mut b = format!(
        "Opened by operator for chain `{}` ({}).\n\n**Task:** {}\n\n**Outcome:** {} after {} session(s), {} turns, ${:.2}.\n\n| session | status | turns | cost |\n|---|---|---|---|\n",
        chain.name,
        chain.id,
        chain.task.trim(),
        chain.status,
        chain.totals.sessions,
        chain.totals.turns,
        chain.totals.cost_usd
    );
    for s in &chain.sessions {
        b.push_str(&format!(
            "| {} | {} | {} | ${:.2} |\n",
            s.index,
            s.status.as_str(),
            s.turns,
            s.cost_usd
        ));
    }
    if let Some(h) = last_handoff {
        b.push_str("\n### Last handoff\n\n");
        b.push_str(h.trim());
        b.push('\n');
    }
    b
}

/// At the chain's end: push (after a success or max-continuations, when asked and a remote
/// exists), open the pull request, and remove a clean worktree.
/// `landed`: its landing already pushed it (or put it on its target): no push, no pull request.
pub async fn finish(
    ctx: &Ctx,
    id: &str,
    s: &ChainSettings,
    ws: &Workspace,
    status: ChainStatus,
    landed: bool,
) {
    if (s.auto_push || s.opens_pr()) && pushes(status) && !landed {
        match ws.push().await {
            Ok(Push::Pushed { remote, branch }) => {
                tracing::info!(chain.id = id, %remote, %branch, "git: pushed");
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitPushed {
                            remote: remote.to_string(),
                            branch: branch.to_string(),
                        },
                    )
                    .await;
                if s.opens_pr()
                    && pull_request(ctx, id, ws, status).await.is_some()
                    && s.merge == crate::config::MergeMode::Auto
                {
                    auto_merge(ctx, id, s, ws).await;
                }
            }
            Ok(Push::Skipped(why)) => {
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitPushSkipped {
                            reason: why.to_string(),
                        },
                    )
                    .await;
            }
            Err(e) => {
                tracing::warn!(chain.id = id, cause = %e, "git: the push failed");
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitPushFailed {
                            error: e.to_string(),
                        },
                    )
                    .await;
            }
        }
    }
    if ws.worktree.is_some() && !s.keep_worktree && status != ChainStatus::Interrupted {
        let origin = s.workdir.canonicalize().unwrap_or(s.workdir.clone());
        match ws.remove_worktree(&origin).await {
            Ok(true) => {
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitWorktreeRemoved {
                            branch: ws.branch.clone(),
                        },
                    )
                    .await;
            }
            Ok(false) => {
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitWorktreeKept {
                            reason: "it has uncommitted changes".into(),
                            path: ws.worktree.as_ref().map(|p| p.display().to_string()),
                        },
                    )
                    .await;
            }
            Err(e) => {
                ctx.bus
                    .emit(
                        Some(id),
                        None,
                        Body::GitError {
                            error: e.to_string(),
                        },
                    )
                    .await;
            }
        }
    }
}

/// Without waiting for checks, `merge = "auto"` turns on the forge's auto-merge.
async fn auto_merge(ctx: &Ctx, id: &str, s: &ChainSettings, ws: &Workspace) {
    let body = match ws.pr_merge(s.merge_method, true).await {
        Ok(()) => Body::GitPrMerged {
            url: None,
            method: s.merge_method.flag().trim_start_matches('-').to_string(),
            auto: true,
        },
        Err(e) => Body::GitPrMergeFailed {
            error: e.to_string(),
        },
    };
    ctx.bus.emit(Some(id), None, body).await;
}

/// Opens the chain's pull request; its URL.
pub async fn pull_request(
    ctx: &Ctx,
    id: &str,
    ws: &Workspace,
    status: ChainStatus,
) -> Option<String> {
    let Ok(Some(mut chain)) = ctx.store.get_chain(id).await else {
        return None;
    };
    chain.status = status;
    let last = ctx.store.last_handoff(id).await.ok().flatten();
    let title = format!("operator: {}", git::summary(&chain.task, 60));
    let body = pr_body(&chain, last.as_ref().map(|h| h.text.as_str()));
    match ws.pull_request(&title, &body).await {
        Ok(Some(url)) => {
            ctx.bus
                .emit(
                    Some(id),
                    None,
                    Body::GitPrCreated {
                        url: url.to_string(),
                    },
                )
                .await;
            Some(url)
        }
        Ok(None) => {
            ctx.bus
                .emit(
                    Some(id),
                    None,
                    Body::GitPrSkipped {
                        reason: "`gh` is not installed".into(),
                    },
                )
                .await;
            None
        }
        Err(e) => {
            ctx.bus
                .emit(
                    Some(id),
                    None,
                    Body::GitPrFailed {
                        error: e.to_string(),
                    },
                )
                .await;
            None
        }
    }
}
