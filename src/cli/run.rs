//! `operator run`, `serve` and `worker`: plans from the files, the checks before anything starts, the
//! single-instance pid file, and the run itself.

#[allow(unused_imports)]
use super::*;

/// The plans of the missions (every error of every file at once), or of `--task`.
pub(super) fn plans_for(
    loaded: &config::Loaded,
    missions: &[PathBuf],
    task: Option<&str>,
    ov: &Overrides,
) -> Result<Vec<Plan>, ConfigErrors> {
    if let Some(t) = task {
        return Ok(vec![loaded.plan_for_task(t, ov)?]);
    }
    let mut plans = Vec::new();
    let mut issues = Vec::new();
    for m in missions {
        match loaded.plan_for_mission(m, ov) {
            Ok(p) => plans.push(p),
            Err(e) => issues.extend(e.0),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in &plans {
        if let Some(name) = &p.mission
            && !seen.insert(name.clone())
        {
            issues.push(config::Issue {
                file: p.source.as_ref().map(|s| s.display().to_string()),
                key: Some("name".into()),
                message: format!("two missions of this run are named `{name}`"),
            });
        }
    }
    if issues.is_empty() {
        Ok(plans)
    } else {
        Err(ConfigErrors(issues))
    }
}

/// Chains started through the API on a task run this many at once.
pub(super) const API_TASK_CONCURRENCY: usize = 4;

/// Where missions are looked up by name (`operator run demo`, the API).
pub(super) const MISSIONS_DIR: &str = "config/missions";

/// Plans for a start asked through the API: the operator's configuration as it is now on
/// disk, this run's command-line flags, then the request's few settings. A mission is found
/// by listing the missions folder, so no request text becomes a path.
pub(super) fn api_planner(op_file: Option<PathBuf>, env: Env, ov: Overrides) -> daemon::Planner {
    Box::new(move |req| {
        let loaded = config::load_operator(op_file.as_deref(), &env, &ov)?;
        let mut ov = ov.clone();
        for (k, v) in &req.overrides {
            ov.set_json(k, v, "the API request");
        }
        if let Some(m) = &req.mission {
            let path = std::fs::read_dir(MISSIONS_DIR)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.extension().is_some_and(|x| x == "toml")
                        && p.file_stem()
                            .is_some_and(|s| s.to_str() == Some(m.as_str()))
                })
                .ok_or_else(|| daemon::PlanError::UnknownMission(m.clone()))?;
            return Ok(plans_for(&loaded, &[path], None, &ov)?);
        }
        let task = req.task.as_deref().unwrap_or_default();
        let mut plan = loaded.plan_for_task(task, &ov)?;
        plan.concurrency = API_TASK_CONCURRENCY;
        if let (Some(n), Some(c)) = (&req.name, plan.chains.first_mut()) {
            c.name = n.clone();
        }
        Ok(vec![plan])
    })
}

/// Binds the API's address, with its security settings; refuses a non-loopback bind without
/// a token.
pub(super) async fn api_setup(
    op: &config::OperatorSettings,
    listen: &str,
) -> Result<daemon::ApiSetup> {
    let listen = if listen.is_empty() {
        op.listen.as_str()
    } else {
        listen
    };
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        UsageError(format!(
            "`{listen}` is not an address to listen on (expected IP:PORT, e.g. 127.0.0.1:3100)"
        ))
    })?;
    let security = crate::api::security::for_bind(
        addr,
        op.api_token.as_ref().map(|t| t.0.as_str()),
        &op.data_dir,
        op.allowed_hosts.clone(),
    )
    .map_err(|e| UsageError(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let url = format!("http://{bound}");
    let addr_file = crate::datadir::DataDir::new(&op.data_dir).api_addr_file();
    // Written whole, then renamed into place: `operator tui`, `operator mcp` and scripts read it
    // while the operator starts, and must never see it empty.
    let partial = addr_file.with_extension("addr.partial");
    std::fs::write(&partial, format!("{url}\n"))
        .and_then(|()| std::fs::rename(&partial, &addr_file))
        .with_context(|| format!("writing {}", addr_file.display()))?;
    eprintln!(
        "operator: API on {url}/ (writes need the token in {}, or `operator token`)",
        crate::api::security::token_file(&op.data_dir).display()
    );
    Ok(daemon::ApiSetup {
        listener,
        security,
        missions_dir: PathBuf::from(MISSIONS_DIR),
    })
}

pub(super) async fn run(
    r: &RunArgs,
    loaded: &config::Loaded,
    ov: &Overrides,
    live_view: bool,
    (op_file, env): (Option<PathBuf>, Env),
    serve: Option<(String, bool)>,
) -> Result<u8> {
    let stay = serve.as_ref().is_some_and(|(_, stay)| *stay);
    let op = &loaded.operator;
    let opts = run_options(op, Some(r), stay)?;
    run_with(r, loaded, ov, live_view, (op_file, env), serve, opts).await
}

/// The operator-wide options of a run (or a worker) from the settings.
pub(super) fn run_options(
    op: &config::OperatorSettings,
    r: Option<&RunArgs>,
    stay: bool,
) -> Result<RunOptions> {
    let quiet = op
        .quiet_hours
        .as_deref()
        .map(crate::quota::parse_quiet)
        .transpose()
        .map_err(|e| UsageError(format!("quiet_hours: {e}")))?;
    let opts = RunOptions {
        data_dir: op.data_dir.clone(),
        shutdown_grace: op.shutdown_grace,
        concurrency: r.and_then(|r| r.concurrency),
        continue_missions: r.is_some_and(|r| r.continue_missions),
        backend: op.backend(),
        notify: crate::notify::NotifyConfig {
            global: op.notify_webhook.clone().map(|url| config::Webhook {
                url,
                format: op.notify_format,
                on: op.notify_on.clone(),
            }),
            secret: op.notify_secret.as_ref().map(|s| s.0.clone()),
            timeout: op.notify_timeout,
        },
        daily_cap_usd: op.daily_cap_usd,
        pricing: op.pricing.clone(),
        stay,
        quota: crate::quota::Limits {
            per_hour: op.max_sessions_per_hour,
            concurrent: op.max_concurrent_sessions,
            quiet,
            jitter: op.release_jitter,
        },
        shared_store: op.store_url.is_some(),
        enqueue: stay && r.is_some_and(|r| r.enqueue),
        guard_exe: std::env::current_exe().ok(),
    };
    if opts.enqueue && op.store_url.is_none() {
        return Err(UsageError(
            "--enqueue queues chains for a fleet's workers: it needs a PostgreSQL store (--store postgres://…)".into(),
        )
        .into());
    }
    Ok(opts)
}

pub(super) async fn run_with(
    r: &RunArgs,
    loaded: &config::Loaded,
    ov: &Overrides,
    live_view: bool,
    (op_file, env): (Option<PathBuf>, Env),
    serve: Option<(String, bool)>,
    opts: RunOptions,
) -> Result<u8> {
    let stay = opts.stay;
    let op = &loaded.operator;
    let missions: Vec<PathBuf> = r
        .missions
        .iter()
        .map(|m| config::resolve_mission(m))
        .collect();
    let plans: Option<Vec<Plan>> = match (missions.is_empty(), &r.task, &r.resume) {
        (_, _, Some(_)) => None,
        (false, None, None) | (true, Some(_), None) => {
            Some(plans_for(loaded, &missions, r.task.as_deref(), ov)?)
        }
        (true, None, None) if stay => Some(Vec::new()),
        (true, None, None) => {
            return Err(UsageError(
                "say what to run: a mission (`operator run demo`), `--task \"…\"`, or `--resume`"
                    .into(),
            )
            .into());
        }
        (false, Some(_), _) => unreachable!("clap rejects --task with a mission"),
    };
    if r.dry_run {
        let Some(plans) = plans else {
            return Err(UsageError("--dry-run needs a mission or --task".into()).into());
        };
        for plan in &plans {
            print_plan(plan, &opts.backend)?;
        }
        return Ok(exit::OK);
    }
    // Checked once the CLI is known to be there (a missing binary is reported as such). A worker
    // elsewhere runs enqueued chains: its own environment has the credentials.
    if !r.skip_credentials_check && !r.enqueue {
        let kinds: std::collections::BTreeSet<AgentKind> = plans
            .iter()
            .flatten()
            .flat_map(|p| &p.chains)
            .flat_map(|c| {
                std::iter::once(c.settings.agent).chain(c.settings.fallback_agents.clone())
            })
            .collect();
        for kind in kinds {
            let agent = agent::backend(kind, &opts.backend);
            if agent.preflight().is_err() {
                continue;
            }
            if let Err(why) = agent.credentials(&|k| std::env::var(k).ok()) {
                eprintln!(
                    "error: the {kind} agent has no credentials: {why}.\n\
                     Nothing was started. `operator doctor --agent {kind}` checks the setup; --skip-credentials-check starts anyway (for setups this check cannot see)."
                );
                return Ok(exit::CREDENTIALS);
            }
        }
    }
    if r.enqueue && !stay {
        return enqueue(op, plans, &opts).await;
    }
    let _pid = PidFile::create(&opts.data_dir)?;
    // A serve that queues for the fleet creates chains any worker may claim.
    let store = open_store_as(op, !opts.enqueue).await?;
    let api = match &serve {
        Some((listen, _)) => Some(api_setup(op, listen).await?),
        None => None,
    };
    let planner = api
        .is_some()
        .then(|| api_planner(op_file.clone(), env.clone(), ov.clone()));
    let (batch, reloader) = match plans {
        Some(plans) => {
            let sims = plans
                .iter()
                .flat_map(|p| &p.chains)
                .filter(|c| c.settings.agent == AgentKind::Sim)
                .count();
            sim_notice(sims);
            // `--continue` picks up the missions' own chains: no warning for those.
            let continued = |c: &ChainRecord| {
                opts.continue_missions
                    && plans.iter().any(|p| {
                        p.mission.is_some()
                            && p.mission == c.mission
                            && p.chains.iter().any(|pc| pc.name == c.name)
                    })
            };
            for c in daemon::incomplete_chains(&store).await? {
                if continued(&c) {
                    continue;
                }
                // Logged at warn level, so it shows with and without the live view.
                tracing::warn!(chain.id = %c.id, status = %c.status, "an earlier chain is incomplete; `operator run --resume {}` continues it", c.id);
            }
            let (task, ov) = (r.task.clone(), ov.clone());
            let reloader: daemon::Reloader = Box::new(move || {
                let loaded = config::load_operator(op_file.as_deref(), &env, &ov)?;
                plans_for(&loaded, &missions, task.as_deref(), &ov)
            });
            (
                daemon::prepare_new(&store, &plans, &opts).await?,
                Some(reloader),
            )
        }
        None => {
            let id = r.resume.as_deref().filter(|s| !s.is_empty());
            if let Some(id) = id.filter(|i| !is_valid_chain_id(i)) {
                return Err(UsageError(format!("`{id}` is not a chain id")).into());
            }
            let flags = ov.clone();
            let batch =
                daemon::prepare_resume(&store, id, &opts, |s| config::with_overrides(&s, &flags))
                    .await?;
            for j in &batch.jobs {
                eprintln!("operator: resuming chain {} ({})", j.chain_id, j.name);
            }
            sim_notice(
                batch
                    .jobs
                    .iter()
                    .filter(|j| j.settings.agent == AgentKind::Sim)
                    .count(),
            );
            (batch, None)
        }
    };
    let launch = daemon::Launch::new(store.clone(), opts.clone())
        .with_os_signals()
        .context("installing signal handlers")?;
    let (stop_view, stop_rx) = tokio::sync::oneshot::channel();
    let view = live_view.then(|| {
        let names: HashMap<String, String> = batch
            .jobs
            .iter()
            .map(|j| (j.chain_id.clone(), j.name.clone()))
            .collect();
        crate::progress::spawn(launch.bus(), names, stop_rx)
    });
    for j in &batch.jobs {
        tracing::info!(chain.id = %j.chain_id, name = %j.name, agent = %j.settings.agent, "chain queued");
    }
    let hooks = daemon::Hooks {
        reloader,
        planner,
        api,
        feeder: None,
        mode_out: None,
    };
    let report = launch.with_hooks(hooks).run(batch).await?;
    let _ = std::fs::remove_file(crate::datadir::DataDir::new(&opts.data_dir).api_addr_file());
    let _ = stop_view.send(());
    if let Some(v) = view {
        let _ = v.await;
    }
    if r.json {
        for c in &report.chains {
            say!("{}", serde_json::to_string(c)?);
        }
    } else {
        eprint!(
            "{}",
            crate::progress::printable(&summary_table(&report.chains))
        );
        let sims = report
            .chains
            .iter()
            .filter(|c| c.config.get("agent").and_then(|a| a.as_str()) == Some("sim"))
            .count();
        if sims > 0 {
            eprintln!("note: {sims} chain(s) ran on the built-in simulated agent (sim):");
            eprintln!("note: the work above is simulated, nothing real was changed");
        }
    }
    if report.root_failed {
        eprintln!(
            "error: the operator's root supervisor crashed; every chain was stopped and can be resumed with `operator run --resume`"
        );
        return Ok(exit::INTERNAL);
    }
    Ok(if report.immediate {
        exit::INTERRUPTED
    } else {
        exit_code(&report.chains)
    })
}

/// The fleet store named by the settings, or a usage error saying how to name one.
pub(super) async fn fleet_store(
    op: &config::OperatorSettings,
    what: &str,
) -> Result<PostgresStore> {
    let Some(url) = op.store_url.as_ref().map(|u| u.0.as_str()) else {
        return Err(UsageError(format!(
            "{what} needs a PostgreSQL store: --store postgres://user@host/db (or store_url in operator.toml, or OPERATOR_STORE_URL)"
        ))
        .into());
    };
    if !crate::store::is_postgres_url(url) {
        return Err(UsageError(format!(
            "{what}: the store {} is not a postgres:// URL",
            crate::model::mask_url(url)
        ))
        .into());
    }
    PostgresStore::open(url)
        .await
        .with_context(|| format!("opening the store at {}", crate::model::mask_url(url)))
}

/// `operator run --enqueue`: the chains are created queued, for the fleet's workers.
pub(super) async fn enqueue(
    op: &config::OperatorSettings,
    plans: Option<Vec<Plan>>,
    opts: &RunOptions,
) -> Result<u8> {
    let Some(plans) = plans else {
        return Err(UsageError("--enqueue needs a mission or --task (not --resume)".into()).into());
    };
    let pg = fleet_store(op, "--enqueue").await?;
    let store: SharedStore = Arc::new(pg.clone());
    let batch = daemon::prepare_new(&store, &plans, opts).await?;
    pg.notify(crate::store::postgres::QUEUE_CHANNEL).await?;
    for j in &batch.jobs {
        say!("{}", j.chain_id);
    }
    Ok(exit::OK)
}

/// `operator worker`: claims and runs the fleet's chains until stopped.
pub(super) async fn worker(w: &WorkerArgs, loaded: &config::Loaded) -> Result<u8> {
    let op = &loaded.operator;
    let pg = fleet_store(op, "operator worker").await?;
    let mut opts = run_options(op, None, true)?;
    opts.shared_store = true;
    let store: SharedStore = Arc::new(pg.clone());
    let cfg = crate::fleet::WorkerConfig {
        id: crate::host::worker_id(),
        capacity: w.capacity,
        lease: w.lease.max(std::time::Duration::from_secs(1)),
    };
    tracing::info!(worker = %cfg.id, capacity = cfg.capacity, lease = ?cfg.lease, "worker started");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (mode_out, mode_in) = tokio::sync::oneshot::channel();
    let claims = tokio::spawn(crate::fleet::claim_loop(
        pg.clone(),
        store.clone(),
        cfg.clone(),
        opts.clone(),
        tx,
        mode_in,
    ));
    let hooks = daemon::Hooks {
        feeder: Some(rx),
        mode_out: Some(mode_out),
        ..Default::default()
    };
    let report = daemon::Launch::new(store.clone(), opts)
        .with_os_signals()
        .context("installing signal handlers")?
        .with_hooks(hooks)
        .run(daemon::Batch::default())
        .await;
    claims.abort();
    // Chains stopped here go back to the queue, for another worker to take at once.
    match pg.release(&cfg.id).await {
        Ok(n) if n > 0 => {
            let _ = pg.notify(crate::store::postgres::QUEUE_CHANNEL).await;
            tracing::warn!(worker = %cfg.id, chains = n, "chains handed back to the fleet");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(cause = %e, "could not hand chains back; they are taken over when their lease ends")
        }
    }
    let report = report?;
    Ok(if report.immediate {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}

/// The table printed after a run; it fits 80 columns.
/// Says up front that chains run on the simulated agent, so nobody takes its "complete" for real work.
pub(super) fn sim_notice(sims: usize) {
    if sims > 0 {
        // Two short lines: a terminal of 80 columns shows them whole.
        eprintln!("operator: {sims} chain(s) run on the built-in simulated agent (sim):");
        eprintln!("operator: nothing real will be done (real work: --agent claude, the default)");
    }
}

/// The pid file of a running operator; removed on drop.
/// The one operator of a data dir: an OS file lock on `operator.lock`, taken atomically and held
/// for the process's life (the kernel releases it when the process dies, even by `kill -9`),
/// and the pid file that `pause`, `resume`, `stop` and `status` read.
pub(super) struct PidFile(PathBuf, #[allow(dead_code)] std::fs::File);

impl PidFile {
    fn create(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let layout = crate::datadir::DataDir::new(data_dir);
        let lock_path = layout.lock_file();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let path = layout.pid_file();
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let who = read_live_pid(&path)
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(UsageError(format!(
                    "another operator{who} is running on {}; stop it, or use another --data-dir",
                    data_dir.display()
                ))
                .into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path, lock))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
