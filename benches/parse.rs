//! Stream parsing: stream-json lines per second through the claude stream parser on a realistic recorded
//! transcript (and a 10 MB one with large tool results), against a plain `serde_json::from_str::<Value>`
//! loop over the same lines in the same run; and the handoff parser on large outputs against a plain
//! search for its heading.
//!
//! `cargo bench --bench parse` runs the full sizes; without `--bench` a quick pass.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;

/// A transcript shaped like Claude Code's: init, then rounds of assistant text + tool use and tool
/// results with usage, then a result line. `result_kb` sizes each tool result.
fn transcript(rounds: usize, result_kb: usize) -> Vec<String> {
    let mut lines = vec![json!({"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-sonnet-4-5",
        "tools": ["Bash", "Read", "Edit"], "cwd": "/work", "permissionMode": "default"}).to_string()];
    let blob = "fn main() { println!(\"hello\"); }\n".repeat(result_kb * 1024 / 34 + 1);
    for i in 0..rounds {
        lines.push(json!({"type": "assistant", "session_id": "s-1", "message": {"id": format!("m{i}"), "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [
                {"type": "text", "text": format!("Step {i}: reading the parser and fixing the tokenizer.")},
                {"type": "tool_use", "id": format!("t{i}"), "name": "Bash", "input": {"command": format!("cargo test -q parser::{i}")}}],
            "usage": {"input_tokens": 1200 + i, "output_tokens": 300, "cache_read_input_tokens": 20000, "cache_creation_input_tokens": 100}}}).to_string());
        lines.push(json!({"type": "user", "session_id": "s-1", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("t{i}"), "content": &blob[..(result_kb * 1024).min(blob.len())]}]}}).to_string());
    }
    lines.push(json!({"type": "result", "subtype": "success", "is_error": false, "num_turns": rounds, "session_id": "s-1",
        "total_cost_usd": 0.42, "duration_ms": 60000, "result": "## HANDOFF\n### Accomplished\n- x\n### Remaining\n- y\n",
        "usage": {"input_tokens": 1, "output_tokens": 1}}).to_string());
    lines
}

fn time<F: FnMut()>(rounds: usize, mut f: F) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

fn report(name: &str, lines: &[String], rounds: usize) {
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let ours = time(rounds, || {
        for l in lines {
            black_box(operator::agent::stream::parse_line(black_box(l)));
        }
    });
    let base = time(rounds, || {
        for l in lines {
            black_box(serde_json::from_str::<serde_json::Value>(black_box(l)).ok());
        }
    });
    let per_s = |d: Duration| lines.len() as f64 / d.as_secs_f64();
    let mb_s = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{name}: {} lines, {:.1} MB",
        lines.len(),
        bytes as f64 / 1e6
    );
    println!(
        "  baseline serde_json::Value : {:>10.0} lines/s  {:>7.0} MB/s",
        per_s(base),
        mb_s(base)
    );
    println!(
        "  operator stream parser     : {:>10.0} lines/s  {:>7.0} MB/s  ({:.2}x the baseline's time)",
        per_s(ours),
        mb_s(ours),
        ours.as_secs_f64() / base.as_secs_f64()
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 10 } else { 1 };
    report(
        "typical transcript (1 KB tool results)",
        &transcript(if full { 2000 } else { 50 }, 1),
        rounds,
    );
    report(
        "10 MB transcript (100 KB tool results)",
        &transcript(if full { 100 } else { 2 }, 100),
        rounds,
    );

    // The handoff parser on a large output, its heading at the end (the worst case).
    for mb in if full { vec![1, 5] } else { vec![1] } {
        let mut out = "Working on it; nothing to see here.\n".repeat(mb * 1024 * 1024 / 36);
        out.push_str("\n## HANDOFF\n\n### Accomplished\nParsed everything that needed parsing today.\n\n### Remaining\n- more\n\n### Context\nNone.\n");
        let ours = time(rounds.max(3), || {
            black_box(operator::handoff::extract(black_box(&out)).ok());
        });
        let base = time(rounds.max(3), || {
            black_box(black_box(&out).find("## HANDOFF"));
        });
        println!("handoff parser on a {mb} MB output:");
        println!(
            "  baseline str::find          : {:>9.3} ms",
            base.as_secs_f64() * 1e3
        );
        println!(
            "  handoff::extract           : {:>9.3} ms  ({:.1}x)",
            ours.as_secs_f64() * 1e3,
            ours.as_secs_f64() / base.as_secs_f64()
        );
    }
}
