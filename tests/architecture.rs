//! The house of modules: no import circle between the top-level modules of `src/` (a file or folder
//! directly under it), read from the `crate::…` paths of the code (unit tests aside).
//!
//! A circle means two floors that each need the other: nothing in it can be understood, tested or
//! replaced alone. docs/architecture.md says which floor may import which.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its `#[cfg(test)] mod tests { … }` (tests may reach anywhere).
fn without_tests(src: &str) -> &str {
    match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a piece of code names through `crate::`, including grouped imports
/// (`use crate::{events::Bus, store::SharedStore};`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(after));
        }
        rest = after;
    }
    out.remove("");
    out
}

/// Module → (module it imports → one file that does).
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top = |p: &Path| {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| top(p))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g: BTreeMap<String, BTreeMap<String, String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for f in &files {
        let m = top(f);
        if !modules.contains(&m) {
            continue;
        }
        let code = std::fs::read_to_string(f).unwrap();
        for t in crate_paths(without_tests(&code)) {
            if t != m && modules.contains(&t) {
                g.get_mut(&m)
                    .unwrap()
                    .entry(t)
                    .or_insert_with(|| f.strip_prefix(src).unwrap().display().to_string());
            }
        }
    }
    g
}

/// One circle, if there is any: the modules in order, first repeated at the end.
fn find_circle(g: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for next in g[m].keys() {
            if let Some(c) = visit(next, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 20, "the module graph was not read: {g:?}");
    if let Some(c) = find_circle(&g) {
        let edges: Vec<String> = c
            .windows(2)
            .map(|w| format!("  {} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import circle: {}\n{}\nMove the shared piece down a floor (docs/architecture.md).",
            c.join(" -> "),
            edges.join("\n")
        );
    }
}

#[test]
fn the_reader_sees_grouped_imports_and_finds_circles() {
    let paths = crate_paths(
        "use crate::{events::{Bus, Event}, store::SharedStore};\nlet x = crate::model::now();",
    );
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        ["events", "model", "store"]
    );
    let g: BTreeMap<String, BTreeMap<String, String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, ts)| {
        (
            m.to_string(),
            ts.into_iter()
                .map(|t| (t.to_string(), "f.rs".to_string()))
                .collect(),
        )
    })
    .collect();
    assert_eq!(find_circle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        without_tests("code\n#[cfg(test)]\nmod tests {\n use crate::x;\n}"),
        "code\n"
    );
}
