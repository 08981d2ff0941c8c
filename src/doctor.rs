//! `operator doctor`: checks what a run needs (the agent CLI and its version, credentials, the
//! permission mode as root, the data dir) and, if asked, runs one tiny real session.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::agent::{AgentKind, find_program};
use crate::config::ChainSettings;

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

impl Check {
    fn ok(what: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            what: what.into(),
            detail: detail.into(),
        }
    }
    fn bad(what: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// The CLI's `--version`, with a timeout.
fn version(bin: &Path) -> Result<String, String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                return Err("`--version` did not answer within 30 s".into());
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !text.is_empty() {
        Ok(text)
    } else {
        Err(format!(
            "`--version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the Claude Code CLI will find credentials, as far as the operator can see (never the
/// secret itself), or what is missing and what to do.
pub fn claude_credentials(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    if set("ANTHROPIC_API_KEY") {
        return Ok("ANTHROPIC_API_KEY is set (not shown)".into());
    }
    if set("ANTHROPIC_AUTH_TOKEN") || set("CLAUDE_CODE_OAUTH_TOKEN") {
        return Ok("an auth token is set (not shown)".into());
    }
    for k in ["CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX"] {
        if set(k) {
            return Ok(format!(
                "{k} is set: the cloud provider's credentials apply"
            ));
        }
    }
    let dir = env("CLAUDE_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".claude")));
    if let Some(dir) = dir {
        let login = dir.join(".credentials.json");
        if login.is_file() {
            return Ok(format!("logged in ({})", login.display()));
        }
        let settings = dir.join("settings.json");
        if std::fs::read_to_string(&settings).is_ok_and(|s| s.contains("apiKeyHelper")) {
            return Ok(format!("an apiKeyHelper in {}", settings.display()));
        }
    }
    Err("no ANTHROPIC_API_KEY, no auth token and no login: log in with `claude` (then `/login`), or set ANTHROPIC_API_KEY".into())
}

/// The effective permission policy, failing loudly when the agent could not do its job under it
/// (edit files and run commands in its workdir).
pub fn permissions_check(s: &ChainSettings, data_dir: &Path) -> Check {
    if s.permission_mode == "bypassPermissions" {
        return Check::ok(
            "permissions",
            "not checked: every tool call is allowed (bypassPermissions)",
        );
    }
    if s.permission_mode == "plan" {
        return Check::bad(
            "permissions",
            "permission_mode = \"plan\": the agent can only read and plan, never edit a file or run a command; use \"default\"",
        );
    }
    let policy = crate::permissions::Policy::new(&s.permissions, &s.workdir, data_dir);
    let blockers = policy.blockers();
    let described = policy.describe(&s.permissions).join("; ");
    if blockers.is_empty() {
        Check::ok("permissions", described)
    } else {
        Check::bad(
            "permissions",
            format!(
                "the agent cannot do its job: {} — change `permissions` in your configuration ({described})",
                blockers.join("; ")
            ),
        )
    }
}

/// Static checks for the chain settings `s`, with `env` the variables the agent will see.
pub fn checks(
    s: &ChainSettings,
    claude_bin: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
    data_dir: &Path,
) -> Vec<Check> {
    let mut out = Vec::new();
    if s.agent == AgentKind::Claude {
        let name = claude_bin
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("claude"));
        match find_program(&name) {
            None => out.push(Check::bad(
                "claude CLI",
                format!("`{}` not found: install it with `npm install -g @anthropic-ai/claude-code`, or set --claude-bin / OPERATOR_CLAUDE_BIN", name.display()),
            )),
            Some(p) => match version(&p) {
                Ok(v) => out.push(Check::ok("claude CLI", format!("{} ({v})", p.display()))),
                Err(e) => out.push(Check::bad("claude CLI", format!("{}: {e}", p.display()))),
            },
        }
        match claude_credentials(env) {
            Ok(how) => out.push(Check::ok("credentials", how)),
            Err(why) => out.push(Check::bad("credentials", why)),
        }
        if let Some(url) = env("ANTHROPIC_BASE_URL") {
            out.push(Check::ok(
                "API endpoint",
                crate::redact::redact(&url).into_owned(),
            ));
        }
        if s.permission_mode == "bypassPermissions"
            && is_root
            && env("IS_SANDBOX").as_deref() != Some("1")
        {
            out.push(Check::bad(
                "permission mode",
                "bypassPermissions as root is refused by the CLI unless IS_SANDBOX=1 is set (only do that inside a sandbox)",
            ));
        } else if s.permission_mode == "bypassPermissions" {
            out.push(Check::ok(
                "permission mode",
                "bypassPermissions (chosen explicitly): the CLI asks nothing, the operator's policy does not apply",
            ));
        } else {
            out.push(Check::ok(
                "permission mode",
                format!(
                    "{} — the operator answers the CLI's permission requests (--permission-prompt-tool stdio)",
                    s.permission_mode
                ),
            ));
        }
        out.push(permissions_check(s, data_dir));
    } else {
        out.push(Check::ok("agent", "sim (built in; no CLI or key needed)"));
    }
    if !s.workdir.is_dir() {
        out.push(Check::bad(
            "workdir",
            format!("{} is not a directory", s.workdir.display()),
        ));
    } else {
        out.push(Check::ok("workdir", s.workdir.display().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(agent: AgentKind, mode: &str) -> ChainSettings {
        let loaded =
            crate::config::load_operator(None, &Default::default(), &Default::default()).unwrap();
        let mut s = loaded
            .plan_for_task("t", &Default::default())
            .unwrap()
            .chains[0]
            .settings
            .clone();
        s.agent = agent;
        s.permission_mode = mode.into();
        s
    }

    #[test]
    fn missing_cli_and_key_are_reported() {
        let s = settings(AgentKind::Claude, "default");
        let c = checks(
            &s,
            Some(Path::new("/no/such/claude")),
            &|_| None,
            false,
            Path::new(".operator"),
        );
        assert!(
            c.iter()
                .any(|c| !c.ok && c.what == "claude CLI" && c.detail.contains("/no/such/claude"))
        );
        assert!(c.iter().any(|c| !c.ok && c.what == "credentials"));
    }

    #[test]
    fn keys_are_never_shown_and_root_needs_is_sandbox() {
        let s = settings(AgentKind::Claude, "bypassPermissions");
        let env =
            |k: &str| (k == "ANTHROPIC_API_KEY").then(|| "sk-ant-secret-value-123".to_string());
        let c = checks(
            &s,
            Some(Path::new("/bin/true")),
            &env,
            true,
            Path::new(".operator"),
        );
        assert!(c.iter().all(|c| !c.detail.contains("secret-value")));
        assert!(c.iter().any(|c| c.what == "credentials" && c.ok));
        assert!(c.iter().any(|c| !c.ok && c.detail.contains("IS_SANDBOX")));
        let sandboxed = |k: &str| match k {
            "IS_SANDBOX" => Some("1".to_string()),
            _ => env(k),
        };
        let c = checks(
            &s,
            Some(Path::new("/bin/true")),
            &sandboxed,
            true,
            Path::new(".operator"),
        );
        assert!(c.iter().any(|c| c.what == "permission mode" && c.ok));
    }

    #[test]
    fn a_policy_that_blocks_the_agent_fails_loudly() {
        let mut s = settings(AgentKind::Claude, "default");
        assert!(
            permissions_check(&s, Path::new(".operator")).ok,
            "{:?}",
            permissions_check(&s, Path::new(".operator"))
        );
        s.permissions.deny = vec!["Bash".into()];
        let c = permissions_check(&s, Path::new(".operator"));
        assert!(
            !c.ok
                && c.detail
                    .contains("Bash in the workdir is denied (deny: Bash)"),
            "{c:?}"
        );
        let c = permissions_check(&settings(AgentKind::Claude, "plan"), Path::new(".operator"));
        assert!(!c.ok && c.detail.contains("never edit"), "{c:?}");
    }

    #[test]
    fn credentials_are_found_where_the_cli_looks() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_string_lossy().into_owned();
        let env = |k: &str| (k == "HOME").then(|| home.clone());
        assert!(claude_credentials(&env).unwrap_err().contains("/login"));
        std::fs::create_dir_all(dir.path().join(".claude")).unwrap();
        std::fs::write(dir.path().join(".claude/.credentials.json"), "{}").unwrap();
        assert!(claude_credentials(&env).unwrap().starts_with("logged in"));
        let bedrock = |k: &str| (k == "CLAUDE_CODE_USE_BEDROCK").then(|| "1".to_string());
        assert!(claude_credentials(&bedrock).is_ok());
    }

    #[test]
    fn the_sim_needs_nothing() {
        let c = checks(
            &settings(AgentKind::Sim, "default"),
            None,
            &|_| None,
            false,
            Path::new(".operator"),
        );
        assert!(c.iter().all(|c| c.ok), "{c:?}");
    }
}
