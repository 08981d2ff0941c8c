//! The `sim` backend: runs `operator sim-agent`, the built-in simulated agent, with a scripted scenario.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, AgentKind, CommandLine, SessionSpec};

/// What the simulated agent does in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Works, then writes `## HANDOFF: COMPLETE`.
    Complete,
    /// Writes an incomplete handoff in sessions 1..=complete_after, COMPLETE after that.
    #[default]
    Incomplete,
    /// Never writes a handoff, not even when asked again.
    NoHandoff,
    /// Forgets the handoff, writes it when asked again.
    Forgetful,
    /// Runs tools until it hits max turns; writes an incomplete handoff when asked.
    MaxTurns,
    /// Ends with an API error result (500) and exit code 1.
    Error,
    /// Exits with code 3 without a result line.
    Crash,
    /// Prints many lines of output slowly, then completes.
    Slow,
    /// Mixes non-JSON and unknown lines into its output, then completes.
    Garbage,
    /// Prints its init line and then nothing, forever.
    Hang,
    /// Writes the very same incomplete handoff every session and changes nothing.
    Stuck,
    /// Writes the very same COMPLETE handoff every session and changes nothing.
    LazyComplete,
    /// The first session in a workdir hits a usage limit that resets 2 s later (a marker
    /// file remembers it); every later one works like `incomplete`.
    UsageLimit,
    /// Fails its first three sessions in a workdir (a counter file remembers), then completes.
    Flaky,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Complete => "complete",
            Scenario::Incomplete => "incomplete",
            Scenario::NoHandoff => "no-handoff",
            Scenario::Forgetful => "forgetful",
            Scenario::MaxTurns => "max-turns",
            Scenario::Error => "error",
            Scenario::Crash => "crash",
            Scenario::Slow => "slow",
            Scenario::Garbage => "garbage",
            Scenario::Hang => "hang",
            Scenario::Stuck => "stuck",
            Scenario::LazyComplete => "lazy-complete",
            Scenario::UsageLimit => "usage-limit",
            Scenario::Flaky => "flaky",
        }
    }

    pub const ALL: [Scenario; 14] = [
        Scenario::Complete,
        Scenario::Incomplete,
        Scenario::NoHandoff,
        Scenario::Forgetful,
        Scenario::MaxTurns,
        Scenario::Error,
        Scenario::Crash,
        Scenario::Slow,
        Scenario::Garbage,
        Scenario::Hang,
        Scenario::Stuck,
        Scenario::LazyComplete,
        Scenario::UsageLimit,
        Scenario::Flaky,
    ];
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scenario `{s}`"))
    }
}

/// A chain's `[chain.sim]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    pub scenario: Scenario,
    /// For `incomplete`: sessions before the one that completes.
    pub complete_after: u32,
    /// Pause between two output events; `0s` is instant.
    #[serde(with = "humantime_serde")]
    pub step: Duration,
    /// Work turns before the final message.
    pub turns: u32,
    /// A file (relative to the workdir) the sim appends a line to in each session, so tests see
    /// a working tree change.
    #[serde(default)]
    pub write: Option<String>,
    /// A shell command the sim runs (in the workdir, in its own process group, and waits for)
    /// at each tool turn, as a real agent runs its Bash tool: soak tests make the operator clean
    /// up after what an agent started.
    #[serde(default)]
    pub tool: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::Incomplete,
            complete_after: 2,
            step: Duration::from_millis(150),
            turns: 3,
            write: None,
            tool: None,
        }
    }
}

/// Runs the operator's own binary as `operator sim-agent …`.
#[derive(Debug, Clone)]
pub struct SimAgent {
    exe: PathBuf,
}

impl SimAgent {
    pub fn current_exe() -> Self {
        Self {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("operator")),
        }
    }
}

impl Agent for SimAgent {
    fn kind(&self) -> AgentKind {
        AgentKind::Sim
    }

    fn command(&self, spec: &SessionSpec) -> CommandLine {
        let sim = &spec.sim;
        let mut args = vec![
            "sim-agent".to_string(),
            "--input-format".into(),
            "stream-json".into(),
            "--output-format".into(),
            "stream-json".into(),
            "--max-turns".into(),
            spec.max_turns.to_string(),
            "--model".into(),
            spec.model.clone(),
            "--scenario".into(),
            sim.scenario.as_str().into(),
            "--complete-after".into(),
            sim.complete_after.to_string(),
            "--session-index".into(),
            spec.index.to_string(),
            "--step".into(),
            humantime::format_duration(sim.step).to_string(),
            "--turns".into(),
            sim.turns.to_string(),
        ];
        if let Some(id) = &spec.resume_id {
            args.extend(["--resume".into(), id.clone()]);
        }
        if let Some(w) = &sim.write {
            args.extend(["--write".into(), w.clone()]);
        }
        if let Some(t) = &sim.tool {
            args.extend(["--tool".into(), t.clone()]);
        }
        CommandLine {
            program: self.exe.clone(),
            args,
            cwd: spec.workdir.clone(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }

    fn preflight(&self) -> Result<(), AgentError> {
        if self.exe.is_file() {
            Ok(())
        } else {
            Err(AgentError::MissingBinary {
                agent: AgentKind::Sim,
                bin: self.exe.display().to_string(),
                hint: "the operator binary itself could not be found".into(),
            })
        }
    }

    fn exit_grace(&self) -> Duration {
        Duration::from_secs(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.as_str().parse::<Scenario>(), Ok(s));
        }
        assert!("compelte".parse::<Scenario>().is_err());
    }

    #[test]
    fn command_carries_the_script() {
        let spec = SessionSpec {
            chain_id: "c".into(),
            index: 3,
            prompt: String::new(),
            system_prompt: String::new(),
            model: "sonnet".into(),
            max_turns: 7,
            permission_mode: "default".into(),
            resume_id: None,
            workdir: "/tmp".into(),
            sim: SimConfig {
                scenario: Scenario::MaxTurns,
                complete_after: 1,
                step: Duration::from_millis(250),
                turns: 2,
                write: None,
                tool: Some("sleep 0.1".into()),
            },
        };
        let c = SimAgent {
            exe: "/bin/op".into(),
        }
        .command(&spec);
        let line = c.args.join(" ");
        assert!(line.starts_with("sim-agent --input-format stream-json"));
        assert!(line.contains("--scenario max-turns"));
        assert!(line.contains("--session-index 3"));
        assert!(line.contains("--step 250ms"));
        assert!(line.contains("--max-turns 7"));
        let tool = c.args.iter().position(|a| a == "--tool");
        assert_eq!(tool.map(|i| c.args[i + 1].as_str()), Some("sleep 0.1"));
    }
}
