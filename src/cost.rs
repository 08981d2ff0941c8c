//! Pricing: turning the stream's token usage into US dollars, per model, with a table that
//! operator.toml can extend or override (`[pricing.<model fragment>]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::stream::Usage;

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

/// Prices by model: the entry whose key is the longest fragment of the model name wins.
/// Unknown models are priced as Sonnet (an estimate is better than zero); the CLI's own
/// `total_cost_usd` replaces the estimate at the end of each session anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    table: BTreeMap<String, Rates>,
}

impl Default for Pricing {
    /// Public list prices by model family (December 2026): the family's current price under its
    /// bare name (`opus`: Opus 4.5 and later), older generations under longer fragments.
    fn default() -> Self {
        let r = |input, output, cache_write, cache_read| Rates {
            input,
            output,
            cache_write,
            cache_read,
        };
        Self {
            table: BTreeMap::from([
                ("sonnet".to_string(), r(3.0, 15.0, 3.75, 0.3)),
                ("opus".to_string(), r(5.0, 25.0, 6.25, 0.5)),
                // Opus 4 and 4.1 (claude-opus-4-20250514, claude-opus-4-1-…) and Claude 3 Opus.
                ("opus-4-2025".to_string(), r(15.0, 75.0, 18.75, 1.5)),
                ("opus-4-1".to_string(), r(15.0, 75.0, 18.75, 1.5)),
                ("3-opus".to_string(), r(15.0, 75.0, 18.75, 1.5)),
                ("haiku".to_string(), r(1.0, 5.0, 1.25, 0.1)),
                ("3-5-haiku".to_string(), r(0.8, 4.0, 1.0, 0.08)),
                ("3-haiku".to_string(), r(0.25, 1.25, 0.3, 0.03)),
                // OpenAI (the codex agent): cached input at a tenth, no surcharge for writing
                // the cache. Any other `gpt-` model is estimated at GPT-5's price.
                ("gpt-".to_string(), r(1.25, 10.0, 1.25, 0.125)),
                ("gpt-5".to_string(), r(1.25, 10.0, 1.25, 0.125)),
                ("gpt-5-mini".to_string(), r(0.25, 2.0, 0.25, 0.025)),
                ("gpt-5-nano".to_string(), r(0.05, 0.4, 0.05, 0.005)),
                // Google (the gemini agent), prompts up to 200k tokens; any other `gemini`
                // model at 2.5 Pro's price.
                ("gemini".to_string(), r(1.25, 10.0, 1.25, 0.31)),
                ("gemini-2.5-flash".to_string(), r(0.3, 2.5, 0.3, 0.075)),
                ("gemini-2.5-flash-lite".to_string(), r(0.1, 0.4, 0.1, 0.025)),
            ]),
        }
    }
}

impl Pricing {
    /// The built-in table with `overrides` (from config) on top.
    pub fn with(overrides: &BTreeMap<String, Rates>) -> Self {
        let mut p = Self::default();
        for (k, v) in overrides {
            p.table.insert(k.to_ascii_lowercase(), *v);
        }
        p
    }

    pub fn rates_for(&self, model: &str) -> Rates {
        let m = model.to_ascii_lowercase();
        self.table
            .iter()
            .filter(|(k, _)| m.contains(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .or_else(|| self.table.get_key_value("sonnet"))
            .map(|(_, r)| *r)
            .unwrap_or(Rates {
                input: 3.0,
                output: 15.0,
                cache_write: 3.75,
                cache_read: 0.3,
            })
    }

    /// The price of one message's usage.
    pub fn price(&self, model: &str, u: &Usage) -> f64 {
        let r = self.rates_for(model);
        (u.input_tokens as f64 * r.input
            + u.output_tokens as f64 * r.output
            + u.cache_creation_input_tokens as f64 * r.cache_write
            + u.cache_read_input_tokens as f64 * r.cache_read)
            / 1_000_000.0
    }
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

    fn tokens(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        }
    }

    #[test]
    fn sonnet_prices() {
        let p = Pricing::default();
        assert!((p.price("claude-sonnet-4-5", &tokens(1_000_000, 1_000_000)) - 18.0).abs() < 1e-9);
        assert!((p.price("sonnet", &tokens(1_000_000, 1_000_000)) - 18.0).abs() < 1e-9);
    }

    #[test]
    fn families_differ_and_unknown_models_are_estimated() {
        let p = Pricing::default();
        let u = tokens(1_000_000, 0);
        assert!(p.price("opus", &u) > p.price("sonnet", &u));
        assert!(p.price("haiku", &u) < p.price("sonnet", &u));
        assert_eq!(p.price("some-new-model", &u), p.price("sonnet", &u));
    }

    #[test]
    fn current_opus_is_five_and_twenty_five_older_opus_keeps_its_price() {
        let p = Pricing::default();
        let m = tokens(1_000_000, 1_000_000);
        for current in [
            "claude-opus-4-5-20251101",
            "claude-opus-4-6",
            "claude-opus-5",
            "opus",
        ] {
            assert!((p.price(current, &m) - 30.0).abs() < 1e-9, "{current}");
        }
        for old in [
            "claude-opus-4-20250514",
            "claude-opus-4-1-20250805",
            "claude-3-opus-20240229",
        ] {
            assert!((p.price(old, &m) - 90.0).abs() < 1e-9, "{old}");
        }
        assert!((p.price("claude-haiku-4-5", &m) - 6.0).abs() < 1e-9);
        assert!((p.price("claude-3-5-haiku-20241022", &m) - 4.8).abs() < 1e-9);
    }

    #[test]
    fn config_overrides_and_the_longest_fragment_wins() {
        let mut o = BTreeMap::new();
        o.insert(
            "Sonnet-5".to_string(),
            Rates {
                input: 30.0,
                output: 0.0,
                cache_write: 0.0,
                cache_read: 0.0,
            },
        );
        let p = Pricing::with(&o);
        let u = tokens(1_000_000, 0);
        assert_eq!(p.price("claude-sonnet-5-5", &u), 30.0);
        assert_eq!(p.price("claude-sonnet-4-5", &u), 3.0);
    }

    #[test]
    fn openai_models_have_their_own_prices() {
        let p = Pricing::default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 1_000_000,
        };
        assert!((p.price("gpt-5-codex", &u) - 11.375).abs() < 1e-9);
        assert!((p.price("gpt-5-mini", &u) - 2.275).abs() < 1e-9);
        assert_eq!(p.price("gpt-6.1-sol", &u), p.price("gpt-5", &u));
    }

    #[test]
    fn reported_cost_wins_when_present() {
        assert_eq!(reconcile(Some(0.5), 0.1), 0.5);
        assert_eq!(reconcile(Some(0.0), 0.1), 0.1);
        assert_eq!(reconcile(None, 0.1), 0.1);
        assert_eq!(reconcile(Some(f64::NAN), 0.1), 0.1);
    }
}
