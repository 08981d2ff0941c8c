//! `operator run --tui` (and `serve --tui`): the run started as a process of its own in the
//! background, serving its API on loopback, with the terminal view in front; quitting the view
//! asks whether to stop the run or leave it running under its pid file.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use super::{UsageError, api_token, exit};
use crate::config;
use crate::datadir::DataDir;

/// How long the run may take to serve its API before the view gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The run's arguments: this command line without `--tui`, serving on a free loopback port
/// unless it already serves.
fn run_args(args: impl Iterator<Item = OsString>, serves: bool) -> Vec<OsString> {
    let mut out: Vec<OsString> = args.filter(|a| a != "--tui").collect();
    if !serves {
        out.push("--serve=127.0.0.1:0".into());
    }
    out
}

/// The last `n` lines of a file written after byte `from` (this run's part of the log), for an
/// error message.
fn tail(path: &Path, from: u64, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(i32::from(exit::INTERNAL))
}

/// Starts the run, shows the view, and ends as the user chose.
pub(super) async fn run_with_view(op: &config::OperatorSettings, serves: bool) -> Result<u8> {
    if !std::io::stdout().is_terminal() {
        return Err(UsageError(
            "--tui needs a terminal on stdout; without one, run without --tui (and `operator tui` from a terminal later)".into(),
        )
        .into());
    }
    let dir = DataDir::new(&op.data_dir);
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating the data dir {}", dir.path().display()))?;
    let log_path = dir.run_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let start = log.metadata().map_or(0, |m| m.len());
    let exe = std::env::current_exe().context("finding the operator binary")?;
    // Its own process group: Ctrl-C in the view's terminal is the view's, not the run's.
    let mut child = Command::new(exe)
        .args(run_args(std::env::args_os().skip(1), serves))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("the run's log")?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .context("starting the run")?;
    let pid = child.id().unwrap_or(0);
    let url = match wait_served(&mut child, &dir, op, pid).await {
        Ok(url) => url,
        Err(code) => {
            eprintln!(
                "error: the run ended before it served its API (exit code {code}); the end of its log ({}):\n{}",
                log_path.display(),
                tail(&log_path, start, 20)
            );
            return Ok(u8::try_from(code).unwrap_or(exit::INTERNAL));
        }
    };
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(None);
    let waiter = tokio::spawn(async move {
        let code = child
            .wait()
            .await
            .map_or(i32::from(exit::INTERNAL), code_of);
        let _ = ended_tx.send(Some(code));
        code
    });
    let target = crate::tui::Target {
        url,
        token: api_token(op),
    };
    let own = crate::tui::Owned {
        pid,
        ended: ended_rx.clone(),
    };
    let outcome = crate::tui::run(target, crate::tui::Options::from_env(), Some(own)).await?;
    let ended = *ended_rx.borrow();
    match (outcome, ended) {
        (_, Some(code)) => {
            eprintln!(
                "the run ended (exit code {code}); its log: {}",
                log_path.display()
            );
            Ok(u8::try_from(code).unwrap_or(exit::INTERNAL))
        }
        (crate::tui::Outcome::StopRun, None) => {
            eprintln!("stopping the run (pid {pid}): running sessions write their handoffs…");
            let code = waiter.await.unwrap_or(i32::from(exit::INTERNAL));
            eprintln!(
                "the run stopped (exit code {code}); its log: {}",
                log_path.display()
            );
            Ok(u8::try_from(code).unwrap_or(exit::INTERNAL))
        }
        (crate::tui::Outcome::Quit, None) => {
            eprintln!(
                "the run goes on in the background (pid {pid}, log: {}): `operator tui` shows it again, `operator stop` stops it",
                log_path.display()
            );
            Ok(exit::OK)
        }
    }
}

/// Waits until the run (`pid`) serves its API on this data dir: its URL, or the run's exit code
/// when it ended first (or did not serve in time, and was stopped).
async fn wait_served(
    child: &mut tokio::process::Child,
    dir: &DataDir,
    op: &config::OperatorSettings,
    pid: u32,
) -> Result<String, i32> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|_| i32::from(exit::INTERNAL))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(code_of(status));
        }
        // api.addr may be an earlier operator's: the one that answers must be this run.
        if let Some(url) = dir.api_url() {
            let mut req = http.get(format!(
                "{}/api/orchestrator/status",
                url.trim_end_matches('/')
            ));
            if let Some(t) = api_token(op) {
                req = req.bearer_auth(t);
            }
            if let Ok(r) = req.send().await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["pid"].as_u64() == Some(u64::from(pid))
            {
                return Ok(url);
            }
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            eprintln!("error: the run did not serve its API within {START_TIMEOUT:?}");
            return Err(i32::from(exit::INTERNAL));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_run_gets_the_command_line_without_tui_and_serves_on_loopback() {
        assert_eq!(
            run_args(args(&["run", "--tui", "survey"]).into_iter(), false),
            args(&["run", "survey", "--serve=127.0.0.1:0"])
        );
        assert_eq!(
            run_args(
                args(&["run", "--serve", "127.0.0.1:4000", "--tui", "m"]).into_iter(),
                true
            ),
            args(&["run", "--serve", "127.0.0.1:4000", "m"])
        );
    }
}
