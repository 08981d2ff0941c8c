//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, killed with the test process (parent-death signal, set by `setpriv`), its data
//! dir removed by the next run. Run as the `postgres` user when the tests run as root (the
//! server refuses root). `.ci/run` installs Debian's `postgresql`; with `CI=true` a missing
//! server fails the tests instead of skipping them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running server.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Mutex<Option<Child>>,
}

/// The directory with `initdb` and `postgres`: `$OPERATOR_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("OPERATOR_TEST_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The `postgres` user's uid and gid when we are root (the server refuses to run as root).
fn owner_ids() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id of the postgres user")
    };
    Some((id("-u"), id("-g")))
}

/// `setpriv` arguments that run a command as `postgres` when we are root.
fn as_server_user() -> Vec<String> {
    match owner_ids() {
        None => Vec::new(),
        Some((uid, gid)) => vec![
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ],
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Removes data dirs left by earlier test processes that are gone.
fn sweep_old_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("operator-pg-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The server's binaries, or `None` when PostgreSQL is not installed (a panic under CI).
pub fn available() -> Option<PathBuf> {
    let found = bin_dir();
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but PostgreSQL is missing: .ci/run installs Debian's postgresql (or set OPERATOR_TEST_PG_BIN)"
            );
        }
        eprintln!(
            "\n!!! SKIPPED: PostgreSQL is not installed; apt-get install postgresql (see .ci/run) !!!\n"
        );
    }
    found
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// Creates a cluster and starts a server on it.
    pub fn start(bin: &Path) -> PgServer {
        sweep_old_dirs();
        let dir = std::env::temp_dir().join(format!(
            "operator-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if let Some((uid, gid)) = owner_ids() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the pg dir");
        }
        let out = Command::new("setpriv")
            .args(as_server_user())
            .arg(bin.join("initdb"))
            .args(["-U", "operator", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "-D"])
            .arg(dir.join("data"))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = PgServer {
            port: free_port(),
            dir,
            bin: bin.to_path_buf(),
            child: Mutex::new(None),
        };
        server.resume();
        server
    }

    /// Starts the server (again) on the same data dir and port, and waits until it answers.
    pub fn resume(&self) {
        let mut args = as_server_user();
        args.push("--pdeathsig=KILL".into());
        args.push(self.bin.join("postgres").display().to_string());
        args.extend(
            [
                "-D",
                &self.dir.join("data").display().to_string(),
                "-p",
                &self.port.to_string(),
                "-h",
                "127.0.0.1",
                "-k",
                &self.dir.display().to_string(),
                // No fsync: only a machine crash could lose data, and tests never survive one.
                // Commits stay synchronous, so a crash of the server (tests stop it with
                // SIGQUIT) keeps everything committed, as in production.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ]
            .map(String::from),
        );
        // The parent-death signal follows the thread that spawned the server: a thread that
        // lives as long as the test process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = Command::new("setpriv")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let _ = tx.send(child);
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().expect("spawner").expect("start postgres");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (SIGQUIT: no shutdown checkpoint, like a crash).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
            let _ = c.wait();
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://operator@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database on this server.
    pub async fn fresh_db(&self) -> String {
        use sqlx::Connection;
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server shared by a test binary (started on first use), or `None` without PostgreSQL.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| available().map(|bin| PgServer::start(&bin)))
        .as_ref()
}
