//! What the commands print: `list`, `show`, `status`, `costs`, the summary after a run, the dry-run
//! plan, and the exit code a run's outcome maps to.

#[allow(unused_imports)]
use super::*;

pub(super) async fn costs(op: &config::OperatorSettings, json: bool, limit: u32) -> Result<u8> {
    let store = open_store(op).await?;
    let mut r = store.cost_report(limit.clamp(1, 500)).await?;
    r.daily_cap_usd = op.daily_cap_usd;
    if json {
        say!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(exit::OK);
    }
    let line =
        |l: &crate::store::CostLine| format!("${:>9.4} {:>6} sessions", l.cost_usd, l.sessions);
    say!("spent");
    say!("  today (UTC)   {}", line(&r.today));
    say!("  last 7 days   {}", line(&r.week));
    say!("  all time      {}", line(&r.all_time));
    say!("per model");
    for m in &r.by_model {
        say!("  {:<13} {}", truncate(&m.model, 13), line(&m.cost));
    }
    say!("per mission");
    for m in &r.by_mission {
        let name = if m.model.is_empty() {
            "(tasks)"
        } else {
            m.model.as_str()
        };
        say!("  {:<13} {}", truncate(name, 13), line(&m.cost));
    }
    say!("per chain (most expensive first)");
    for c in &r.by_chain {
        say!(
            "  {} {:<14} {:<17} {}",
            c.chain_id,
            truncate(&c.name, 14),
            c.status.as_str(),
            line(&c.cost)
        );
    }
    say!("forecast");
    for l in r.forecast(op.daily_cap_usd) {
        say!("  {l}");
    }
    Ok(exit::OK)
}

/// The exit status of a run: the most serious outcome decides.
pub fn exit_code(chains: &[ChainRecord]) -> u8 {
    let has = |st: ChainStatus| chains.iter().any(|c| c.status == st);
    if chains.iter().any(|c| {
        matches!(
            c.status,
            ChainStatus::Interrupted
                | ChainStatus::Paused
                | ChainStatus::Running
                | ChainStatus::Queued
                | ChainStatus::Waiting
                | ChainStatus::AwaitingApproval
                | ChainStatus::AwaitingChecks
                | ChainStatus::Merging
        )
    }) {
        exit::INTERRUPTED
    } else if chains.iter().any(|c| {
        c.status == ChainStatus::Failed
            && c.reason.as_deref().is_some_and(|r| {
                r.strip_prefix("fatal: ")
                    .is_some_and(|r| r.starts_with(crate::chain::policy::CREDENTIALS))
            })
    }) {
        exit::CREDENTIALS
    } else if has(ChainStatus::Failed)
        || has(ChainStatus::MergeFailed)
        || has(ChainStatus::ChecksTimeout)
    {
        exit::FAILED
    } else if has(ChainStatus::BudgetExceeded) {
        exit::BUDGET
    } else if has(ChainStatus::Aborted) {
        exit::ABORTED
    } else if has(ChainStatus::WaitingLimit) {
        exit::WAITING_LIMIT
    } else if has(ChainStatus::MaxContinuations) {
        exit::MAX_CONTINUATIONS
    } else {
        exit::OK
    }
}

pub(super) fn summary_table(chains: &[ChainRecord]) -> String {
    let row = |id: &str, name: &str, status: &str, sessions: &str, turns: &str, cost: &str| {
        format!("{id:<17} {name:<14} {status:<17} {sessions:>8} {turns:>6} {cost:>10}\n")
    };
    let mut s = format!(
        "\n{}",
        row("chain", "name", "status", "sessions", "turns", "cost")
    );
    for c in chains {
        s.push_str(&row(
            &truncate(&c.id, 17),
            &truncate(&c.name, 14),
            c.status.as_str(),
            &c.totals.sessions.to_string(),
            &c.totals.turns.to_string(),
            &format!("${:.4}", c.totals.cost_usd),
        ));
        if let Some(r) = &c.reason {
            s.push_str(&format!("  └ {}\n", truncate(r, 76)));
        }
    }
    s
}

pub(super) fn print_plan(plan: &Plan, backend: &BackendOptions) -> std::io::Result<()> {
    say!("DRY RUN — nothing will be started.");
    say!(
        "mission: {}  ({} chain(s), {} at once)",
        plan.mission.as_deref().unwrap_or("(single task)"),
        plan.chains.len(),
        plan.concurrency
    );
    say!(
        "\nsystem prompt (appended to the agent's, every session):\n{}\n",
        indent(prompt::CONTINUATION_PROTOCOL)
    );
    for c in &plan.chains {
        let s = &c.settings;
        say!("── chain `{}`", c.name);
        say!(
            "   agent {} · model {} · max turns {} · up to {} sessions · budget ${:.2} · permission mode {}",
            s.agent,
            s.model,
            s.max_turns,
            1 + s.max_continuations,
            s.max_budget_usd,
            s.permission_mode
        );
        if s.agent == AgentKind::Sim {
            say!(
                "   sim scenario {} (complete after {}, step {})",
                s.sim.scenario.as_str(),
                s.sim.complete_after,
                humantime::format_duration(s.sim.step)
            );
        }
        if !c.after.is_empty() {
            say!("   starts after: {}", c.after.join(", "));
        }
        let first = prompt::session_prompt(&c.task, 1, None);
        let spec = SessionSpec {
            chain_id: "<new>".into(),
            index: 1,
            prompt: first.clone(),
            system_prompt: prompt::CONTINUATION_PROTOCOL.into(),
            model: s.model.clone(),
            max_turns: s.max_turns,
            permission_mode: s.permission_mode.clone(),
            resume_id: None,
            workdir: s.workdir.clone(),
            sim: s.sim.clone(),
        };
        let cmd = agent::backend(s.agent, backend).command(&spec);
        say!("   command (session 1): {cmd}");
        say!(
            "   stdin: initialize (PreCompact hook), then the prompt:\n{}",
            indent(&first)
        );
        let example = prompt::session_prompt(
            &c.task,
            2,
            Some(&prompt::PreviousHandoff {
                index: 1,
                text: "<the handoff of session 1>",
                synthetic: false,
                note: None,
            }),
        );
        say!("   later sessions get:\n{}", indent(&example));
    }
    Ok(())
}

pub(super) fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("     │ {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) async fn list(op: &config::OperatorSettings, l: &ListArgs) -> Result<u8> {
    let data_dir = op.data_dir.as_path();
    let status = match &l.status {
        Some(s) => Some(s.parse::<ChainStatus>().map_err(UsageError)?),
        None => None,
    };
    let since = l
        .since
        .as_deref()
        .map(|s| crate::api::chains::since_bound(s, std::time::SystemTime::now()))
        .transpose()
        .map_err(|e| UsageError(format!("--since: {e}")))?;
    let store = open_store(op).await?;
    let chains = store
        .list_chains(&ChainQuery {
            status,
            include_archived: l.all,
            before: None,
            limit: l.limit,
            with_sessions: l.json,
            mission: l.mission.clone(),
            since,
        })
        .await?;
    if l.json {
        for c in &chains {
            let mut v = serde_json::to_value(c)?;
            v["resumable"] = c.status.is_resumable().into();
            say!("{v}");
        }
    } else if chains.is_empty() {
        say!("no chains in {}", data_dir.display());
    } else {
        say!(
            "{:<21} {:<14} {:<18} {:<24} {:>8} {:>9}  task",
            "chain",
            "name",
            "status",
            "started",
            "sessions",
            "cost"
        );
        for c in &chains {
            let status = if c.status.is_resumable() && c.status.is_terminal() {
                format!("{}*", c.status.as_str())
            } else {
                c.status.as_str().to_string()
            };
            say!(
                "{:<21} {:<14} {:<18} {:<24} {:>8} {:>9}  {}",
                c.id,
                truncate(&c.name, 14),
                status,
                c.started_at,
                c.totals.sessions,
                format!("${:.4}", c.totals.cost_usd),
                truncate(c.task.lines().next().unwrap_or(""), 40)
            );
        }
        if chains
            .iter()
            .any(|c| c.status.is_resumable() && c.status.is_terminal())
        {
            say!(
                "* resumable: `operator run --resume` continues the newest, `--resume <chain>` a given one (new limits may be given with it)"
            );
        }
    }
    Ok(exit::OK)
}

pub(super) async fn show(op: &config::OperatorSettings, id: &str, json: bool) -> Result<u8> {
    let data_dir = op.data_dir.as_path();
    if !is_valid_chain_id(id) {
        return Err(UsageError(format!("`{id}` is not a chain id")).into());
    }
    let store = open_store(op).await?;
    let Some(chain) = store.get_chain(id).await? else {
        eprintln!(
            "error: no chain `{id}` in {} (`operator list --all` shows the chains there)",
            data_dir.display()
        );
        return Ok(exit::USAGE);
    };
    let handoffs = store.handoffs(id).await?;
    let decisions: Vec<crate::model::EventRecord> = store
        .events(Some(id), 0, 100_000)
        .await?
        .into_iter()
        .filter(|e| e.kind == "session:permission")
        .collect();
    let approvals = crate::store::approvals::list(&*store, Some(id)).await?;
    if json {
        let mut v = serde_json::to_value(&chain)?;
        v["handoffs"] = serde_json::to_value(&handoffs)?;
        v["permissions"] = serde_json::to_value(&decisions)?;
        v["approvals"] = serde_json::to_value(&approvals)?;
        say!("{v}");
        return Ok(exit::OK);
    }
    say!("chain {} ({}) — {}", chain.id, chain.name, chain.status);
    if let Some(r) = &chain.reason {
        say!("reason: {r}");
    }
    say!("task: {}", chain.task);
    say!(
        "started {} · updated {}",
        chain.started_at,
        chain.updated_at
    );
    say!(
        "totals: {} sessions · {} turns · ${:.4} · {:.1}s",
        chain.totals.sessions,
        chain.totals.turns,
        chain.totals.cost_usd,
        chain.totals.duration_ms as f64 / 1000.0
    );
    for s in &chain.sessions {
        say!(
            "\n── session {} · {} · {} turns · ${:.4} · {:.1}s{}{}{}",
            s.index,
            s.status.as_str(),
            s.turns,
            s.cost_usd,
            s.duration_ms as f64 / 1000.0,
            if s.hit_max_turns {
                " · hit max turns"
            } else {
                ""
            },
            if s.asked_again {
                " · asked again for its handoff"
            } else {
                ""
            },
            if s.handoff_synthetic {
                " · synthetic handoff"
            } else {
                ""
            },
        );
        if let Some(e) = &s.error {
            say!("   error: {e}");
        }
        let mine: Vec<&crate::model::EventRecord> = decisions
            .iter()
            .filter(|e| e.session_index == Some(s.index))
            .collect();
        if !mine.is_empty() {
            say!("   tool permissions:");
            for e in mine {
                let crate::events::Body::Permission {
                    tool,
                    input,
                    decision,
                    rule,
                } = crate::events::Body::from_parts(&e.kind, e.data.clone())
                else {
                    continue;
                };
                say!(
                    "     {:<5} {:<9} {}  ({})",
                    decision,
                    tool,
                    truncate(&input, 80),
                    rule
                );
            }
        }
        for a in approvals.iter().filter(|a| a.session == s.index) {
            say!(
                "   approval {} · {} `{}` · {}{}",
                a.id,
                a.tool,
                truncate(&a.summary, 60),
                a.status.as_str(),
                a.answered_by
                    .as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            );
        }
        if let Some(h) = handoffs.iter().find(|h| h.index == s.index) {
            say!("{}", indent(&h.text));
        }
    }
    Ok(exit::OK)
}

pub(super) async fn status(op: &config::OperatorSettings) -> Result<u8> {
    let data_dir = op.data_dir.as_path();
    let pid = read_live_pid(&daemon::pid_file(data_dir));
    let store = open_store(op).await?;
    let paused = store.get_flag("paused").await?.is_some();
    match pid {
        Some(p) => say!(
            "operator running (pid {p}){}",
            if paused { ", paused" } else { "" }
        ),
        None => say!(
            "no operator running on {}{}",
            data_dir.display(),
            if paused { " (paused flag set)" } else { "" }
        ),
    }
    let chains = store
        .list_chains(&ChainQuery {
            limit: 50,
            ..Default::default()
        })
        .await?;
    for c in chains
        .iter()
        .filter(|c| !c.status.is_terminal() || c.status == ChainStatus::Interrupted)
    {
        say!(
            "  {} {:<14} {:<12} {} sessions  ${:.4}",
            c.id,
            truncate(&c.name, 14),
            c.status.as_str(),
            c.totals.sessions,
            c.totals.cost_usd
        );
        if c.status == ChainStatus::AwaitingApproval {
            for a in crate::store::approvals::list(&*store, Some(&c.id))
                .await?
                .into_iter()
                .filter(|a| a.status == crate::permissions::ApprovalStatus::Pending)
            {
                say!(
                    "      waits for approval: {} `{}` — operator approve|deny {} {}",
                    a.tool,
                    truncate(&a.summary, 60),
                    c.id,
                    a.id
                );
            }
        }
    }
    Ok(exit::OK)
}
