//! Every setting the files take: its key, one line on what it does, and an example for those unset
//! by default. One list feeds validation (known keys), `operator init`'s commented files, the
//! flags' help and `operator config`.

/// One key of `operator.toml` (top level) or of a chain's settings (`[defaults]`, `[[chain]]`).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    /// What it does, one line.
    pub about: &'static str,
    /// A value to show (as TOML) when the setting has no built-in value.
    pub example: Option<&'static str>,
}

const fn s(key: &'static str, about: &'static str) -> Setting {
    Setting {
        key,
        about,
        example: None,
    }
}

const fn e(key: &'static str, about: &'static str, example: &'static str) -> Setting {
    Setting {
        key,
        about,
        example: Some(example),
    }
}

/// Operator-wide keys: the top level of `operator.toml`.
pub const OPERATOR: [Setting; 20] = [
    s(
        "data_dir",
        "Where the store, the chain folders and the pid file live",
    ),
    s(
        "shutdown_grace",
        "How long running sessions get to stop on SIGINT/SIGTERM",
    ),
    e(
        "claude_bin",
        "The Claude Code CLI (unset: `claude` on PATH)",
        "\"/usr/local/bin/claude\"",
    ),
    e(
        "codex_bin",
        "The Codex CLI (unset: `codex` on PATH)",
        "\"/usr/local/bin/codex\"",
    ),
    e(
        "gemini_bin",
        "The Gemini CLI (unset: `gemini` on PATH)",
        "\"/usr/local/bin/gemini\"",
    ),
    e(
        "notify_webhook",
        "POST a JSON summary here when a chain ends",
        "\"https://example.invalid/hook\"",
    ),
    e(
        "notify_secret",
        "Signs webhook bodies (X-Operator-Signature); never logged",
        "\"a-long-random-secret\"",
    ),
    s(
        "notify_format",
        "The webhook's body: json, slack or discord",
    ),
    s(
        "notify_on",
        "What the webhook hears about: end, failure, waiting, budget, approval",
    ),
    s("notify_timeout", "How long one webhook delivery may take"),
    e(
        "daily_cap_usd",
        "Spending across all chains per UTC day",
        "20.0",
    ),
    e(
        "pricing",
        "Dollars per million tokens by model fragment, over the built-in prices",
        "{ opus = { input = 15.0, output = 75.0, cache_write = 18.75, cache_read = 1.5 } }",
    ),
    e(
        "max_sessions_per_hour",
        "Sessions started per rolling hour, per agent account",
        "20",
    ),
    e(
        "max_concurrent_sessions",
        "Sessions running at once, per agent account",
        "4",
    ),
    e(
        "quiet_hours",
        "A daily window (UTC) in which no session starts",
        "\"22:00-06:00\"",
    ),
    s(
        "release_jitter",
        "Chains released after a usage limit start spread over this long",
    ),
    s(
        "listen",
        "Where `serve` and `run --serve` listen; off loopback needs a token",
    ),
    e(
        "store_url",
        "A PostgreSQL store shared by a fleet (unset: SQLite in data_dir)",
        "\"postgres://operator:password@db.lan:5432/operator\"",
    ),
    e(
        "api_token",
        "The API token (else <data_dir>/api-token); never logged",
        "\"at-least-16-characters\"",
    ),
    s(
        "allowed_hosts",
        "Host names the API answers to besides IP literals and localhost",
    ),
];

/// A chain's keys: `[defaults]` of `operator.toml` or of a mission, and `[[chain]]` entries.
pub const CHAIN: [Setting; 44] = [
    s("agent", "The agent CLI: claude, codex, gemini or sim"),
    s("model", "The model the agent is asked to use"),
    s("max_turns", "Turns per session"),
    s(
        "max_continuations",
        "Sessions after the first, per run (at most 1 + this many)",
    ),
    s(
        "max_budget_usd",
        "Budget of the chain in dollars; no session starts that would cross it",
    ),
    e(
        "max_session_cost_usd",
        "A session whose live cost crosses this is interrupted for its handoff",
        "2.0",
    ),
    s("workdir", "Where the agent works"),
    s(
        "permission_mode",
        "default, acceptEdits, plan, dontAsk or bypassPermissions",
    ),
    e(
        "permissions",
        "Tool rules over the safe default policy: allow, deny, ask lists",
        "{ allow = [\"Bash(cargo test:*)\"], deny = [\"Bash(git push:*)\"], ask = [] }",
    ),
    s(
        "approval_timeout",
        "A tool call held for a person is denied after this long",
    ),
    s(
        "breaker_threshold",
        "Failed sessions in a row that end the chain (circuit breaker)",
    ),
    e(
        "breaker_cooldown",
        "After the breaker opens, wait this long and try one session",
        "\"30m\"",
    ),
    s(
        "continuation",
        "fresh: a new agent session each time; resume: continue the agent's own",
    ),
    s(
        "idle_timeout",
        "A session silent for this long is stopped and retried",
    ),
    s(
        "session_timeout",
        "A session running longer than this is stopped and retried",
    ),
    s(
        "max_attempts",
        "Attempts per session before it counts as failed",
    ),
    s("retry_backoff", "Pauses before the 2nd, 3rd, … attempt"),
    s(
        "usage_limit_margin",
        "Added to a usage limit's reset time before trying again",
    ),
    s(
        "usage_limit_fallback",
        "The wait after a usage limit that names no reset time",
    ),
    s(
        "no_wait",
        "At a usage limit, end as waiting-limit instead of waiting",
    ),
    e(
        "fallback_agents",
        "Agents that take over while this one's account is held by a limit",
        "[\"codex\"]",
    ),
    s(
        "prefer_primary",
        "Go back to the chain's own agent once its limit has reset",
    ),
    s(
        "verify",
        "Commands that must pass before a COMPLETE is believed",
    ),
    s("verify_timeout", "How long one verify command may run"),
    s(
        "no_progress_sessions",
        "Sessions in a row without progress that stop the chain (0: off)",
    ),
    s(
        "auto_commit",
        "Commit after each session that changed the tree (in a git repository)",
    ),
    e(
        "commit_author",
        "`Name <email>` of the commits (unset: the repository's identity)",
        "\"Operator <operator@example.invalid>\"",
    ),
    s("exclude", "Paths never committed (git pathspec globs)"),
    s(
        "dirty_start",
        "Uncommitted changes at the start: continue or refuse",
    ),
    s(
        "branch",
        "Work on a branch of its own, named after the task",
    ),
    s(
        "auto_push",
        "Push when the chain ends well, when a remote exists",
    ),
    s(
        "pull_request",
        "Open a pull request with `gh` after the push (implies branch)",
    ),
    s(
        "worktree",
        "A git worktree per chain: auto, always or never",
    ),
    s("keep_worktree", "Keep the chain's worktree after it ends"),
    s(
        "wait_for_checks",
        "Wait for the pull request's checks; a failing one runs another session",
    ),
    s("checks_timeout", "How long the checks may take"),
    s(
        "checks_poll",
        "The first pause between looks at the checks (doubles)",
    ),
    s("merge", "Merge the pull request when green: off or auto"),
    s("merge_method", "How to merge: squash, merge or rebase"),
    s(
        "merge_queue",
        "Land worktree chains through a local merge queue",
    ),
    e(
        "merge_target",
        "The branch the merge queue lands on (unset: the checked-out one)",
        "\"main\"",
    ),
    s(
        "max_evictions",
        "Evictions from the merge queue before `merge-failed`",
    ),
    e(
        "webhooks",
        "This chain's webhooks besides notify_webhook",
        "[{ url = \"https://example.invalid/hook\", format = \"json\", on = [\"end\"] }]",
    ),
    s(
        "sim",
        "The simulated agent's script (agent = \"sim\": demos and tests)",
    ),
];

/// The keys of a list of settings, for validation.
pub const fn keys<const N: usize>(settings: &[Setting; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = settings[i].key;
        i += 1;
    }
    out
}

/// A chain or operator setting by key.
pub fn find(key: &str) -> Option<&'static Setting> {
    OPERATOR.iter().chain(CHAIN.iter()).find(|s| s.key == key)
}

/// The `OPERATOR_*` variable of a key (`sim.step` → `OPERATOR_SIM__STEP`).
pub fn env_var(key: &str) -> String {
    format!("OPERATOR_{}", key.replace('.', "__").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_listed_once_and_said_in_one_short_line() {
        let mut seen = std::collections::HashSet::new();
        for s in OPERATOR.iter().chain(CHAIN.iter()) {
            assert!(seen.insert(s.key), "{} twice", s.key);
            assert!(!s.about.is_empty() && s.about.len() <= 80, "{}", s.key);
            assert!(!s.about.contains('\n'), "{}", s.key);
        }
    }

    #[test]
    fn env_var_names_follow_the_nesting_convention() {
        assert_eq!(env_var("max_turns"), "OPERATOR_MAX_TURNS");
        assert_eq!(env_var("sim.step"), "OPERATOR_SIM__STEP");
    }
}
