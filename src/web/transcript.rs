//! A session's stream-json transcript as text a person can read: what the agent said, the tools it
//! called, their results (shortened) and the session's result. Garbage lines are shown as they are.

use std::path::Path;

use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Reads at most `limit` bytes of the transcript at `path` and makes them readable.
pub async fn read_readable(path: &Path, limit: u64) -> String {
    let Ok(f) = tokio::fs::File::open(path).await else {
        return "(no output recorded)".into();
    };
    let mut buf = Vec::new();
    if f.take(limit).read_to_end(&mut buf).await.is_err() {
        return "(the output could not be read)".into();
    }
    let mut text = readable(&String::from_utf8_lossy(&buf));
    if buf.len() as u64 >= limit {
        text.push_str("\n… (cut: the whole transcript is in the API's output pages)");
    }
    text
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// One line or block per event.
pub fn readable(jsonl: &str) -> String {
    let mut out = String::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            out.push_str(&short(line, 300));
            out.push('\n');
            continue;
        };
        match v["type"].as_str().unwrap_or("") {
            "assistant" => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => {
                            out.push_str(block["text"].as_str().unwrap_or(""));
                            out.push('\n');
                        }
                        Some("tool_use") => {
                            out.push_str(&format!(
                                "→ {} {}\n",
                                block["name"].as_str().unwrap_or("tool"),
                                short(&block["input"].to_string(), 200)
                            ));
                        }
                        _ => {}
                    }
                }
            }
            "user" => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    if block["type"] == "tool_result" {
                        let c = match &block["content"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.push_str(&format!("← {}\n", short(c.trim(), 200)));
                    }
                }
            }
            "result" => out.push_str(&format!(
                "= {} ({} turns)\n",
                v["subtype"].as_str().unwrap_or("result"),
                v["num_turns"]
            )),
            "system" if v["subtype"] == "init" => out.push_str(&format!(
                "· session {} started ({})\n",
                v["session_id"].as_str().unwrap_or("?"),
                v["model"].as_str().unwrap_or("?")
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_read_as_text() {
        let t = r#"{"type":"system","subtype":"init","session_id":"s1","model":"sonnet"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Looking."},{"type":"tool_use","name":"Bash","input":{"command":"ls"}}]}}
{"type":"user","message":{"content":[{"type":"tool_result","content":"a.rs\nb.rs"}]}}
not json at all
{"type":"result","subtype":"success","num_turns":2}"#;
        let r = readable(t);
        assert!(r.contains("· session s1 started (sonnet)"));
        assert!(r.contains("Looking.\n→ Bash {\"command\":\"ls\"}"));
        assert!(r.contains("← a.rs\nb.rs"));
        assert!(r.contains("not json at all"));
        assert!(r.ends_with("= success (2 turns)\n"));
    }
}
