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

/// Static checks for the chain settings `s`, with `env` the variables the agent will see.
pub fn checks(
    s: &ChainSettings,
    claude_bin: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
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
        let key = env("ANTHROPIC_API_KEY").filter(|v| !v.is_empty());
        let token = env("ANTHROPIC_AUTH_TOKEN")
            .or_else(|| env("CLAUDE_CODE_OAUTH_TOKEN"))
            .filter(|v| !v.is_empty());
        let login = env("HOME")
            .map(|h| Path::new(&h).join(".claude/.credentials.json"))
            .filter(|p| p.is_file());
        match (key, token, login) {
            (Some(_), _, _) => out.push(Check::ok("credentials", "ANTHROPIC_API_KEY is set (not shown)")),
            (None, Some(_), _) => out.push(Check::ok("credentials", "an auth token is set (not shown)")),
            (None, None, Some(p)) => out.push(Check::ok("credentials", format!("logged in ({})", p.display()))),
            _ => out.push(Check::bad("credentials", "no ANTHROPIC_API_KEY, no auth token and no `claude login`: sessions will fail with 401")),
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
        } else {
            out.push(Check::ok("permission mode", s.permission_mode.clone()));
        }
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
        let c = checks(&s, Some(Path::new("/no/such/claude")), &|_| None, false);
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
        let c = checks(&s, Some(Path::new("/bin/true")), &env, true);
        assert!(c.iter().all(|c| !c.detail.contains("secret-value")));
        assert!(c.iter().any(|c| c.what == "credentials" && c.ok));
        assert!(c.iter().any(|c| !c.ok && c.detail.contains("IS_SANDBOX")));
        let sandboxed = |k: &str| match k {
            "IS_SANDBOX" => Some("1".to_string()),
            _ => env(k),
        };
        let c = checks(&s, Some(Path::new("/bin/true")), &sandboxed, true);
        assert!(c.iter().any(|c| c.what == "permission mode" && c.ok));
    }

    #[test]
    fn the_sim_needs_nothing() {
        let c = checks(&settings(AgentKind::Sim, "default"), None, &|_| None, false);
        assert!(c.iter().all(|c| c.ok), "{c:?}");
    }
}
