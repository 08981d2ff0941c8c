//! The installed agent CLIs, for the tests and benches that run them: `.ci/run`'s cache or
//! `OPERATOR_TEST_CLAUDE_BIN` / `OPERATOR_TEST_CODEX_BIN` / `OPERATOR_TEST_GEMINI_BIN`. In CI a missing CLI is a failure;
//! elsewhere a loud skip.

use std::path::PathBuf;

/// The Claude Code CLI, or `None` (after saying so) when it is not installed outside CI.
pub fn claude_bin() -> Option<PathBuf> {
    installed(
        "Claude Code",
        "OPERATOR_TEST_CLAUDE_BIN",
        "claude-code-2.1.328/node_modules/.bin/claude",
    )
}

/// The Codex CLI, or `None` (after saying so) when it is not installed outside CI.
pub fn codex_bin() -> Option<PathBuf> {
    installed(
        "Codex",
        "OPERATOR_TEST_CODEX_BIN",
        "codex-0.169.0/node_modules/.bin/codex",
    )
}

/// The Gemini CLI, or `None` (after saying so) when it is not installed outside CI.
pub fn gemini_bin() -> Option<PathBuf> {
    installed(
        "Gemini",
        "OPERATOR_TEST_GEMINI_BIN",
        "gemini-cli-0.61.0/node_modules/.bin/gemini",
    )
}

fn installed(name: &str, var: &str, cached: &str) -> Option<PathBuf> {
    // .ci/run's cache, so a developer who ran it once needs no variable.
    let cached =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/operator-ci").join(cached));
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .or(cached)
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but the {name} CLI is missing: {var} must name it (.ci/run installs it)"
            );
        }
        // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: the {name} CLI is not installed; set {var} (see .ci/run) !!!\n"
        );
    }
    found
}
