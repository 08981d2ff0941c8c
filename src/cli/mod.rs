//! The command line (clap): `run`, `list`, `show`, `validate`, `pause|resume|stop|status`, and the hidden
//! `sim-agent`; each subcommand maps to a library call, and every outcome to a documented exit code.
//! Arguments in `args`, runs in `run`, what is printed in `render`, steering in `control`, `doctor`
//! in `checks`.

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
use crate::handoff::prompt;
use crate::model::{ChainRecord, ChainStatus, is_valid_chain_id};
use crate::progress::truncate;
use crate::store::postgres::PostgresStore;
use crate::store::{ChainQuery, SharedStore};

/// `println!` that reports a closed stdout (`operator list | head`) as an error instead of panicking.
/// Control characters in what is printed (task texts and handoffs are agent or user input) are
/// shown escaped, never sent to the terminal.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        writeln!(std::io::stdout().lock(), "{}", crate::progress::printable(&line))?;
    }};
}

mod args;
mod checks;
mod control;
mod front;
mod init;
mod manual;
mod mcp;
mod render;
mod run;
mod settings;

use args::*;
use checks::*;
use control::*;
use init::init;
use manual::{completions, man};
use render::*;
use run::*;
use settings::show_config;

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
    if let Command::Guard = &cli.command {
        crate::process::guard_main(std::io::stdin().lock());
        return ExitCode::SUCCESS;
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

/// `operator tui`: the operator serving this data dir (or `--url`), with the token for writes.
async fn tui(t: &TuiArgs, op: &config::OperatorSettings) -> Result<u8> {
    let url = match &t.url {
        Some(u) => u.clone(),
        None => {
            let dir = crate::datadir::DataDir::new(&op.data_dir);
            dir.api_url().ok_or_else(|| {
                UsageError(format!(
                    "no operator serves {} ({} is missing): start one with `operator serve` or `operator run … --serve`, or pass --url",
                    op.data_dir.display(),
                    dir.api_addr_file().display()
                ))
            })?
        }
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(UsageError(format!(
            "--url {url}: expected http://host:port or https://…"
        ))
        .into());
    }
    let target = crate::tui::Target {
        url,
        token: api_token(op),
    };
    crate::tui::run(target, crate::tui::Options::from_env(), None).await?;
    Ok(exit::OK)
}

/// The token for the API's writes: operator.toml's, else the data dir's.
fn api_token(op: &config::OperatorSettings) -> Option<String> {
    match &op.api_token {
        Some(t) => Some(t.0.clone()),
        None => crate::api::security::read_or_create_token(&op.data_dir, false)
            .ok()
            .flatten(),
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
        tool: a.tool.clone(),
    }));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The store the settings name: PostgreSQL (`store_url`, `--store`, `OPERATOR_STORE_URL`), else
/// SQLite in the data dir.
async fn open_store(op: &config::OperatorSettings) -> Result<SharedStore> {
    open_store_as(op, true).await
}

/// `owned`: chains this process creates in a fleet's store are run by it, never claimed by a
/// worker.
async fn open_store_as(op: &config::OperatorSettings, owned: bool) -> Result<SharedStore> {
    let data_dir = op.data_dir.as_path();
    let url = op.store_url.as_ref().map(|u| u.0.as_str());
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
    let setting_flags = match &cli.command {
        Command::Run(r) => Some(&r.settings),
        Command::Serve(s) => Some(&s.run.settings),
        Command::Config(c) => Some(&c.settings),
        _ => None,
    };
    let mut ov = overrides(&cli, setting_flags);
    if let Command::Doctor(d) = &cli.command {
        d.agent.apply(&mut ov);
    }
    // These work without (and before) any configuration.
    match &cli.command {
        Command::Init(a) => {
            let data_dir = cli
                .data_dir
                .clone()
                .or_else(|| env.get("OPERATOR_DATA_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(".operator"));
            return init(a, &data_dir);
        }
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man(dir.as_deref()),
        _ => {}
    }
    let loaded = config::load_operator(op_file.as_deref(), &env, &ov)?;
    let op = &loaded.operator;
    let data_dir = op.data_dir.clone();
    match &cli.command {
        Command::Run(r) if r.tui => front::run_with_view(&loaded.operator, r.serve.is_some()).await,
        Command::Serve(s) if s.run.tui => front::run_with_view(&loaded.operator, true).await,
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
        Command::List(l) => list(op, l).await,
        Command::Show { chain_id, json } => show(op, chain_id, *json).await,
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
        Command::Pause { now } => pause(op, *now).await,
        Command::Resume => signal_running(&data_dir, nix::sys::signal::Signal::SIGUSR2, "resumed"),
        Command::Stop => signal_running(
            &data_dir,
            nix::sys::signal::Signal::SIGTERM,
            "asked to stop",
        ),
        Command::Status => status(op).await,
        Command::Approve(a) => answer_approval(op, a, true).await,
        Command::Deny(a) => answer_approval(op, a, false).await,
        Command::Doctor(d) => doctor(d, &loaded, &ov).await,
        Command::Config(c) => show_config(c, &loaded, &ov),
        Command::Tui(t) => tui(t, op).await,
        Command::Mcp(m) => mcp::mcp(m, op).await,
        Command::SimAgent(_)
        | Command::Guard
        | Command::Init(_)
        | Command::Completions { .. }
        | Command::Man { .. } => Ok(exit::OK),
    }
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

    /// Every visible subcommand and argument says what it is; every flag that sets a
    /// configuration key names the key and its variable.
    #[test]
    fn every_command_and_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} {id}: no help"));
                }
                if a.get_help_heading() == Some("Settings")
                    && !(help.contains("[config: ") && help.contains("[env: OPERATOR_"))
                {
                    missing.push(format!("{path} {id}: no config key or variable"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let p = format!("{path} {}", sub.get_name());
                if sub
                    .get_about()
                    .is_none_or(|a| a.to_string().trim().is_empty())
                {
                    missing.push(format!("{p}: no about"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "operator", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
