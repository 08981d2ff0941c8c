//! The MCP tools' arguments: their JSON schemas are generated from these types (schemars), and
//! the doc comments become the descriptions clients show.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListChains {
    /// Only chains in this state: running, queued, complete, assumed-complete,
    /// max-continuations, failed, aborted, interrupted, budget-exceeded, …
    pub status: Option<String>,
    /// Only the chains of this mission (its name).
    pub mission: Option<String>,
    /// Only chains started since then: a duration back from now (`24h`, `7d`), a date
    /// (`2026-12-01`, UTC) or an RFC 3339 time.
    pub since: Option<String>,
    /// How many, newest first (1-200, default 20).
    pub limit: Option<u32>,
    /// Include archived chains.
    pub include_archived: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainId {
    /// The chain's id (`c-20261203-1a2b3c`), as list_chains shows it.
    pub chain_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetHandoff {
    /// The chain's id (`c-20261203-1a2b3c`).
    pub chain_id: String,
    /// The session whose handoff to read, from 1 (default: the latest handoff written).
    pub session: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputTail {
    /// The chain's id (`c-20261203-1a2b3c`).
    pub chain_id: String,
    /// The session, from 1 (default: the latest).
    pub session: Option<u32>,
    /// How much of the end of the output to read, in bytes (default 4000, at most 65536).
    pub bytes: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanMission {
    /// The mission's name: its file in config/missions/ without `.toml` (see list_missions).
    pub mission: String,
}

/// Settings a start may choose; anything else (permission mode, workdir, agent) comes from the
/// operator's configuration and is refused here.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct Settings {
    /// The model (`opus`, `sonnet`, or a full model name).
    pub model: Option<String>,
    /// Agent turns per session.
    pub max_turns: Option<u32>,
    /// Sessions after the first before the chain stops.
    pub max_continuations: Option<u32>,
    /// The chain's budget in US dollars.
    pub max_budget_usd: Option<f64>,
    /// The most one session may cost, in US dollars.
    pub max_session_cost_usd: Option<f64>,
    /// Push the chain's branch when it completes (a remote must exist).
    pub auto_push: Option<bool>,
    /// Open a pull request with `gh` after the push.
    pub pull_request: Option<bool>,
    /// Any other key is passed to the operator's API, which refuses what it does not allow.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: Map<String, Value>,
}

impl Settings {
    /// The settings as the API's body (camelCase keys).
    pub fn into_body(self, body: &mut Map<String, Value>) {
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(k.to_string(), v);
            }
        };
        put("model", self.model.map(Value::from));
        put("maxTurns", self.max_turns.map(Value::from));
        put("maxContinuations", self.max_continuations.map(Value::from));
        put("maxBudgetUsd", self.max_budget_usd.map(Value::from));
        put(
            "maxSessionCostUsd",
            self.max_session_cost_usd.map(Value::from),
        );
        put("autoPush", self.auto_push.map(Value::from));
        put("pullRequest", self.pull_request.map(Value::from));
        for (k, v) in self.other {
            body.entry(k).or_insert(v);
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StartChain {
    /// What the chain should do, as you would tell a colleague (the first session's task).
    pub task: String,
    /// A short name for the chain (letters, digits, `-`, `_`; default `main`).
    pub name: Option<String>,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StartMission {
    /// The mission's name: its file in config/missions/ without `.toml` (see list_missions).
    pub mission: String,
    /// Chains of the mission at once (default: the mission's own).
    pub concurrency: Option<u32>,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// Interrupt running sessions now (each writes its handoff) instead of letting them finish.
    pub now: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    /// Chains listed by cost, most expensive first (1-500, default 10).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Deny,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerApproval {
    /// The chain's id.
    pub chain_id: String,
    /// The held call's id (`ap-…`), from list_approvals.
    pub approval_id: String,
    /// `approve` lets the call run; `deny` refuses it.
    pub decision: Decision,
    /// What the agent is told with a denial.
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_apis_keys_and_the_rest_goes_through() {
        let s: StartChain = serde_json::from_value(serde_json::json!({
            "task": "t", "max_turns": 5, "auto_push": true, "permission_mode": "bypassPermissions"
        }))
        .unwrap();
        let mut body = Map::new();
        s.settings.into_body(&mut body);
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"maxTurns": 5, "autoPush": true, "permission_mode": "bypassPermissions"})
        );
    }
}
