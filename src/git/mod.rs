//! Git at the edge, through the `git` CLI: a chain's workspace (its repository, branch and worktree), a
//! commit after each session, a push and a pull request (`gh`) at the end. Pure helpers (branch names,
//! commit messages, pathspecs) are plain functions with tests beside them. `forge`: the pull
//! request's checks and merge (`gh`); `land`: rebase and fast-forward for the merge queue.

pub mod forge;
pub mod land;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::config::{ChainSettings, WorktreeMode};

/// A git command that failed, with what it said.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`git {args}` failed: {message}")]
    Command { args: String, message: String },
    #[error("`{program}` could not run: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{0}` took too long and was stopped")]
    Timeout(String),
}

/// Output of one command.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

const TIMEOUT: Duration = Duration::from_secs(120);

async fn run_in(
    program: &str,
    dir: &Path,
    args: &[&str],
    env: &[(String, String)],
    stdin: Option<&str>,
) -> Result<Out, GitError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.current_dir(dir)
        .args(args)
        // Never wait for a password overnight.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GCM_INTERACTIVE", "never")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| GitError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| GitError::Timeout(format!("{program} {}", args.join(" "))))?
        .map_err(|source| GitError::Spawn {
            program: program.to_string(),
            source,
        })?;
    Ok(Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn git(dir: &Path, args: &[&str], env: &[(String, String)]) -> Result<String, GitError> {
    let out = run_in("git", dir, args, env, None).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(GitError::Command {
            args: args.join(" "),
            message: crate::redact::redact(out.stderr.trim()).into_owned(),
        })
    }
}

/// A lowercase ASCII slug of a task for a branch name ([`crate::model::slug`]), never empty.
pub fn slug(task: &str) -> String {
    let out = crate::model::slug(task);
    if out.is_empty() { "task".into() } else { out }
}

/// `operator/<slug>-<the chain id's random part>`: readable, and unique per chain.
pub fn branch_name(task: &str, chain_id: &str) -> String {
    let suffix = chain_id.rsplit('-').next().unwrap_or(chain_id);
    format!("operator/{}-{suffix}", slug(task))
}

/// The one-line summary of a handoff: its first `Accomplished` item, else its first line of
/// prose; at most `max` characters.
pub fn summary(handoff: &str, max: usize) -> String {
    let mut in_accomplished = false;
    let mut first_prose = None;
    for line in handoff.lines().map(str::trim) {
        let lower = line.to_ascii_lowercase();
        if line.starts_with('#') || lower.starts_with("**") && lower.ends_with("**") {
            in_accomplished = lower.contains("accomplished");
            continue;
        }
        let text = line.trim_start_matches(['-', '*', ' ']).trim();
        if text.is_empty() {
            continue;
        }
        if in_accomplished {
            return shorten(text, max);
        }
        first_prose.get_or_insert(text);
    }
    shorten(first_prose.unwrap_or("work in progress"), max)
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.trim_end_matches('.');
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// The commit message of a session: `operator: <chain> session <n>: <summary>`, the handoff as
/// the body, and trailers naming the chain.
pub fn commit_message(chain_name: &str, chain_id: &str, index: u32, handoff: &str) -> String {
    let head = format!("operator: {chain_name} session {index}: ");
    let room = 72usize.saturating_sub(head.chars().count()).max(20);
    format!(
        "{head}{}\n\n{}\n\nOperator-Chain: {chain_id}\nOperator-Session: {index}\n",
        summary(handoff, room),
        handoff.trim()
    )
}

/// Pathspecs for "everything but": the data dir (when inside the repository) and the
/// mission's exclude patterns.
pub fn pathspecs(data_dir_in_repo: Option<&Path>, exclude: &[String]) -> Vec<String> {
    let mut out = vec![":/".to_string()];
    if let Some(d) = data_dir_in_repo {
        out.push(format!(":(top,exclude){}", d.display()));
    }
    for p in exclude {
        let p = p.trim().trim_start_matches('/').trim_end_matches('/');
        if p.is_empty() {
            continue;
        }
        let glob = if p.contains('/') {
            p.to_string()
        } else {
            format!("**/{p}")
        };
        out.push(format!(":(top,exclude,glob){glob}"));
        // A directory pattern excludes what is under it too.
        out.push(format!(":(top,exclude,glob){glob}/**"));
    }
    out
}

/// `git add` exits 1 when a pathspec names a path `.gitignore` ignores, even an `exclude` one —
/// as the data dir's is when the repository ignores it (what `operator init` sets up) — after
/// staging everything else. That, and nothing else, is harmless here: the path was to be left
/// out anyway.
fn only_ignored_paths_named(stderr: &str) -> bool {
    let mut lines = stderr.lines();
    lines.next().is_some_and(|l| {
        l.starts_with("The following paths are ignored by one of your .gitignore files")
    }) && lines.all(|l| !l.starts_with("fatal:") && !l.starts_with("error:"))
}

/// Parses `Name <email>`.
pub fn parse_author(a: &str) -> Option<(String, String)> {
    let (name, rest) = a.split_once('<')?;
    let email = rest.trim().strip_suffix('>')?;
    Some((name.trim().to_string(), email.trim().to_string()))
}

/// A chain's place in a repository.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The top level of the repository the chain was configured on.
    pub repo: PathBuf,
    /// Where the agent works: the configured workdir, or the same place in the chain's worktree.
    pub workdir: PathBuf,
    pub branch: Option<String>,
    pub worktree: Option<PathBuf>,
    specs: Vec<String>,
    /// Identity for commits when the repository has none, or `commit_author`.
    env: Vec<(String, String)>,
}

/// A commit made for a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub sha: String,
    pub files: usize,
}

/// How a push went.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Pushed { remote: String, branch: String },
    Skipped(String),
}

fn inside(path: &Path, root: &Path) -> Option<PathBuf> {
    path.strip_prefix(root).ok().map(Path::to_path_buf)
}

/// Opens the chain's workspace: `None` when the workdir is not in a git repository (or git is
/// not installed). Creates the chain's branch or worktree when its settings ask for one.
pub async fn open(
    s: &ChainSettings,
    chain_id: &str,
    task: &str,
    data_dir: &Path,
) -> Result<Option<Workspace>, GitError> {
    let workdir = s.workdir.canonicalize().unwrap_or(s.workdir.clone());
    let top = match run_in(
        "git",
        &workdir,
        &["rev-parse", "--show-toplevel"],
        &[],
        None,
    )
    .await
    {
        Ok(o) if o.ok => PathBuf::from(o.stdout.trim()),
        Ok(_) => return Ok(None),
        Err(GitError::Spawn { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let top = top.canonicalize().unwrap_or(top);
    let sub = inside(&workdir, &top).unwrap_or_default();
    let data = data_dir.canonicalize().unwrap_or(data_dir.to_path_buf());
    let mut env = Vec::new();
    let configured = run_in("git", &top, &["config", "user.email"], &[], None)
        .await
        .is_ok_and(|o| o.ok && !o.stdout.trim().is_empty());
    let (name, email) = s
        .commit_author
        .as_deref()
        .and_then(parse_author)
        .unwrap_or(("operator".into(), "operator@localhost".into()));
    if s.commit_author.is_some() {
        env.push(("GIT_AUTHOR_NAME".into(), name.clone()));
        env.push(("GIT_AUTHOR_EMAIL".into(), email.clone()));
    }
    if !configured {
        env.push(("GIT_COMMITTER_NAME".into(), name.clone()));
        env.push(("GIT_COMMITTER_EMAIL".into(), email.clone()));
        if s.commit_author.is_none() {
            env.push(("GIT_AUTHOR_NAME".into(), name));
            env.push(("GIT_AUTHOR_EMAIL".into(), email));
        }
    }
    let wants_branch = s.branch || s.opens_pr() || s.in_worktree();
    let branch = wants_branch.then(|| branch_name(task, chain_id));
    let mut ws = Workspace {
        repo: top.clone(),
        workdir: workdir.clone(),
        branch: branch.clone(),
        worktree: None,
        specs: pathspecs(inside(&data, &top).as_deref(), &s.exclude),
        env,
    };
    let exists = |b: &str| {
        let top = top.clone();
        let r = format!("refs/heads/{b}");
        async move {
            git(&top, &["show-ref", "--verify", "--quiet", &r], &[])
                .await
                .is_ok()
        }
    };
    if s.in_worktree() {
        let b = branch
            .clone()
            .unwrap_or_else(|| branch_name(task, chain_id));
        let path = data.join("worktrees").join(chain_id);
        if !path.join(".git").exists() {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let p = path.display().to_string();
            if exists(&b).await {
                git(&top, &["worktree", "add", &p, &b], &[]).await?;
            } else {
                git(&top, &["worktree", "add", "-b", &b, &p, "HEAD"], &[]).await?;
            }
        }
        ws.workdir = path.join(&sub);
        std::fs::create_dir_all(&ws.workdir).ok();
        ws.repo = path.clone();
        ws.worktree = Some(path);
        // The data dir is not inside the worktree's own tree.
        ws.specs = pathspecs(None, &s.exclude);
    } else if let Some(b) = &branch {
        let current = git(&top, &["rev-parse", "--abbrev-ref", "HEAD"], &[]).await?;
        if current.trim() != b {
            if exists(b).await {
                git(&top, &["checkout", "-q", b], &[]).await?;
            } else {
                git(&top, &["checkout", "-q", "-b", b], &[]).await?;
            }
        }
    }
    Ok(Some(ws))
}

impl Workspace {
    fn specs(&self) -> Vec<&str> {
        self.specs.iter().map(String::as_str).collect()
    }

    /// Uncommitted changes (excluded paths and the data dir aside).
    pub async fn changes(&self) -> Result<Vec<String>, GitError> {
        let mut args = vec!["status", "--porcelain", "--untracked-files=all", "--"];
        args.extend(self.specs());
        let out = git(&self.repo, &args, &[]).await?;
        Ok(out
            .lines()
            .filter(|l| l.len() > 3)
            .map(|l| l[3..].to_string())
            .collect())
    }

    /// Commits every change (but the excluded) with `message`; `None` when nothing changed.
    pub async fn commit(&self, message: &str) -> Result<Option<Commit>, GitError> {
        let mut add = vec!["add", "-A", "--"];
        add.extend(self.specs());
        // In English, so the one harmless failure can be told apart.
        let c = [("LC_ALL".to_string(), "C".to_string())];
        let out = run_in("git", &self.repo, &add, &c, None).await?;
        if !out.ok && !only_ignored_paths_named(&out.stderr) {
            return Err(GitError::Command {
                args: add.join(" "),
                message: crate::redact::redact(out.stderr.trim()).into_owned(),
            });
        }
        let staged = git(&self.repo, &["diff", "--cached", "--name-only"], &[]).await?;
        let files = staged.lines().filter(|l| !l.is_empty()).count();
        if files == 0 {
            return Ok(None);
        }
        // Commits are checkpoints of unattended work: the user's hooks run on their own commits.
        let out = run_in(
            "git",
            &self.repo,
            &["commit", "-q", "--no-verify", "-F", "-"],
            &self.env,
            Some(message),
        )
        .await?;
        if !out.ok {
            return Err(GitError::Command {
                args: "commit".into(),
                message: crate::redact::redact(out.stderr.trim()).into_owned(),
            });
        }
        let sha = git(&self.repo, &["rev-parse", "HEAD"], &[]).await?;
        Ok(Some(Commit {
            sha: sha.trim().to_string(),
            files,
        }))
    }

    /// Folds `paths` into the chain's last commit when it is the chain's own (`Operator-Chain:
    /// <chain>`), else commits them with `message`; the new commit's sha (`None`: nothing to
    /// commit).
    pub async fn fold_in(
        &self,
        paths: &[PathBuf],
        chain: &str,
        message: &str,
    ) -> Result<Option<String>, GitError> {
        let mut add = vec!["add", "-A", "--"];
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        add.extend(shown.iter().map(String::as_str));
        git(&self.repo, &add, &[]).await?;
        let staged = git(&self.repo, &["diff", "--cached", "--name-only"], &[]).await?;
        if staged.trim().is_empty() {
            return Ok(None);
        }
        let last = git(&self.repo, &["log", "-1", "--format=%B"], &[])
            .await
            .unwrap_or_default();
        let ours = last
            .lines()
            .any(|l| l.trim() == format!("Operator-Chain: {chain}"));
        let out = if ours {
            run_in(
                "git",
                &self.repo,
                &["commit", "-q", "--no-verify", "--amend", "--no-edit"],
                &self.env,
                None,
            )
            .await?
        } else {
            run_in(
                "git",
                &self.repo,
                &["commit", "-q", "--no-verify", "-F", "-"],
                &self.env,
                Some(message),
            )
            .await?
        };
        if !out.ok {
            return Err(GitError::Command {
                args: "commit".into(),
                message: crate::redact::redact(out.stderr.trim()).into_owned(),
            });
        }
        let sha = git(&self.repo, &["rev-parse", "HEAD"], &[]).await?;
        Ok(Some(sha.trim().to_string()))
    }

    /// Pushes the chain's branch (or the current one) to `origin`, else the first remote.
    pub async fn push(&self) -> Result<Push, GitError> {
        let remotes = git(&self.repo, &["remote"], &[]).await?;
        let remotes: Vec<&str> = remotes.lines().filter(|l| !l.is_empty()).collect();
        let Some(remote) = remotes.iter().find(|r| **r == "origin").or(remotes.first()) else {
            return Ok(Push::Skipped("the repository has no remote".into()));
        };
        let branch = match &self.branch {
            Some(b) => b.clone(),
            None => git(&self.repo, &["rev-parse", "--abbrev-ref", "HEAD"], &[])
                .await?
                .trim()
                .to_string(),
        };
        if branch == "HEAD" {
            return Ok(Push::Skipped("detached HEAD: no branch to push".into()));
        }
        git(&self.repo, &["push", "-q", "-u", remote, &branch], &[]).await?;
        Ok(Push::Pushed {
            remote: remote.to_string(),
            branch,
        })
    }

    /// Opens a pull request with `gh` (`None` when `gh` is not installed); returns its URL.
    pub async fn pull_request(&self, title: &str, body: &str) -> Result<Option<String>, GitError> {
        let Some(branch) = &self.branch else {
            return Err(GitError::Command {
                args: "pr create".into(),
                message: "the chain has no branch of its own".into(),
            });
        };
        let out = match run_in(
            "gh",
            &self.repo,
            &[
                "pr",
                "create",
                "--head",
                branch,
                "--title",
                title,
                "--body-file",
                "-",
            ],
            &[],
            Some(body),
        )
        .await
        {
            Err(GitError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            other => other?,
        };
        if !out.ok {
            return Err(GitError::Command {
                args: "gh pr create".into(),
                message: crate::redact::redact(out.stderr.trim()).into_owned(),
            });
        }
        Ok(Some(
            out.stdout
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string(),
        ))
    }

    /// Removes the chain's worktree if it has no uncommitted work (the branch stays).
    /// Returns whether it was removed.
    pub async fn remove_worktree(&self, origin: &Path) -> Result<bool, GitError> {
        let Some(path) = &self.worktree else {
            return Ok(false);
        };
        if !self.changes().await?.is_empty() {
            return Ok(false);
        }
        let p = path.display().to_string();
        git(origin, &["worktree", "remove", "--force", &p], &[]).await?;
        Ok(true)
    }
}

/// Which chains of a mission share a repository at once: they get a worktree each when their
/// `worktree` is `auto`. Returns the indexes of such chains.
pub fn needs_worktrees(concurrency: usize, workdirs: &[(PathBuf, WorktreeMode)]) -> Vec<usize> {
    if concurrency < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, (w, mode)) in workdirs.iter().enumerate() {
        let shared = workdirs
            .iter()
            .enumerate()
            .any(|(j, (o, _))| j != i && o == w);
        if *mode == WorktreeMode::Auto && shared {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_from_awkward_tasks_are_valid_refs() {
        assert_eq!(slug("Fix the bug in `parse()`!!"), "fix-the-bug-in-parse");
        assert_eq!(slug("  --rm -rf / ; echo pwned  "), "rm-rf-echo-pwned");
        assert_eq!(slug("Ünïcödé 🚀 ✨"), "n-c-d");
        assert_eq!(slug("日本語"), "task");
        assert_eq!(slug("a..b~c^d:e?f*g[h]\\i"), "a-b-c-d-e-f-g-h-i");
        assert!(slug(&"very long task ".repeat(20)).len() <= 40);
        let b = branch_name("Port the parser.lock", "c-20261125-ab12cd");
        assert_eq!(b, "operator/port-the-parser-lock-ab12cd");
        for c in ["..", "~", "^", ":", "?", "*", "[", "\\", " ", "@{"] {
            assert!(!b.contains(c));
        }
        assert!(!b.ends_with(".lock") && !b.ends_with('/'));
    }

    #[test]
    fn commit_messages_lead_with_the_accomplished_work() {
        let h = "## HANDOFF\n\n**Accomplished**\n- Ported the parser to clap.\n- Fixed tests\n\n**Remaining**\n- docs\n";
        let m = commit_message("parser", "c-1", 2, h);
        let first = m.lines().next().unwrap();
        assert_eq!(
            first,
            "operator: parser session 2: Ported the parser to clap"
        );
        assert!(m.contains("**Remaining**"));
        assert!(m.ends_with("Operator-Chain: c-1\nOperator-Session: 2\n"));
        let long = format!("## HANDOFF\n### Accomplished\n- {}\n", "word ".repeat(40));
        let first = commit_message("x", "c", 1, &long)
            .lines()
            .next()
            .unwrap()
            .to_string();
        assert!(first.chars().count() <= 72, "{first}");
        assert!(first.ends_with('…'));
        assert_eq!(
            summary("## HANDOFF: COMPLETE\nAll done here.\n", 50),
            "All done here"
        );
    }

    #[test]
    fn naming_an_ignored_path_is_the_only_harmless_failure_of_add() {
        let ignored = "The following paths are ignored by one of your .gitignore files:\n.operator\nhint: Use -f if you really want to add them.\n";
        assert!(only_ignored_paths_named(ignored));
        assert!(!only_ignored_paths_named(&format!(
            "{ignored}fatal: Unable to create '.git/index.lock': File exists.\n"
        )));
        assert!(!only_ignored_paths_named("fatal: not a git repository\n"));
        assert!(!only_ignored_paths_named(""));
    }

    #[test]
    fn pathspecs_exclude_the_data_dir_and_patterns() {
        let p = pathspecs(
            Some(Path::new(".operator")),
            &["*.log".into(), "secrets/".into()],
        );
        assert_eq!(p[0], ":/");
        assert!(p.contains(&":(top,exclude).operator".to_string()));
        assert!(p.contains(&":(top,exclude,glob)**/*.log".to_string()));
        assert!(p.contains(&":(top,exclude,glob)**/secrets/**".to_string()));
    }

    #[test]
    fn authors_and_worktree_needs() {
        assert_eq!(
            parse_author("Night Shift <night@example.com>"),
            Some(("Night Shift".into(), "night@example.com".into()))
        );
        assert_eq!(parse_author("nobody"), None);
        let a = PathBuf::from("/r");
        let b = PathBuf::from("/other");
        let w = [
            (a.clone(), WorktreeMode::Auto),
            (a.clone(), WorktreeMode::Auto),
            (b, WorktreeMode::Auto),
            (a, WorktreeMode::Never),
        ];
        assert_eq!(needs_worktrees(2, &w), vec![0, 1]);
        assert!(needs_worktrees(1, &w).is_empty());
    }
}
