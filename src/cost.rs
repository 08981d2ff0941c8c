//! Pricing: turning the stream's token usage into US dollars, per model.

use crate::agent::stream::Usage;

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

/// Public list prices by model family; the CLI's own `total_cost_usd` replaces the
/// estimate at the end of each session.
pub fn rates_for(model: &str) -> Rates {
    let m = model.to_ascii_lowercase();
    if m.contains("opus") {
        Rates {
            input: 15.0,
            output: 75.0,
            cache_write: 18.75,
            cache_read: 1.5,
        }
    } else if m.contains("haiku") {
        Rates {
            input: 1.0,
            output: 5.0,
            cache_write: 1.25,
            cache_read: 0.1,
        }
    } else {
        // Sonnet, and the default for unknown models (an estimate is better than zero).
        Rates {
            input: 3.0,
            output: 15.0,
            cache_write: 3.75,
            cache_read: 0.3,
        }
    }
}

/// The price of one message's usage.
pub fn price(model: &str, u: &Usage) -> f64 {
    let r = rates_for(model);
    (u.input_tokens as f64 * r.input
        + u.output_tokens as f64 * r.output
        + u.cache_creation_input_tokens as f64 * r.cache_write
        + u.cache_read_input_tokens as f64 * r.cache_read)
        / 1_000_000.0
}

/// The cost to record for a session: the agent's own figure when it reported one,
/// else the live estimate.
pub fn reconcile(reported: Option<f64>, estimate: f64) -> f64 {
    match reported {
        Some(r) if r.is_finite() && r > 0.0 => r,
        _ => estimate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sonnet_prices() {
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            ..Default::default()
        };
        assert!((price("claude-sonnet-4-5", &u) - 18.0).abs() < 1e-9);
        assert!((price("sonnet", &u) - 18.0).abs() < 1e-9);
    }

    #[test]
    fn families_differ() {
        let u = Usage {
            input_tokens: 1_000_000,
            ..Default::default()
        };
        assert!(price("opus", &u) > price("sonnet", &u));
        assert!(price("haiku", &u) < price("sonnet", &u));
    }

    #[test]
    fn reported_cost_wins_when_present() {
        assert_eq!(reconcile(Some(0.5), 0.1), 0.5);
        assert_eq!(reconcile(Some(0.0), 0.1), 0.1);
        assert_eq!(reconcile(None, 0.1), 0.1);
        assert_eq!(reconcile(Some(f64::NAN), 0.1), 0.1);
    }
}
