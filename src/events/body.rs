//! What each event says: one typed variant per kind. On the wire, in the journal, in webhooks and
//! on the WebSocket an event is still `{"kind": "chain:…", "data": {…}}` (serde's adjacent
//! tagging with the same names and camelCase fields), so nothing a client reads changed; inside,
//! listeners match on variants instead of reading `data["…"]` by key.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{ChainStatus, SessionRecord};
use crate::permissions::DeniedCall;

/// Declares [`Body`] with its kinds: each variant's wire name and fields, and [`Body::kind`].
macro_rules! bodies {
    ($(
        $(#[$doc:meta])*
        $name:ident = $kind:literal { $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)? }
    )*) => {
        /// What an event says.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "data")]
        pub enum Body {
            $(
                $(#[$doc])*
                #[serde(rename = $kind, rename_all = "camelCase")]
                $name { $( $(#[$fmeta])* $field: $ty ),* },
            )*
            /// An event of a kind this build does not know (an older or newer journal's).
            #[serde(skip)]
            Other { kind: String, data: Value },
        }

        impl Body {
            /// The event's kind on the wire (`chain:started`, …).
            pub fn kind(&self) -> &str {
                match self {
                    $( Body::$name { .. } => $kind, )*
                    Body::Other { kind, .. } => kind,
                }
            }
        }
    };
}

bodies! {
    /// A chain started (or started again after a restart or a resume at `resumed_at`).
    Started = "chain:started" { resumed_at: Option<u32> }
    /// A session was recorded as running and its agent is starting; `max`: the run's last index.
    SessionStarted = "chain:session-started" { max: u32 }
    /// A session was recorded with its handoff.
    SessionComplete = "chain:session-complete" { session: SessionRecord, transcript_truncated: bool }
    /// A transient failure: the same session runs again after `delay_ms`.
    SessionRetry = "chain:session-retry" { attempt: u32, delay_ms: u64, error: Option<String> }
    /// The chain waits until `until` (a usage limit; `account`: the account's quota holds it).
    Waiting = "chain:waiting" {
        until: String,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<bool>,
    }
    /// The chain's sessions run on another agent from now on (fallback agents at a usage limit).
    AgentSwitched = "chain:agent-switched" { agent: String, from: String, reason: String }
    /// The chain holds for the operator's pause.
    Paused = "chain:paused" {}
    /// The pause ended.
    Resumed = "chain:resumed" {}
    /// The chain has spent 80 % of its budget.
    BudgetWarning = "chain:budget-warning" { spent_usd: f64, budget_usd: f64 }
    /// A COMPLETE was not believed: the same handoff, nothing changed.
    StaleComplete = "chain:stale-complete" { measured: String }
    /// What a completed session changed.
    Progress = "chain:progress" {
        tree_changed: bool,
        remaining_changed: bool,
        gates_changed: bool,
        measured: String,
        sessions_without: u32,
    }
    /// The verify gates ran (`results`: each gate's command, exit, output tail).
    Verify = "chain:verify" { passed: bool, results: Value }
    /// The half-open breaker's probe succeeded.
    BreakerClosed = "chain:breaker-closed" {}
    /// The breaker opened with a cool-down: one probe session at `until`.
    BreakerHalfOpen = "chain:breaker-half-open" { until: String, failures: u32 }
    /// The permission policy denied tool calls in the session.
    PermissionsDenied = "chain:permissions-denied" { count: usize, calls: Vec<DeniedCall> }
    /// A tool call is held for a person.
    ApprovalRequested = "chain:approval-requested" {
        approval_id: String,
        tool: String,
        input: String,
        rule: String,
        deadline: String,
        url: String,
    }
    /// A held tool call was settled (`status`: approved, denied, expired, cancelled).
    ApprovalAnswered = "chain:approval-answered" {
        approval_id: String,
        tool: String,
        input: String,
        status: String,
        by: String,
    }
    /// A chain restarted its crashed Cost or Handoff actor.
    ChildRestarted = "chain:child-restarted" { child: String }
    /// The Operator restarted a crashed chain.
    Restarted = "chain:restarted" { child: String, cause: String }
    /// The chain ended complete, assumed-complete or at max-continuations.
    Complete = "chain:complete" { status: ChainStatus, reason: Option<String> }
    /// The chain ended with another status than the others say.
    Error = "chain:error" { status: ChainStatus, reason: Option<String> }
    /// The chain was aborted.
    Aborted = "chain:aborted" { status: ChainStatus, reason: Option<String> }
    /// The operator stopped and left the chain resumable.
    Interrupted = "chain:interrupted" { status: ChainStatus, reason: Option<String> }
    /// What the running agent does (live only, throttled).
    Output = "session:output" { text: String, turns: u32 }
    /// The permission policy decided a tool call.
    Permission = "session:permission" { tool: String, input: String, decision: String, rule: String }
    /// A git step failed; the chain goes on without it.
    GitError = "git:error" { error: String }
    GitWorktree = "git:worktree" { path: String, branch: Option<String> }
    GitBranch = "git:branch" { branch: String }
    /// The working tree had uncommitted changes at the chain's start.
    GitDirty = "git:dirty" { files: usize, sample: Vec<String>, refused: bool }
    GitCommitted = "git:committed" { sha: String, files: usize, branch: Option<String> }
    GitCommitFailed = "git:commit-failed" { error: String }
    GitPushed = "git:pushed" { remote: String, branch: String }
    GitPushSkipped = "git:push-skipped" { reason: String }
    GitPushFailed = "git:push-failed" { error: String }
    GitWorktreeRemoved = "git:worktree-removed" { branch: Option<String> }
    GitWorktreeKept = "git:worktree-kept" { reason: String, path: Option<String> }
    GitPrCreated = "git:pr-created" { url: String }
    GitPrSkipped = "git:pr-skipped" { reason: String }
    GitPrFailed = "git:pr-failed" { error: String }
    /// The chain is complete; the operator waits for its pull request's checks.
    ChecksWaiting = "git:checks-waiting" { url: Option<String>, timeout_s: u64 }
    /// Checks of the pull request failed: the next session carries them.
    ChecksFailed = "git:checks-failed" { failed: Vec<String> }
    ChecksPassed = "git:checks-passed" { checks: u32 }
    /// The pull request was merged (`auto`: the forge's auto-merge was turned on).
    GitPrMerged = "git:pr-merged" { url: Option<String>, method: String, auto: bool }
    GitPrMergeFailed = "git:pr-merge-failed" { error: String }
    /// The chain's backlog item was checked off (`how`: the commit, or the forge's issue).
    BacklogCheckedOff = "chain:backlog-checked-off" { item: String, how: String }
    BacklogCheckOffFailed = "chain:backlog-check-off-failed" { item: String, error: String }
    /// The chain's branch joined the merge queue of its repository.
    MergeQueued = "merge:queued" { branch: String, target: String }
    /// The branch was rebased, verified and fast-forwarded onto the target.
    MergeLanded = "merge:landed" { branch: String, target: String, sha: String }
    /// The branch went back to its chain: a conflict or a failing gate on the rebased result.
    MergeEvicted = "merge:evicted" { reason: String, files: Vec<String>, evictions: u32 }
    /// A mission's chains were queued.
    MissionStarted = "orchestrator:mission-started" { mission: String, chains: Vec<String> }
    /// The operator is stopping.
    Stopping = "orchestrator:stopping" {}
    /// The operator paused (`now`: running sessions are interrupted).
    OperatorPaused = "orchestrator:paused" { now: bool }
    OperatorResumed = "orchestrator:resumed" {}
    /// A reload changed `chains` chains and added `added`.
    Reloaded = "orchestrator:reloaded" { chains: usize, added: usize }
    ReloadFailed = "orchestrator:reload-failed" { error: String }
    /// A write was accepted through the API (`action`, e.g. `abort_chain`; `origin`: `api`,
    /// `dashboard` or `mcp`).
    Request = "operator:request" { action: String, origin: String }
    /// A person answered a held call through the API (`origin`: who).
    Approval = "operator:approval" { approval_id: String, status: String, origin: String }
    /// A webhook was delivered.
    NotifyDelivered = "notify:delivered" { url: String, event: String, attempts: u32, status: u16 }
    /// A webhook could not be delivered.
    NotifyFailed = "notify:failed" { url: String, event: String, attempts: u32, error: String }
}

impl Body {
    /// The event that announces a chain's end with `status`.
    pub fn ended(status: ChainStatus, reason: Option<String>) -> Self {
        match status {
            ChainStatus::Complete
            | ChainStatus::AssumedComplete
            | ChainStatus::MaxContinuations => Body::Complete { status, reason },
            ChainStatus::Aborted => Body::Aborted { status, reason },
            ChainStatus::Interrupted => Body::Interrupted { status, reason },
            _ => Body::Error { status, reason },
        }
    }

    /// A chain's end: its status and why.
    pub fn ending(&self) -> Option<(ChainStatus, Option<&str>)> {
        match self {
            Body::Complete { status, reason }
            | Body::Error { status, reason }
            | Body::Aborted { status, reason }
            | Body::Interrupted { status, reason } => Some((*status, reason.as_deref())),
            _ => None,
        }
    }

    /// The event's data as on the wire.
    pub fn data(&self) -> Value {
        if let Body::Other { data, .. } = self {
            return data.clone();
        }
        match serde_json::to_value(self) {
            Ok(Value::Object(mut o)) => o.remove("data").unwrap_or_else(|| json!({})),
            _ => json!({}),
        }
    }

    /// The typed form of a journaled event (`Other` when this build does not know its kind or
    /// its data does not fit).
    pub fn from_parts(kind: &str, data: Value) -> Self {
        serde_json::from_value(json!({"kind": kind, "data": &data})).unwrap_or(Body::Other {
            kind: kind.to_string(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_keeps_its_wire_form() {
        let cases = [
            (
                Body::Started { resumed_at: None },
                json!({"resumedAt": null}),
            ),
            (
                Body::SessionRetry {
                    attempt: 2,
                    delay_ms: 4000,
                    error: Some("overloaded".into()),
                },
                json!({"attempt": 2, "delayMs": 4000, "error": "overloaded"}),
            ),
            (
                Body::Waiting {
                    until: "2026-12-02T20:00:00Z".into(),
                    reason: None,
                    account: None,
                },
                json!({"until": "2026-12-02T20:00:00Z", "reason": null}),
            ),
            (
                Body::Waiting {
                    until: "t".into(),
                    reason: Some("caps".into()),
                    account: Some(true),
                },
                json!({"until": "t", "reason": "caps", "account": true}),
            ),
            (Body::Paused {}, json!({})),
            (
                Body::ended(ChainStatus::MaxContinuations, None),
                json!({"status": "max-continuations", "reason": null}),
            ),
        ];
        for (body, data) in cases {
            assert_eq!(body.data(), data, "{}", body.kind());
            assert_eq!(Body::from_parts(body.kind(), data), body);
        }
        assert_eq!(Body::ended(ChainStatus::Failed, None).kind(), "chain:error");
    }

    #[test]
    fn unknown_kinds_and_data_that_does_not_fit_are_kept_as_they_are() {
        let b = Body::from_parts("chain:something-new", json!({"x": 1}));
        assert_eq!(b.kind(), "chain:something-new");
        assert_eq!(b.data(), json!({"x": 1}));
        let b = Body::from_parts("chain:session-started", json!({"max": "many"}));
        assert!(matches!(b, Body::Other { .. }));
        assert_eq!(b.data(), json!({"max": "many"}));
    }
}
