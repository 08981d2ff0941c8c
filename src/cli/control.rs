//! Steering a running operator from another terminal: `pause`, `resume`, `stop` (signals to the pid in
//! the data dir) and `approve|deny` (answers written to the store).

#[allow(unused_imports)]
use super::*;

/// `operator approve|deny <chain> [<approval>]`: answers a held tool call in the store, where the
/// running chain finds it within half a second.
pub(super) async fn answer_approval(
    op: &config::OperatorSettings,
    a: &AnswerArgs,
    approve: bool,
) -> Result<u8> {
    if !is_valid_chain_id(&a.chain) {
        return Err(UsageError(format!("`{}` is not a chain id", a.chain)).into());
    }
    let store = open_store(op).await?;
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

/// The pid in a pid file, if that process is alive and is an operator (stale files are ignored).
pub(super) fn read_live_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    crate::process::is_other_live_operator(pid).then_some(pid)
}

pub(super) async fn pause(op: &config::OperatorSettings, now: bool) -> Result<u8> {
    let data_dir = op.data_dir.as_path();
    if now && read_live_pid(&daemon::pid_file(data_dir)).is_some() {
        // The running operator reads this when SIGUSR1 arrives.
        open_store(op)
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

pub(super) fn signal_running(
    data_dir: &Path,
    sig: nix::sys::signal::Signal,
    what: &str,
) -> Result<u8> {
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
