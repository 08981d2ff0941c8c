//! The command line's definition (clap derive): every subcommand and flag, and the flags turned into
//! configuration overrides.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Parser)]
#[command(
    name = "operator",
    version,
    about = "Keeps AI coding agents working on a task for hours: chains of sessions joined by handoffs, supervised."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(super) verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub(super) quiet: bool,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
    /// operator.toml to read (default: $OPERATOR_CONFIG, else config/operator.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
    /// Where the store and chain folders live (default ./.operator, or $OPERATOR_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub(super) data_dir: Option<PathBuf>,
    /// A PostgreSQL store shared by a fleet (postgres://…, or $OPERATOR_STORE_URL); default:
    /// SQLite in the data dir.
    #[arg(long = "store", global = true, value_name = "URL")]
    pub(super) store_url: Option<String>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// Kills the agents' process groups once the operator that started it is gone (internal).
    #[command(hide = true)]
    Guard,
}

#[derive(Debug, Args)]
pub(super) struct AnswerArgs {
    /// The chain holding the call.
    pub(super) chain: String,
    /// The approval's id (`ap-…`, from `operator show` or the event); optional when the chain
    /// holds only one call.
    pub(super) approval: Option<String>,
    /// What the agent is told with the answer (a denial's reason).
    #[arg(long)]
    pub(super) message: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    /// Chains this worker runs at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) capacity: u32,
    /// How long a claim holds without a heartbeat; another worker may take the chain after.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(super) lease: std::time::Duration,
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Mission files (`config/missions/*.toml`), or names of ones in config/missions/.
    pub(super) missions: Vec<String>,
    /// Run one chain on this task instead of a mission.
    #[arg(long, conflicts_with = "missions")]
    pub(super) task: Option<String>,
    /// Continue the newest incomplete chain, or the one named.
    #[arg(long, value_name = "CHAIN_ID", num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["missions", "task"])]
    pub(super) resume: Option<String>,
    #[arg(long, value_enum)]
    pub(super) agent: Option<AgentArg>,
    #[arg(long)]
    pub(super) model: Option<String>,
    #[arg(long)]
    pub(super) max_turns: Option<u32>,
    #[arg(long)]
    pub(super) max_continuations: Option<u32>,
    #[arg(long)]
    pub(super) max_budget_usd: Option<f64>,
    /// Interrupt a session (for its handoff) once its live cost crosses this.
    #[arg(long)]
    pub(super) max_session_cost_usd: Option<f64>,
    /// Permission mode for the agent; `bypassPermissions` can only be set here or in config files.
    #[arg(long)]
    pub(super) permission_mode: Option<String>,
    /// Working directory of the agent.
    #[arg(long)]
    pub(super) workdir: Option<PathBuf>,
    /// Scenario of the sim agent (for demos and tests).
    #[arg(long, value_parser = parse_scenario)]
    pub(super) scenario: Option<Scenario>,
    /// Pick the missions up where a stop left them: resume their interrupted chains, skip
    /// those that ended, start the rest (for restarts under systemd).
    #[arg(long = "continue", conflicts_with_all = ["task", "resume"])]
    pub(super) continue_missions: bool,
    /// Chains of a mission running at once (default: the mission's `concurrency`).
    #[arg(long)]
    pub(super) concurrency: Option<usize>,
    /// Path of the Claude Code CLI.
    #[arg(long, value_name = "PATH")]
    pub(super) claude_bin: Option<PathBuf>,
    /// Path of the Codex CLI.
    #[arg(long, value_name = "PATH")]
    pub(super) codex_bin: Option<PathBuf>,
    /// Path of the Gemini CLI.
    #[arg(long, value_name = "PATH")]
    pub(super) gemini_bin: Option<PathBuf>,
    /// At a usage limit, end the chain as `waiting-limit` (resumable) instead of waiting.
    #[arg(long)]
    pub(super) no_wait: bool,
    /// With a PostgreSQL store: queue the chains for the fleet's workers instead of running
    /// them here, print their ids and exit.
    #[arg(long)]
    pub(super) enqueue: bool,
    /// Push after a chain completes (or reaches max-continuations), when a remote exists.
    #[arg(long)]
    pub(super) auto_push: bool,
    /// POST a JSON summary of each chain to this URL when it ends.
    #[arg(long, value_name = "URL")]
    pub(super) notify_webhook: Option<String>,
    /// Print the plan, the agent command lines and the prompts; run nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Start even when no credentials for the agent CLI are found (for setups the check cannot
    /// see); a chain then fails at its first session if the CLI has none.
    #[arg(long, env = "OPERATOR_SKIP_CREDENTIALS_CHECK", value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) skip_credentials_check: bool,
    /// At the end, print one JSON object per chain, one per line, on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// Also serve the HTTP API while the run lasts (default address: `listen` in operator.toml,
    /// else 127.0.0.1:3100).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    pub(super) serve: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (default: `listen` in operator.toml, else 127.0.0.1:3100).
    /// Any address but loopback needs an API token.
    #[arg(long, value_name = "ADDR")]
    pub(super) listen: Option<String>,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum AgentArg {
    Claude,
    Codex,
    Gemini,
    Sim,
}

impl AgentArg {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AgentArg::Claude => "claude",
            AgentArg::Codex => "codex",
            AgentArg::Gemini => "gemini",
            AgentArg::Sim => "sim",
        }
    }
}

pub(super) fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub(super) struct DoctorArgs {
    #[arg(long, value_enum)]
    pub(super) agent: Option<AgentArg>,
    #[arg(long, value_name = "PATH")]
    pub(super) claude_bin: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub(super) codex_bin: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub(super) gemini_bin: Option<PathBuf>,
    #[arg(long)]
    pub(super) model: Option<String>,
    #[arg(long)]
    pub(super) permission_mode: Option<String>,
    #[arg(long)]
    pub(super) workdir: Option<PathBuf>,
    /// Also run one tiny real session (it costs a few cents with a real API).
    #[arg(long)]
    pub(super) session: bool,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    #[arg(long)]
    pub(super) json: bool,
    /// Include archived chains.
    #[arg(long)]
    pub(super) all: bool,
    /// Only chains in this state.
    #[arg(long)]
    pub(super) status: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub(super) limit: u32,
}

#[derive(Debug, Args)]
pub(super) struct SimAgentArgs {
    #[arg(long, default_value = "stream-json")]
    pub(super) input_format: String,
    #[arg(long, default_value = "stream-json")]
    pub(super) output_format: String,
    #[arg(long, default_value_t = 30)]
    pub(super) max_turns: u32,
    #[arg(long, default_value = "sonnet")]
    pub(super) model: String,
    #[arg(long, value_parser = parse_scenario, default_value = "complete")]
    pub(super) scenario: Scenario,
    #[arg(long, default_value_t = 2)]
    pub(super) complete_after: u32,
    #[arg(long, default_value_t = 1)]
    pub(super) session_index: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub(super) step: Duration,
    #[arg(long, default_value_t = 3)]
    pub(super) turns: u32,
    #[arg(long)]
    pub(super) resume: Option<String>,
    #[arg(long)]
    pub(super) write: Option<String>,
    #[arg(long)]
    pub(super) tool: Option<String>,
}

pub(super) fn overrides(cli: &Cli, r: Option<&RunArgs>) -> Overrides {
    let mut o = Overrides::default();
    if let Some(d) = &cli.data_dir {
        o.set("data_dir", d.display().to_string());
    }
    if let Some(u) = &cli.store_url {
        o.set("store_url", u.as_str());
    }
    let Some(r) = r else { return o };
    if let Some(a) = r.agent {
        o.set("agent", a.as_str());
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
    if let Some(b) = &r.codex_bin {
        o.set("codex_bin", b.display().to_string());
    }
    if let Some(b) = &r.gemini_bin {
        o.set("gemini_bin", b.display().to_string());
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
