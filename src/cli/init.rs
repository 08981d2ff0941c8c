//! `operator init`: a repository's `config/operator.toml` (every setting, commented, with its
//! built-in value) and a first mission from a preset, the data dir ignored by git, and the next
//! commands to run.

#[allow(unused_imports)]
use super::*;

use crate::config::catalog::{self, Setting};

/// The files `init` writes, relative to the repository.
pub(super) const OPERATOR_TOML: &str = "config/operator.toml";

pub(super) fn init(a: &InitArgs, data_dir: &Path) -> Result<u8> {
    let mission = format!("config/missions/{}.toml", a.preset.name());
    let files = [
        (PathBuf::from(OPERATOR_TOML), operator_toml(a.agent)),
        (
            PathBuf::from(&mission),
            mission_toml(a.preset, test_command(Path::new("."))),
        ),
    ];
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() && !a.force {
        return Err(UsageError(format!(
            "{} already exist{}: nothing was written (`operator init --force` overwrites {})",
            existing.join(" and "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" },
        ))
        .into());
    }
    for (path, text) in &files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        say!("wrote {}", path.display());
    }
    if let Some(line) = ignore_line(data_dir)
        && add_to_gitignore(Path::new(".gitignore"), &line)?
    {
        say!("added {line} to .gitignore (the operator's store and chain folders)");
    }
    if !Path::new(".git").exists() {
        say!(
            "note: this is not the top of a git repository; chains commit their work only in one (`git init` first)"
        );
    }
    if matches!(a.preset, Preset::Refactor | Preset::FixTests)
        && test_command(Path::new(".")).is_none()
    {
        say!(
            "note: no test command found: set `verify` in {mission} to the command that runs the tests"
        );
    }
    let name = a.preset.name();
    say!("");
    say!("Next:");
    say!("  operator doctor              # is the agent CLI installed and logged in?");
    say!("  operator run {name:<15} # run the mission (`--dry-run` shows its plan first)");
    Ok(exit::OK)
}

impl Preset {
    pub(super) fn name(self) -> &'static str {
        match self {
            Preset::Survey => "survey",
            Preset::Refactor => "refactor",
            Preset::FixTests => "fix-tests",
            Preset::Docs => "docs",
        }
    }
}

/// The data dir as a `.gitignore` line, when it lies inside the repository.
fn ignore_line(data_dir: &Path) -> Option<String> {
    if data_dir.is_absolute() {
        return None;
    }
    let d = data_dir.to_string_lossy();
    let d = d.trim_start_matches("./").trim_end_matches('/');
    (!d.is_empty() && !d.starts_with("..")).then(|| format!("/{d}/"))
}

/// Adds `line` to the file unless a line already ignores the same path; true when it was added.
fn add_to_gitignore(path: &Path, line: &str) -> Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let bare = |l: &str| l.trim().trim_matches('/').to_string();
    if text.lines().any(|l| bare(l) == bare(line)) {
        return Ok(false);
    }
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// How the repository's tests are run, from the files at its top.
pub(super) fn test_command(repo: &Path) -> Option<&'static str> {
    let has = |f: &str| repo.join(f).is_file();
    let text = |f: &str| std::fs::read_to_string(repo.join(f)).unwrap_or_default();
    if has("Cargo.toml") {
        Some("cargo test")
    } else if has("package.json") && text("package.json").contains("\"test\"") {
        Some("npm test")
    } else if has("go.mod") {
        Some("go test ./...")
    } else if has("pyproject.toml") || has("setup.py") || has("pytest.ini") {
        Some("python -m pytest")
    } else if has("Makefile") && text("Makefile").lines().any(|l| l.starts_with("test:")) {
        Some("make test")
    } else {
        None
    }
}

/// `operator.toml` with every setting commented: its line of help, and its built-in value (or an
/// example for one unset by default). Only the agent is set, when it is not Claude Code.
pub(super) fn operator_toml(agent: AgentArg) -> String {
    let mut out = String::from(
        "# operator's settings for this repository (written by `operator init`).\n\
         # Every key is optional; each commented line shows the built-in value, or an example.\n\
         # Precedence, lowest first: built-in < this file < a mission's [defaults] < its [[chain]]\n\
         # < OPERATOR_* variables < flags. `operator config` shows what a chain gets, and why.\n\
         # docs/configuration.md explains each key.\n\n",
    );
    for s in &catalog::OPERATOR {
        out.push_str(&commented(s));
    }
    out.push_str(
        "\n[defaults]\n# Settings of every chain; a mission's [defaults] and [[chain]] entries override them.\n",
    );
    for s in &catalog::CHAIN {
        if s.key == "agent" && !matches!(agent, AgentArg::Claude) {
            out.push_str(&format!("# {}\nagent = \"{}\"\n", s.about, agent.as_str()));
            continue;
        }
        out.push_str(&commented(s));
    }
    out
}

/// `# about` and `# key = value` for one setting.
fn commented(s: &Setting) -> String {
    let values = config::builtin_values();
    let value = match s.example {
        Some(example) => Some((example.to_string(), true)),
        None => values.get(s.key).map(|v| (v.clone(), false)).or_else(|| {
            // A table (`sim`): its built-in keys, inline.
            let prefix = format!("{}.", s.key);
            let inner: Vec<String> = values
                .iter()
                .filter_map(|(k, v)| Some(format!("{} = {v}", k.strip_prefix(&prefix)?)))
                .collect();
            (!inner.is_empty()).then(|| (format!("{{ {} }}", inner.join(", ")), false))
        }),
    };
    match value {
        Some((v, true)) => format!("# {} (e.g.)\n# {} = {v}\n", s.about, s.key),
        Some((v, false)) => format!("# {}\n# {} = {v}\n", s.about, s.key),
        None => format!("# {}\n", s.about),
    }
}

/// A first mission for `preset`; `test` is the repository's test command, when one was found.
pub(super) fn mission_toml(preset: Preset, test: Option<&str>) -> String {
    let name = preset.name();
    let verify = |why: &str| match test {
        Some(t) => format!("# {why}\nverify = [\"{t}\"]\n"),
        None => format!(
            "# {why}\n# No test command was found: set yours.\n# verify = [\"make test\"]\n"
        ),
    };
    let tests = test.map_or("the test suite".to_string(), |t| format!("`{t}`"));
    let (about, defaults, task) = match preset {
        Preset::Survey => (
            "The agent reads the repository and writes NOTES.md; it changes no code.",
            "max_continuations = 1\nmax_budget_usd = 2.0\n".to_string(),
            "Read this repository and write NOTES.md at its top with: what the project is and how \
             it is organised; how to build it and run its tests (the exact commands, tried); and \
             the three changes that would help it most, each with where and why. Change no other \
             file."
                .to_string(),
        ),
        Preset::Refactor => (
            "A long refactor in small steps on a branch of its own; a COMPLETE counts only when the tests pass.",
            format!(
                "max_continuations = 10\nmax_budget_usd = 20.0\nbranch = true\n{}",
                verify("Must pass before the chain is believed complete.")
            ),
            format!(
                "Improve the structure of this code without changing what it does. Find what is \
                 hardest to work with (the longest files and functions, repeated code, unclear \
                 names), and refactor it in small steps, running {tests} after each one and keeping \
                 it green. Record each step and why in REFACTOR-NOTES.md."
            ),
        ),
        Preset::FixTests => (
            "Runs the tests and fixes what fails, one failure at a time, until they pass.",
            format!(
                "max_continuations = 8\nmax_budget_usd = 10.0\n{}",
                verify("The chain is complete when these pass.")
            ),
            format!(
                "Run {tests} and make it pass. Take one failure at a time: find its cause, fix the \
                 code (change a test only when the test itself is wrong, and say so in the handoff), \
                 and run the tests again. Do not skip, delete or weaken tests."
            ),
        ),
        Preset::Docs => (
            "Brings the README and the docs in line with the code.",
            "max_continuations = 3\nmax_budget_usd = 5.0\n".to_string(),
            "Bring the README and the documentation in line with the code: check every command, \
             option, file name and example they give against the source, fix what is wrong or \
             missing, and remove what no longer exists. Change no code."
                .to_string(),
        ),
    };
    format!(
        "# {about}\n\
         # Check it: operator run {name} --dry-run    Run it: operator run {name}\n\
         # Every key of config/operator.toml's [defaults] may be set here or per [[chain]].\n\n\
         name = \"{name}\"\n\n\
         [defaults]\n{defaults}\n\
         [[chain]]\n\
         name = \"{name}\"\n\
         task = \"\"\"\n{task}\n\"\"\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_is_ignored_once_and_only_inside_the_repository() {
        assert_eq!(
            ignore_line(Path::new(".operator")),
            Some("/.operator/".into())
        );
        assert_eq!(ignore_line(Path::new("./state/")), Some("/state/".into()));
        assert_eq!(ignore_line(Path::new("/var/lib/operator")), None);
        assert_eq!(ignore_line(Path::new("../elsewhere")), None);
        let dir = tempfile::tempdir().unwrap();
        let gi = dir.path().join(".gitignore");
        std::fs::write(&gi, "target").unwrap();
        assert!(add_to_gitignore(&gi, "/.operator/").unwrap());
        assert!(!add_to_gitignore(&gi, "/.operator/").unwrap());
        std::fs::write(&gi, "target\n.operator\n").unwrap();
        assert!(!add_to_gitignore(&gi, "/.operator/").unwrap());
        assert_eq!(std::fs::read_to_string(&gi).unwrap(), "target\n.operator\n");
    }

    #[test]
    fn the_test_command_is_found_from_the_files_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(test_command(dir.path()), None);
        std::fs::write(dir.path().join("Makefile"), "all:\ntest:\n\ttrue\n").unwrap();
        assert_eq!(test_command(dir.path()), Some("make test"));
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"scripts":{"test":"jest"}}"#,
        )
        .unwrap();
        assert_eq!(test_command(dir.path()), Some("npm test"));
        std::fs::write(dir.path().join("Cargo.toml"), "[package]").unwrap();
        assert_eq!(test_command(dir.path()), Some("cargo test"));
    }

    #[test]
    fn every_setting_is_in_the_operator_file_with_its_built_in_value() {
        let text = operator_toml(AgentArg::Claude);
        for s in catalog::OPERATOR.iter().chain(&catalog::CHAIN) {
            assert!(
                text.contains(&format!("\n# {} = ", s.key)),
                "{} missing",
                s.key
            );
        }
        assert!(text.contains("\n# max_turns = 30\n"), "{text}");
        assert!(text.contains("\n# data_dir = \".operator\"\n"), "{text}");
        assert!(
            text.contains("\n# sim = { complete_after = 2, scenario = \"incomplete\""),
            "{text}"
        );
        // Nothing is set but the agent when it is not Claude Code.
        let set: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(set, ["[defaults]"]);
        assert!(operator_toml(AgentArg::Codex).contains("\nagent = \"codex\"\n"));
    }
}
