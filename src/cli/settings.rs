//! `operator config`: the settings a chain gets after every layer, each with its origin (like
//! `git config --show-origin`), operator-wide ones first; secrets masked.

#[allow(unused_imports)]
use super::*;

use crate::config::explain::{Explained, toml_value};

pub(super) fn show_config(c: &ConfigArgs, loaded: &config::Loaded, ov: &Overrides) -> Result<u8> {
    let plan = match &c.mission {
        Some(m) => loaded.plan_for_mission(&config::resolve_mission(m), ov)?,
        None => loaded.plan_for_task("(the task of `operator run --task`)", ov)?,
    };
    let chains = loaded.explain_plan(&plan, ov)?;
    let mut named: Vec<(&str, Vec<Explained>)> = plan
        .chains
        .iter()
        .map(|ch| ch.name.as_str())
        .zip(chains)
        .collect();
    if let Some(want) = &c.chain {
        named.retain(|(n, _)| n == want);
        if named.is_empty() {
            let names: Vec<&str> = plan.chains.iter().map(|ch| ch.name.as_str()).collect();
            return Err(UsageError(format!(
                "no chain named `{want}` in {}: its chains are {}",
                c.mission.as_deref().unwrap_or("-"),
                names.join(", ")
            ))
            .into());
        }
    }
    let operator = loaded.explain_operator(ov);
    if c.json {
        let chains: Vec<serde_json::Value> = named
            .iter()
            .map(|(n, s)| serde_json::json!({"name": n, "settings": s}))
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"operator": operator, "chains": chains})
            )?
        );
        return Ok(exit::OK);
    }
    say!("operator-wide");
    print_settings(&operator)?;
    for (name, settings) in &named {
        say!("");
        match &plan.source {
            Some(src) => say!("chain `{name}` of {}", src.display()),
            None => say!("a chain of `operator run --task`"),
        }
        print_settings(settings)?;
    }
    Ok(exit::OK)
}

fn print_settings(settings: &[Explained]) -> Result<()> {
    let shown: Vec<(&str, String, &str)> = settings
        .iter()
        .map(|e| {
            let v = toml_value(&e.value).unwrap_or_else(|| "(unset)".into());
            (e.key.as_str(), v, e.origin.as_str())
        })
        .collect();
    let kw = shown.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    let vw = shown
        .iter()
        .map(|(_, v, _)| v.chars().count())
        .filter(|n| *n <= 40)
        .max()
        .unwrap_or(0);
    for (k, v, o) in shown {
        say!("  {k:<kw$} = {v:<vw$}  {o}");
    }
    Ok(())
}
