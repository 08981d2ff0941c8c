//! The forge through `gh`: a chain's pull request (found or opened), its checks read and judged,
//! the failed runs' logs, and the merge.

use serde::Deserialize;

use super::{GitError, Workspace, run_in};
use crate::config::MergeMethod;

/// Output kept from a failed check's log, for the next prompt.
pub const LOG_TAIL_CHARS: usize = 3_000;

/// One check of a pull request, as `gh pr checks --json name,bucket,link,workflow` gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Check {
    pub name: String,
    /// `pass`, `fail`, `pending`, `skipping` or `cancel`.
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub link: String,
    #[serde(default)]
    pub workflow: String,
}

/// What the checks say as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// None reported yet (CI may not have seen the push).
    NoneYet,
    /// Some still run: their names.
    Pending(Vec<String>),
    /// Every one passed or was skipped: how many passed.
    Passed(u32),
    /// These failed or were cancelled (decided as soon as one fails: the next session may start
    /// while the rest still run).
    Failed(Vec<Check>),
}

/// Judges a pull request's checks.
pub fn judge(checks: &[Check]) -> Verdict {
    if checks.is_empty() {
        return Verdict::NoneYet;
    }
    let failed: Vec<Check> = checks
        .iter()
        .filter(|c| matches!(c.bucket.as_str(), "fail" | "cancel"))
        .cloned()
        .collect();
    if !failed.is_empty() {
        return Verdict::Failed(failed);
    }
    let pending: Vec<String> = checks
        .iter()
        .filter(|c| !matches!(c.bucket.as_str(), "pass" | "skipping"))
        .map(|c| c.name.clone())
        .collect();
    if !pending.is_empty() {
        return Verdict::Pending(pending);
    }
    Verdict::Passed(checks.iter().filter(|c| c.bucket == "pass").count() as u32)
}

/// The workflow run of a check's link (`…/actions/runs/<run>/job/<job>`), for `gh run view`.
pub fn run_id(link: &str) -> Option<&str> {
    let rest = link.split("/actions/runs/").nth(1)?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then_some(id)
}

/// What the next session is told about failed checks.
pub fn failure_note(url: Option<&str>, failed: &[(Check, Option<String>)]) -> String {
    let mut n = format!(
        "The chain is not complete: after your COMPLETE handoff the operator pushed the branch and waited for the pull request's checks{}, and these failed:\n",
        url.map(|u| format!(" ({u})")).unwrap_or_default()
    );
    for (c, log) in failed {
        let what = if c.workflow.is_empty() {
            format!("`{}`", c.name)
        } else {
            format!("`{}` (workflow `{}`)", c.name, c.workflow)
        };
        n.push_str(&format!("\n{what}: {}", c.bucket));
        if !c.link.is_empty() {
            n.push_str(&format!(", {}", c.link));
        }
        match log {
            Some(l) if !l.trim().is_empty() => {
                n.push_str(&format!(
                    "; the end of its log:\n```\n{}\n```\n",
                    l.trim_end()
                ));
            }
            _ => n.push('\n'),
        }
    }
    n.push_str("\nFix what they report, then write your handoff (COMPLETE when you believe they will pass); the operator pushes and waits for the checks again.");
    n
}

impl Workspace {
    fn gh_branch(&self) -> Result<&str, GitError> {
        self.branch.as_deref().ok_or_else(|| GitError::Command {
            args: "gh".into(),
            message: "the chain has no branch of its own".into(),
        })
    }

    async fn gh(&self, args: &[&str]) -> Result<super::Out, GitError> {
        run_in("gh", &self.repo, args, &[], None).await
    }

    /// The URL of the chain's open pull request, if it has one.
    pub async fn pr_url(&self) -> Result<Option<String>, GitError> {
        let branch = self.gh_branch()?;
        let out = self
            .gh(&["pr", "view", branch, "--json", "url,state"])
            .await?;
        if !out.ok {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Pr {
            url: String,
            #[serde(default)]
            state: String,
        }
        Ok(serde_json::from_str::<Pr>(&out.stdout)
            .ok()
            .filter(|p| p.state.is_empty() || p.state.eq_ignore_ascii_case("open"))
            .map(|p| p.url))
    }

    /// The checks of the chain's pull request (none yet: empty).
    pub async fn pr_checks(&self) -> Result<Vec<Check>, GitError> {
        let branch = self.gh_branch()?;
        let out = self
            .gh(&[
                "pr",
                "checks",
                branch,
                "--json",
                "name,bucket,link,workflow",
            ])
            .await?;
        // `gh pr checks` exits non-zero while checks fail or run; its JSON says which.
        if let Ok(checks) = serde_json::from_str::<Vec<Check>>(out.stdout.trim()) {
            return Ok(checks);
        }
        if out.stderr.contains("no checks reported") {
            return Ok(Vec::new());
        }
        Err(GitError::Command {
            args: "gh pr checks".into(),
            message: crate::redact::redact(out.stderr.trim()).into_owned(),
        })
    }

    /// The end of a failed workflow run's log (`gh run view --log-failed`), when it can be read.
    pub async fn failed_log(&self, run: &str) -> Option<String> {
        let out = self.gh(&["run", "view", run, "--log-failed"]).await.ok()?;
        out.ok.then(|| {
            crate::redact::redact(crate::handoff::tail_chars(&out.stdout, LOG_TAIL_CHARS))
                .into_owned()
        })
    }

    /// Merges the chain's pull request (`auto`: turns on the forge's auto-merge instead).
    pub async fn pr_merge(&self, method: MergeMethod, auto: bool) -> Result<(), GitError> {
        let branch = self.gh_branch()?;
        let mut args = vec!["pr", "merge", branch, method.flag()];
        if auto {
            args.push("--auto");
        }
        let out = self.gh(&args).await?;
        if out.ok {
            Ok(())
        } else {
            Err(GitError::Command {
                args: args.join(" "),
                message: crate::redact::redact(out.stderr.trim()).into_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, bucket: &str) -> Check {
        Check {
            name: name.into(),
            bucket: bucket.into(),
            link: String::new(),
            workflow: String::new(),
        }
    }

    #[test]
    fn checks_are_judged_failed_first_then_pending_then_passed() {
        assert_eq!(judge(&[]), Verdict::NoneYet);
        assert_eq!(
            judge(&[c("test", "pass"), c("lint", "pending")]),
            Verdict::Pending(vec!["lint".into()])
        );
        assert_eq!(
            judge(&[c("test", "fail"), c("lint", "pending")]),
            Verdict::Failed(vec![c("test", "fail")])
        );
        assert_eq!(
            judge(&[c("test", "pass"), c("docs", "skipping")]),
            Verdict::Passed(1)
        );
        assert_eq!(
            judge(&[c("deploy", "cancel")]),
            Verdict::Failed(vec![c("deploy", "cancel")])
        );
    }

    #[test]
    fn a_checks_run_is_read_from_its_link_and_the_note_names_each_failure() {
        assert_eq!(
            run_id("https://github.com/o/r/actions/runs/123/job/456"),
            Some("123")
        );
        assert_eq!(run_id("https://ci.example/build/9"), None);
        assert_eq!(run_id("https://github.com/o/r/actions/runs/x;rm/job"), None);
        let checks: Vec<Check> = serde_json::from_str(
            r#"[{"name":"test","bucket":"fail","link":"https://x/actions/runs/7/job/8","workflow":"CI","state":"FAILURE"}]"#,
        )
        .unwrap();
        let n = failure_note(
            Some("https://x/pull/3"),
            &[(
                checks[0].clone(),
                Some("assertion failed: left == right".into()),
            )],
        );
        assert!(n.contains("(https://x/pull/3)"));
        assert!(n.contains("`test` (workflow `CI`): fail, https://x/actions/runs/7/job/8"));
        assert!(n.contains("assertion failed: left == right"));
    }
}
