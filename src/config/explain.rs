//! Where each effective setting came from (`operator config`), like `git config --show-origin`:
//! the settings as they were resolved, each key looked up in the layers from the top down; one no
//! layer sets is built in. Secrets are masked.

use config::{Map, Value};
use serde::Serialize;

/// A layer of settings, as the origin of its values.
#[derive(Debug, Clone, PartialEq)]
pub enum From {
    /// A file's table: `table` is `""` for the top level, `defaults`, or `chain[0]`.
    File { name: String, table: String },
    /// `OPERATOR_*` variables.
    Env,
    /// Command-line flags (each value names its flag).
    Flags,
}

impl From {
    pub fn file(name: &str, table: &str) -> Self {
        From::File {
            name: name.to_string(),
            table: table.to_string(),
        }
    }

    fn label(&self, key: &str, value: &Value) -> String {
        match self {
            From::File { name, table } if table.is_empty() => format!("{name}: {key}"),
            From::File { name, table } => format!("{name}: {table}.{key}"),
            From::Env => super::catalog::env_var(key),
            From::Flags => value.origin().unwrap_or("the command line").to_string(),
        }
    }
}

/// One effective setting: its key (`sim.step`), value and origin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    pub key: String,
    pub value: serde_json::Value,
    pub origin: String,
}

/// The origin of every value of `settings`, resolved from `layers` (lowest first) over the built-in
/// values.
pub(super) fn explain(
    settings: &impl Serialize,
    layers: &[(From, Map<String, Value>)],
) -> Vec<Explained> {
    let mut flat = Vec::new();
    flatten(
        "",
        &serde_json::to_value(settings).unwrap_or_default(),
        &mut flat,
    );
    flat.into_iter()
        .map(|(key, value)| {
            let origin = origin(layers, &key).unwrap_or_else(|| "built-in".to_string());
            let value = masked(&key, value);
            Explained { key, value, origin }
        })
        .collect()
}

/// Where the value of `key` comes from: the highest layer that sets it; `None` when built in.
fn origin(layers: &[(From, Map<String, Value>)], key: &str) -> Option<String> {
    layers
        .iter()
        .rev()
        .find_map(|(from, table)| Some(from.label(key, lookup(table, key)?)))
}

/// A problem with a setting, with where its value was set (the first key in backticks that a
/// layer sets): a bad value from `config/operator.toml`'s `[defaults]`, a variable or a flag is
/// then not blamed on the mission file.
pub(super) fn with_origin(problem: String, layers: &[(From, Map<String, Value>)]) -> String {
    let found = problem
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(|key| origin(layers, key));
    match found {
        Some(o) => format!("{problem} (set by {o})"),
        None => problem,
    }
}

/// The value a layer sets for a dotted key, whether the layer holds it nested (files) or flat
/// (`OPERATOR_SIM__STEP` is collected as `sim.step`).
fn lookup<'a>(table: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(v) = table.get(key) {
        return Some(v);
    }
    let (head, rest) = key.split_once('.')?;
    match &table.get(head)?.kind {
        config::ValueKind::Table(inner) => lookup(inner, rest),
        _ => None,
    }
}

/// Nested tables become dotted keys; lists and scalars are values.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// Secrets are shown as set or not; URLs keep only their scheme and host (a Slack webhook's
/// path is its secret, a database URL's password too).
fn masked(key: &str, v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    let url = |v: &J| match v {
        J::String(u) => J::String(crate::model::mask_url(u)),
        other => other.clone(),
    };
    match key {
        "api_token" | "notify_secret" if !v.is_null() => J::String("<hidden>".into()),
        "store_url" | "notify_webhook" => url(&v),
        "webhooks" => match v {
            J::Array(hooks) => J::Array(
                hooks
                    .into_iter()
                    .map(|mut h| {
                        if let Some(u) = h.get("url").map(url) {
                            h["url"] = u;
                        }
                        h
                    })
                    .collect(),
            ),
            other => other,
        },
        _ => v,
    }
}

/// `value` as it is written in TOML (strings quoted, tables inline); `None` for no value.
pub fn toml_value(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::String(s) => serde_json::to_string(s).unwrap_or_default(),
        J::Bool(_) | J::Number(_) => v.to_string(),
        J::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .filter_map(toml_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        J::Object(m) if m.is_empty() => "{}".to_string(),
        J::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .filter_map(|(k, v)| Some(format!("{} = {}", toml_key(k), toml_value(v)?)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// A bare key when TOML allows it, else a quoted one.
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn each_key_names_the_highest_layer_that_sets_it() {
        let settings = json!({"model": "opus", "max_turns": 9, "agent": "claude",
            "sim": {"step": "0s", "turns": 3}});
        let flag = Value::new(Some(&"--max-turns".to_string()), 9i64);
        let layers = vec![
            (
                From::file("config/operator.toml", "defaults"),
                table(&[
                    ("model", Value::from("haiku")),
                    ("max_turns", Value::from(4i64)),
                ]),
            ),
            (
                From::file("m.toml", "chain[1]"),
                table(&[("model", Value::from("opus"))]),
            ),
            (From::Env, table(&[("sim.step", Value::from("0s"))])),
            (
                From::file("m.toml", "defaults"),
                table(&[("sim", Value::from(table(&[("turns", Value::from(3i64))])))]),
            ),
            (From::Flags, table(&[("max_turns", flag)])),
        ];
        let got: Vec<(String, String)> = explain(&settings, &layers)
            .into_iter()
            .map(|e| (e.key, e.origin))
            .collect();
        let want = [
            ("agent", "built-in"),
            ("max_turns", "--max-turns"),
            ("model", "m.toml: chain[1].model"),
            ("sim.step", "OPERATOR_SIM__STEP"),
            ("sim.turns", "m.toml: defaults.sim.turns"),
        ];
        assert_eq!(
            got,
            want.map(|(k, o)| (k.to_string(), o.to_string())).to_vec()
        );
    }

    #[test]
    fn a_problem_names_where_its_value_was_set() {
        let flag = Value::new(Some(&"--max-turns".to_string()), 0i64);
        let layers = vec![(From::Flags, table(&[("max_turns", flag)]))];
        assert_eq!(
            with_origin("`max_turns` must be at least 1".into(), &layers),
            "`max_turns` must be at least 1 (set by --max-turns)"
        );
        assert_eq!(
            with_origin("`model` is `x`".into(), &layers),
            "`model` is `x`"
        );
    }

    #[test]
    fn secrets_and_url_paths_are_masked() {
        let settings = json!({"api_token": "abcdefabcdefabcdef", "notify_secret": null,
            "store_url": "postgres://u:pw@db:5432/x",
            "webhooks": [{"url": "https://hooks.slack.com/services/T0/B0/XYZ", "format": "slack"}]});
        let shown = serde_json::to_string(&explain(&settings, &[])).unwrap();
        for secret in ["abcdef", "pw@", "XYZ", "T0"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<hidden>") && shown.contains("hooks.slack.com"));
        assert!(shown.contains(r#""key":"notify_secret","value":null"#));
    }

    #[test]
    fn values_are_written_as_toml() {
        let v = json!({"a": [1, "x"], "b": {"c": true}, "d": 2.5, "e": {}, "f.g": 1});
        assert_eq!(
            toml_value(&v).unwrap(),
            r#"{ a = [1, "x"], b = { c = true }, d = 2.5, e = {}, "f.g" = 1 }"#
        );
        assert_eq!(toml_value(&json!(null)), None);
    }
}
