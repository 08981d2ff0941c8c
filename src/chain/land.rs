//! A COMPLETE that lands before the chain is complete: the pull request's checks waited for (a
//! failing one goes back to the chain with its log tail), or the branch through its repository's
//! merge queue (rebased onto the target, verified, fast-forwarded, one branch at a time; a
//! conflict or a failing gate evicts it back to the chain). Runs in a task of its own and answers
//! the chain with [`ChainMsg::Landed`]; what it was doing is in the store (a flag per chain), so
//! a chain restarted in the middle lands again, and nothing lands twice (a branch already on its
//! target is done).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use super::Ctx;
use super::machine::Landed;
use super::{gates, vcs};
use crate::config::{ChainSettings, MergeMode};
use crate::events::Body;
use crate::git::forge::{self, Verdict};
use crate::git::land::{self as git_land, Rebase};
use crate::git::{Push, Workspace};
use crate::model::ChainStatus;

/// The longest pause between two looks at the checks.
const MAX_POLL: Duration = Duration::from_secs(300);
/// Tries when another operator keeps moving the target between our rebase and our fast-forward.
const RACES: u32 = 5;

/// How a chain lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Checks,
    Queue,
}

impl Way {
    pub fn as_str(self) -> &'static str {
        match self {
            Way::Checks => "checks",
            Way::Queue => "queue",
        }
    }

    pub fn status(self) -> ChainStatus {
        match self {
            Way::Checks => ChainStatus::AwaitingChecks,
            Way::Queue => ChainStatus::Merging,
        }
    }

    /// How a chain with these settings and this workspace lands; `None`: it is complete at once.
    pub fn of(s: &ChainSettings, ws: &Workspace) -> Option<Way> {
        if s.merge_queue && ws.worktree.is_some() && ws.branch.is_some() {
            Some(Way::Queue)
        } else if s.wait_for_checks && ws.branch.is_some() {
            Some(Way::Checks)
        } else {
            None
        }
    }
}

/// The store's flag saying a chain is landing (its value: the way).
pub fn landing_flag(chain: &str) -> String {
    format!("landing:{chain}")
}

/// The store's flag counting a chain's evictions from the merge queue.
pub fn evictions_flag(chain: &str) -> String {
    format!("evictions:{chain}")
}

/// Everything a landing needs, owned (it runs in its own task).
pub struct Job {
    pub ctx: Ctx,
    pub id: String,
    pub index: u32,
    pub settings: ChainSettings,
    pub ws: Workspace,
}

impl Job {
    async fn emit(&self, body: Body) {
        self.ctx.bus.emit(Some(&self.id), None, body).await;
    }

    async fn status(&self, status: ChainStatus, reason: &str) {
        let pid = Some(std::process::id());
        if let Err(e) = self
            .ctx
            .store
            .set_chain_status(&self.id, status, Some(reason), pid)
            .await
        {
            tracing::warn!(chain.id = %self.id, cause = %e, "could not record the landing's status");
        }
    }

    /// The repository's main tree (where the target branch is checked out).
    fn origin(&self) -> PathBuf {
        self.settings
            .workdir
            .canonicalize()
            .unwrap_or(self.settings.workdir.clone())
    }
}

/// Lands the chain's COMPLETE.
pub async fn run(job: Job, way: Way) -> Landed {
    match way {
        Way::Checks => checks(&job).await,
        Way::Queue => queue(&job).await,
    }
}

/// Pushes, finds or opens the pull request, and waits for its checks.
async fn checks(j: &Job) -> Landed {
    // The item is ticked in the branch the pull request merges.
    vcs::check_off(&j.ctx, &j.id, &j.settings, Some(&j.ws), false, "").await;
    match j.ws.push().await {
        Ok(Push::Pushed { remote, branch }) => {
            j.emit(Body::GitPushed { remote, branch }).await;
        }
        Ok(Push::Skipped(reason)) => {
            j.emit(Body::GitPushSkipped {
                reason: reason.clone(),
            })
            .await;
            return Landed::Done(Some(format!(
                "no checks to wait for: the push was skipped ({reason})"
            )));
        }
        Err(e) => {
            j.emit(Body::GitPushFailed {
                error: e.to_string(),
            })
            .await;
            return Landed::Failed(
                ChainStatus::ChecksTimeout,
                format!("the branch could not be pushed, so no checks ran: {e}"),
            );
        }
    }
    let url = match j.ws.pr_url().await {
        Ok(Some(url)) => Some(url),
        _ => vcs::pull_request(&j.ctx, &j.id, &j.ws, ChainStatus::Complete).await,
    };
    let Some(url) = url else {
        return Landed::Done(Some(
            "no pull request (see the chain's git:pr-* event), so no checks to wait for".into(),
        ));
    };
    let timeout = j.settings.checks_timeout;
    j.emit(Body::ChecksWaiting {
        url: Some(url.clone()),
        timeout_s: timeout.as_secs(),
    })
    .await;
    j.status(ChainStatus::AwaitingChecks, &format!("checks of {url}"))
        .await;
    let deadline = Instant::now() + timeout;
    let mut pause = j.settings.checks_poll;
    loop {
        let last = match j.ws.pr_checks().await {
            Ok(checks) => match forge::judge(&checks) {
                Verdict::Failed(failed) => return checks_failed(j, &url, failed).await,
                Verdict::Passed(n) => {
                    j.emit(Body::ChecksPassed { checks: n }).await;
                    return merge(j, url).await;
                }
                Verdict::Pending(names) => format!("still running: {}", names.join(", ")),
                Verdict::NoneYet => "no checks were reported".into(),
            },
            Err(e) => {
                tracing::warn!(chain.id = %j.id, cause = %e, "could not read the pull request's checks; trying again");
                format!("the checks could not be read: {e}")
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Landed::Failed(
                ChainStatus::ChecksTimeout,
                format!(
                    "the checks of {url} did not finish within {} ({last}); `operator run --resume` waits again",
                    humantime::format_duration(timeout)
                ),
            );
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

async fn checks_failed(j: &Job, url: &str, failed: Vec<forge::Check>) -> Landed {
    let mut with_logs = Vec::with_capacity(failed.len());
    for c in failed {
        let log = match forge::run_id(&c.link) {
            Some(run) => j.ws.failed_log(run).await,
            None => None,
        };
        with_logs.push((c, log));
    }
    j.emit(Body::ChecksFailed {
        failed: with_logs.iter().map(|(c, _)| c.name.clone()).collect(),
    })
    .await;
    Landed::Again {
        note: forge::failure_note(Some(url), &with_logs),
        counted: true,
    }
}

/// Green: merged when asked (or the forge's auto-merge turned on when a merge is refused).
async fn merge(j: &Job, url: String) -> Landed {
    if j.settings.merge != MergeMode::Auto {
        return Landed::Done(Some(url));
    }
    let method = j.settings.merge_method;
    let name = method.flag().trim_start_matches('-').to_string();
    match j.ws.pr_merge(method, false).await {
        Ok(()) => {
            j.emit(Body::GitPrMerged {
                url: Some(url.clone()),
                method: name,
                auto: false,
            })
            .await;
            Landed::Done(Some(format!("{url} merged")))
        }
        Err(first) => match j.ws.pr_merge(method, true).await {
            Ok(()) => {
                j.emit(Body::GitPrMerged {
                    url: Some(url.clone()),
                    method: name,
                    auto: true,
                })
                .await;
                Landed::Done(Some(format!("{url}: auto-merge is on ({first})")))
            }
            Err(e) => {
                j.emit(Body::GitPrMergeFailed {
                    error: e.to_string(),
                })
                .await;
                Landed::Done(Some(format!(
                    "{url}: the checks passed; it could not be merged: {e}"
                )))
            }
        },
    }
}

/// Each repository's queue: one landing at a time in this process (tokio's mutex is fair, so
/// branches land in the order they were queued). Between processes the target moves by
/// compare-and-swap, so two operators on one repository never lose a landing.
fn queue_of(repo: &std::path::Path) -> Arc<tokio::sync::Mutex<()>> {
    static QUEUES: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut all = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    all.entry(repo.to_path_buf()).or_default().clone()
}

async fn queue(j: &Job) -> Landed {
    let origin = j.origin();
    let Some(branch) = j.ws.branch.clone() else {
        return Landed::Done(None);
    };
    let target = match &j.settings.merge_target {
        Some(t) => t.clone(),
        None => match git_land::checked_out(&origin).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Landed::Failed(
                    ChainStatus::MergeFailed,
                    format!(
                        "{} has no branch checked out and `merge_target` is unset: set it to the branch to land on, then `operator run --resume`; the branch {branch} is kept",
                        origin.display()
                    ),
                );
            }
            Err(e) => return Landed::Failed(ChainStatus::MergeFailed, e.to_string()),
        },
    };
    if target == branch {
        return Landed::Done(None);
    }
    j.emit(Body::MergeQueued {
        branch: branch.clone(),
        target: target.clone(),
    })
    .await;
    let since = crate::model::now_rfc3339();
    j.status(
        ChainStatus::Merging,
        &format!("queued to land on {target} since {since}"),
    )
    .await;
    // One queue per repository, whichever of its folders or worktrees a chain names.
    let key = git_land::common_dir(&j.ws.repo)
        .await
        .unwrap_or_else(|_| origin.clone());
    let lock = queue_of(&key);
    let _turn = lock.lock().await;
    j.status(ChainStatus::Merging, &format!("landing on {target}"))
        .await;
    for _ in 0..RACES {
        match land_once(j, &origin, &branch, &target).await {
            Ok(Some(l)) => return l,
            Ok(None) => continue,
            Err(e) => {
                return Landed::Failed(
                    ChainStatus::MergeFailed,
                    format!("{e}; the branch {branch} is kept"),
                );
            }
        }
    }
    Landed::Failed(
        ChainStatus::MergeFailed,
        format!("{target} kept moving while {branch} was landing; the branch is kept"),
    )
}

/// One try: `None` when the target moved under us (try again).
async fn land_once(
    j: &Job,
    origin: &std::path::Path,
    branch: &str,
    target: &str,
) -> Result<Option<Landed>, crate::git::GitError> {
    let Some(old) = git_land::rev(origin, target).await? else {
        return Ok(Some(Landed::Failed(
            ChainStatus::MergeFailed,
            format!("the target branch {target} does not exist; the branch {branch} is kept"),
        )));
    };
    // A rebase its previous life left half done (a kill -9) is undone first.
    j.ws.abort_rebase().await;
    let head = j.ws.head().await?;
    if !git_land::is_ancestor(origin, &old, &head).await?
        && let Rebase::Conflict { files, excerpt } = j.ws.rebase(target).await?
    {
        j.ws.leave_merge(target).await?;
        let note = conflict_note(branch, target, &files, &excerpt);
        let reason = format!("conflict with {target} in {}", files.join(", "));
        return Ok(Some(evict(j, reason, files, note).await));
    }
    // The item is ticked in the commit that lands (on the rebased branch: no conflict with
    // the items other branches ticked); a branch with nothing new gets a commit for it.
    vcs::check_off(&j.ctx, &j.id, &j.settings, Some(&j.ws), false, "").await;
    let head = j.ws.head().await?;
    if git_land::is_ancestor(origin, &head, &old).await? {
        // Nothing lands twice: a branch that landed before a restart is found here.
        return Ok(Some(Landed::Done(Some(format!("already on {target}")))));
    }
    let leftover = j.ws.leftover_markers(&old).await?;
    if !leftover.is_empty() {
        let note = format!(
            "The chain is not complete yet: its branch `{branch}` still holds conflict markers (`<<<<<<<`, `=======`, `>>>>>>>`) in: {}. Resolve each conflict, remove every marker, then write your handoff (COMPLETE when done); the operator queues the branch again.",
            leftover.join(", ")
        );
        let reason = format!("conflict markers left in {}", leftover.join(", "));
        return Ok(Some(evict(j, reason, leftover, note).await));
    }
    let mut failed = Vec::new();
    for cmd in &j.settings.verify {
        let r = gates::run_gate(cmd, &j.ws.workdir, j.settings.verify_timeout, j.index).await;
        if !r.passed {
            failed.push(r);
        }
    }
    if !failed.is_empty() {
        let refs: Vec<&gates::GateResult> = failed.iter().collect();
        let note = format!(
            "In the merge queue your branch `{branch}` was rebased onto `{target}` (other work had landed there), and on the rebased result the verify commands failed. {}",
            gates::failure_note(&refs)
        );
        let names: Vec<String> = failed.iter().map(|g| g.command.clone()).collect();
        let reason = format!("verify failed on the rebased branch: {}", names.join(", "));
        return Ok(Some(evict(j, reason, Vec::new(), note).await));
    }
    let head = j.ws.head().await?;
    if !git_land::fast_forward(origin, target, &head, &old).await? {
        tracing::info!(chain.id = %j.id, %target, "the target moved while the branch was landing; again");
        return Ok(None);
    }
    tracing::info!(chain.id = %j.id, %target, sha = %head, "landed");
    j.emit(Body::MergeLanded {
        branch: branch.to_string(),
        target: target.to_string(),
        sha: head.clone(),
    })
    .await;
    if j.settings.auto_push {
        match git_land::push_branch(origin, target).await {
            Ok(Push::Pushed { remote, branch }) => j.emit(Body::GitPushed { remote, branch }).await,
            Ok(Push::Skipped(reason)) => j.emit(Body::GitPushSkipped { reason }).await,
            Err(e) => {
                j.emit(Body::GitPushFailed {
                    error: e.to_string(),
                })
                .await
            }
        }
    }
    let short = &head[..head.len().min(10)];
    Ok(Some(Landed::Done(Some(format!(
        "landed on {target} at {short}"
    )))))
}

/// Back to the chain with `note`, or `merge-failed` past `max_evictions`.
async fn evict(j: &Job, reason: String, files: Vec<String>, note: String) -> Landed {
    let key = evictions_flag(&j.id);
    let before = match j.ctx.store.get_flag(&key).await {
        Ok(v) => v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
        Err(e) => return Landed::Failed(ChainStatus::MergeFailed, e.to_string()),
    };
    let n = before + 1;
    if n > j.settings.max_evictions {
        return Landed::Failed(
            ChainStatus::MergeFailed,
            format!(
                "evicted from the merge queue {before} time(s) (max_evictions), and again: {reason}; the branch {} is kept",
                j.ws.branch.as_deref().unwrap_or("")
            ),
        );
    }
    if let Err(e) = j.ctx.store.set_flag(&key, Some(&n.to_string())).await {
        return Landed::Failed(ChainStatus::MergeFailed, e.to_string());
    }
    tracing::warn!(chain.id = %j.id, evictions = n, %reason, "evicted from the merge queue");
    j.emit(Body::MergeEvicted {
        reason,
        files,
        evictions: n,
    })
    .await;
    Landed::Again {
        note,
        counted: false,
    }
}

/// What the next session is told about a conflict with the target.
pub fn conflict_note(branch: &str, target: &str, files: &[String], excerpt: &str) -> String {
    let mut n = format!(
        "The chain is not complete yet: in the merge queue your branch `{branch}` could not be rebased onto `{target}`: other work landed on `{target}` and conflicts with yours in:\n"
    );
    for f in files {
        n.push_str(&format!("- {f}\n"));
    }
    n.push_str(&format!(
        "\nThe operator has started merging `{target}` into your branch; these files now hold the conflict markers:\n```\n{}\n```\n",
        excerpt.trim_end()
    ));
    n.push_str("Resolve each conflict so that both changes still do what they were for, remove every marker, check the work still does what the task asks, then write your handoff (COMPLETE when done). The operator commits the merge and queues the branch again.");
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_note_names_the_files_and_quotes_the_markers() {
        let n = conflict_note(
            "operator/a-1",
            "main",
            &["src/lib.rs".into()],
            "src/lib.rs:\n<<<<<<< HEAD\nx\n=======\ny\n>>>>>>> main\n",
        );
        assert!(n.contains("could not be rebased onto `main`"));
        assert!(n.contains("- src/lib.rs\n"));
        assert!(n.contains("<<<<<<< HEAD\nx\n=======\ny\n>>>>>>> main\n```"));
    }
}
