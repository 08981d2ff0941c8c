//! Test harness: runs the real `operator` binary in a temp data dir and workdir, and reads its store.
#![allow(dead_code)]

pub mod api;
pub mod cli;
pub mod fake_api;
pub mod fake_gemini;
pub mod fake_openai;
pub mod invariants;
pub mod pg;
pub mod pty;
pub mod records;
pub mod repo;
pub mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use operator::model::ChainRecord;
use operator::store::sqlite::SqliteStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_operator");

/// One operator installation: a data dir and a workdir, both temporary.
pub struct Op {
    pub root: tempfile::TempDir,
}

impl Op {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        Self { root }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn workdir(&self) -> PathBuf {
        self.root.path().join("work")
    }

    /// `operator <args>` in the temp root, with only our own OPERATOR_* variables.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.root.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("OPERATOR_") {
                c.env_remove(k);
            }
        }
        c.env("OPERATOR_DATA_DIR", self.data_dir());
        c.env("OPERATOR_WORKDIR", self.workdir());
        // The tests name the simulated agent explicitly (the default is claude); tests of the
        // claude backend set their own.
        c.env("OPERATOR_AGENT", "sim");
        c.env("OPERATOR_SIM__STEP", "20ms");
        // Retries of failed sessions without the production backoff (1s, 4s, 16s).
        c.env("OPERATOR_RETRY_BACKOFF", "10ms,20ms");
        c.args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run operator")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn operator")
    }

    pub fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    pub async fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.data_dir())
            .await
            .expect("open store")
    }
}

/// The `--json` lines of a run.
pub fn chains(out: &Output) -> Vec<ChainRecord> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("chain json"))
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// Pids of live (non-zombie) processes whose working directory is `dir`.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if cwd == dir && !stat.contains(") Z") {
            out.push(pid);
        }
    }
    out
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("signal");
}

/// `operator <args>` exactly as a new user runs it: the CLI on `PATH`, a key, a fresh HOME, and
/// nothing else of ours but the data dir and workdir (no agent, no permission mode).
pub fn user_cmd(op: &Op, api: &fake_api::FakeApi, bin: &Path, args: &[&str]) -> Command {
    let home = op.root.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE KEY").unwrap();
    let mut cmd = op.cmd(args);
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env_remove("OPERATOR_AGENT")
        .env("PATH", path)
        .env("ANTHROPIC_BASE_URL", &api.url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "2")
        .env("HOME", &home)
        .env_remove("IS_SANDBOX")
        .env_remove("CLAUDECODE");
    cmd
}

/// Starts `cmd` (an `operator run`), waits until its agent runs in `workdir` and `waiting()` says
/// the agent is inside a request, kills the operator with SIGKILL, and asserts that no process is
/// left in `workdir` afterwards.
pub fn kill_9_mid_session(mut cmd: Command, workdir: &Path, mut waiting: impl FnMut() -> bool) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = eventually(Duration::from_secs(60), || {
        !processes_in(workdir).is_empty() && waiting()
    });
    assert!(started, "the CLI never started");
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    let gone = eventually(Duration::from_secs(10), || processes_in(workdir).is_empty());
    assert!(gone, "the CLI outlived its operator");
}
