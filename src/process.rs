//! Agent processes: spawned in their own process group, tracked in a registry, and killed as a group so
//! that nothing an agent started outlives its session or the operator.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::agent::CommandLine;

/// Process groups of live agents, so an immediate stop can kill them all.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<HashSet<i32>>>);

impl Registry {
    fn insert(&self, pgid: i32) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(pgid);
        }
    }

    fn remove(&self, pgid: i32) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&pgid);
        }
    }

    /// Sends `sig` to every registered group.
    pub fn signal_all(&self, sig: Signal) {
        let groups: Vec<i32> = self
            .0
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for g in groups {
            let _ = killpg(Pid::from_raw(g), sig);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Owns an agent's process group: dropping it kills the whole group.
#[derive(Debug)]
pub struct Group {
    pgid: Option<i32>,
    registry: Registry,
}

impl Group {
    pub fn signal(&self, sig: Signal) {
        if let Some(g) = self.pgid {
            let _ = killpg(Pid::from_raw(g), sig);
        }
    }

    /// Kills whatever is left of the group (the leader has exited) and forgets it.
    pub fn finish(&mut self) {
        if let Some(g) = self.pgid.take() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            self.registry.remove(g);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Exit code of `operator agent-exec` when the agent program could not be executed.
pub const EXEC_FAILED: i32 = 127;

/// Spawns `cmd` with piped stdio in a new process group. The agent is started through
/// `operator agent-exec`, which asks the kernel to kill it if the operator dies (even by
/// `kill -9`) and then becomes the agent (`exec`), so no agent outlives its operator.
/// `wrapper` is the operator binary (`None`: run the program directly, as unit tests do).
pub fn spawn(
    cmd: &CommandLine,
    registry: &Registry,
    wrapper: Option<&std::path::Path>,
) -> std::io::Result<(Child, Group)> {
    let mut c = match wrapper {
        Some(me) => {
            let mut c = Command::new(me);
            c.arg("agent-exec")
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--")
                .arg(&cmd.program);
            c
        }
        None => Command::new(&cmd.program),
    };
    c.args(&cmd.args)
        .current_dir(&cmd.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in &cmd.env_remove {
        c.env_remove(k);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let child = c.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    if let Some(g) = pgid {
        registry.insert(g);
    }
    Ok((
        child,
        Group {
            pgid,
            registry: registry.clone(),
        },
    ))
}

/// The arguments of `operator agent-exec --parent PID -- PROGRAM ARGS…` exactly as
/// [`spawn`] writes them: parent, program, args. The binary checks them before anything else
/// starts (no argument parser, no runtime), because every session pays for this start.
pub fn agent_exec_args(
    argv: &[std::ffi::OsString],
) -> Option<(u32, &std::ffi::OsStr, &[std::ffi::OsString])> {
    match argv {
        [_, cmd, flag, parent, dashes, program, args @ ..]
            if cmd == "agent-exec" && flag == "--parent" && dashes == "--" =>
        {
            Some((parent.to_str()?.parse().ok()?, program.as_os_str(), args))
        }
        _ => None,
    }
}

/// `operator agent-exec`: arrange to be killed when the parent operator dies, then become
/// `program`. Returns only when that fails.
pub fn agent_exec(parent: u32, program: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("operator agent-exec: cannot set the parent-death signal: {e}");
    }
    // The operator may have died before the line above: then nobody would kill us.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return 1;
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "operator agent-exec: cannot run {}: {err}",
        program.to_string_lossy()
    );
    EXEC_FAILED
}

/// Is a process with this pid alive (and ours to signal)?
pub fn is_alive(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Is `pid` another operator process that is still running? A pid recorded by an
/// operator that died may since belong to an unrelated program: check its command line.
pub fn is_other_live_operator(pid: u32) -> bool {
    if pid == std::process::id() || !is_alive(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains("operator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_exec_args_are_recognised_only_in_the_spawned_shape() {
        let v = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let argv = v(&[
            "operator",
            "agent-exec",
            "--parent",
            "42",
            "--",
            "claude",
            "-p",
            "--",
        ]);
        let (parent, program, args) = agent_exec_args(&argv).unwrap();
        assert_eq!((parent, program), (42, std::ffi::OsStr::new("claude")));
        assert_eq!(args, &v(&["-p", "--"])[..]);
        // No program, a bad pid, another order, another subcommand: left to the parser.
        assert!(agent_exec_args(&v(&["operator", "agent-exec", "--parent", "42", "--"])).is_none());
        assert!(
            agent_exec_args(&v(&["operator", "agent-exec", "--parent", "x", "--", "a"])).is_none()
        );
        assert!(
            agent_exec_args(&v(&["operator", "agent-exec", "--", "a", "--parent", "1"])).is_none()
        );
        assert!(agent_exec_args(&v(&["operator", "run", "--parent", "1", "--", "a"])).is_none());
    }

    #[tokio::test]
    async fn dropping_the_group_kills_grandchildren() {
        let reg = Registry::default();
        let cmd = CommandLine {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30 & echo $!; wait".into()],
            cwd: std::env::temp_dir(),
            env: vec![],
            env_remove: vec![],
        };
        let (mut child, group) = spawn(&cmd, &reg, None).unwrap();
        assert_eq!(reg.len(), 1);
        use tokio::io::AsyncBufReadExt;
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let grandchild: u32 = out
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(is_alive(grandchild));
        drop(group);
        assert!(reg.is_empty());
        let _ = child.wait().await;
        // Reaped by init eventually; poll until it is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_alive(grandchild) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // A zombie still answers kill(0); check /proc state instead.
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "grandchild still running: {state}"
        );
    }
}
