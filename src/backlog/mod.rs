//! Missions from a backlog: a markdown checklist (`backlog = "TASKS.md"`), a folder with one
//! file per task (`backlog = "tasks/"`), or a forge's open issues with a label
//! (`backlog = "gh:label=operator"`). Each open item becomes a chain named after it, its task
//! the item's title and details, its `after` from the item's `after:` markers; when its chain
//! completes the item is checked off (the box ticked, the file moved to `done/`, the issue
//! commented on and closed).

mod github;
mod markdown;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::slug;

/// Where a mission's tasks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A markdown checklist (relative to the mission's workdir).
    File(PathBuf),
    /// A folder with one file per task; done tasks move to its `done/`.
    Dir(PathBuf),
    /// Open issues with this label, through `gh`.
    GitHub { label: String },
}

impl Source {
    /// Reads a `backlog` value.
    pub fn parse(spec: &str) -> Result<Source, String> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("gh:") {
            let label = rest.strip_prefix("label=").unwrap_or("");
            let ok = !label.is_empty()
                && !label.starts_with('-')
                && label.len() <= 100
                && !label.chars().any(|c| c.is_control());
            return if ok {
                Ok(Source::GitHub {
                    label: label.to_string(),
                })
            } else {
                Err(format!(
                    "`{}`: a forge backlog is `gh:label=<label>`",
                    spec.escape_debug()
                ))
            };
        }
        let p = Path::new(spec);
        if spec.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "`{}`: a backlog is a file or folder inside the mission's workdir (`TASKS.md`, `tasks/`) or `gh:label=<label>`",
                spec.escape_debug()
            ));
        }
        Ok(if spec.ends_with('/') {
            Source::Dir(p.to_path_buf())
        } else {
            Source::File(p.to_path_buf())
        })
    }
}

/// An item as read, before it has a name.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub title: String,
    pub details: String,
    /// Its `after:` markers as written (names, titles or `#n`).
    pub after: Vec<String>,
    pub done: bool,
    /// What finds it again for its check-off (its title, file name or issue number).
    pub key: String,
    /// A name it asks for (a task file's, an issue's).
    pub name: Option<String>,
}

fn after_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

impl Draft {
    /// An item from its title line and details: `(after: …)` at the end of the title and
    /// `after: …` lines in the details are its markers.
    pub fn new(title: &str, details: &str, done: bool) -> Self {
        let mut after = Vec::new();
        let mut title = title.trim().to_string();
        if title.ends_with(')')
            && let Some(i) = title.to_ascii_lowercase().rfind("(after:")
        {
            after.extend(after_list(&title[i + 7..title.len() - 1]));
            title = title[..i].trim_end().to_string();
        }
        let mut kept = Vec::new();
        for line in details.lines() {
            let t = line.trim().trim_start_matches("- ");
            if t.len() > 6 && t[..6].eq_ignore_ascii_case("after:") {
                after.extend(after_list(&t[6..]));
            } else {
                kept.push(line);
            }
        }
        let details = kept.join("\n").trim().to_string();
        Self {
            key: title.clone(),
            title,
            details,
            after,
            done,
            name: None,
        }
    }
}

/// An item with its chain's name, and the names it comes after.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub name: String,
    pub title: String,
    pub details: String,
    pub after: Vec<String>,
    pub done: bool,
    pub key: String,
}

impl Item {
    /// The chain's task.
    pub fn task(&self) -> String {
        if self.details.is_empty() {
            self.title.clone()
        } else {
            format!("{}\n\n{}", self.title, self.details)
        }
    }
}

/// Which backlog item a chain works on (kept in its settings, for the check-off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogItem {
    /// The mission's `backlog` value.
    pub spec: String,
    pub key: String,
    pub title: String,
}

/// Names the drafts (unique slugs of their titles) and resolves their markers; an item's
/// `after` keeps only open items (a done one has finished).
pub fn name(drafts: Vec<Draft>) -> Result<Vec<Item>, String> {
    let mut names: Vec<String> = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.iter().enumerate() {
        let base = d.name.clone().unwrap_or_else(|| slug(&d.title));
        let base = if base.is_empty() {
            format!("task-{}", i + 1)
        } else {
            base
        };
        let mut n = base.clone();
        let mut k = 2;
        while names.contains(&n) {
            n = format!("{base}-{k}");
            k += 1;
        }
        names.push(n);
    }
    let find = |r: &str| -> Option<usize> {
        if let Some(n) = r.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
            return (1..=drafts.len()).contains(&n).then(|| n - 1);
        }
        names
            .iter()
            .position(|n| n == r)
            .or_else(|| drafts.iter().position(|d| d.title.eq_ignore_ascii_case(r)))
            .or_else(|| names.iter().position(|n| *n == slug(r)))
    };
    let mut out = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.iter().enumerate() {
        let mut after = Vec::new();
        for r in &d.after {
            let j = find(r).ok_or_else(|| {
                format!(
                    "item `{}`: `after: {r}` names no item (use an item's title, its name `{}`-style, or `#n`)",
                    d.title, names[i]
                )
            })?;
            if j == i {
                return Err(format!("item `{}` comes after itself", d.title));
            }
            if !drafts[j].done && !after.contains(&names[j]) {
                after.push(names[j].clone());
            }
        }
        out.push(Item {
            name: names[i].clone(),
            title: d.title.clone(),
            details: d.details.clone(),
            after,
            done: d.done,
            key: d.key.clone(),
        });
    }
    Ok(out)
}

/// The items of a backlog, in order (done ones too); `base` is the mission's workdir.
pub fn load(spec: &str, base: &Path) -> Result<Vec<Item>, String> {
    let drafts = match Source::parse(spec)? {
        Source::File(p) => {
            let path = base.join(&p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the backlog {}: {e}", path.display()))?;
            markdown::parse(&text)
        }
        Source::Dir(p) => read_dir(&base.join(p))?,
        Source::GitHub { label } => github::issues(&label, base)?,
    };
    name(drafts)
}

/// One task per `*.md` / `*.txt` file of `dir` (sorted by name; `done/` holds the done ones).
fn read_dir(dir: &Path) -> Result<Vec<Draft>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the backlog folder {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("md") || e.eq_ignore_ascii_case("txt"))
        })
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let title = lines
            .next()
            .map(|l| l.trim().trim_start_matches('#').trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| stem.clone());
        let rest: Vec<&str> = lines.collect();
        let mut d = Draft::new(&title, &rest.join("\n"), false);
        d.key = f
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        d.name = Some(slug(&stem)).filter(|s| !s.is_empty());
        out.push(d);
    }
    Ok(out)
}

/// What a check-off changed: files to commit (paths relative to `base`), or a note that the
/// forge was told.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckedOff {
    Files(Vec<PathBuf>),
    Forge(String),
    /// The item was already checked off (or is gone).
    Nothing,
}

/// Checks `item` off in the backlog under `base` (the chain's workdir); `summary` is said on
/// a forge's issue.
pub fn check_off(item: &BacklogItem, base: &Path, summary: &str) -> Result<CheckedOff, String> {
    match Source::parse(&item.spec)? {
        Source::File(p) => {
            let path = base.join(&p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the backlog {}: {e}", path.display()))?;
            match markdown::check_off(&text, &item.key) {
                Some(t) => {
                    std::fs::write(&path, t)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    Ok(CheckedOff::Files(vec![p]))
                }
                None => Ok(CheckedOff::Nothing),
            }
        }
        Source::Dir(p) => {
            let from = p.join(&item.key);
            let to = p.join("done").join(&item.key);
            if !base.join(&from).is_file() {
                return Ok(CheckedOff::Nothing);
            }
            std::fs::create_dir_all(base.join(p.join("done")))
                .and_then(|_| std::fs::rename(base.join(&from), base.join(&to)))
                .map_err(|e| format!("cannot move {} to done/: {e}", from.display()))?;
            Ok(CheckedOff::Files(vec![from, to]))
        }
        Source::GitHub { .. } => github::close(&item.key, base, summary).map(CheckedOff::Forge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read_and_paths_kept_inside() {
        assert_eq!(
            Source::parse("TASKS.md"),
            Ok(Source::File("TASKS.md".into()))
        );
        assert_eq!(Source::parse("tasks/"), Ok(Source::Dir("tasks/".into())));
        assert_eq!(
            Source::parse("gh:label=operator"),
            Ok(Source::GitHub {
                label: "operator".into()
            })
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x.md",
            "gh:",
            "gh:label=",
            "gh:label=--repo",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_unique_slugs_and_after_resolves_to_open_items() {
        let drafts = vec![
            Draft::new("Port the parser", "", false),
            Draft::new("Port the parser", "", false),
            Draft::new("Set up CI", "", true),
            Draft::new("Docs (after: #1, set up ci, port-the-parser-2)", "", false),
            Draft::new("!!!", "", false),
        ];
        let items = name(drafts).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "port-the-parser",
                "port-the-parser-2",
                "set-up-ci",
                "docs",
                "task-5"
            ]
        );
        assert_eq!(items[3].after, ["port-the-parser", "port-the-parser-2"]);
        let err = name(vec![Draft::new("A (after: nothing)", "", false)]).unwrap_err();
        assert!(err.contains("`after: nothing` names no item"), "{err}");
        let err = name(vec![Draft::new("A (after: a)", "", false)]).unwrap_err();
        assert!(err.contains("comes after itself"), "{err}");
    }

    #[test]
    fn a_task_folder_lists_files_and_checks_off_by_moving_to_done() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tasks");
        std::fs::create_dir_all(t.join("done")).unwrap();
        std::fs::write(
            t.join("02-docs.md"),
            "# Write the docs\n\nafter: 01-parser\nAll of them.\n",
        )
        .unwrap();
        std::fs::write(t.join("01-parser.md"), "Port the parser\n").unwrap();
        std::fs::write(t.join("done/00-ci.md"), "CI\n").unwrap();
        std::fs::write(t.join("notes.png"), "x").unwrap();
        let items = load("tasks/", dir.path()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].name.as_str(), items[0].title.as_str()),
            ("01-parser", "Port the parser")
        );
        assert_eq!(items[1].after, ["01-parser"]);
        assert_eq!(items[1].task(), "Write the docs\n\nAll of them.");
        let item = BacklogItem {
            spec: "tasks/".into(),
            key: items[0].key.clone(),
            title: items[0].title.clone(),
        };
        let done = check_off(&item, dir.path(), "").unwrap();
        assert_eq!(
            done,
            CheckedOff::Files(vec![
                "tasks/01-parser.md".into(),
                "tasks/done/01-parser.md".into()
            ])
        );
        assert!(t.join("done/01-parser.md").is_file() && !t.join("01-parser.md").exists());
        assert_eq!(
            check_off(&item, dir.path(), "").unwrap(),
            CheckedOff::Nothing
        );
    }
}
