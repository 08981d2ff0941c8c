//! The MCP tools' answers as text a model reads well: chain lists, handoffs, reports, output
//! tails and costs, from the API's JSON.

use std::fmt::Write;

use serde_json::{Value, json};

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// A page of chains, each reduced to what tells them apart.
pub fn chain_list(page: &Value) -> Value {
    let chains: Vec<Value> = page["chains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "id": c["id"], "name": c["name"], "mission": c["mission"], "status": c["status"],
                "reason": c["reason"], "task": truncate(s(c, "task"), 200),
                "sessions": c["totals"]["sessions"], "turns": c["totals"]["turns"],
                "costUsd": c["totals"]["costUsd"], "startedAt": c["startedAt"],
                "updatedAt": c["updatedAt"],
            })
        })
        .collect();
    json!({"chains": chains, "more": page["nextCursor"].is_string()})
}

/// What start_chain answers: the new chain's id and state, and where to look next.
pub fn started(chain: &Value) -> Value {
    json!({
        "id": chain["id"], "name": chain["name"], "status": chain["status"],
        "next": "show_chain, get_output_tail and get_handoff follow it; abort_chain stops it",
    })
}

fn truncate(t: &str, max: usize) -> String {
    if t.len() <= max {
        return t.to_string();
    }
    let mut end = max;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// A handoff with a line saying whose it is.
pub fn handoff(id: &str, n: u32, record: &Value, text: &str) -> String {
    let mut head = format!(
        "<!-- chain {id}, session {n}, written {}",
        s(record, "createdAt")
    );
    if record["synthetic"].as_bool() == Some(true) {
        head.push_str(", written by the operator (the agent wrote none)");
    }
    if record["complete"].as_bool() == Some(true) {
        head.push_str(", the agent said the task is complete");
    }
    head.push_str(" -->\n");
    head + text
}

/// A chain's report: status, sessions, totals, then its latest handoff.
pub fn report(chain: &Value, handoff: Option<&str>) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Chain {} ({})\n", s(chain, "id"), s(chain, "name"));
    let _ = write!(r, "- status: {}", s(chain, "status"));
    if let Some(reason) = chain["reason"].as_str() {
        let _ = write!(r, " ({reason})");
    }
    let _ = writeln!(r);
    if let Some(m) = chain["mission"].as_str() {
        let _ = writeln!(r, "- mission: {m}");
    }
    let _ = writeln!(r, "- task: {}", truncate(s(chain, "task"), 500));
    let t = &chain["totals"];
    let _ = writeln!(
        r,
        "- sessions: {}, turns: {}, cost: ${:.4}",
        t["sessions"],
        t["turns"],
        t["costUsd"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        r,
        "- started: {}, updated: {}\n",
        s(chain, "startedAt"),
        s(chain, "updatedAt")
    );
    let _ = writeln!(
        r,
        "## Sessions\n\n| # | status | turns | cost | error |\n|---|---|---|---|---|"
    );
    for x in chain["sessions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            r,
            "| {} | {} | {} | ${:.4} | {} |",
            x["index"],
            s(x, "status"),
            x["turns"],
            x["costUsd"].as_f64().unwrap_or(0.0),
            truncate(s(x, "error"), 120)
                .replace('|', "\\|")
                .replace('\n', " ")
        );
    }
    let _ = writeln!(r, "\n## Latest handoff\n");
    r.push_str(handoff.unwrap_or("(none yet)"));
    r
}

/// One transcript line as a person would read it: the agent's text, its tool calls, the
/// result; a line of another shape as it is (cut to 300 bytes).
fn readable(line: &str) -> Option<String> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return (!line.trim().is_empty()).then(|| truncate(line, 300));
    };
    match s(&v, "type") {
        "assistant" => {
            let parts: Vec<String> = v["message"]["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| match s(c, "type") {
                    "text" => Some(s(c, "text").to_string()),
                    "tool_use" => Some(format!(
                        "→ {} {}",
                        s(c, "name"),
                        truncate(&c["input"].to_string(), 200)
                    )),
                    _ => None,
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("\n"))
        }
        "user" | "system" | "stream_event" => None,
        "result" => Some(format!(
            "[result: {}] {}",
            s(&v, "subtype"),
            truncate(s(&v, "result"), 1000)
        )),
        _ => Some(truncate(line, 300)),
    }
}

/// The end of a session's output, readable.
pub fn output_tail(id: &str, n: u32, page: &Value) -> String {
    let text = s(page, "text");
    // The page may start inside a line: drop that part line.
    let text = if page["offset"].as_u64().unwrap_or(0) > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        text
    };
    let lines: Vec<String> = text.lines().filter_map(readable).collect();
    let state = if page["running"].as_bool() == Some(true) {
        "running"
    } else {
        "ended"
    };
    format!(
        "chain {id}, session {n} ({state}; {} bytes of output in all):\n{}",
        page["total"],
        if lines.is_empty() {
            "(nothing yet)".to_string()
        } else {
            lines.join("\n")
        }
    )
}

/// The cost report with its forecast lines.
pub fn costs(mut report: Value) -> Value {
    let forecast = serde_json::from_value::<crate::store::CostReport>(report.clone())
        .map(|r| r.forecast(r.daily_cap_usd))
        .unwrap_or_default();
    report["forecast"] = json!(forecast);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_tail_reads_as_the_agents_messages() {
        let lines = [
            r#"{"type":"system","subtype":"init"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Reading the code."},{"type":"tool_use","name":"Edit","input":{"file_path":"a.rs"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","content":"ok"}]}}"#,
            r#"{"type":"result","subtype":"success","result":"Done."}"#,
            "not json at all",
        ];
        let page = json!({"offset": 0, "total": 400, "running": false, "text": lines.join("\n")});
        let t = output_tail("c-1", 2, &page);
        assert_eq!(
            t,
            "chain c-1, session 2 (ended; 400 bytes of output in all):\nReading the code.\n→ Edit {\"file_path\":\"a.rs\"}\n[result: success] Done.\nnot json at all"
        );
        let cut = json!({"offset": 10, "total": 400, "running": true, "text": "art of a line\n{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"x\"}"});
        assert!(
            output_tail("c-1", 2, &cut)
                .ends_with("(running; 400 bytes of output in all):\n[result: success] x")
        );
    }

    #[test]
    fn a_report_has_the_status_the_sessions_and_the_handoff() {
        let chain = json!({"id": "c-1", "name": "main", "status": "failed", "reason": "3 sessions failed",
            "task": "t", "totals": {"sessions": 1, "turns": 4, "costUsd": 0.5},
            "sessions": [{"index": 1, "status": "failed", "turns": 4, "costUsd": 0.5, "error": "a|b"}]});
        let r = report(&chain, Some("## Done\nx"));
        assert!(
            r.starts_with("# Chain c-1 (main)\n\n- status: failed (3 sessions failed)\n"),
            "{r}"
        );
        assert!(r.contains("| 1 | failed | 4 | $0.5000 | a\\|b |"), "{r}");
        assert!(r.ends_with("## Latest handoff\n\n## Done\nx"), "{r}");
    }
}
