//! The operator's permission policy: a chain's `allow` / `deny` / `ask` rules over a built-in
//! default, deciding each tool call the agent asks about (deny wins over ask wins over allow).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rule::{Anchors, Call, EDIT_TOOLS, READ_TOOLS, Rule, RuleError};

/// The rules of a chain, as written in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub ask: Vec<String>,
}

impl PermissionRules {
    /// Every malformed rule, with its key (`permissions.deny[1]`).
    pub fn check(&self) -> Vec<(String, RuleError)> {
        self.lists()
            .flat_map(|(name, list)| {
                list.iter().enumerate().filter_map(move |(i, r)| {
                    Rule::parse(r)
                        .err()
                        .map(|e| (format!("permissions.{name}[{i}]"), e))
                })
            })
            .collect()
    }

    fn lists(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        [
            ("allow", &self.allow),
            ("deny", &self.deny),
            ("ask", &self.ask),
        ]
        .into_iter()
    }
}

/// What the policy says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    /// Hold the call for a person.
    Ask,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        }
    }
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule (`deny: Bash(rm:*)`) or the default (`default: writes only inside the workdir`).
    pub rule: String,
    /// What the agent is told when the call is denied.
    pub message: String,
}

/// Places no default lets the agent read or write: credentials of the usual tools.
const SECRET_PLACES: &[&str] = &[
    ".ssh",
    ".aws",
    ".gnupg",
    ".config/gh",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".claude/.credentials.json",
    ".codex/auth.json",
];

/// A chain's policy, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    ask: Vec<Rule>,
    anchors: Anchors,
    /// The operator's data dir (store, token, handoffs): never readable or writable.
    data_dir: PathBuf,
}

impl Policy {
    /// Builds the policy of a session in `workdir`. Malformed rules were refused when the
    /// configuration was loaded; one that slips through is skipped (and can only narrow
    /// nothing: a skipped allow rule denies more, never less).
    pub fn new(rules: &PermissionRules, workdir: &Path, data_dir: &Path) -> Self {
        let parse = |list: &[String]| list.iter().filter_map(|r| Rule::parse(r).ok()).collect();
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .map(|h| super::rule::canonical(&h));
        let workdir = super::rule::canonical(&super::rule::normalize(&absolute(workdir)));
        let data_dir = super::rule::canonical(&super::rule::normalize(&absolute(data_dir)));
        Self {
            allow: parse(&rules.allow),
            deny: parse(&rules.deny),
            ask: parse(&rules.ask),
            anchors: Anchors { workdir, home },
            data_dir,
        }
    }

    pub fn workdir(&self) -> &Path {
        &self.anchors.workdir
    }

    /// Decides one tool call.
    pub fn decide(&self, tool: &str, input: &Value) -> Decision {
        let call = Call { tool, input };
        let found = |rules: &[Rule], all: bool| {
            rules
                .iter()
                .find(|r| r.matches(&call, &self.anchors, all))
                .map(|r| r.to_string())
        };
        if let Some(r) = found(&self.deny, false) {
            return Decision {
                verdict: Verdict::Deny,
                message: format!(
                    "The operator's permission policy denies this call (rule `{r}`). Do not try it again; find another way, or say in your handoff what a person must do."
                ),
                rule: format!("deny: {r}"),
            };
        }
        if let Some(r) = found(&self.ask, false) {
            return Decision {
                verdict: Verdict::Ask,
                message: String::new(),
                rule: format!("ask: {r}"),
            };
        }
        if let Some(r) = found(&self.allow, true) {
            return Decision {
                verdict: Verdict::Allow,
                message: String::new(),
                rule: format!("allow: {r}"),
            };
        }
        self.default_decision(&call)
    }

    /// The built-in default: read anywhere but secret places and the data dir, write only
    /// inside the workdir, run commands (in the workdir), and use any other tool.
    fn default_decision(&self, call: &Call<'_>) -> Decision {
        let allow = |why: &str| Decision {
            verdict: Verdict::Allow,
            rule: format!("default: {why}"),
            message: String::new(),
        };
        let deny = |why: &str, message: String| Decision {
            verdict: Verdict::Deny,
            rule: format!("default: {why}"),
            message,
        };
        let edits = EDIT_TOOLS.contains(&call.tool);
        let reads = READ_TOOLS.contains(&call.tool);
        if !(edits || reads) {
            return match call.tool {
                "Bash" => allow("commands run in the workdir"),
                _ => allow("tools other than file access are allowed"),
            };
        }
        let Some(path) = call.path(&self.anchors) else {
            return deny(
                "a file tool without a path",
                "The operator could not tell which file this call touches; name the file with an absolute path or one relative to the workdir.".into(),
            );
        };
        if path.starts_with(&self.data_dir) {
            return deny(
                "the operator's data dir",
                format!(
                    "{} belongs to the operator (its store, token and handoffs); agents may not read or change it.",
                    path.display()
                ),
            );
        }
        if let Some(secret) = self.secret_place(&path) {
            return deny(
                "secret places",
                format!(
                    "{} holds credentials ({secret}); the operator's policy keeps agents out of it.",
                    path.display()
                ),
            );
        }
        if reads {
            return allow("reads anywhere but secret places");
        }
        if path.starts_with(&self.anchors.workdir) {
            allow("writes inside the workdir")
        } else {
            deny(
                "writes only inside the workdir",
                format!(
                    "Writing outside the workdir ({}) is not allowed: {} is outside it. Work inside the workdir.",
                    self.anchors.workdir.display(),
                    path.display()
                ),
            )
        }
    }

    fn secret_place(&self, path: &Path) -> Option<&'static str> {
        let home = self.anchors.home.as_ref()?;
        SECRET_PLACES
            .iter()
            .find(|s| path.starts_with(home.join(s)))
            .copied()
    }

    /// Whether the agent can write a file and run a command in its workdir under this policy
    /// (what `operator doctor` checks): the problems, if any.
    pub fn blockers(&self) -> Vec<String> {
        let probe = self.anchors.workdir.join("operator-doctor-probe.txt");
        let probe = probe.to_string_lossy();
        let checks = [
            (
                "Write",
                serde_json::json!({"file_path": probe, "content": "x"}),
            ),
            (
                "Edit",
                serde_json::json!({"file_path": probe, "old_string": "x", "new_string": "y"}),
            ),
            ("Bash", serde_json::json!({"command": "git status"})),
        ];
        checks
            .into_iter()
            .filter_map(|(tool, input)| {
                let d = self.decide(tool, &input);
                (d.verdict == Verdict::Deny)
                    .then(|| format!("{tool} in the workdir is denied ({})", d.rule))
            })
            .collect()
    }

    /// The policy in a few lines, for `operator doctor` and `--dry-run`.
    pub fn describe(&self, rules: &PermissionRules) -> Vec<String> {
        let mut out = Vec::new();
        for (name, list) in rules.lists() {
            if !list.is_empty() {
                out.push(format!("{name}: {}", list.join(", ")));
            }
        }
        out.push(format!(
            "default: read anywhere except secret places (~/.ssh, ~/.aws, ~/.config/gh, …) and the data dir {}; write only inside {}; run commands (not a sandbox)",
            self.data_dir.display(),
            self.anchors.workdir.display()
        ));
        out
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// A short summary of a call's input for records and approvals (secrets masked, long inputs cut).
pub fn summarize(tool: &str, input: &Value) -> String {
    let s = match tool {
        "Bash" => input
            .get("command")
            .and_then(Value::as_str)
            .map(str::to_string),
        "WebFetch" => input.get("url").and_then(Value::as_str).map(str::to_string),
        _ => [
            "file_path",
            "notebook_path",
            "path",
            "pattern",
            "url",
            "query",
        ]
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
        .map(str::to_string),
    }
    .unwrap_or_else(|| input.to_string());
    let s = crate::redact::redact(&s).into_owned();
    const MAX: usize = 300;
    if s.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(rules: PermissionRules) -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        let p = Policy::new(
            &rules,
            &dir.path().join("work"),
            &dir.path().join("work/.operator"),
        );
        (dir, p)
    }

    fn verdict(p: &Policy, tool: &str, input: Value) -> Verdict {
        p.decide(tool, &input).verdict
    }

    #[test]
    fn the_default_lets_an_agent_work_in_its_workdir_and_no_more() {
        let (_d, p) = policy(PermissionRules::default());
        let w = p.workdir().to_path_buf();
        let file = |f: &Path| json!({"file_path": f.to_string_lossy()});
        assert_eq!(verdict(&p, "Write", file(&w.join("a.txt"))), Verdict::Allow);
        assert_eq!(
            verdict(&p, "Edit", json!({"file_path": "src/x.rs"})),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "Bash", json!({"command": "git init"})),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "Read", json!({"file_path": "/etc/hostname"})),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "WebSearch", json!({"query": "x"})),
            Verdict::Allow
        );
        let out = p.decide(
            "Write",
            &json!({"file_path": "/tmp/outside-the-workdir.txt"}),
        );
        assert_eq!(out.verdict, Verdict::Deny);
        assert!(
            out.message.contains("outside the workdir"),
            "{}",
            out.message
        );
        assert_eq!(out.rule, "default: writes only inside the workdir");
        assert_eq!(
            verdict(&p, "Write", json!({"file_path": "../escape.txt"})),
            Verdict::Deny
        );
        // The data dir is the operator's, even inside the workdir.
        assert_eq!(
            verdict(&p, "Read", json!({"file_path": ".operator/api-token"})),
            Verdict::Deny
        );
        assert_eq!(
            verdict(&p, "Write", json!({"file_path": ".operator/operator.db"})),
            Verdict::Deny
        );
        assert!(p.blockers().is_empty());
    }

    #[test]
    fn secret_places_are_denied_for_reads_too() {
        let (_d, p) = policy(PermissionRules::default());
        let Some(home) = p.anchors.home.clone() else {
            return;
        };
        for f in [
            ".ssh/id_ed25519",
            ".aws/credentials",
            ".config/gh/hosts.yml",
        ] {
            let d = p.decide(
                "Read",
                &json!({"file_path": home.join(f).to_string_lossy()}),
            );
            assert_eq!(d.verdict, Verdict::Deny, "{f}");
            assert_eq!(d.rule, "default: secret places");
        }
        assert_eq!(
            verdict(&p, "Read", json!({"file_path": "~/.ssh/id_ed25519"})),
            Verdict::Deny
        );
    }

    #[test]
    fn deny_wins_over_ask_wins_over_allow_over_the_default() {
        let rules = PermissionRules {
            allow: vec!["Bash(rm -rf build)".into(), "Write(//tmp/shared/**)".into()],
            deny: vec!["Bash(rm:*)".into(), "Bash(curl:*)".into()],
            ask: vec!["Bash(git push:*)".into(), "Bash(rm -rf build)".into()],
        };
        let (_d, p) = policy(rules);
        let bash = |c: &str| json!({"command": c});
        let d = p.decide("Bash", &bash("rm -rf build"));
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Deny, "deny: Bash(rm:*)")
        );
        assert!(d.message.contains("Bash(rm:*)"));
        assert_eq!(verdict(&p, "Bash", bash("ls && curl x")), Verdict::Deny);
        let d = p.decide("Bash", &bash("git push origin main"));
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Ask, "ask: Bash(git push:*)")
        );
        let d = p.decide("Write", &json!({"file_path": "/tmp/shared/x"}));
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Allow, "allow: Write(//tmp/shared/**)")
        );
        let d = p.decide("Bash", &bash("cargo build"));
        assert_eq!(d.rule, "default: commands run in the workdir");
    }

    #[test]
    fn doctor_finds_a_policy_in_which_the_agent_cannot_work() {
        let (_d, p) = policy(PermissionRules {
            deny: vec!["Edit".into(), "Bash".into()],
            ..Default::default()
        });
        let b = p.blockers();
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(b[0].contains("Write in the workdir is denied (deny: Edit)"));
    }

    #[test]
    fn malformed_rules_are_named_with_their_key() {
        let rules = PermissionRules {
            allow: vec!["Bash".into(), "Edit(".into()],
            deny: vec!["WebFetch(x)".into()],
            ask: vec![],
        };
        let errs = rules.check();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, "permissions.allow[1]");
        assert_eq!(errs[1].0, "permissions.deny[0]");
    }

    #[test]
    fn summaries_are_short_and_masked() {
        assert_eq!(summarize("Bash", &json!({"command": "ls -la"})), "ls -la");
        assert_eq!(
            summarize(
                "Bash",
                &json!({"command": "curl -H 'Authorization: Bearer abcdefghijklmnop' x"})
            ),
            "curl -H 'Authorization: Bearer [REDACTED]' x"
        );
        assert_eq!(
            summarize("Write", &json!({"file_path": "/a/b", "content": "x"})),
            "/a/b"
        );
        let long = "x".repeat(1000);
        assert!(summarize("Bash", &json!({"command": long})).len() < 320);
    }
}
