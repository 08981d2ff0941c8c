//! Test-only fault injection: `OPERATOR_FAULT=point@n,…` makes the named point panic on its n-th
//! hit (`@*`: on every hit); `point@n!` aborts the whole process instead, as a `kill -9` would.
//! Compiled to nothing in release builds.
//!
//! Points: `operator:pump`, `chain:next`, `cost:usage`, `handoff:finalize`, `handoff:written` (the file is written,
//! the store not yet), `session:line`.

#[cfg(debug_assertions)]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    fn counters() -> &'static Mutex<HashMap<String, u32>> {
        static C: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
        C.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// Whether `spec` (`point@n` or `point@*`) fires on hit number `hit` of `point`.
    pub fn fires(spec: &str, point: &str, hit: u32) -> bool {
        let spec = spec.trim_end_matches('!');
        match spec.split_once('@') {
            Some((p, "*")) => p == point,
            Some((p, n)) => p == point && n.parse::<u32>().ok() == Some(hit),
            None => spec == point && hit == 1,
        }
    }

    pub fn check(point: &str) {
        let Ok(specs) = std::env::var("OPERATOR_FAULT") else {
            return;
        };
        let hit = {
            let Ok(mut c) = counters().lock() else { return };
            let n = c.entry(point.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if let Some(spec) = specs
            .split(',')
            .map(str::trim)
            .find(|s| fires(s, point, hit))
        {
            if spec.ends_with('!') {
                eprintln!("injected crash at {point} (hit {hit})");
                std::process::abort();
            }
            panic!("injected fault at {point} (hit {hit})");
        }
    }
}

/// Panics here when `OPERATOR_FAULT` asks for it (debug builds only).
#[inline]
pub fn check(point: &str) {
    #[cfg(debug_assertions)]
    imp::check(point);
    #[cfg(not(debug_assertions))]
    let _ = point;
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::imp::fires;

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
