//! The installed Claude Code CLI, for the tests and benches that run it: `.ci/run`'s cache or
//! `OPERATOR_TEST_CLAUDE_BIN`. In CI a missing CLI is a failure; elsewhere a loud skip.

use std::path::PathBuf;

/// The CLI binary, or `None` (after saying so) when it is not installed outside CI.
pub fn claude_bin() -> Option<PathBuf> {
    // .ci/run's cache, so a developer who ran it once needs no variable.
    let cached = std::env::var_os("HOME").map(|h| {
        PathBuf::from(h).join(".cache/operator-ci/claude-code-2.1.328/node_modules/.bin/claude")
    });
    let found = std::env::var_os("OPERATOR_TEST_CLAUDE_BIN")
        .map(PathBuf::from)
        .or(cached)
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but the Claude Code CLI is missing: OPERATOR_TEST_CLAUDE_BIN must name it (.ci/run installs it)"
            );
        }
        // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: the Claude Code CLI is not installed; set OPERATOR_TEST_CLAUDE_BIN (see .ci/run) !!!\n"
        );
    }
    found
}
