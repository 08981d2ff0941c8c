//! Agent processes: spawned in their own process group, tracked in a registry, and killed as a group so
//! that nothing an agent started outlives its session or the operator.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::agent::CommandLine;

/// Process groups of live agents, so an immediate stop can kill them all; with a [guard]
/// (`Registry::guarded`), they are killed even when the operator dies by `kill -9`.
///
/// [guard]: guard_main
#[derive(Debug, Clone, Default)]
pub struct Registry {
    groups: Arc<Mutex<HashSet<i32>>>,
    guard: Option<Arc<Mutex<std::process::ChildStdin>>>,
}

impl Registry {
    /// A registry whose groups a guard process (`exe guard`) also knows: when the operator's
    /// end of the guard's stdin closes — the operator has exited, however it died — the guard
    /// kills every group still registered. The parent-death signal reaches only the agent's own
    /// process; this reaches what it started too (the Codex CLI's native binary under its Node
    /// launcher, a build the agent left running).
    pub fn guarded(exe: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(exe)
            .arg("guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C at the terminal is the operator's to handle, not its.
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the guard has no stdin"))?;
        // Reaped by whoever outlives it; it ends after the operator.
        drop(child);
        Ok(Self {
            groups: Arc::default(),
            guard: Some(Arc::new(Mutex::new(stdin))),
        })
    }

    fn tell_guard(&self, line: String) {
        use std::io::Write as _;
        if let Some(g) = &self.guard
            && let Ok(mut stdin) = g.lock()
        {
            // A few bytes into a pipe the guard drains; a dead guard only loses its watch.
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    fn insert(&self, pgid: i32) {
        if let Ok(mut set) = self.groups.lock() {
            set.insert(pgid);
        }
        self.tell_guard(format!("+{pgid}\n"));
    }

    fn remove(&self, pgid: i32) {
        if let Ok(mut set) = self.groups.lock() {
            set.remove(&pgid);
        }
        self.tell_guard(format!("-{pgid}\n"));
    }

    /// Sends `sig` to every registered group.
    pub fn signal_all(&self, sig: Signal) {
        let groups: Vec<i32> = self
            .groups
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for g in groups {
            let _ = killpg(Pid::from_raw(g), sig);
        }
    }

    pub fn len(&self) -> usize {
        self.groups.lock().map(|s| s.len()).unwrap_or(0)
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

/// `operator guard`: reads `+<pgid>` / `-<pgid>` lines until its stdin closes, then kills every
/// group still listed. Returns how many it killed.
pub fn guard_main(input: impl std::io::BufRead) -> usize {
    // Ctrl-C and a closed terminal are the operator's business; the guard waits for its EOF.
    let noted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(sig, noted.clone());
    }
    let groups = guarded_groups(input);
    for g in &groups {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    groups.len()
}

/// The groups still listed when `input` ends.
fn guarded_groups(input: impl std::io::BufRead) -> HashSet<i32> {
    let mut groups = HashSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (add, n) = match line.split_at_checked(1) {
            Some(("+", n)) => (true, n),
            Some(("-", n)) => (false, n),
            _ => continue,
        };
        // Never a group id of 1 or less: killpg(0) would be the guard's own group.
        match n.trim().parse::<i32>() {
            Ok(g) if g > 1 && add => {
                groups.insert(g);
            }
            Ok(g) => {
                groups.remove(&g);
            }
            Err(_) => {}
        }
    }
    groups
}

/// Exit status of an agent that could not be started at all: a shell's "command not found",
/// as when the interpreter of a script agent (`node` for the Claude Code CLI) is missing.
pub const EXEC_FAILED: i32 = 127;

/// Spawns `cmd` with piped stdio in a new process group, with the parent-death signal set
/// (`prctl(PR_SET_PDEATHSIG, SIGKILL)` between fork and exec, by `ur-taking-me-with-you`):
/// the kernel kills the agent if the operator dies, even by `kill -9`, so no agent outlives
/// its operator. (The signal follows the thread that spawned it; agents are spawned by the
/// session actors on the runtime's worker threads, which live as long as the operator.)
pub fn spawn(cmd: &CommandLine, registry: &Registry) -> std::io::Result<(Child, Group)> {
    let mut c = Command::new(&cmd.program);
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
    let child = ur_taking_me_with_you::spawn_dying_with_parent_async(c)?;
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

/// The environment variable every agent is started with (`<chain id>/<session index>`): what the
/// agent starts inherits it, so a tool process left behind by a dead operator (a build, a test
/// run, a `sleep 300` in the background, whose leader is gone) is still found by it.
pub const SESSION_MARK: &str = "SUPERVISED_BY_OPERATOR";

/// Processes whose environment carries `SESSION_MARK=<mark>` (read from `/proc/<pid>/environ`).
pub fn marked(mark: &str) -> Vec<i32> {
    let needle = format!("{SESSION_MARK}={mark}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
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
    fn the_guard_kills_the_groups_still_listed_when_its_input_ends() {
        let input = "+100\n+200\n-100\ngarbage\n+1\n+0\n+-5\n+300\n";
        let groups = guarded_groups(std::io::Cursor::new(input));
        assert_eq!(groups, HashSet::from([200, 300]));
    }

    #[test]
    fn an_agent_dies_with_the_thread_that_spawned_it() {
        // The parent-death signal fires when the spawning thread ends (and so when the
        // operator dies): spawn from a thread that then exits, keeping the child's handles
        // alive (forgotten) so that nothing of ours kills it.
        let pid = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let cmd = CommandLine {
                    program: "/bin/sleep".into(),
                    args: vec!["20".into()],
                    cwd: std::env::temp_dir(),
                    env: vec![],
                    env_remove: vec![],
                };
                let (child, group) = spawn(&cmd, &Registry::default()).unwrap();
                let pid = child.id().unwrap();
                std::mem::forget(child);
                std::mem::forget(group);
                pid
            })
        })
        .join()
        .unwrap();
        let status = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(Pid::from_raw(pid as i32), Signal::SIGKILL, false),
            "the agent should have been killed when its spawning thread ended"
        );
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
        let (mut child, group) = spawn(&cmd, &reg).unwrap();
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
