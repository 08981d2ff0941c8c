//! The command line's definition (clap derive): every subcommand and flag, and the flags turned into
//! configuration overrides.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Parser)]
#[command(
    name = "operator",
    version,
    about = "Keeps AI coding agents working on a task for hours: chains of sessions joined by handoffs, supervised.",
    after_help = "New here? `operator init` sets a repository up; `operator run --agent sim --task \"Try it\"` runs the simulated agent (no API key)."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub(super) verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub(super) quiet: bool,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, global = true, help_heading = "Global options", value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
    /// operator.toml to read [default: config/operator.toml when present] [env: OPERATOR_CONFIG]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH"
    )]
    pub(super) config: Option<PathBuf>,
    #[arg(long, global = true, help_heading = "Global options", value_name = "DIR", help = setting_help("data_dir", None))]
    pub(super) data_dir: Option<PathBuf>,
    #[arg(long = "store", global = true, help_heading = "Global options", value_name = "URL", help = setting_help("store_url", None))]
    pub(super) store_url: Option<String>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run a mission (a file or a name in config/missions/) or a single task.
    #[command(after_long_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Serve the HTTP API, WebSocket and metrics, and run what is started through them (and any
    /// missions named here) until stopped.
    Serve(ServeArgs),
    /// Run chains of a fleet: claim queued (or orphaned) chains from the PostgreSQL store
    /// given by --store / store_url, run up to --capacity at once, until stopped.
    Worker(WorkerArgs),
    /// Set up a repository: config/operator.toml and a first mission, every setting commented.
    #[command(after_long_help = INIT_EXAMPLES)]
    Init(InitArgs),
    /// The settings a chain gets after every layer, each with where it came from.
    #[command(after_long_help = CONFIG_EXAMPLES)]
    Config(ConfigArgs),
    /// A full-screen terminal view of a running operator: watch and steer its chains.
    #[command(after_long_help = TUI_EXAMPLES)]
    Tui(TuiArgs),
    /// An MCP server on stdin/stdout, so an agent or chat client can list, start and steer chains
    /// (`claude mcp add operator -- operator mcp`); `operator serve` also offers it at /mcp.
    #[command(after_long_help = MCP_EXAMPLES)]
    Mcp(McpArgs),
    /// Print the API token (creating <data_dir>/api-token, mode 0600, if there is none).
    Token,
    /// The cost ledger: today, this week, all time, per model, mission and chain, and the burn rate.
    Costs {
        /// Print one JSON object instead of tables.
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
        /// The chain's id (`operator list` shows them).
        chain_id: String,
        /// Print the chain as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a mission file without running it; reports every error at once.
    Validate {
        /// A mission file, or the name of one in config/missions/.
        mission: String,
    },
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_long_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    #[command(after_long_help = MAN_EXAMPLES)]
    Man {
        /// Write operator.1 and operator-<command>.1 here instead of printing operator.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
    /// Pick the missions up where a stop left them: resume their interrupted chains, skip
    /// those that ended, start the rest (for restarts under systemd).
    #[arg(long = "continue", conflicts_with_all = ["task", "resume"])]
    pub(super) continue_missions: bool,
    /// Chains of a mission running at once (default: the mission's `concurrency`).
    #[arg(long, value_name = "N")]
    pub(super) concurrency: Option<usize>,
    /// With a PostgreSQL store: queue the chains for the fleet's workers instead of running
    /// them here, print their ids and exit.
    #[arg(long)]
    pub(super) enqueue: bool,
    /// Print the plan, the agent command lines and the prompts; run nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Start even when no credentials for the agent CLI are found (for setups the check cannot
    /// see); a chain then fails at its first session if the CLI has none.
    #[arg(long, env = "OPERATOR_SKIP_CREDENTIALS_CHECK", hide_env_values = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) skip_credentials_check: bool,
    /// At the end, print one JSON object per chain, one per line, on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// Also serve the HTTP API while the run lasts (default address: `listen` in operator.toml,
    /// else 127.0.0.1:3100).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
    pub(super) serve: Option<String>,
    /// Run in the background and show the terminal view in front (`operator tui`); quitting it
    /// asks whether to stop the run or leave it running. The run's output goes to run.log in
    /// the data dir.
    #[arg(long, conflicts_with_all = ["dry_run", "json", "enqueue"])]
    pub(super) tui: bool,
    #[command(flatten)]
    pub(super) settings: SettingFlags,
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

/// Flags that choose and place the agent (`run`, `serve`, `doctor`, `config`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Settings")]
pub(super) struct AgentFlags {
    #[arg(long, value_enum, help = setting_help("agent", None))]
    pub(super) agent: Option<AgentArg>,
    #[arg(long, help = setting_help("model", None))]
    pub(super) model: Option<String>,
    #[arg(long, value_name = "MODE", help = setting_help("permission_mode", None))]
    pub(super) permission_mode: Option<String>,
    #[arg(long, value_name = "DIR", help = setting_help("workdir", None))]
    pub(super) workdir: Option<PathBuf>,
    #[arg(long, value_name = "PATH", help = setting_help("claude_bin", None))]
    pub(super) claude_bin: Option<PathBuf>,
    #[arg(long, value_name = "PATH", help = setting_help("codex_bin", None))]
    pub(super) codex_bin: Option<PathBuf>,
    #[arg(long, value_name = "PATH", help = setting_help("gemini_bin", None))]
    pub(super) gemini_bin: Option<PathBuf>,
}

impl AgentFlags {
    /// These flags as the top configuration layer, each value naming its flag.
    pub(super) fn apply(&self, o: &mut Overrides) {
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(a) = self.agent {
            o.set_from("agent", a.as_str(), "--agent");
        }
        if let Some(m) = &self.model {
            o.set_from("model", m.as_str(), "--model");
        }
        if let Some(p) = &self.permission_mode {
            o.set_from("permission_mode", p.as_str(), "--permission-mode");
        }
        if let Some(w) = &self.workdir {
            o.set_from("workdir", path(w), "--workdir");
        }
        if let Some(b) = &self.claude_bin {
            o.set_from("claude_bin", path(b), "--claude-bin");
        }
        if let Some(b) = &self.codex_bin {
            o.set_from("codex_bin", path(b), "--codex-bin");
        }
        if let Some(b) = &self.gemini_bin {
            o.set_from("gemini_bin", path(b), "--gemini-bin");
        }
    }
}

/// Flags that set a chain's settings (`run`, `serve`, `config`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Settings")]
pub(super) struct SettingFlags {
    #[command(flatten)]
    pub(super) agent: AgentFlags,
    #[arg(long, value_name = "N", help = setting_help("max_turns", None))]
    pub(super) max_turns: Option<u32>,
    #[arg(long, value_name = "N", help = setting_help("max_continuations", None))]
    pub(super) max_continuations: Option<u32>,
    #[arg(long, value_name = "USD", help = setting_help("max_budget_usd", None))]
    pub(super) max_budget_usd: Option<f64>,
    #[arg(long, value_name = "USD", help = setting_help("max_session_cost_usd", None))]
    pub(super) max_session_cost_usd: Option<f64>,
    #[arg(long, value_parser = parse_scenario,
        help = setting_help("sim.scenario", Some("What the sim agent does (demos and tests)")))]
    pub(super) scenario: Option<Scenario>,
    #[arg(long, help = setting_help("no_wait", None))]
    pub(super) no_wait: bool,
    #[arg(long, help = setting_help("auto_push", None))]
    pub(super) auto_push: bool,
    #[arg(long, value_name = "URL", help = setting_help("notify_webhook", None))]
    pub(super) notify_webhook: Option<String>,
}

impl SettingFlags {
    /// These flags as the top configuration layer, each value naming its flag.
    pub(super) fn apply(&self, o: &mut Overrides) {
        self.agent.apply(o);
        if let Some(n) = self.max_turns {
            o.set_from("max_turns", i64::from(n), "--max-turns");
        }
        if let Some(n) = self.max_continuations {
            o.set_from("max_continuations", i64::from(n), "--max-continuations");
        }
        if let Some(b) = self.max_budget_usd {
            o.set_from("max_budget_usd", b, "--max-budget-usd");
        }
        if let Some(b) = self.max_session_cost_usd {
            o.set_from("max_session_cost_usd", b, "--max-session-cost-usd");
        }
        if let Some(s) = self.scenario {
            o.set_from("sim.scenario", s.as_str(), "--scenario");
        }
        if self.no_wait {
            o.set_from("no_wait", true, "--no-wait");
        }
        if self.auto_push {
            o.set_from("auto_push", true, "--auto-push");
        }
        if let Some(u) = &self.notify_webhook {
            o.set_from("notify_webhook", u.as_str(), "--notify-webhook");
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// The agent the chains run.
    #[arg(long, value_enum, default_value_t = AgentArg::Claude)]
    pub(super) agent: AgentArg,
    /// The first mission: what it asks of the agent, and the settings that suit it.
    #[arg(long, value_enum, default_value_t = Preset::Survey)]
    pub(super) preset: Preset,
    /// Overwrite config/operator.toml and the mission when they exist.
    #[arg(long)]
    pub(super) force: bool,
}

/// First missions for common jobs (`operator init --preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Preset {
    /// Read the repository and write NOTES.md: what it is, how to build and test it, what to improve.
    Survey,
    /// A long refactor in small steps, each kept green by the test command (verify gate).
    Refactor,
    /// Run the tests and fix what fails, one failure at a time, until they pass.
    FixTests,
    /// Bring the README and docs in line with the code.
    Docs,
}

#[derive(Debug, Args)]
pub(super) struct TuiArgs {
    /// The operator's API (default: the one serving this data dir, from <data_dir>/api.addr);
    /// the token is OPERATOR_API_TOKEN, else `api_token`, else <data_dir>/api-token.
    #[arg(long, value_name = "URL")]
    pub(super) url: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct McpArgs {
    /// The operator's API (default: the one serving this data dir, from <data_dir>/api.addr, found
    /// again at each call; with none, the read tools read the data dir); the token is
    /// OPERATOR_API_TOKEN, else `api_token`, else <data_dir>/api-token.
    #[arg(long, value_name = "URL")]
    pub(super) url: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ConfigArgs {
    /// A mission file or the name of one in config/missions/ (default: a `run --task` chain).
    pub(super) mission: Option<String>,
    /// Only this chain of the mission.
    pub(super) chain: Option<String>,
    /// Print JSON: {"operator": […], "chains": [{"name", "settings": […]}]}.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) settings: SettingFlags,
}

/// A flag's help: what the setting does (`about`, else the catalog's line), its built-in value,
/// its config key and its variable.
pub(super) fn setting_help(key: &str, about: Option<&str>) -> String {
    let about = about
        .or_else(|| config::catalog::find(key).map(|s| s.about))
        .unwrap_or_default();
    // A switch is off unless given: no `[default: false]`.
    let default = match config::builtin_values().get(key).map(String::as_str) {
        Some("false") | None => String::new(),
        Some(v) => format!(" [default: {}]", v.trim_matches('"')),
    };
    format!(
        "{about}{default} [config: {key}] [env: {}]",
        config::catalog::env_var(key)
    )
}

const RUN_EXAMPLES: &str = "Examples:
  operator run --agent sim --task \"Try it out\"   # the built-in simulated agent: no API key
  operator run survey --dry-run           # the plan, command lines and prompts; nothing runs
  operator run survey --max-budget-usd 3  # config/missions/survey.toml, a tighter budget
  operator run --resume                   # continue the newest chain that did not finish
  operator run --continue survey --serve  # under systemd: pick up where a stop left off, with the API";

const TUI_EXAMPLES: &str = "Examples:
  operator serve &  operator tui         # the operator serving this data dir (also `run --serve`)
  OPERATOR_API_TOKEN=… operator tui --url http://10.0.0.5:3100
  ssh -L 3100:127.0.0.1:3100 box         # then, on your machine: operator tui --url http://127.0.0.1:3100";

const MCP_EXAMPLES: &str = "Examples:
  claude mcp add operator -- operator mcp          # Claude Code, in the repository the operator runs in
  codex mcp add operator -- operator mcp           # Codex CLI
  operator mcp --url http://10.0.0.5:3100          # another machine's operator (OPERATOR_API_TOKEN=…)
  claude mcp add --transport http operator http://127.0.0.1:3100/mcp   # over HTTP, from `operator serve`";

const INIT_EXAMPLES: &str = "Examples:
  operator init                          # claude, a first mission that surveys the repository
  operator init --agent codex --preset fix-tests
  operator init --preset refactor --force";

const CONFIG_EXAMPLES: &str = "Examples:
  operator config                        # what `operator run --task` chains get
  operator config demo                   # each chain of config/missions/demo.toml
  operator config demo main --max-turns 8 --json";

const COMPLETIONS_EXAMPLES: &str = "Examples:
  operator completions bash > ~/.local/share/bash-completion/completions/operator
  operator completions zsh > \"${fpath[1]}/_operator\"
  operator completions fish > ~/.config/fish/completions/operator.fish";

const MAN_EXAMPLES: &str = "Examples:
  operator man | man -l -
  operator man --dir ~/.local/share/man/man1 && man operator-run";

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
    /// Also run one tiny real session (it costs a few cents with a real API).
    #[arg(long)]
    pub(super) session: bool,
    #[command(flatten)]
    pub(super) agent: AgentFlags,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Print one JSON object per chain.
    #[arg(long)]
    pub(super) json: bool,
    /// Include archived chains.
    #[arg(long)]
    pub(super) all: bool,
    /// Only chains in this state (running, complete, failed, …).
    #[arg(long)]
    pub(super) status: Option<String>,
    /// Only the chains of this mission.
    #[arg(long, value_name = "NAME")]
    pub(super) mission: Option<String>,
    /// Only chains started since then: a duration back from now (24h, 7d), a date (2026-12-01,
    /// UTC) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub(super) since: Option<String>,
    /// Chains listed at most.
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

pub(super) fn overrides(cli: &Cli, settings: Option<&SettingFlags>) -> Overrides {
    let mut o = Overrides::default();
    if let Some(d) = &cli.data_dir {
        o.set_from("data_dir", d.display().to_string(), "--data-dir");
    }
    if let Some(u) = &cli.store_url {
        o.set_from("store_url", u.as_str(), "--store");
    }
    if let Some(s) = settings {
        s.apply(&mut o);
    }
    o
}
