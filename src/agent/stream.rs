//! The two-way stream-json protocol of Claude Code (and of the sim agent): typed events from stdout lines,
//! and the JSON lines the operator writes to the agent's stdin.
//!
//! Parsing never fails: a line that is not JSON, or JSON of a type we do not know,
//! becomes [`AgentEvent::Garbage`] / [`AgentEvent::Unknown`] and is kept in the transcript.

use serde::Deserialize;
use serde_json::{Value, json};

/// Token usage as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// The final `result` line of a turn.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub num_turns: u32,
    /// Cumulative for the whole process, not per turn.
    #[serde(default)]
    pub total_cost_usd: f64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub terminal_reason: Option<String>,
    #[serde(default)]
    pub api_error_status: Option<u16>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Tool calls refused during the turn (by the CLI's own rules or by the operator's answers).
    #[serde(default)]
    pub permission_denials: Vec<PermissionDenial>,
}

/// One entry of a result's `permission_denials`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PermissionDenial {
    #[serde(default)]
    pub tool_name: String,
    #[serde(default)]
    pub tool_use_id: String,
    #[serde(default)]
    pub tool_input: Value,
}

/// A request from the agent that must be answered (hook callbacks, permission prompts…).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    pub request_id: String,
    pub subtype: String,
    pub callback_id: Option<String>,
    pub hook_event: Option<String>,
    /// `can_use_tool`: the tool the agent wants to call, and its input.
    pub tool_name: Option<String>,
    pub tool_use_id: Option<String>,
    pub input: Value,
}

/// One stdout line, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Init {
        session_id: String,
        model: Option<String>,
        version: Option<String>,
    },
    /// Usage of one model (a CLI that reports it per model at the end of a turn).
    ModelUsage {
        model: String,
        usage: Usage,
    },
    /// A chunk of assistant text, joined to the chunks before it as it comes (Gemini's
    /// `delta` messages).
    TextDelta(String),
    /// Assistant text, and the usage of the message it came in.
    Text {
        text: String,
        usage: Option<Usage>,
    },
    ToolUse {
        name: String,
        usage: Option<Usage>,
    },
    ToolResult {
        is_error: bool,
    },
    /// Text in a `user` line written by the CLI itself, e.g. the compaction summary that
    /// continues the conversation after a `compact_boundary`.
    UserText(String),
    ApiRetry {
        attempt: u32,
        max_retries: u32,
        retry_delay_ms: u64,
        error_status: Option<u16>,
        error: String,
    },
    Status(String),
    CompactBoundary,
    RateLimit {
        status: String,
        resets_at: Option<i64>,
    },
    ControlRequest(ControlRequest),
    ControlResponse {
        request_id: String,
        ok: bool,
    },
    Result(ResultInfo),
    /// Valid JSON of a type we do not know.
    Unknown(String),
    /// Not JSON at all.
    Garbage,
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn usage_of(v: &Value) -> Option<Usage> {
    v.get("usage").and_then(|u| Usage::deserialize(u).ok())
}

/// Parses one stdout line into zero or more events (an assistant message can carry
/// several content blocks).
pub fn parse_line(line: &str) -> Vec<AgentEvent> {
    let line = line.trim();
    if line.is_empty() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return vec![AgentEvent::Garbage];
    };
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "system" => {
            let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("");
            match subtype {
                "init" => vec![AgentEvent::Init {
                    session_id: str_field(&v, "session_id").unwrap_or_default(),
                    model: str_field(&v, "model"),
                    version: str_field(&v, "claude_code_version"),
                }],
                "api_retry" => vec![AgentEvent::ApiRetry {
                    attempt: v.get("attempt").and_then(Value::as_u64).unwrap_or(0) as u32,
                    max_retries: v.get("max_retries").and_then(Value::as_u64).unwrap_or(0) as u32,
                    retry_delay_ms: v.get("retry_delay_ms").and_then(Value::as_u64).unwrap_or(0),
                    error_status: v
                        .get("error_status")
                        .and_then(Value::as_u64)
                        .map(|s| s as u16),
                    error: str_field(&v, "error").unwrap_or_default(),
                }],
                "compact_boundary" => vec![AgentEvent::CompactBoundary],
                "status" => vec![AgentEvent::Status(
                    str_field(&v, "status")
                        .or_else(|| str_field(&v, "compact_result"))
                        .unwrap_or_default(),
                )],
                other => vec![AgentEvent::Unknown(format!("system/{other}"))],
            }
        }
        "assistant" => {
            let msg = v.get("message").unwrap_or(&Value::Null);
            let usage = usage_of(msg);
            let mut out = Vec::new();
            if let Some(blocks) = msg.get("content").and_then(Value::as_array) {
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => out.push(AgentEvent::Text {
                            text: str_field(b, "text").unwrap_or_default(),
                            usage: None,
                        }),
                        Some("tool_use") => out.push(AgentEvent::ToolUse {
                            name: str_field(b, "name").unwrap_or_default(),
                            usage: None,
                        }),
                        _ => {}
                    }
                }
            }
            // Usage belongs to the message, not to each block: attach it once.
            match out.first_mut() {
                Some(AgentEvent::Text { usage: u, .. } | AgentEvent::ToolUse { usage: u, .. }) => {
                    *u = usage
                }
                _ => out.push(AgentEvent::Text {
                    text: String::new(),
                    usage,
                }),
            }
            out
        }
        "user" => {
            let blocks = v
                .get("message")
                .and_then(|m| m.get("content"))
                .and_then(Value::as_array);
            let content = v.get("message").and_then(|m| m.get("content"));
            if let Some(text) = content.and_then(Value::as_str) {
                return vec![AgentEvent::UserText(text.to_string())];
            }
            blocks
                .into_iter()
                .flatten()
                .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("tool_result") => Some(AgentEvent::ToolResult {
                        is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    }),
                    Some("text") => Some(AgentEvent::UserText(
                        str_field(b, "text").unwrap_or_default(),
                    )),
                    _ => None,
                })
                .collect()
        }
        "result" => match ResultInfo::deserialize(&v) {
            Ok(r) => vec![AgentEvent::Result(r)],
            Err(_) => vec![AgentEvent::Unknown("result (malformed)".into())],
        },
        "rate_limit_event" => {
            let info = v.get("rate_limit_info").unwrap_or(&v);
            vec![AgentEvent::RateLimit {
                status: str_field(info, "status").unwrap_or_default(),
                resets_at: info
                    .get("resetsAt")
                    .or_else(|| info.get("resets_at"))
                    .and_then(Value::as_i64),
            }]
        }
        "control_request" => {
            let req = v.get("request").unwrap_or(&Value::Null);
            let input = req.get("input").unwrap_or(&Value::Null);
            vec![AgentEvent::ControlRequest(ControlRequest {
                request_id: str_field(&v, "request_id").unwrap_or_default(),
                subtype: str_field(req, "subtype").unwrap_or_default(),
                callback_id: str_field(req, "callback_id"),
                hook_event: str_field(input, "hook_event_name"),
                tool_name: str_field(req, "tool_name"),
                tool_use_id: str_field(req, "tool_use_id"),
                input: input.clone(),
            })]
        }
        "control_response" => {
            let resp = v.get("response").unwrap_or(&Value::Null);
            vec![AgentEvent::ControlResponse {
                request_id: str_field(resp, "request_id").unwrap_or_default(),
                ok: resp.get("subtype").and_then(Value::as_str) == Some("success"),
            }]
        }
        other => vec![AgentEvent::Unknown(other.to_string())],
    }
}

/// The callback id under which the operator registers its PreCompact hook.
pub const PRECOMPACT_CALLBACK: &str = "hook_0";

/// `initialize` control request registering the PreCompact hook.
pub fn initialize_request(request_id: &str) -> String {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {
            "subtype": "initialize",
            "hooks": {"PreCompact": [{"matcher": null, "hookCallbackIds": [PRECOMPACT_CALLBACK]}]}
        }
    })
    .to_string()
}

/// A user message carrying `text`.
pub fn user_message(text: &str) -> String {
    json!({
        "type": "user",
        "session_id": "",
        "message": {"role": "user", "content": [{"type": "text", "text": text}]},
        "parent_tool_use_id": null
    })
    .to_string()
}

/// A successful answer to a control request.
pub fn control_success(request_id: &str, response: Value) -> String {
    json!({
        "type": "control_response",
        "response": {"subtype": "success", "request_id": request_id, "response": response}
    })
    .to_string()
}

/// An error answer to a control request (never leave one unanswered).
pub fn control_error(request_id: &str, error: &str) -> String {
    json!({
        "type": "control_response",
        "response": {"subtype": "error", "request_id": request_id, "error": error}
    })
    .to_string()
}

/// Lets a tool call run (`can_use_tool`), with its input unchanged.
pub fn permission_allow(request_id: &str, input: &Value) -> String {
    control_success(
        request_id,
        json!({"behavior": "allow", "updatedInput": input}),
    )
}

/// Refuses a tool call (`can_use_tool`): the agent sees `message` as the tool's error.
pub fn permission_deny(request_id: &str, message: &str) -> String {
    control_success(request_id, json!({"behavior": "deny", "message": message}))
}

/// Asks the agent to stop the current turn.
pub fn interrupt_request(request_id: &str) -> String {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "interrupt"}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_line() {
        let ev = parse_line(
            r#"{"type":"system","subtype":"init","session_id":"s1","model":"claude-sonnet","claude_code_version":"2.1.328","tools":[]}"#,
        );
        assert_eq!(
            ev,
            vec![AgentEvent::Init {
                session_id: "s1".into(),
                model: Some("claude-sonnet".into()),
                version: Some("2.1.328".into())
            }]
        );
    }

    #[test]
    fn assistant_with_text_and_tool_use_carries_usage_once() {
        let ev = parse_line(
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"},{"type":"tool_use","name":"Bash","input":{}}],"usage":{"input_tokens":10,"output_tokens":5}}}"#,
        );
        assert_eq!(ev.len(), 2);
        assert!(
            matches!(&ev[0], AgentEvent::Text { text, usage: Some(u) } if text == "hi" && u.input_tokens == 10)
        );
        assert!(matches!(&ev[1], AgentEvent::ToolUse { name, usage: None } if name == "Bash"));
    }

    #[test]
    fn result_line_with_api_error() {
        let ev = parse_line(
            r#"{"type":"result","subtype":"success","is_error":true,"num_turns":1,"total_cost_usd":0,"terminal_reason":"api_error","api_error_status":429,"errors":[],"result":"API Error: 429"}"#,
        );
        let AgentEvent::Result(r) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert!(r.is_error);
        assert_eq!(r.api_error_status, Some(429));
        assert_eq!(r.terminal_reason.as_deref(), Some("api_error"));
    }

    #[test]
    fn garbage_and_unknown_never_fail() {
        assert_eq!(parse_line("not json {"), vec![AgentEvent::Garbage]);
        assert_eq!(
            parse_line(r#"{"type":"telemetry","x":1}"#),
            vec![AgentEvent::Unknown("telemetry".into())]
        );
        assert_eq!(
            parse_line(r#"{"type":"result","num_turns":"many"}"#),
            vec![AgentEvent::Unknown("result (malformed)".into())]
        );
        assert!(parse_line("   ").is_empty());
        assert_eq!(
            parse_line("[1,2]"),
            vec![AgentEvent::Unknown(String::new())]
        );
    }

    #[test]
    fn user_lines_carry_tool_results_and_text() {
        let ev = parse_line(
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","is_error":true},{"type":"text","text":"summary"}]}}"#,
        );
        assert_eq!(
            ev,
            vec![
                AgentEvent::ToolResult { is_error: true },
                AgentEvent::UserText("summary".into())
            ]
        );
        assert_eq!(
            parse_line(r#"{"type":"user","message":{"role":"user","content":"plain"}}"#),
            vec![AgentEvent::UserText("plain".into())]
        );
    }

    #[test]
    fn control_request_hook_callback() {
        let ev = parse_line(
            r#"{"type":"control_request","request_id":"r7","request":{"subtype":"hook_callback","callback_id":"hook_0","input":{"hook_event_name":"PreCompact","trigger":"auto"}}}"#,
        );
        assert_eq!(
            ev,
            vec![AgentEvent::ControlRequest(ControlRequest {
                request_id: "r7".into(),
                subtype: "hook_callback".into(),
                callback_id: Some("hook_0".into()),
                hook_event: Some("PreCompact".into()),
                tool_name: None,
                tool_use_id: None,
                input: json!({"hook_event_name": "PreCompact", "trigger": "auto"}),
            })]
        );
    }

    #[test]
    fn can_use_tool_requests_and_their_answers() {
        let ev = parse_line(
            r#"{"type":"control_request","request_id":"r9","request":{"subtype":"can_use_tool","tool_name":"Write","display_name":"Write","input":{"file_path":"/w/a.txt","content":"hi"},"tool_use_id":"toolu_1"}}"#,
        );
        let AgentEvent::ControlRequest(req) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(req.subtype, "can_use_tool");
        assert_eq!(req.tool_name.as_deref(), Some("Write"));
        assert_eq!(req.input["file_path"], "/w/a.txt");
        let allow: Value = serde_json::from_str(&permission_allow("r9", &req.input)).unwrap();
        assert_eq!(allow["response"]["request_id"], "r9");
        assert_eq!(allow["response"]["response"]["behavior"], "allow");
        assert_eq!(
            allow["response"]["response"]["updatedInput"]["content"],
            "hi"
        );
        let deny: Value = serde_json::from_str(&permission_deny("r9", "no")).unwrap();
        assert_eq!(deny["response"]["subtype"], "success");
        assert_eq!(deny["response"]["response"]["behavior"], "deny");
        assert_eq!(deny["response"]["response"]["message"], "no");
    }

    #[test]
    fn result_lines_carry_permission_denials() {
        let ev = parse_line(
            r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"total_cost_usd":0.1,"permission_denials":[{"tool_name":"Bash","tool_use_id":"toolu_2","tool_input":{"command":"git init"}}]}"#,
        );
        let AgentEvent::Result(r) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(r.permission_denials.len(), 1);
        assert_eq!(r.permission_denials[0].tool_name, "Bash");
        assert_eq!(r.permission_denials[0].tool_input["command"], "git init");
    }

    #[test]
    fn outbound_lines_are_single_line_json() {
        for line in [
            initialize_request("init1"),
            user_message("multi\nline"),
            control_success("r", json!({})),
            control_error("r", "no"),
            interrupt_request("i"),
        ] {
            assert!(!line.contains('\n'));
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("type").is_some());
        }
        let v: Value = serde_json::from_str(&user_message("x")).unwrap();
        assert_eq!(v["message"]["content"][0]["text"], "x");
    }

    #[test]
    fn retry_and_compaction_lines() {
        let ev = parse_line(
            r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":2,"retry_delay_ms":500,"error_status":401,"error":"authentication_failed"}"#,
        );
        assert!(
            matches!(&ev[0], AgentEvent::ApiRetry { error_status: Some(401), error, .. } if error == "authentication_failed")
        );
        assert_eq!(
            parse_line(r#"{"type":"system","subtype":"compact_boundary","compact_metadata":{}}"#),
            vec![AgentEvent::CompactBoundary]
        );
    }
}
