//! Real git repositories for the tests: a repository in the op's workdir, a bare one as its
//! `origin`, git commands that must succeed, commit subjects, and a chain's journal.

use std::path::{Path, PathBuf};
use std::process::Command;

use operator::store::Store;

use super::Op;

/// `git <args>` in `dir`, which must succeed; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository in the op's workdir with one commit (and no identity of its own unless asked).
pub fn repo(op: &Op, identity: bool) {
    let w = op.workdir();
    git(&w, &["init", "-q", "-b", "main"]);
    if identity {
        git(&w, &["config", "user.name", "Repo Owner"]);
        git(&w, &["config", "user.email", "owner@example.com"]);
    }
    std::fs::write(w.join("README.md"), "hello\n").unwrap();
    git(&w, &["add", "README.md"]);
    git(
        &w,
        &[
            "-c",
            "user.name=Setup",
            "-c",
            "user.email=setup@example.com",
            "commit",
            "-q",
            "-m",
            "initial",
        ],
    );
}

/// A bare repository beside the workdir, as `origin`.
pub fn remote(op: &Op) -> PathBuf {
    let r = op.root.path().join("remote.git");
    git(
        op.root.path(),
        &["init", "-q", "--bare", "-b", "main", r.to_str().unwrap()],
    );
    git(
        &op.workdir(),
        &["remote", "add", "origin", r.to_str().unwrap()],
    );
    r
}

/// The subjects of `rev`'s history, newest first.
pub fn subjects(dir: &Path, rev: &str) -> Vec<String> {
    git(dir, &["log", "--format=%s", rev])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A chain's journal: each event's kind and data.
pub async fn events_in(data_dir: &Path, id: &str) -> Vec<(String, serde_json::Value)> {
    operator::store::sqlite::SqliteStore::open(data_dir)
        .await
        .unwrap()
        .events(Some(id), 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.data))
        .collect()
}

/// An executable script at `path`.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
