//! A forge's open issues with a label as a backlog, through `gh`: listed in number order, each
//! named `issue-<n>`, its body's `after: #n` lines its order; checked off by a comment and a
//! close.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use super::Draft;

#[derive(Deserialize)]
struct Issue {
    number: u64,
    title: String,
    #[serde(default)]
    body: String,
}

fn gh(args: &[&str], dir: &Path) -> Result<String, String> {
    let out = Command::new("gh")
        .args(args)
        .current_dir(dir)
        .env("GH_PROMPT_DISABLED", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "`gh` is not installed: a `gh:` backlog needs the GitHub CLI (https://cli.github.com), logged in".to_string()
            }
            _ => format!("`gh` could not run: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`gh {}` failed: {}",
            args.first().copied().unwrap_or(""),
            crate::redact::redact(String::from_utf8_lossy(&out.stderr).trim())
        ))
    }
}

/// The open issues labelled `label`, oldest first.
pub fn issues(label: &str, dir: &Path) -> Result<Vec<Draft>, String> {
    let json = gh(
        &[
            "issue",
            "list",
            "--label",
            label,
            "--state",
            "open",
            "--limit",
            "500",
            "--json",
            "number,title,body",
        ],
        dir,
    )?;
    let mut list: Vec<Issue> = serde_json::from_str(json.trim())
        .map_err(|e| format!("`gh issue list` answered something unexpected: {e}"))?;
    list.sort_by_key(|i| i.number);
    Ok(list
        .into_iter()
        .map(|i| {
            let mut d = Draft::new(&i.title, &i.body, false);
            // `after: #12` names an issue, not the 12th item.
            d.after = d
                .after
                .iter()
                .map(|a| match a.strip_prefix('#') {
                    Some(n) if n.chars().all(|c| c.is_ascii_digit()) => format!("issue-{n}"),
                    _ => a.clone(),
                })
                .collect();
            d.key = i.number.to_string();
            d.name = Some(format!("issue-{}", i.number));
            d
        })
        .collect())
}

/// Comments `summary` on issue `number` and closes it.
pub fn close(number: &str, dir: &Path, summary: &str) -> Result<String, String> {
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{number}` is not an issue number"));
    }
    gh(&["issue", "comment", number, "--body", summary], dir)?;
    gh(&["issue", "close", number], dir)?;
    Ok(format!("issue #{number} commented on and closed"))
}
