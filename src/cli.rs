//! The command line (clap): `run`, `list`, `show`, `validate`, `pause|resume|stop|status`, and the hidden
//! `sim-agent`; each subcommand maps to a library call, and every outcome to a documented exit code.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::agent::sim::Scenario;
use crate::agent::{self, AgentKind, BackendOptions, SessionSpec};
use crate::config::{self, ConfigErrors, Env, Overrides, Plan};
use crate::daemon::{self, RunOptions};
use crate::events::Bus;
use crate::handoff::prompt;
use crate::model::{ChainRecord, ChainStatus, is_valid_chain_id};
use crate::progress::truncate;
use crate::store::postgres::PostgresStore;
use crate::store::{ChainQuery, SharedStore};

/// `println!` that reports a closed stdout (`operator list | head`) as an error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

/// Exit codes (also in the README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const MAX_CONTINUATIONS: u8 = 3;
    pub const BUDGET: u8 = 4;
    pub const ABORTED: u8 = 5;
    pub const WAITING_LIMIT: u8 = 6;
    /// The agent has no valid credentials: refused before the run, or a chain failed on them.
    pub const CREDENTIALS: u8 = 7;
    pub const INTERNAL: u8 = 10;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "operator",
    version,
    about = "Keeps AI coding agents working on a task for hours: chains of sessions joined by handoffs, supervised."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// operator.toml to read (default: $OPERATOR_CONFIG, else config/operator.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Where the store and chain folders live (default ./.operator, or $OPERATOR_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL store shared by a fleet (postgres://…, or $OPERATOR_STORE_URL); default:
    /// SQLite in the data dir.
    #[arg(long = "store", global = true, value_name = "URL")]
    store_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a mission (a file or a name in config/missions/) or a single task.
    Run(RunArgs),
    /// Serve the HTTP API, WebSocket and metrics, and run what is started through them (and any
    /// missions named here) until stopped.
    Serve(ServeArgs),
    /// Run chains of a fleet: claim queued (or orphaned) chains from the PostgreSQL store
    /// given by --store / store_url, run up to --capacity at once, until stopped.
    Worker(WorkerArgs),
    /// Print the API token (creating <data_dir>/api-token, mode 0600, if there is none).
    Token,
    /// The cost ledger: today, this week, all time, per model, mission and chain, and the burn rate.
    Costs {
        #[arg(long)]
        json: bool,
        /// Chains listed, most expensive first.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// List chains, newest first.
    List(ListArgs),
    /// Show one chain with its sessions and handoffs.
    Show {
        chain_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a mission file without running it; reports every error at once.
    Validate { mission: String },
    /// Pause the running operator: no new session starts (SIGUSR1).
    Pause {
        /// Interrupt running sessions now (each writes its handoff), instead of letting them finish.
        #[arg(long)]
        now: bool,
    },
    /// Resume a paused operator (SIGUSR2).
    Resume,
    /// Stop the running operator gracefully (SIGTERM).
    Stop,
    /// Is an operator running on this data dir, and what are its chains doing?
    Status,
    /// Let a tool call run that a chain holds for a person (an `ask` permission rule).
    Approve(AnswerArgs),
    /// Refuse a tool call that a chain holds for a person; the agent is told (`--message`).
    Deny(AnswerArgs),
    /// Check what a run needs (agent CLI, credentials, permissions); `--session` runs one tiny session.
    Doctor(DoctorArgs),
    /// The simulated agent (used by the `sim` backend).
    #[command(hide = true)]
    SimAgent(SimAgentArgs),
}

#[derive(Debug, Args)]
struct AnswerArgs {
    /// The chain holding the call.
    chain: String,
    /// The approval's id (`ap-…`, from `operator show` or the event); optional when the chain
    /// holds only one call.
    approval: Option<String>,
    /// What the agent is told with the answer (a denial's reason).
    #[arg(long)]
    message: Option<String>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Chains this worker runs at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    capacity: u32,
    /// How long a claim holds without a heartbeat; another worker may take the chain after.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease: std::time::Duration,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Mission files (`config/missions/*.toml`), or names of ones in config/missions/.
    missions: Vec<String>,
    /// Run one chain on this task instead of a mission.
    #[arg(long, conflicts_with = "missions")]
    task: Option<String>,
    /// Continue the newest incomplete chain, or the one named.
    #[arg(long, value_name = "CHAIN_ID", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["missions", "task"])]
    resume: Option<String>,
    #[arg(long, value_enum)]
    agent: Option<AgentArg>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    max_turns: Option<u32>,
    #[arg(long)]
    max_continuations: Option<u32>,
    #[arg(long)]
    max_budget_usd: Option<f64>,
    /// Interrupt a session (for its handoff) once its live cost crosses this.
    #[arg(long)]
    max_session_cost_usd: Option<f64>,
    /// Permission mode for the agent; `bypassPermissions` can only be set here or in config files.
    #[arg(long)]
    permission_mode: Option<String>,
    /// Working directory of the agent.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Scenario of the sim agent (for demos and tests).
    #[arg(long, value_parser = parse_scenario)]
    scenario: Option<Scenario>,
    /// Pick the missions up where a stop left them: resume their interrupted chains, skip
    /// those that ended, start the rest (for restarts under systemd).
    #[arg(long = "continue", conflicts_with_all = ["task", "resume"])]
    continue_missions: bool,
    /// Chains of a mission running at once (default: the mission's `concurrency`).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Path of the Claude Code CLI.
    #[arg(long, value_name = "PATH")]
    claude_bin: Option<PathBuf>,
    /// At a usage limit, end the chain as `waiting-limit` (resumable) instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// With a PostgreSQL store: queue the chains for the fleet's workers instead of running
    /// them here, print their ids and exit.
    #[arg(long)]
    enqueue: bool,
    /// Push after a chain completes (or reaches max-continuations), when a remote exists.
    #[arg(long)]
    auto_push: bool,
    /// POST a JSON summary of each chain to this URL when it ends.
    #[arg(long, value_name = "URL")]
    notify_webhook: Option<String>,
    /// Print the plan, the agent command lines and the prompts; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start even when no credentials for the agent CLI are found (for setups the check cannot
    /// see); a chain then fails at its first session if the CLI has none.
    #[arg(long, env = "OPERATOR_SKIP_CREDENTIALS_CHECK", value_parser = clap::builder::BoolishValueParser::new())]
    skip_credentials_check: bool,
    /// At the end, print one JSON object per chain, one per line, on stdout.
    #[arg(long)]
    json: bool,
    /// Also serve the HTTP API while the run lasts (default address: `listen` in operator.toml,
    /// else 127.0.0.1:3100).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    serve: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (default: `listen` in operator.toml, else 127.0.0.1:3100).
    /// Any address but loopback needs an API token.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AgentArg {
    Claude,
    Sim,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

#[derive(Debug, Args)]
struct DoctorArgs {
    #[arg(long, value_enum)]
    agent: Option<AgentArg>,
    #[arg(long, value_name = "PATH")]
    claude_bin: Option<PathBuf>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    permission_mode: Option<String>,
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Also run one tiny real session (it costs a few cents with a real API).
    #[arg(long)]
    session: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[arg(long)]
    json: bool,
    /// Include archived chains.
    #[arg(long)]
    all: bool,
    /// Only chains in this state.
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Debug, Args)]
struct SimAgentArgs {
    #[arg(long, default_value = "stream-json")]
    input_format: String,
    #[arg(long, default_value = "stream-json")]
    output_format: String,
    #[arg(long, default_value_t = 30)]
    max_turns: u32,
    #[arg(long, default_value = "sonnet")]
    model: String,
    #[arg(long, value_parser = parse_scenario, default_value = "complete")]
    scenario: Scenario,
    #[arg(long, default_value_t = 2)]
    complete_after: u32,
    #[arg(long, default_value_t = 1)]
    session_index: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    step: Duration,
    #[arg(long, default_value_t = 3)]
    turns: u32,
    #[arg(long)]
    resume: Option<String>,
    #[arg(long)]
    write: Option<String>,
}

/// Sets up logging. On a terminal with the live view only warnings are logged, so the
/// view stays readable; otherwise each event is a log line.
fn init_tracing(verbose: u8, quiet: bool, live_view: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose, live_view) {
        (true, _, _) => "warn",
        (_, 0, true) => "warn",
        (_, 0, false) => "info",
        (_, 1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("OPERATOR_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("operator={default},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SimAgent(a) = &cli.command {
        return sim_agent(a);
    }
    let live_view = matches!(&cli.command, Command::Run(r) if !r.dry_run && !r.json)
        && std::io::stderr().is_terminal()
        && !cli.quiet
        && cli.log_format == LogFormat::Text;
    init_tracing(cli.verbose, cli.quiet, live_view, cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    match rt.block_on(dispatch(cli, live_view)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigErrors>() {
                eprint!("error: {c}");
                return ExitCode::from(exit::USAGE);
            }
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::from(exit::OK);
            }
            if let Some(daemon::RunError::Config(c)) = e.downcast_ref::<daemon::RunError>() {
                eprint!("error: {c}");
                return ExitCode::from(exit::USAGE);
            }
            if let Some(r) = e.downcast_ref::<daemon::RunError>() {
                use daemon::RunError::*;
                if matches!(
                    r,
                    Agent(_)
                        | UnknownChain(_)
                        | NotResumable { .. }
                        | NothingToResume
                        | Busy { .. }
                ) {
                    eprintln!("error: {r}");
                    return ExitCode::from(exit::USAGE);
                }
            }
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("error: {u}");
                return ExitCode::from(exit::USAGE);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(exit::INTERNAL)
        }
    }
}

/// A mistake in how operator was called (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn sim_agent(a: &SimAgentArgs) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(exit::INTERNAL);
    };
    let code = rt.block_on(crate::sim::run(crate::sim::SimArgs {
        scenario: a.scenario,
        complete_after: a.complete_after,
        session_index: a.session_index,
        step: a.step,
        turns: a.turns,
        max_turns: a.max_turns,
        model: a.model.clone(),
        resume: a.resume.clone(),
        write: a.write.clone(),
    }));
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn overrides(cli: &Cli, r: Option<&RunArgs>) -> Overrides {
    let mut o = Overrides::default();
    if let Some(d) = &cli.data_dir {
        o.set("data_dir", d.display().to_string());
    }
    if let Some(u) = &cli.store_url {
        o.set("store_url", u.as_str());
    }
    let Some(r) = r else { return o };
    if let Some(a) = r.agent {
        o.set(
            "agent",
            match a {
                AgentArg::Claude => "claude",
                AgentArg::Sim => "sim",
            },
        );
    }
    if let Some(m) = &r.model {
        o.set("model", m.as_str());
    }
    if let Some(n) = r.max_turns {
        o.set("max_turns", i64::from(n));
    }
    if let Some(n) = r.max_continuations {
        o.set("max_continuations", i64::from(n));
    }
    if let Some(b) = r.max_budget_usd {
        o.set("max_budget_usd", b);
    }
    if let Some(b) = r.max_session_cost_usd {
        o.set("max_session_cost_usd", b);
    }
    if let Some(p) = &r.permission_mode {
        o.set("permission_mode", p.as_str());
    }
    if let Some(w) = &r.workdir {
        o.set("workdir", w.display().to_string());
    }
    if let Some(s) = r.scenario {
        o.set("sim.scenario", s.as_str());
    }
    if let Some(b) = &r.claude_bin {
        o.set("claude_bin", b.display().to_string());
    }
    if r.auto_push {
        o.set("auto_push", true);
    }
    if r.no_wait {
        o.set("no_wait", true);
    }
    if let Some(u) = &r.notify_webhook {
        o.set("notify_webhook", u.as_str());
    }
    o
}

/// The PostgreSQL store's URL from the settings (`store_url`, `--store`, `OPERATOR_STORE_URL`),
/// set once by `dispatch`; `None`: SQLite in the data dir.
static STORE_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

async fn open_store(data_dir: &Path) -> Result<SharedStore> {
    open_store_as(data_dir, true).await
}

/// `owned`: chains this process creates in a fleet's store are run by it, never claimed by a
/// worker.
async fn open_store_as(data_dir: &Path, owned: bool) -> Result<SharedStore> {
    let url = STORE_URL.get().and_then(|u| u.as_deref());
    let context = || match url {
        Some(u) => format!("opening the store at {}", crate::model::mask_url(u)),
        None => format!("opening the store in {}", data_dir.display()),
    };
    let owner = owned.then(|| format!("run:{}", crate::host::worker_id()));
    crate::store::open(data_dir, url, owner)
        .await
        .with_context(context)
}

async fn dispatch(cli: Cli, live_view: bool) -> Result<u8> {
    let env = Env::from_process();
    let op_file = config::operator_file(cli.config.as_deref(), &env);
    let run_args = match &cli.command {
        Command::Run(r) => Some(r),
        Command::Serve(s) => Some(&s.run),
        _ => None,
    };
    let ov = overrides(&cli, run_args);
    let loaded = config::load_operator(op_file.as_deref(), &env, &ov)?;
    let data_dir = loaded.operator.data_dir.clone();
    let _ = STORE_URL.set(loaded.operator.store_url.as_ref().map(|u| u.0.clone()));
    match &cli.command {
        Command::Run(r) => {
            let serve = r.serve.clone().map(|a| (a, false));
            run(r, &loaded, &ov, live_view, (op_file, env), serve).await
        }
        Command::Serve(s) => {
            let listen = s
                .listen
                .clone()
                .or_else(|| s.run.serve.clone())
                .unwrap_or_default();
            run(
                &s.run,
                &loaded,
                &ov,
                false,
                (op_file, env),
                Some((listen, true)),
            )
            .await
        }
        Command::Worker(w) => worker(w, &loaded).await,
        Command::Costs { json, limit } => costs(&loaded.operator, *json, *limit).await,
        Command::Token => {
            let t = crate::api::security::read_or_create_token(&data_dir, true)?
                .ok_or_else(|| anyhow::anyhow!("no token could be created"))?;
            say!("{t}");
            Ok(exit::OK)
        }
        Command::List(l) => list(&data_dir, l).await,
        Command::Show { chain_id, json } => show(&data_dir, chain_id, *json).await,
        Command::Validate { mission } => {
            let path = config::resolve_mission(mission);
            let plan = loaded.plan_for_mission(&path, &Overrides::default())?;
            say!(
                "{}: ok — mission `{}`, {} chain(s), concurrency {}",
                path.display(),
                plan.mission.as_deref().unwrap_or("-"),
                plan.chains.len(),
                plan.concurrency
            );
            Ok(exit::OK)
        }
        Command::Pause { now } => pause(&data_dir, *now).await,
        Command::Resume => signal_running(&data_dir, nix::sys::signal::Signal::SIGUSR2, "resumed"),
        Command::Stop => signal_running(
            &data_dir,
            nix::sys::signal::Signal::SIGTERM,
            "asked to stop",
        ),
        Command::Status => status(&data_dir).await,
        Command::Approve(a) => answer_approval(&data_dir, a, true).await,
        Command::Deny(a) => answer_approval(&data_dir, a, false).await,
        Command::Doctor(d) => doctor(d, &env, op_file.as_deref(), &ov).await,
        Command::SimAgent(_) => Ok(exit::OK),
    }
}

/// The plans of the missions (every error of every file at once), or of `--task`.
fn plans_for(
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
const API_TASK_CONCURRENCY: usize = 4;

/// Where missions are looked up by name (`operator run demo`, the API).
const MISSIONS_DIR: &str = "config/missions";

/// Plans for a start asked through the API: the operator's configuration as it is now on
/// disk, this run's command-line flags, then the request's few settings. A mission is found
/// by listing the missions folder, so no request text becomes a path.
fn api_planner(op_file: Option<PathBuf>, env: Env, ov: Overrides) -> daemon::Planner {
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
async fn api_setup(op: &config::OperatorSettings, listen: &str) -> Result<daemon::ApiSetup> {
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
    std::fs::write(op.data_dir.join("api.addr"), format!("{url}\n"))
        .with_context(|| format!("writing {}", op.data_dir.join("api.addr").display()))?;
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

async fn run(
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
fn run_options(
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
        backend: BackendOptions {
            claude_bin: op.claude_bin.clone(),
        },
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
    };
    if opts.enqueue && op.store_url.is_none() {
        return Err(UsageError(
            "--enqueue queues chains for a fleet's workers: it needs a PostgreSQL store (--store postgres://…)".into(),
        )
        .into());
    }
    Ok(opts)
}

async fn run_with(
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
    // Checked once the CLI is known to be there (a missing binary is reported as such).
    let claude_chains = plans.as_ref().is_some_and(|ps| {
        ps.iter()
            .flat_map(|p| &p.chains)
            .any(|c| c.settings.agent == AgentKind::Claude)
    }) && agent::backend(AgentKind::Claude, &opts.backend)
        .preflight()
        .is_ok();
    // A worker elsewhere runs enqueued chains: its own environment has the credentials.
    if claude_chains
        && !r.skip_credentials_check
        && !r.enqueue
        && let Err(why) = crate::doctor::claude_credentials(&|k| std::env::var(k).ok())
    {
        eprintln!(
            "error: the claude agent has no credentials: {why}.\n\
             Nothing was started. `operator doctor` checks the setup; --skip-credentials-check starts anyway (for setups this check cannot see)."
        );
        return Ok(exit::CREDENTIALS);
    }
    if r.enqueue && !stay {
        return enqueue(op, plans, &opts).await;
    }
    let _pid = PidFile::create(&opts.data_dir)?;
    // A serve that queues for the fleet creates chains any worker may claim.
    let store = open_store_as(&opts.data_dir, !opts.enqueue).await?;
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
            for c in daemon::incomplete_chains(&store).await? {
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
    let bus = Bus::new(store.clone());
    let signals = crate::signals::listen().context("installing signal handlers")?;
    let (stop_view, stop_rx) = tokio::sync::oneshot::channel();
    let view = live_view.then(|| {
        let names: HashMap<String, String> = batch
            .jobs
            .iter()
            .map(|j| (j.chain_id.clone(), j.name.clone()))
            .collect();
        crate::progress::spawn(&bus, names, stop_rx)
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
    let report = daemon::run(store.clone(), batch, &opts, signals, bus, hooks).await?;
    let _ = std::fs::remove_file(opts.data_dir.join("api.addr"));
    let _ = stop_view.send(());
    if let Some(v) = view {
        let _ = v.await;
    }
    if r.json {
        for c in &report.chains {
            say!("{}", serde_json::to_string(c)?);
        }
    } else {
        eprint!("{}", summary_table(&report.chains));
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
async fn fleet_store(op: &config::OperatorSettings, what: &str) -> Result<PostgresStore> {
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
async fn enqueue(
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
async fn worker(w: &WorkerArgs, loaded: &config::Loaded) -> Result<u8> {
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
    let bus = Bus::new(store.clone());
    let signals = crate::signals::listen().context("installing signal handlers")?;
    let hooks = daemon::Hooks {
        feeder: Some(rx),
        mode_out: Some(mode_out),
        ..Default::default()
    };
    let report = daemon::run(
        store.clone(),
        daemon::Batch::default(),
        &opts,
        signals,
        bus,
        hooks,
    )
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

/// What a burn rate forecasts, as lines for `operator costs`.
pub fn forecast_lines(r: &crate::store::CostReport, cap: Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    if r.all_time.sessions > 0 {
        out.push(format!(
            "about ${:.4} a session ({} sessions so far)",
            r.all_time.cost_usd / r.all_time.sessions as f64,
            r.all_time.sessions
        ));
    }
    let hourly = r.last_day.cost_usd / 24.0;
    out.push(format!(
        "${:.4} in the last hour; ${hourly:.4} an hour averaged over the last 24 h",
        r.last_hour.cost_usd
    ));
    if let Some(cap) = cap {
        let left = (cap - r.today.cost_usd).max(0.0);
        let rate = r.last_hour.cost_usd.max(hourly);
        out.push(if rate > 0.0 {
            format!(
                "daily cap ${cap:.2}: ${left:.4} left today, about {:.1} h at the last hour's rate",
                left / rate
            )
        } else {
            format!("daily cap ${cap:.2}: ${left:.4} left today")
        });
    }
    out
}

async fn costs(op: &config::OperatorSettings, json: bool, limit: u32) -> Result<u8> {
    let store = open_store(&op.data_dir).await?;
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
    for l in forecast_lines(&r, op.daily_cap_usd) {
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
    } else if has(ChainStatus::Failed) {
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

/// The table printed after a run; it fits 80 columns.
/// Says up front that chains run on the simulated agent, so nobody takes its "complete" for real work.
fn sim_notice(sims: usize) {
    if sims > 0 {
        // Two short lines: a terminal of 80 columns shows them whole.
        eprintln!("operator: {sims} chain(s) run on the built-in simulated agent (sim):");
        eprintln!("operator: nothing real will be done (real work: --agent claude, the default)");
    }
}

fn summary_table(chains: &[ChainRecord]) -> String {
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

fn print_plan(plan: &Plan, backend: &BackendOptions) -> std::io::Result<()> {
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

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("     │ {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn list(data_dir: &Path, l: &ListArgs) -> Result<u8> {
    let status = match &l.status {
        Some(s) => Some(s.parse::<ChainStatus>().map_err(UsageError)?),
        None => None,
    };
    let store = open_store(data_dir).await?;
    let chains = store
        .list_chains(&ChainQuery {
            status,
            include_archived: l.all,
            before: None,
            limit: l.limit,
            with_sessions: l.json,
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

/// `operator approve|deny <chain> [<approval>]`: answers a held tool call in the store, where the
/// running chain finds it within half a second.
async fn answer_approval(data_dir: &Path, a: &AnswerArgs, approve: bool) -> Result<u8> {
    if !is_valid_chain_id(&a.chain) {
        return Err(UsageError(format!("`{}` is not a chain id", a.chain)).into());
    }
    let store = open_store(data_dir).await?;
    match crate::store::approvals::answer(
        &*store,
        &a.chain,
        a.approval.as_deref(),
        approve,
        "cli",
        a.message.as_deref(),
    )
    .await
    {
        Ok(done) => {
            store
                .append_event(
                    Some(&a.chain),
                    Some(done.session),
                    "operator:approval",
                    &serde_json::json!({"approvalId": done.id, "status": done.status.as_str(), "origin": "cli"}),
                )
                .await?;
            say!(
                "{} {} `{}` ({}); the chain picks the answer up within a second",
                if approve { "approved" } else { "denied" },
                done.tool,
                done.summary,
                done.id
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(exit::USAGE)
        }
    }
}

async fn show(data_dir: &Path, id: &str, json: bool) -> Result<u8> {
    if !is_valid_chain_id(id) {
        return Err(UsageError(format!("`{id}` is not a chain id")).into());
    }
    let store = open_store(data_dir).await?;
    let Some(chain) = store.get_chain(id).await? else {
        eprintln!("error: no chain `{id}` in {}", data_dir.display());
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
                let f = |k: &str| e.data[k].as_str().unwrap_or_default().to_string();
                say!(
                    "     {:<5} {:<9} {}  ({})",
                    f("decision"),
                    f("tool"),
                    truncate(&f("input"), 80),
                    f("rule")
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

/// The pid file of a running operator; removed on drop.
struct PidFile(PathBuf);

impl PidFile {
    fn create(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = daemon::pid_file(data_dir);
        if let Some(pid) = read_live_pid(&path) {
            return Err(UsageError(format!(
                "another operator (pid {pid}) is running on {}; stop it, or use another --data-dir",
                data_dir.display()
            ))
            .into());
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid in a pid file, if that process is alive and is an operator (stale files are ignored).
fn read_live_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    crate::process::is_other_live_operator(pid).then_some(pid)
}

async fn doctor(d: &DoctorArgs, env: &Env, op_file: Option<&Path>, base: &Overrides) -> Result<u8> {
    let mut ov = base.clone();
    if let Some(a) = d.agent {
        ov.set(
            "agent",
            match a {
                AgentArg::Claude => "claude",
                AgentArg::Sim => "sim",
            },
        );
    }
    if let Some(b) = &d.claude_bin {
        ov.set("claude_bin", b.display().to_string());
    }
    if let Some(m) = &d.model {
        ov.set("model", m.as_str());
    }
    if let Some(p) = &d.permission_mode {
        ov.set("permission_mode", p.as_str());
    }
    if let Some(w) = &d.workdir {
        ov.set("workdir", w.display().to_string());
    }
    let loaded = config::load_operator(op_file, env, &ov)?;
    let task = "This is `operator doctor` checking the setup. Do not use any tool. Reply with one \
                short sentence, then a `## HANDOFF: COMPLETE` handoff.";
    let mut plan = loaded.plan_for_task(task, &ov)?;
    let settings = plan.chains[0].settings.clone();
    let is_root = nix::unistd::Uid::effective().is_root();
    let checks = crate::doctor::checks(
        &settings,
        loaded.operator.claude_bin.as_deref(),
        &|k| std::env::var(k).ok(),
        is_root,
        &loaded.operator.data_dir,
    );
    let mut ok = true;
    for c in &checks {
        say!(
            "{} {:<16} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.detail
        );
        ok &= c.ok;
    }
    if d.session {
        if !ok {
            say!("skipping the test session: fix the failures above first");
            return Ok(exit::FAILED);
        }
        let dir = std::env::temp_dir().join(format!("operator-doctor-{}", std::process::id()));
        let result = doctor_session(&mut plan, &loaded, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(c) => {
                let s = c.sessions.first();
                let line = s
                    .map(|s| {
                        format!(
                            "{} in {:.1}s, {} turns, ${:.4}{}",
                            s.status.as_str(),
                            s.duration_ms as f64 / 1000.0,
                            s.turns,
                            s.cost_usd,
                            s.error
                                .as_deref()
                                .map(|e| format!(" — {e}"))
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no session ran".into());
                let good = c.status.is_success();
                say!(
                    "{} {:<16} {}",
                    if good { "ok  " } else { "FAIL" },
                    "test session",
                    line
                );
                ok &= good;
            }
            Err(e) => {
                say!("FAIL {:<16} {e:#}", "test session");
                ok = false;
            }
        }
    }
    Ok(if ok { exit::OK } else { exit::FAILED })
}

/// Runs the doctor's one-session chain in a throwaway data dir.
async fn doctor_session(
    plan: &mut Plan,
    loaded: &config::Loaded,
    dir: &Path,
) -> Result<ChainRecord> {
    plan.chains[0].settings.max_continuations = 0;
    plan.chains[0].settings.max_turns = 3;
    let opts = RunOptions {
        data_dir: dir.to_path_buf(),
        shutdown_grace: loaded.operator.shutdown_grace,
        concurrency: None,
        continue_missions: false,
        backend: BackendOptions {
            claude_bin: loaded.operator.claude_bin.clone(),
        },
        notify: crate::notify::NotifyConfig {
            global: None,
            secret: None,
            timeout: Duration::from_secs(10),
        },
        daily_cap_usd: None,
        pricing: loaded.operator.pricing.clone(),
        stay: false,
        quota: Default::default(),
        shared_store: false,
        enqueue: false,
    };
    // The check runs in its own temp dir, never in a fleet's store.
    let store = crate::store::open(dir, None, None).await?;
    let batch = daemon::prepare_new(&store, std::slice::from_ref(plan), &opts).await?;
    let (_keep, signals) = tokio::sync::mpsc::unbounded_channel();
    let bus = Bus::new(store.clone());
    let report = daemon::run(store, batch, &opts, signals, bus, daemon::Hooks::default()).await?;
    report
        .chains
        .into_iter()
        .next()
        .context("the test chain vanished")
}

async fn pause(data_dir: &Path, now: bool) -> Result<u8> {
    if now && read_live_pid(&daemon::pid_file(data_dir)).is_some() {
        // The running operator reads this when SIGUSR1 arrives.
        open_store(data_dir)
            .await?
            .set_flag("pause_request", Some("now"))
            .await?;
    }
    let what = if now {
        "pausing now (sessions write their handoff)"
    } else {
        "paused"
    };
    signal_running(data_dir, nix::sys::signal::Signal::SIGUSR1, what)
}

fn signal_running(data_dir: &Path, sig: nix::sys::signal::Signal, what: &str) -> Result<u8> {
    let path = daemon::pid_file(data_dir);
    let Some(pid) = read_live_pid(&path) else {
        eprintln!("no operator is running on {}", data_dir.display());
        return Ok(exit::FAILED);
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .with_context(|| format!("signalling pid {pid}"))?;
    say!("operator (pid {pid}) {what}");
    Ok(exit::OK)
}

async fn status(data_dir: &Path) -> Result<u8> {
    let pid = read_live_pid(&daemon::pid_file(data_dir));
    let store = open_store(data_dir).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(status: ChainStatus) -> ChainRecord {
        ChainRecord {
            id: "c".into(),
            name: "n".into(),
            mission: None,
            task: "t".into(),
            status,
            reason: None,
            started_at: String::new(),
            updated_at: String::new(),
            config: serde_json::Value::Null,
            sessions: vec![],
            totals: Default::default(),
            archived: false,
            verify: Vec::new(),
        }
    }

    #[test]
    fn the_summary_fits_80_columns() {
        let mut c = chain(ChainStatus::MaxContinuations);
        c.id = "c-20261125-abcdef".into();
        c.name = "a-very-long-chain-name".into();
        c.reason = Some("r".repeat(200));
        c.totals.cost_usd = 1234.5;
        for line in summary_table(&[c]).lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
    }

    #[test]
    fn exit_codes_by_outcome() {
        use ChainStatus::*;
        assert_eq!(
            exit_code(&[chain(Complete), chain(AssumedComplete)]),
            exit::OK
        );
        assert_eq!(
            exit_code(&[chain(Complete), chain(MaxContinuations)]),
            exit::MAX_CONTINUATIONS
        );
        assert_eq!(
            exit_code(&[chain(Failed), chain(MaxContinuations)]),
            exit::FAILED
        );
        assert_eq!(exit_code(&[chain(BudgetExceeded)]), exit::BUDGET);
        assert_eq!(exit_code(&[chain(Aborted)]), exit::ABORTED);
        assert_eq!(
            exit_code(&[chain(Interrupted), chain(Failed)]),
            exit::INTERRUPTED
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
