//! Per-session overhead of the operator, against a baseline in the same run: a chain of N sessions of the
//! sim agent in instant mode, versus spawning the same sim agent N times bare and feeding it the same
//! stdin. Whole processes are timed (start-up and exit included).
//!
//! `cargo bench --bench overhead` runs the full measurement; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick pass, so CI notices a bench that no longer runs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_operator");

fn bare_sessions(n: u32, dir: &std::path::Path) -> Duration {
    let start = Instant::now();
    for i in 1..=n {
        let mut child = Command::new(BIN)
            .args(["sim-agent", "--scenario", "incomplete", "--complete-after"])
            .arg((n - 1).to_string())
            .args([
                "--session-index",
                &i.to_string(),
                "--step",
                "0s",
                "--turns",
                "3",
            ])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sim-agent");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(
            stdin,
            "{}",
            operator::agent::stream::initialize_request("init_1")
        )
        .expect("write");
        writeln!(stdin, "{}", operator::agent::stream::user_message("task")).expect("write");
        drop(stdin);
        let status = child.wait().expect("wait");
        assert!(status.success(), "bare sim-agent failed: {status}");
    }
    start.elapsed()
}

fn chain(n: u32, dir: &std::path::Path) -> Duration {
    let data = dir.join(format!("data-{}", fastrand::u32(..)));
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "run",
            "--task",
            "bench",
            "--scenario",
            "incomplete",
            "--json",
            "--quiet",
        ])
        .args(["--max-continuations", &(n - 1).to_string()])
        .env("OPERATOR_DATA_DIR", &data)
        .env("OPERATOR_WORKDIR", dir)
        .env("OPERATOR_SIM__STEP", "0s")
        .env("OPERATOR_SIM__COMPLETE_AFTER", (n - 1).to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run operator");
    let elapsed = start.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sessions = String::from_utf8_lossy(&out.stdout)
        .matches("\"index\"")
        .count();
    assert_eq!(sessions as u32, n, "the chain did not run {n} sessions");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if full { (10, 7) } else { (3, 1) };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bare = Vec::new();
    let mut op = Vec::new();
    for _ in 0..rounds {
        bare.push(bare_sessions(n, dir.path()));
        op.push(chain(n, dir.path()));
    }
    let (b, o) = (median(bare), median(op));
    println!(
        "per-session overhead, {n} sessions of the sim agent (instant mode), median of {rounds}:"
    );
    println!(
        "  bare agent processes : {:>8.1} ms  ({:.1} ms/session)",
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "  operator chain       : {:>8.1} ms  ({:.1} ms/session)",
        o.as_secs_f64() * 1e3,
        o.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "  ratio                : {:.3}x",
        o.as_secs_f64() / b.as_secs_f64()
    );
}
