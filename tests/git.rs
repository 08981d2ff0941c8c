//! Git steps on real repositories in temp dirs, with a bare repository as the remote: commits per session,
//! nothing from the data dir or excluded paths, pushes only on the right outcomes and with a remote,
//! branches from awkward tasks, pull requests through a stand-in `gh`, and worktrees per chain.

mod common;

use common::repo::{events_in, git, remote, repo, subjects};
use common::{Op, chains, stderr};
use operator::model::ChainStatus;

fn mission(op: &Op, body: &str) -> String {
    op.write("mission.toml", body).display().to_string()
}

async fn event_kinds(op: &Op, id: &str) -> Vec<(String, serde_json::Value)> {
    events_in(&op.data_dir(), id).await
}

#[tokio::test]
async fn each_session_is_committed_with_its_handoff_and_nothing_else() {
    let op = Op::new();
    repo(&op, false);
    let w = op.workdir();
    std::fs::write(w.join("debug.log"), "noise\n").unwrap();
    let m = mission(
        &op,
        r#"
name = "m"
[defaults]
sim = { scenario = "incomplete", complete_after = 2, write = "notes.md" }
exclude = ["*.log"]
commit_author = "Night Shift <night@example.com>"
[[chain]]
name = "porter"
task = "Port the parser"
"#,
    );
    // The data dir inside the repository: it must never be committed.
    let out = op
        .cmd(&["run", &m, "--json"])
        .env("OPERATOR_DATA_DIR", w.join(".operator"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.sessions.len(), 3);
    let subj = subjects(&w, "HEAD");
    assert_eq!(subj.len(), 4, "{subj:?}");
    assert_eq!(subj[3], "initial");
    for (i, s) in subj[..3].iter().rev().enumerate() {
        assert!(
            s.starts_with(&format!("operator: porter session {}: ", i + 1)),
            "{s}"
        );
        assert!(s.chars().count() <= 72, "{s}");
    }
    let body = git(&w, &["log", "-1", "--format=%B"]);
    assert!(body.contains("## HANDOFF"), "{body}");
    assert!(body.contains(&format!("Operator-Chain: {}", c.id)));
    assert_eq!(
        git(&w, &["log", "-1", "--format=%an <%ae>"]).trim(),
        "Night Shift <night@example.com>"
    );
    let files = git(&w, &["ls-files"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "notes.md"],
        "{files}"
    );
    let notes = git(&w, &["show", "HEAD:notes.md"]);
    assert_eq!(notes.lines().count(), 3);
    // One commit per session, each with the session's own line.
    assert_eq!(git(&w, &["show", "HEAD~2:notes.md"]).lines().count(), 1);
    let kinds = events_in(&w.join(".operator"), &c.id).await;
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "git:committed").count(),
        3
    );
    assert!(
        !kinds.iter().any(|(k, _)| k == "git:dirty"),
        "an excluded file is not a dirty tree"
    );
}

/// A repository that ignores the data dir (as `operator init` makes it) and the excluded files
/// itself: `git add` refuses to be named an ignored path, even to exclude it; the commits go on.
#[tokio::test]
async fn a_data_dir_and_excludes_the_repository_ignores_itself_do_not_stop_the_commits() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    std::fs::write(w.join(".gitignore"), "/.operator/\n*.log\n").unwrap();
    git(&w, &["add", ".gitignore"]);
    git(&w, &["commit", "-qm", "ignore"]);
    std::fs::write(w.join("debug.log"), "noise\n").unwrap();
    let m = mission(
        &op,
        r#"
name = "m"
[defaults]
sim = { scenario = "complete", write = "notes.md" }
exclude = ["*.log"]
[[chain]]
name = "a"
task = "Write notes"
"#,
    );
    let out = op
        .cmd(&["run", &m, "--json"])
        .env("OPERATOR_DATA_DIR", w.join(".operator"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("could not be committed"),
        "{}",
        stderr(&out)
    );
    let c = &chains(&out)[0];
    let files = git(&w, &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), "notes.md");
    let kinds = events_in(&w.join(".operator"), &c.id).await;
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "git:committed").count(),
        1
    );
}

#[tokio::test]
async fn pushes_happen_only_after_success_and_only_with_a_remote() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    let r = remote(&op);
    let m = mission(
        &op,
        r#"
name = "m"
[defaults]
sim = { scenario = "complete", write = "out.txt" }
[[chain]]
name = "a"
task = "Do it"
"#,
    );
    let out = op.run(&["run", &m, "--auto-push", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let head = git(&w, &["rev-parse", "HEAD"]);
    assert_eq!(
        git(&r, &["rev-parse", "main"]),
        head,
        "a complete chain is pushed"
    );
    assert_eq!(
        git(&w, &["log", "-1", "--format=%an <%ae>"]).trim(),
        "Repo Owner <owner@example.com>",
        "the repository's own identity is used"
    );

    // A failed chain commits its work but does not push it.
    let m2 = op.write(
        "failing.toml",
        "name = \"f\"\n[defaults]\nsim = { scenario = \"error\", write = \"out.txt\" }\nmax_attempts = 1\n[[chain]]\nname = \"b\"\ntask = \"Fail\"\n",
    );
    let out = op
        .cmd(&["run", m2.to_str().unwrap(), "--json"])
        .env("OPERATOR_AUTO_PUSH", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(chains(&out)[0].status, ChainStatus::Failed);
    let new_head = git(&w, &["rev-parse", "HEAD"]);
    assert_ne!(new_head, head, "the failed sessions were committed locally");
    assert_eq!(
        git(&r, &["rev-parse", "main"]),
        head,
        "a failed chain is not pushed"
    );

    // No remote: nothing to push, and the chain is not affected.
    git(&w, &["remote", "remove", "origin"]);
    let out = op.run(&["run", &m, "--auto-push", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = chains(&out)[0].id.clone();
    let kinds = event_kinds(&op, &id).await;
    let skipped = kinds
        .iter()
        .find(|(k, _)| k == "git:push-skipped")
        .expect("push skipped");
    assert!(skipped.1["reason"].as_str().unwrap().contains("no remote"));
}

#[tokio::test]
async fn a_branch_per_chain_is_pushed_and_a_pull_request_opened_with_gh() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    let r = remote(&op);
    // The only stand-in allowed: GitHub is unreachable. It records its arguments and body.
    let bin = op.root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let args_file = op.root.path().join("gh-args");
    let body_file = op.root.path().join("gh-body");
    let gh = bin.join("gh");
    std::fs::write(
        &gh,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\ncat > '{}'\necho https://github.com/o/r/pull/7\n",
            args_file.display(),
            body_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = mission(
        &op,
        r#"
name = "m"
[defaults]
sim = { scenario = "incomplete", complete_after = 1, write = "x.txt" }
pull_request = true
[[chain]]
name = "a"
task = "Fix: the `parser` — ünïcode & spaces!"
"#,
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = op
        .cmd(&["run", &m, "--json"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let suffix = c.id.rsplit('-').next().unwrap();
    let branch = format!("operator/fix-the-parser-n-code-spaces-{suffix}");
    assert_eq!(
        git(&w, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        branch
    );
    assert_eq!(
        subjects(&r, &branch).len(),
        3,
        "two sessions and the initial commit are pushed"
    );
    let args: Vec<String> = std::fs::read_to_string(&args_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(&args[..4], ["pr", "create", "--head", branch.as_str()]);
    assert!(args.contains(&"--title".to_string()));
    let body = std::fs::read_to_string(&body_file).unwrap();
    assert!(
        body.contains(&c.id) && body.contains("Last handoff") && body.contains("| 2 |"),
        "{body}"
    );
    let kinds = event_kinds(&op, &c.id).await;
    let pr = kinds
        .iter()
        .find(|(k, _)| k == "git:pr-created")
        .expect("pr event");
    assert_eq!(pr.1["url"], "https://github.com/o/r/pull/7");
}

#[tokio::test]
async fn chains_sharing_a_repository_get_a_worktree_and_branch_each() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    let m = mission(
        &op,
        r#"
name = "pair"
concurrency = 2
[defaults]
sim = { scenario = "incomplete", complete_after = 1 }
[[chain]]
name = "a"
task = "Task A"
sim = { scenario = "incomplete", complete_after = 1, write = "a.txt" }
[[chain]]
name = "b"
task = "Task B"
sim = { scenario = "incomplete", complete_after = 1, write = "b.txt" }
"#,
    );
    let out = op.run(&["run", &m, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cs = chains(&out);
    assert_eq!(cs.len(), 2);
    // The main working tree was not touched.
    assert_eq!(
        git(&w, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );
    assert_eq!(subjects(&w, "main"), ["initial"]);
    assert!(!w.join("a.txt").exists() && !w.join("b.txt").exists());
    for c in &cs {
        let file = if c.name == "a" { "a.txt" } else { "b.txt" };
        let other = if c.name == "a" { "b.txt" } else { "a.txt" };
        let suffix = c.id.rsplit('-').next().unwrap();
        let branch = format!("operator/task-{}-{suffix}", c.name);
        assert_eq!(subjects(&w, &branch).len(), 3, "{branch}");
        let files = git(&w, &["ls-tree", "-r", "--name-only", &branch]);
        assert!(
            files.contains(file) && !files.contains(other),
            "{branch}: {files}"
        );
        assert_eq!(
            git(&w, &["show", &format!("{branch}:{file}")])
                .lines()
                .count(),
            2
        );
        assert!(
            !op.data_dir().join("worktrees").join(&c.id).exists(),
            "worktree left behind"
        );
    }
    assert_eq!(
        git(&w, &["worktree", "list"]).lines().count(),
        1,
        "worktrees are cleaned up"
    );
}

#[tokio::test]
async fn a_dirty_tree_is_reported_and_refused_when_asked() {
    let op = Op::new();
    repo(&op, true);
    let w = op.workdir();
    std::fs::write(w.join("README.md"), "edited by a person\n").unwrap();
    let refuse = mission(
        &op,
        "name = \"m\"\n[defaults]\ndirty_start = \"refuse\"\nsim = { scenario = \"complete\" }\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", &refuse, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let c = &chains(&out)[0];
    assert_eq!(c.status, ChainStatus::Failed);
    assert!(
        c.reason.as_deref().unwrap().contains("uncommitted"),
        "{:?}",
        c.reason
    );
    assert!(c.sessions.is_empty(), "no session runs on a refused tree");
    assert_eq!(subjects(&w, "HEAD"), ["initial"]);

    let go_on = op.write(
        "go.toml",
        "name = \"g\"\n[defaults]\nsim = { scenario = \"complete\" }\n[[chain]]\nname = \"a\"\ntask = \"T\"\n",
    );
    let out = op.run(&["run", go_on.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = &chains(&out)[0];
    let kinds = event_kinds(&op, &c.id).await;
    let dirty = kinds
        .iter()
        .find(|(k, _)| k == "git:dirty")
        .expect("reported");
    assert_eq!(dirty.1["files"], 1);
    assert_eq!(
        subjects(&w, "HEAD").len(),
        2,
        "the first commit carries the person's change"
    );
}
