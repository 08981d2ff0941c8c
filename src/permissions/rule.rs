//! Permission rules in Claude Code's own syntax (`Bash(cargo test:*)`, `Edit(src/**)`,
//! `WebFetch(domain:docs.rs)`, bare tool names): parsing, checking and matching one tool call.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde_json::Value;

/// Tools that edit files: an `Edit(…)` rule covers all of them, as in Claude Code.
pub const EDIT_TOOLS: &[&str] = &["Edit", "Write", "MultiEdit", "NotebookEdit"];
/// Tools that read files or list them: a `Read(…)` rule covers all of them.
pub const READ_TOOLS: &[&str] = &["Read", "Glob", "Grep", "LS", "NotebookRead"];

/// A rule that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{rule}`: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

/// What a rule's specifier says.
#[derive(Debug, Clone)]
enum Spec {
    /// A bare tool name: every call of the tool.
    Any,
    /// `Bash(cmd:*)` (a prefix) or `Bash(cmd)` (exact; `*` matches anything).
    Command(CommandPattern),
    /// `Read(path)`, `Edit(path)`…: a gitignore-style path pattern.
    Path(PathPattern),
    /// `WebFetch(domain:host)`: the host or any of its subdomains.
    Domain(String),
}

#[derive(Debug, Clone)]
enum CommandPattern {
    Prefix(String),
    Glob(GlobMatcher),
}

/// A path pattern before it is anchored (anchoring needs the workdir and the home dir).
#[derive(Debug, Clone)]
pub struct PathPattern {
    /// The pattern as written.
    raw: String,
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    text: String,
    tool: String,
    spec: Spec,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Rule {
    /// Parses `Tool` or `Tool(specifier)`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let err = |why: &str| RuleError {
            rule: text.to_string(),
            why: why.to_string(),
        };
        let t = text.trim();
        let (tool, spec) = match t.find('(') {
            None => (t, None),
            Some(open) => {
                let Some(inner) = t[open + 1..].strip_suffix(')') else {
                    return Err(err("a specifier must end with `)`"));
                };
                (&t[..open], Some(inner.trim()))
            }
        };
        if !valid_tool_name(tool) {
            return Err(err(
                "expected a tool name (letters, digits, `_`, `-`), e.g. `Bash`, `Edit`, `mcp__server__tool`",
            ));
        }
        let spec = match spec {
            None => Spec::Any,
            Some("") | Some("*") => Spec::Any,
            Some(s) => match tool {
                "Bash" => Spec::Command(match s.strip_suffix(":*") {
                    Some(prefix) if !prefix.trim().is_empty() => {
                        CommandPattern::Prefix(prefix.trim().to_string())
                    }
                    Some(_) => return Err(err("`:*` needs a command before it")),
                    None => CommandPattern::Glob(
                        globset::GlobBuilder::new(s)
                            .literal_separator(false)
                            .build()
                            .map_err(|e| err(&format!("not a valid pattern: {e}")))?
                            .compile_matcher(),
                    ),
                }),
                "WebFetch" => match s.strip_prefix("domain:") {
                    Some(d) if !d.trim().is_empty() && !d.contains('/') => {
                        Spec::Domain(d.trim().to_ascii_lowercase())
                    }
                    _ => {
                        return Err(err(
                            "WebFetch takes `domain:<host>`, e.g. `WebFetch(domain:docs.rs)`",
                        ));
                    }
                },
                t if EDIT_TOOLS.contains(&t) || READ_TOOLS.contains(&t) => {
                    // Checked now so a bad pattern is a configuration error, not a run-time one.
                    Glob::new(s).map_err(|e| err(&format!("not a valid path pattern: {e}")))?;
                    Spec::Path(PathPattern { raw: s.to_string() })
                }
                _ => {
                    return Err(err(&format!(
                        "`{tool}` takes no specifier here (only Bash, WebFetch and the file tools do); write `{tool}` alone"
                    )));
                }
            },
        };
        Ok(Rule {
            text: t.to_string(),
            tool: tool.to_string(),
            spec,
        })
    }

    /// Does this rule name `tool` (a rule on `Edit` covers every editing tool, one on `Read`
    /// every reading tool, `mcp__server` every tool of that server)?
    fn names(&self, tool: &str) -> bool {
        self.tool == tool
            || (self.tool == "Edit" && EDIT_TOOLS.contains(&tool))
            || (self.tool == "Read" && READ_TOOLS.contains(&tool))
            || (self.tool.starts_with("mcp__")
                && tool
                    .strip_prefix(self.tool.as_str())
                    .is_some_and(|rest| rest.starts_with("__")))
    }

    /// Does this rule match the call? `all_commands`: for Bash, every part of a compound
    /// command must match (allow rules); otherwise any part may (deny and ask rules).
    pub fn matches(&self, call: &Call<'_>, anchors: &Anchors, all_commands: bool) -> bool {
        if !self.names(call.tool) {
            return false;
        }
        match &self.spec {
            Spec::Any => true,
            Spec::Command(p) => {
                let Some(cmd) = call.command() else {
                    return false;
                };
                let one = |c: &str| match p {
                    CommandPattern::Prefix(prefix) => {
                        c == prefix
                            || c.strip_prefix(prefix.as_str())
                                .is_some_and(|rest| rest.starts_with(char::is_whitespace))
                    }
                    CommandPattern::Glob(g) => g.is_match(c),
                };
                let parts = split_command(cmd);
                if all_commands {
                    !parts.is_empty() && parts.iter().all(|c| one(c))
                } else {
                    one(cmd.trim()) || parts.iter().any(|c| one(c))
                }
            }
            Spec::Path(p) => call
                .path(anchors)
                .is_some_and(|path| p.matches(&path, anchors)),
            Spec::Domain(d) => call.host().is_some_and(|h| {
                h == *d || h.strip_suffix(d.as_str()).is_some_and(|r| r.ends_with('.'))
            }),
        }
    }
}

/// The places a path pattern or a relative path is resolved against.
#[derive(Debug, Clone)]
pub struct Anchors {
    /// The chain's workdir (or worktree), resolved.
    pub workdir: PathBuf,
    pub home: Option<PathBuf>,
}

impl PathPattern {
    /// The absolute glob this pattern stands for: `//abs` and `/abs` are absolute, `~/…` is
    /// under the home dir, anything else is relative to the workdir; a pattern without a
    /// `/` matches at any depth below it (as in `.gitignore`).
    fn anchored(&self, a: &Anchors) -> Option<String> {
        let raw = self.raw.as_str();
        let s = if let Some(rest) = raw.strip_prefix("//") {
            format!("/{rest}")
        } else if raw.starts_with('/') {
            raw.to_string()
        } else if let Some(rest) = raw.strip_prefix("~/") {
            format!("{}/{rest}", a.home.as_ref()?.display())
        } else if raw == "~" {
            a.home.as_ref()?.display().to_string()
        } else {
            let rel = raw.strip_prefix("./").unwrap_or(raw);
            if rel.contains('/') {
                format!("{}/{rel}", a.workdir.display())
            } else {
                format!("{}/**/{rel}", a.workdir.display())
            }
        };
        Some(s)
    }

    fn matches(&self, path: &Path, a: &Anchors) -> bool {
        let Some(pattern) = self.anchored(a) else {
            return false;
        };
        let Ok(glob) = globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
        else {
            return false;
        };
        let m = glob.compile_matcher();
        // `dir/**` covers `dir` itself too.
        m.is_match(path)
            || pattern
                .strip_suffix("/**")
                .is_some_and(|dir| Path::new(dir) == path)
    }
}

/// Splits a shell command at `&&`, `||`, `;`, `|` and newlines (outside quotes): the parts a
/// rule is checked against, so `cargo test && rm -rf /` is not allowed by `Bash(cargo test:*)`.
pub fn split_command(cmd: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (Some(_), '\\') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (None, '\\') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (None, ';' | '\n' | '|' | '&') => {
                if matches!(c, '|' | '&') && chars.peek() == Some(&c) {
                    chars.next();
                } else if c == '&' {
                    // A lone `&` (background) separates commands too.
                }
                parts.push(std::mem::take(&mut cur));
            }
            (None, c) => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// One tool call as the agent asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub tool: &'a str,
    pub input: &'a Value,
}

impl Call<'_> {
    /// The shell command of a Bash call.
    pub fn command(&self) -> Option<&str> {
        (self.tool == "Bash")
            .then(|| self.input.get("command").and_then(Value::as_str))
            .flatten()
    }

    /// The path a file tool works on, resolved: relative to the workdir, `~` expanded, `..`
    /// folded, symlinks of the part that exists followed. Listing tools without a path work
    /// in the workdir.
    pub fn path(&self, a: &Anchors) -> Option<PathBuf> {
        let raw = ["file_path", "notebook_path", "path"]
            .iter()
            .find_map(|k| self.input.get(*k).and_then(Value::as_str));
        let raw = match raw {
            Some(r) if !r.is_empty() => r,
            _ if READ_TOOLS.contains(&self.tool) => return Some(a.workdir.clone()),
            _ => return None,
        };
        Some(resolve(raw, a))
    }

    /// The host of a WebFetch call's URL, lower-cased.
    pub fn host(&self) -> Option<String> {
        let url = self.input.get("url").and_then(Value::as_str)?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', '?', '#']).next()?;
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = host.split(':').next()?;
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    }
}

/// Resolves a path as the agent would see it: see [`Call::path`].
pub fn resolve(raw: &str, a: &Anchors) -> PathBuf {
    let expanded = match (raw.strip_prefix("~/"), &a.home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ if raw == "~" && a.home.is_some() => a.home.clone().unwrap_or_default(),
        _ => PathBuf::from(raw),
    };
    let joined = if expanded.is_absolute() {
        expanded
    } else {
        a.workdir.join(expanded)
    };
    canonical(&normalize(&joined))
}

/// Folds `.` and `..` without touching the file system.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Follows symlinks in the longest part of `p` that exists; the rest is appended as is.
pub fn canonical(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return normalize(&out);
        }
        match (
            existing.file_name().map(|f| f.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn anchors() -> Anchors {
        Anchors {
            workdir: PathBuf::from("/nonexistent-w/repo"),
            home: Some(PathBuf::from("/nonexistent-h")),
        }
    }

    fn hit(rule: &str, tool: &str, input: Value) -> bool {
        Rule::parse(rule).unwrap().matches(
            &Call {
                tool,
                input: &input,
            },
            &anchors(),
            true,
        )
    }

    #[test]
    fn parses_claude_code_syntax_and_rejects_typos() {
        for ok in [
            "Bash",
            "Bash(cargo test:*)",
            "Bash(npm run build)",
            "Edit(src/**)",
            "Read(~/.ssh/**)",
            "Write(//tmp/x)",
            "WebFetch(domain:docs.rs)",
            "mcp__github",
            "mcp__github__create_issue",
            "WebSearch",
        ] {
            assert!(Rule::parse(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("Bash(cargo test", "must end with `)`"),
            ("", "expected a tool name"),
            ("Ba sh", "expected a tool name"),
            ("WebFetch(docs.rs)", "domain:"),
            ("Task(foo)", "takes no specifier"),
            ("Bash(:*)", "needs a command"),
            ("Edit(src/[)", "not a valid path pattern"),
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bash_prefixes_exact_commands_and_compound_commands() {
        let cmd = |c: &str| json!({"command": c});
        assert!(hit("Bash(cargo test:*)", "Bash", cmd("cargo test --all")));
        assert!(hit("Bash(cargo test:*)", "Bash", cmd("cargo test")));
        assert!(!hit("Bash(cargo test:*)", "Bash", cmd("cargo testing")));
        assert!(hit("Bash(npm run build)", "Bash", cmd("npm run build")));
        assert!(!hit("Bash(npm run build)", "Bash", cmd("npm run build2")));
        assert!(hit("Bash(git *)", "Bash", cmd("git status")));
        // An allow rule must cover every part of a compound command…
        assert!(!hit(
            "Bash(cargo test:*)",
            "Bash",
            cmd("cargo test && rm -rf /")
        ));
        assert!(hit(
            "Bash(cargo test:*)",
            "Bash",
            cmd("cargo test; cargo test -q")
        ));
        // …a deny rule any part of it.
        let rm = Rule::parse("Bash(rm:*)").unwrap();
        let input = cmd("cargo test && rm -rf /");
        let call = Call {
            tool: "Bash",
            input: &input,
        };
        assert!(rm.matches(&call, &anchors(), false));
        assert!(!rm.matches(&call, &anchors(), true));
        assert_eq!(
            split_command("a 'x && y' && b || c | d; e\nf"),
            ["a 'x && y'", "b", "c", "d", "e", "f"]
        );
    }

    #[test]
    fn paths_are_anchored_like_claude_code() {
        let file = |p: &str| json!({"file_path": p});
        assert!(hit(
            "Edit(src/**)",
            "Write",
            file("/nonexistent-w/repo/src/a/b.rs")
        ));
        assert!(hit("Edit(src/**)", "Edit", file("src/main.rs")));
        assert!(!hit("Edit(src/**)", "Edit", file("/elsewhere/src/main.rs")));
        assert!(hit(
            "Read(~/.ssh/**)",
            "Read",
            file("/nonexistent-h/.ssh/id_ed25519")
        ));
        assert!(hit("Read(~/.ssh/**)", "Read", file("~/.ssh/id_ed25519")));
        assert!(hit("Read(~/.ssh/**)", "Grep", json!({"path": "~/.ssh"})));
        assert!(hit("Read(*.env)", "Read", file("deep/dir/.env")));
        assert!(hit("Read(*.env)", "Read", file("prod.env")));
        assert!(hit("Write(//tmp/**)", "Write", file("/tmp/x/y")));
        // `..` is folded before matching.
        assert!(!hit("Edit(src/**)", "Edit", file("src/../../outside.rs")));
        assert!(hit(
            "Edit(//nonexistent-w/outside.rs)",
            "Edit",
            file("src/../../outside.rs")
        ));
        // A Read rule does not cover an edit, an Edit rule covers every editing tool.
        assert!(!hit("Read(src/**)", "Edit", file("src/a.rs")));
        assert!(hit("Edit(src/**)", "MultiEdit", file("src/a.rs")));
    }

    #[test]
    fn symlinks_are_followed_before_matching() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let work = root.join("work");
        let secret = root.join("secret");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::os::unix::fs::symlink(&secret, work.join("link")).unwrap();
        let a = Anchors {
            workdir: work.clone(),
            home: None,
        };
        let p = resolve("link/key", &a);
        assert_eq!(p, secret.join("key"));
        assert_eq!(resolve("./a/../b", &a), work.join("b"));
    }

    #[test]
    fn tools_domains_and_servers() {
        assert!(hit(
            "WebFetch(domain:docs.rs)",
            "WebFetch",
            json!({"url": "https://docs.rs/x"})
        ));
        assert!(hit(
            "WebFetch(domain:docs.rs)",
            "WebFetch",
            json!({"url": "https://api.docs.rs:443/"})
        ));
        assert!(!hit(
            "WebFetch(domain:docs.rs)",
            "WebFetch",
            json!({"url": "https://evildocs.rs/"})
        ));
        assert!(hit("mcp__github", "mcp__github__create_issue", json!({})));
        assert!(!hit("mcp__git", "mcp__github__create_issue", json!({})));
        assert!(hit("Bash", "Bash", json!({"command": "anything"})));
        assert!(!hit("Bash", "Write", json!({})));
    }
}
