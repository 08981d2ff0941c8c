//! Completion you can trust: verify gates run after the agent says COMPLETE, a stale COMPLETE is not
//! believed, and progress is measured from facts (the working tree, the handoff's Remaining section,
//! the gates' results) so that sessions going nowhere stop the chain.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// Output kept from a failing gate, for the next prompt and the record.
pub const GATE_TAIL_CHARS: usize = 3_000;
/// Files hashed at most where there is no git repository.
const MAX_FILES: usize = 20_000;

pub use crate::model::GateResult;

/// Runs one gate with `sh -c` in `workdir`, in its own process group, within `timeout`.
pub async fn run_gate(
    command: &str,
    workdir: &Path,
    timeout: Duration,
    session: u32,
) -> GateResult {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec 2>&1; {command}"))
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let result = |passed, exit_code, out: &str| GateResult {
        command: command.to_string(),
        passed,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        output_tail: crate::redact::redact(crate::handoff::tail_chars(out, GATE_TAIL_CHARS))
            .into_owned(),
        session,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return result(false, None, &format!("could not start `sh`: {e}")),
    };
    let mut out = Vec::new();
    let mut stdout = child.stdout.take();
    let run = async {
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) => {
            let text = String::from_utf8_lossy(&out).into_owned();
            result(status.success(), status.code(), &text)
        }
        Ok(Err(e)) => result(false, None, &format!("could not wait for it: {e}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            result(
                false,
                None,
                &format!(
                    "{text}\n(stopped after {})",
                    humantime::format_duration(timeout)
                ),
            )
        }
    }
}

/// What the next session is told about failed gates.
pub fn failure_note(failed: &[&GateResult]) -> String {
    let mut n = String::from(
        "The chain is not complete: after your COMPLETE handoff the operator ran the mission's verify commands, and these failed:\n",
    );
    for g in failed {
        let how = g
            .exit_code
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "stopped or could not run".into());
        n.push_str(&format!(
            "\n`{}` ({how}); the end of its output:\n```\n{}\n```\n",
            g.command,
            g.output_tail.trim_end()
        ));
    }
    n.push_str("\nMake them pass, then write your handoff (COMPLETE only when they pass).");
    n
}

/// A summary of the working tree, compared before and after a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// `git` (HEAD, status, and the changed files' sizes and times) or `files` (every file's
    /// path, size and modification time).
    pub source: &'static str,
    pub hash: u64,
}

/// Fingerprints `workdir`, leaving out `skip` (the data dir) and `.git`. `repo` is the top of
/// the git repository the chain works in, if any (known from its workspace, so no process is
/// spawned to find out).
pub async fn fingerprint(workdir: PathBuf, skip: PathBuf, repo: Option<PathBuf>) -> Fingerprint {
    tokio::task::spawn_blocking(move || fingerprint_blocking(&workdir, &skip, repo.as_deref()))
        .await
        .unwrap_or(Fingerprint {
            source: "none",
            hash: 0,
        })
}

fn git_out(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stat_hash(h: &mut DefaultHasher, p: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        m.len().hash(h);
        if let Ok(t) = m.modified()
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            d.as_nanos().hash(h);
        }
    }
}

/// The path of one `git status --porcelain=v2` entry.
fn v2_path(line: &str) -> Option<&str> {
    let fields = |n: usize| line.splitn(n, ' ').nth(n - 1);
    match line.as_bytes().first()? {
        b'1' => fields(9),
        b'2' => fields(10).and_then(|p| p.split('\t').next()),
        b'u' => fields(11),
        b'?' => line.get(2..),
        _ => None,
    }
}

fn fingerprint_blocking(workdir: &Path, skip: &Path, repo: Option<&Path>) -> Fingerprint {
    let mut h = DefaultHasher::new();
    // Compared with paths under the (canonical) repository and workdir.
    let skip = &skip.canonicalize().unwrap_or_else(|_| skip.to_path_buf());
    let workdir = &workdir
        .canonicalize()
        .unwrap_or_else(|_| workdir.to_path_buf());
    // One `git status` gives HEAD (`# branch.oid`) and every change.
    let repo = repo.map(|r| r.canonicalize().unwrap_or_else(|_| r.to_path_buf()));
    if let Some(top) = repo.as_deref()
        && let Some(status) = git_out(
            top,
            &[
                "status",
                "--porcelain=v2",
                "--branch",
                "--untracked-files=all",
            ],
        )
    {
        for line in status.lines() {
            if line.starts_with("# branch.oid") {
                line.hash(&mut h);
                continue;
            }
            let Some(path) = v2_path(line).map(|p| top.join(p)) else {
                continue;
            };
            if path.starts_with(skip) {
                continue;
            }
            line.hash(&mut h);
            stat_hash(&mut h, &path);
        }
        return Fingerprint {
            source: "git",
            hash: h.finish(),
        };
    }
    let mut stack = vec![workdir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if &p == skip || p.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => files.push(p),
                Err(_) => {}
            }
            if files.len() >= MAX_FILES {
                break;
            }
        }
    }
    files.sort();
    for f in &files {
        f.hash(&mut h);
        stat_hash(&mut h, f);
    }
    Fingerprint {
        source: "files",
        hash: h.finish(),
    }
}

/// A handoff without its heading (`## HANDOFF` or `## HANDOFF: COMPLETE`), whitespace folded: two
/// handoffs that say the same thing compare equal.
pub fn body(handoff: &str) -> String {
    handoff
        .lines()
        .filter(|l| !l.trim_start().starts_with("## HANDOFF"))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Remaining section, whitespace folded.
pub fn remaining(handoff: &str) -> String {
    crate::handoff::parse(handoff)
        .and_then(|h| h.remaining)
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What one session changed, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub tree_changed: bool,
    pub remaining_changed: bool,
    pub gates_changed: bool,
}

impl Progress {
    pub fn made(&self) -> bool {
        self.tree_changed || self.remaining_changed || self.gates_changed
    }
}

/// Why the chain stops for lack of progress, saying what was measured.
pub fn no_progress_reason(sessions: u32, source: &str) -> String {
    format!(
        "no-progress: {sessions} sessions in a row changed nothing in the working tree (measured by {}), left the handoff's Remaining section as it was, and changed no verify result",
        if source == "git" {
            "git: HEAD, status and the changed files"
        } else {
            "file sizes and modification times"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gates_pass_fail_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let ok = run_gate("echo fine", dir.path(), Duration::from_secs(10), 1).await;
        assert!(ok.passed && ok.exit_code == Some(0));
        assert_eq!(ok.output_tail.trim(), "fine");
        let bad = run_gate(
            "echo broken >&2; exit 3",
            dir.path(),
            Duration::from_secs(10),
            1,
        )
        .await;
        assert!(!bad.passed && bad.exit_code == Some(3));
        assert!(
            bad.output_tail.contains("broken"),
            "stderr is kept: {bad:?}"
        );
        let slow = run_gate("sleep 30", dir.path(), Duration::from_millis(200), 2).await;
        assert!(!slow.passed && slow.exit_code.is_none());
        assert!(slow.output_tail.contains("stopped after"));
        let note = failure_note(&[&bad]);
        assert!(
            note.contains("`echo broken >&2; exit 3` (exit code 3)") && note.contains("broken")
        );
    }

    #[tokio::test]
    async fn fingerprints_see_file_changes_but_not_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        // The same in a git repository, with a data dir given as a relative path.
        let repo = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .current_dir(repo.path())
                .args(args)
                .output()
                .unwrap()
        };
        git(&["init", "-q"]);
        std::fs::write(repo.path().join("a.txt"), "1").unwrap();
        let data = repo.path().join(".operator");
        std::fs::create_dir_all(&data).unwrap();
        let top = Some(repo.path().to_path_buf());
        let g = fingerprint(repo.path().into(), data.clone(), top.clone()).await;
        assert_eq!(g.source, "git");
        std::fs::write(data.join("operator.db"), "changes every session").unwrap();
        assert_eq!(
            fingerprint(repo.path().into(), data.clone(), top.clone()).await,
            g
        );
        std::fs::write(repo.path().join("a.txt"), "22").unwrap();
        assert_ne!(fingerprint(repo.path().into(), data, top).await, g);
        let data = dir.path().join(".operator");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(dir.path().join("a.txt"), "1").unwrap();
        let a = fingerprint(dir.path().into(), data.clone(), None).await;
        assert_eq!(a.source, "files");
        std::fs::write(data.join("x"), "noise").unwrap();
        assert_eq!(fingerprint(dir.path().into(), data.clone(), None).await, a);
        std::fs::write(dir.path().join("b.txt"), "2").unwrap();
        assert_ne!(fingerprint(dir.path().into(), data, None).await, a);
        assert_eq!(v2_path("? new file.txt"), Some("new file.txt"));
        assert_eq!(
            v2_path("1 .M N... 100644 100644 100644 abc def src/a b.rs"),
            Some("src/a b.rs")
        );
    }

    #[test]
    fn handoff_bodies_and_remaining_compare_by_content() {
        let a = "## HANDOFF\n### Accomplished\nX done.\n### Remaining\n- Y\n";
        let b = "## HANDOFF: COMPLETE\n### Accomplished\nX   done.\n\n### Remaining\n- Y\n";
        assert_eq!(body(a), body(b));
        assert_eq!(remaining(a), "- Y");
        assert!(no_progress_reason(3, "git").starts_with("no-progress: 3 sessions"));
    }
}
