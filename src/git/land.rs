//! Landing a worktree's branch on its target for the merge queue: is it there already, rebase it
//! (a conflict is read — files and markers — and the rebase undone), leave a merge for the agent
//! to resolve, find leftover markers, fast-forward the target with a compare-and-swap, push it.

use std::path::Path;

use super::{GitError, Out, Push, Workspace, git, run_in};

/// Conflict markers quoted per file, and in all.
const EXCERPT_LINES: usize = 40;
const EXCERPT_CHARS: usize = 4_000;

/// How a rebase went.
#[derive(Debug, Clone, PartialEq)]
pub enum Rebase {
    Done,
    /// It conflicted (and was undone): the files, and their conflicting hunks with markers.
    Conflict {
        files: Vec<String>,
        excerpt: String,
    },
}

/// The branch checked out in `repo`'s working tree (`None`: a detached HEAD).
pub async fn checked_out(repo: &Path) -> Result<Option<String>, GitError> {
    let out = run_in(
        "git",
        repo,
        &["symbolic-ref", "--short", "-q", "HEAD"],
        &[],
        None,
    )
    .await?;
    Ok(out
        .ok
        .then(|| out.stdout.trim().to_string())
        .filter(|b| !b.is_empty()))
}

/// The repository's own `.git` folder, shared by its worktrees: what names "one repository".
pub async fn common_dir(repo: &Path) -> Result<std::path::PathBuf, GitError> {
    let out = git(repo, &["rev-parse", "--git-common-dir"], &[]).await?;
    let dir = repo.join(out.trim());
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// The commit a ref names, if it exists.
pub async fn rev(repo: &Path, r: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{r}^{{commit}}");
    let out = run_in(
        "git",
        repo,
        &["rev-parse", "-q", "--verify", &spec],
        &[],
        None,
    )
    .await?;
    Ok(out.ok.then(|| out.stdout.trim().to_string()))
}

/// Whether commit `a` is an ancestor of (or equal to) `b`.
pub async fn is_ancestor(repo: &Path, a: &str, b: &str) -> Result<bool, GitError> {
    let out = run_in(
        "git",
        repo,
        &["merge-base", "--is-ancestor", a, b],
        &[],
        None,
    )
    .await?;
    Ok(out.ok)
}

/// The conflicting hunks of `text` (from `<<<<<<<` to `>>>>>>>`), at most `EXCERPT_LINES`.
pub fn markers(text: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("<<<<<<<") {
            inside = true;
        }
        if inside {
            out.push(line);
            if out.len() >= EXCERPT_LINES {
                out.push("…");
                break;
            }
        }
        if line.starts_with(">>>>>>>") {
            inside = false;
        }
    }
    out.join("\n")
}

fn failed(args: &[&str], out: &Out) -> GitError {
    let said = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    GitError::Command {
        args: args.join(" "),
        message: crate::redact::redact(said).into_owned(),
    }
}

impl Workspace {
    async fn git_env(&self, args: &[&str]) -> Result<Out, GitError> {
        run_in("git", &self.repo, args, &self.env, None).await
    }

    /// The commit checked out in the chain's tree.
    pub async fn head(&self) -> Result<String, GitError> {
        Ok(git(&self.repo, &["rev-parse", "HEAD"], &[])
            .await?
            .trim()
            .to_string())
    }

    /// Files with unresolved conflicts, and their hunks with markers.
    async fn conflicts(&self) -> Result<(Vec<String>, String), GitError> {
        let names = git(
            &self.repo,
            &["diff", "--name-only", "--diff-filter=U", "-z"],
            &[],
        )
        .await?;
        let files: Vec<String> = names
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        let mut excerpt = String::new();
        for f in &files {
            let text = std::fs::read_to_string(self.repo.join(f)).unwrap_or_default();
            let m = markers(&text);
            if !m.is_empty() && excerpt.len() < EXCERPT_CHARS {
                excerpt.push_str(&format!("{f}:\n{m}\n\n"));
            }
        }
        if excerpt.len() > EXCERPT_CHARS {
            excerpt = crate::handoff::tail_chars(&excerpt, EXCERPT_CHARS).to_string();
        }
        Ok((files, excerpt))
    }

    /// Rebases the chain's branch onto `onto`; a conflict is read and the rebase undone.
    pub async fn rebase(&self, onto: &str) -> Result<Rebase, GitError> {
        let args = ["rebase", "-q", onto];
        let out = self.git_env(&args).await?;
        if out.ok {
            return Ok(Rebase::Done);
        }
        let (files, excerpt) = self.conflicts().await?;
        let _ = self.git_env(&["rebase", "--abort"]).await;
        if files.is_empty() {
            return Err(failed(&args, &out));
        }
        Ok(Rebase::Conflict { files, excerpt })
    }

    /// Undoes a rebase left in progress (none: nothing happens).
    pub async fn abort_rebase(&self) {
        let _ = self.git_env(&["rebase", "--abort"]).await;
    }

    /// Starts merging `target` into the chain's branch and leaves the conflicts in the files for
    /// the next session (the commit after it concludes the merge).
    pub async fn leave_merge(&self, target: &str) -> Result<(), GitError> {
        let args = ["merge", "-q", "--no-ff", "--no-commit", target];
        let out = self.git_env(&args).await?;
        let (files, _) = self.conflicts().await?;
        if out.ok || !files.is_empty() {
            Ok(())
        } else {
            Err(failed(&args, &out))
        }
    }

    /// Files still holding conflict markers in what the branch adds over `base`.
    pub async fn leftover_markers(&self, base: &str) -> Result<Vec<String>, GitError> {
        let out = run_in(
            "git",
            &self.repo,
            &["diff", "--check", base, "HEAD"],
            &[],
            None,
        )
        .await?;
        let mut files: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| l.contains("conflict marker"))
            .filter_map(|l| l.split(':').next())
            .map(str::to_string)
            .collect();
        files.dedup();
        Ok(files)
    }
}

/// Moves `target` from `old` to `sha` in `origin` (the repository's main tree): a fast-forward
/// merge when `target` is checked out there (its files follow), else a compare-and-swap of the
/// ref. `Ok(false)`: the target moved meanwhile (another operator landed first).
pub async fn fast_forward(
    origin: &Path,
    target: &str,
    sha: &str,
    old: &str,
) -> Result<bool, GitError> {
    if checked_out(origin).await?.as_deref() == Some(target) {
        if rev(origin, "HEAD").await?.as_deref() != Some(old) {
            return Ok(false);
        }
        let args = ["merge", "-q", "--ff-only", sha];
        let out = run_in("git", origin, &args, &[], None).await?;
        return if out.ok {
            Ok(true)
        } else {
            Err(failed(&args, &out))
        };
    }
    let r = format!("refs/heads/{target}");
    let args = ["update-ref", &r, sha, old];
    let out = run_in("git", origin, &args, &[], None).await?;
    if out.ok {
        Ok(true)
    } else if rev(origin, &r).await?.as_deref() != Some(old) {
        Ok(false)
    } else {
        Err(failed(&args, &out))
    }
}

/// Pushes `branch` of `repo` to `origin` (else the first remote); never forced.
pub async fn push_branch(repo: &Path, branch: &str) -> Result<Push, GitError> {
    let remotes = git(repo, &["remote"], &[]).await?;
    let remotes: Vec<&str> = remotes.lines().filter(|l| !l.is_empty()).collect();
    let Some(remote) = remotes.iter().find(|r| **r == "origin").or(remotes.first()) else {
        return Ok(Push::Skipped("the repository has no remote".into()));
    };
    git(repo, &["push", "-q", remote, branch], &[]).await?;
    Ok(Push::Pushed {
        remote: remote.to_string(),
        branch: branch.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_quote_each_conflicting_hunk() {
        let text = "a\n<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> main\nb\nc\n";
        assert_eq!(
            markers(text),
            "<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> main"
        );
        assert_eq!(markers("no conflict\n"), "");
        let long = format!("<<<<<<< HEAD\n{}", "x\n".repeat(100));
        assert_eq!(markers(&long).lines().count(), EXCERPT_LINES + 1);
    }
}
