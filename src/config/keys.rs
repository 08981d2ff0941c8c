//! Known keys of `operator.toml` and mission files: unknown keys (typos) are errors with a suggestion.

use config::{Map, Value, ValueKind};

use super::{Issue, catalog};

/// Keys a chain's settings may set (in `[defaults]` or `[[chain]]`).
pub const CHAIN_KEYS: [&str; catalog::CHAIN.len()] = catalog::keys(&catalog::CHAIN);
const PERMISSION_KEYS: &[&str] = &["allow", "deny", "ask"];
const SIM_KEYS: &[&str] = &[
    "scenario",
    "complete_after",
    "step",
    "turns",
    "write",
    "tool",
];
const CHAIN_ENTRY_KEYS: &[&str] = &["name", "task", "after"];
const MISSION_KEYS: &[&str] = &[
    "name",
    "description",
    "concurrency",
    "backlog",
    "defaults",
    "chain",
];
/// Keys of `operator.toml`'s top level: the operator-wide settings and `[defaults]`.
const OPERATOR_KEYS: [&str; catalog::OPERATOR.len() + 1] = {
    let settings = catalog::keys(&catalog::OPERATOR);
    let mut out = ["defaults"; catalog::OPERATOR.len() + 1];
    let mut i = 0;
    while i < settings.len() {
        out[i] = settings[i];
        i += 1;
    }
    out
};

/// The closest known key, when it is close enough to be a typo.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn unknown(file: &str, path: &str, key: &str, known: &[&str]) -> Issue {
    let hint = match suggest(key, known) {
        Some(s) => format!("unknown key (did you mean `{s}`?)"),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    };
    Issue {
        file: Some(file.to_string()),
        key: Some(if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }),
        message: hint,
    }
}

fn check_table(
    file: &str,
    path: &str,
    table: &Map<String, Value>,
    known: &[&str],
    out: &mut Vec<Issue>,
) {
    for (k, v) in table {
        if !known.contains(&k.as_str()) {
            out.push(unknown(file, path, k, known));
            continue;
        }
        if k == "permissions" {
            check_permissions(file, path, v, out);
        }
        if k == "sim" {
            let p = if path.is_empty() {
                "sim".to_string()
            } else {
                format!("{path}.sim")
            };
            match &v.kind {
                ValueKind::Table(t) => check_table(file, &p, t, SIM_KEYS, out),
                _ => out.push(Issue {
                    file: Some(file.to_string()),
                    key: Some(p),
                    message: "expected a table".into(),
                }),
            }
        }
    }
}

/// The `permissions` table: known lists only, every rule parsed (a malformed rule names its
/// file and key, e.g. `chain[0].permissions.deny[1]`).
fn check_permissions(file: &str, path: &str, v: &Value, out: &mut Vec<Issue>) {
    let p = if path.is_empty() {
        "permissions".to_string()
    } else {
        format!("{path}.permissions")
    };
    let issue = |key: String, message: String| Issue {
        file: Some(file.to_string()),
        key: Some(key),
        message,
    };
    let ValueKind::Table(t) = &v.kind else {
        out.push(issue(
            p,
            "expected a table ([permissions] with allow, deny, ask)".into(),
        ));
        return;
    };
    check_table(file, &p, t, PERMISSION_KEYS, out);
    for list in PERMISSION_KEYS {
        let Some(v) = t.get(*list) else { continue };
        let ValueKind::Array(items) = &v.kind else {
            out.push(issue(
                format!("{p}.{list}"),
                "expected a list of rules, e.g. [\"Bash(cargo test:*)\", \"Edit(src/**)\"]".into(),
            ));
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("{p}.{list}[{i}]");
            match item.clone().into_string() {
                Ok(r) => {
                    if let Err(e) = crate::permissions::rule::Rule::parse(&r) {
                        out.push(issue(key, format!("not a valid rule: {}", e.why)));
                    }
                }
                Err(_) => out.push(issue(key, "expected a rule as a string".into())),
            }
        }
    }
}

fn check_defaults(file: &str, table: &Map<String, Value>, out: &mut Vec<Issue>) {
    if let Some(v) = table.get("defaults") {
        match &v.kind {
            ValueKind::Table(t) => check_table(file, "defaults", t, &CHAIN_KEYS, out),
            _ => out.push(Issue {
                file: Some(file.to_string()),
                key: Some("defaults".into()),
                message: "expected a table ([defaults])".into(),
            }),
        }
    }
}

/// Unknown keys in `operator.toml`.
pub fn check_operator(file: &str, table: &Map<String, Value>) -> Vec<Issue> {
    let mut out = Vec::new();
    check_table(file, "", table, &OPERATOR_KEYS, &mut out);
    check_defaults(file, table, &mut out);
    out
}

/// Unknown keys in a mission file.
pub fn check_mission(file: &str, table: &Map<String, Value>) -> Vec<Issue> {
    let mut out = Vec::new();
    check_table(file, "", table, MISSION_KEYS, &mut out);
    check_defaults(file, table, &mut out);
    if let Some(ValueKind::Array(chains)) = table.get("chain").map(|v| &v.kind) {
        let known: Vec<&str> = CHAIN_KEYS.iter().chain(CHAIN_ENTRY_KEYS).copied().collect();
        for (i, c) in chains.iter().enumerate() {
            if let ValueKind::Table(t) = &c.kind {
                check_table(file, &format!("chain[{i}]"), t, &known, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(suggest("max_turn", &CHAIN_KEYS), Some("max_turns"));
        assert_eq!(suggest("modle", &CHAIN_KEYS), Some("model"));
        assert_eq!(suggest("completely_different", &CHAIN_KEYS), None);
    }
}
