//! Fault injection for the chaos tests and the supervision bench: `OPERATOR_FAULT=point@n,…`
//! makes the named point panic on its n-th hit (`@*`: on every hit); `point@n!` aborts the whole
//! process instead, as a `kill -9` would. The variable is read once; unset (always, outside tests
//! and benches) a check point costs one load.
//!
//! Points: `operator:pump`, `chain:next`, `cost:usage`, `handoff:finalize`, `handoff:written` (the file is written,
//! the store not yet), `session:line`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Whether `spec` (`point@n` or `point@*`) fires on hit number `hit` of `point`.
fn fires(spec: &str, point: &str, hit: u32) -> bool {
    let spec = spec.trim_end_matches('!');
    match spec.split_once('@') {
        Some((p, "*")) => p == point,
        Some((p, n)) => p == point && n.parse::<u32>().ok() == Some(hit),
        None => spec == point && hit == 1,
    }
}

/// The armed faults and how often each point was hit.
struct Armed {
    specs: String,
    hits: Mutex<HashMap<String, u32>>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("OPERATOR_FAULT")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|specs| Armed {
                    specs,
                    hits: Mutex::new(HashMap::new()),
                })
        })
        .as_ref()
}

/// Panics (or aborts) here when `OPERATOR_FAULT` asks for it.
#[inline]
pub fn check(point: &str) {
    if let Some(a) = armed() {
        fire(a, point);
    }
}

#[cold]
fn fire(a: &Armed, point: &str) {
    let hit = {
        let Ok(mut c) = a.hits.lock() else { return };
        let n = c.entry(point.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if let Some(spec) = a
        .specs
        .split(',')
        .map(str::trim)
        .find(|s| fires(s, point, hit))
    {
        // Logged first, so a reader of the log (the supervision bench) sees when it happened.
        tracing::warn!(point, hit, "injected fault");
        if spec.ends_with('!') {
            eprintln!("injected crash at {point} (hit {hit})");
            std::process::abort();
        }
        panic!("injected fault at {point} (hit {hit})");
    }
}

#[cfg(test)]
mod tests {
    use super::fires;

    #[test]
    fn specs() {
        assert!(fires("cost:usage@2", "cost:usage", 2));
        assert!(!fires("cost:usage@2", "cost:usage", 1));
        assert!(fires("chain:next@*", "chain:next", 7));
        assert!(fires("session:line", "session:line", 1));
        assert!(!fires("session:line", "session:line", 2));
        assert!(!fires("cost:usage@2", "chain:next", 2));
        assert!(fires("chain:next@2!", "chain:next", 2));
    }
}
