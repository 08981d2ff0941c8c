//! `operator doctor`: checks what a run needs (the agent CLI and its version, credentials, the
//! permission mode as root, the data dir) and, if asked, runs one tiny real session.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::agent::claude::credentials as claude_credentials;
use crate::agent::{AgentKind, BackendOptions, find_program};
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

/// The agent CLI is there and answers `--version`.
fn cli_check(kind: AgentKind, configured: Option<&Path>) -> Check {
    let what = &format!("{kind} CLI");
    let install = kind.install_hint();
    let name = configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(kind.as_str()));
    match find_program(&name) {
        None => Check::bad(what, format!("`{}` not found: {install}", name.display())),
        Some(p) => match version(&p) {
            Ok(v) => Check::ok(what, format!("{} ({v})", p.display())),
            Err(e) => Check::bad(what, format!("{}: {e}", p.display())),
        },
    }
}

/// The Codex CLI, its credentials, and what the permission mode becomes in its sandbox.
fn codex_checks(
    s: &ChainSettings,
    backend: &BackendOptions,
    env: &dyn Fn(&str) -> Option<String>,
    data_dir: &Path,
) -> Vec<Check> {
    let mut out = vec![cli_check(AgentKind::Codex, backend.codex_bin.as_deref())];
    out.push(match crate::agent::codex::credentials(env) {
        Ok(how) => Check::ok("credentials", how),
        Err(why) => Check::bad("credentials", why),
    });
    let mode = match s.permission_mode.as_str() {
        "bypassPermissions" => "bypassPermissions (chosen explicitly): no sandbox and no approvals (--dangerously-bypass-approvals-and-sandbox)".to_string(),
        "plan" => "plan: the read-only sandbox (the agent can change nothing)".to_string(),
        m => format!("{m}: the workspace-write sandbox — the agent writes in its workdir only (not /tmp, not .git), no network; the operator's allow/ask/deny rules are not asked per call (the CLI has no permission callback in `exec`)"),
    };
    out.push(if s.permission_mode == "plan" {
        Check::bad(
            "permission mode",
            format!("{mode}: it could never edit the workdir"),
        )
    } else {
        Check::ok("permission mode", mode)
    });
    if s.permission_mode != "bypassPermissions"
        && let (Ok(dir), Ok(work)) = (data_dir.canonicalize(), s.workdir.canonicalize())
        && dir.starts_with(&work)
    {
        out.push(Check::ok(
            "data dir",
            format!(
                "{} is inside the workdir, which the codex sandbox lets the agent write (claude's policy denies it; codex cannot): a `data_dir` outside {} keeps the operator's store and API token out of the agent's reach",
                dir.display(),
                work.display()
            ),
        ));
    }
    out
}

/// The Gemini CLI, its credentials, and what the permission mode becomes as its approval mode.
fn gemini_checks(
    s: &ChainSettings,
    backend: &BackendOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Check> {
    let mut out = vec![cli_check(AgentKind::Gemini, backend.gemini_bin.as_deref())];
    out.push(match crate::agent::gemini::credentials(env) {
        Ok(how) => Check::ok("credentials", how),
        Err(why) => Check::bad("credentials", why),
    });
    let mode = crate::agent::gemini::approval_mode(&s.permission_mode);
    out.push(match mode {
        "plan" => Check::bad(
            "permission mode",
            "plan: --approval-mode plan (read-only): it could never edit the workdir",
        ),
        "yolo" => Check::ok(
            "permission mode",
            "bypassPermissions (chosen explicitly): --approval-mode yolo — every tool, shell commands included, unconfined",
        ),
        _ => Check::ok(
            "permission mode",
            format!("{}: --approval-mode auto_edit — reads, and edits files inside the workdir (the CLI refuses paths outside it); no shell commands, which the CLI cannot confine (bypassPermissions allows them); the operator's allow/ask/deny rules are not asked per call", s.permission_mode),
        ),
    });
    out
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
    backend: &BackendOptions,
    env: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
    data_dir: &Path,
) -> Vec<Check> {
    let mut out = Vec::new();
    if s.agent == AgentKind::Claude {
        out.push(cli_check(AgentKind::Claude, backend.claude_bin.as_deref()));
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
    } else if s.agent == AgentKind::Codex {
        out.extend(codex_checks(s, backend, env, data_dir));
    } else if s.agent == AgentKind::Gemini {
        out.extend(gemini_checks(s, backend, env));
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
            &BackendOptions {
                claude_bin: Some("/no/such/claude".into()),
                ..Default::default()
            },
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
            &BackendOptions {
                claude_bin: Some("/bin/true".into()),
                ..Default::default()
            },
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
            &BackendOptions {
                claude_bin: Some("/bin/true".into()),
                ..Default::default()
            },
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
    fn codex_checks_its_cli_its_key_and_its_sandbox() {
        let s = settings(AgentKind::Codex, "default");
        let backend = BackendOptions {
            codex_bin: Some("/no/such/codex".into()),
            ..Default::default()
        };
        let c = checks(&s, &backend, &|_| None, false, Path::new(".operator"));
        assert!(
            c.iter()
                .any(|c| !c.ok && c.what == "codex CLI" && c.detail.contains("@openai/codex"))
        );
        assert!(
            c.iter()
                .any(|c| !c.ok && c.what == "credentials" && c.detail.contains("codex login"))
        );
        assert!(
            c.iter().any(|c| c.ok
                && c.what == "permission mode"
                && c.detail.contains("workspace-write"))
        );
        let plan = checks(
            &settings(AgentKind::Codex, "plan"),
            &backend,
            &|_| None,
            false,
            Path::new(".operator"),
        );
        assert!(plan.iter().any(|c| !c.ok && c.what == "permission mode"));
    }

    #[test]
    fn the_sim_needs_nothing() {
        let c = checks(
            &settings(AgentKind::Sim, "default"),
            &BackendOptions::default(),
            &|_| None,
            false,
            Path::new(".operator"),
        );
        assert!(c.iter().all(|c| c.ok), "{c:?}");
    }
}
