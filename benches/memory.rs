//! Memory and idle cost of the operator itself (never its agents): the peak RSS of `operator run` during a
//! chain of sim sessions, against the peak RSS of one bare sim agent in the same run; and many
//! concurrent chains whose agents sleep: the operator's RSS and its CPU while they idle; and a
//! long run of one operator (one chain of many sessions): its RSS, open descriptors, threads and
//! async tasks sampled as the sessions go by, which must stay flat after the warm-up.
//!
//! `cargo bench --bench memory` runs 1,000 concurrent chains and 1,000 sessions; without `--bench`
//! (under `cargo test --all-targets`) a quick pass with 20 chains and 100 sessions, so CI notices a
//! bench that no longer runs.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_operator");

/// A field of /proc/<pid>/status in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident kB of the executable mapping of `BIN` in process `pid` (its code), from smaps.
fn code_kb(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_code = false;
    for line in smaps.lines() {
        if line.contains(" r-xp ") {
            in_code = line.ends_with(BIN);
        } else if in_code && let Some(rss) = line.strip_prefix("Rss:") {
            return rss.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

/// Peaks of a process's memory, in kB.
#[derive(Default)]
struct Peaks {
    /// Resident set (VmHWM).
    rss: u64,
    /// Anonymous memory (heap, stacks: what it allocated).
    anon: u64,
    /// The binary's code mapped in (see link/hot-text.py).
    code: u64,
}

/// Waits for `child`, sampling until it exits.
fn peak_until_exit(mut child: Child) -> Peaks {
    let pid = child.id();
    let mut p = Peaks::default();
    loop {
        if let Some(kb) = status_kb(pid, "VmHWM") {
            p.rss = p.rss.max(kb);
        }
        if let Some(kb) = status_kb(pid, "RssAnon") {
            p.anon = p.anon.max(kb);
        }
        if let Some(kb) = code_kb(pid) {
            p.code = p.code.max(kb);
        }
        if child.try_wait().expect("wait").is_some() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn operator(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env(
            "OPERATOR_DATA_DIR",
            dir.join(format!("data-{}", fastrand::u32(..))),
        )
        .env("OPERATOR_WORKDIR", dir)
        .env("OPERATOR_AGENT", "sim")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().expect("tempdir");

    // 1b. One chain of 10 sessions: the operator's own peak RSS, and one bare agent's.
    let child = operator(
        dir.path(),
        &[
            "run",
            "--task",
            "bench",
            "--scenario",
            "incomplete",
            "--quiet",
            "--max-continuations",
            "9",
        ],
        &[
            ("OPERATOR_SIM__STEP", "20ms"),
            ("OPERATOR_SIM__COMPLETE_AFTER", "9"),
        ],
    )
    .spawn()
    .expect("operator");
    let op = peak_until_exit(child);
    let mut agent = Command::new(BIN)
        .args(["sim-agent", "--scenario", "complete", "--step", "20ms"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim-agent");
    // Driven as the operator drives it: stdin stays open until the session's `result` line
    // (closed at once, the agent stops at its first step, before doing any work).
    let mut stdin = agent.stdin.take().expect("stdin");
    let _ = writeln!(
        stdin,
        "{}",
        operator::agent::stream::initialize_request("i")
    );
    let _ = writeln!(stdin, "{}", operator::agent::stream::user_message("task"));
    let stdout = agent.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if line.is_ok_and(|l| l.contains("\"type\":\"result\"")) {
                break;
            }
        }
        drop(stdin);
    });
    let agent_peak = peak_until_exit(agent).rss;
    let _ = reader.join();
    println!("memory of one chain (10 sessions of the sim agent):");
    println!(
        "  operator peak RSS         : {:>8.1} MB",
        op.rss as f64 / 1024.0
    );
    println!(
        "  of which anonymous (heap) : {:>8.1} MB",
        op.anon as f64 / 1024.0
    );
    println!(
        "  of which the binary's code: {:>8.1} MB  (grows if link/hot-text.ld is stale)",
        op.code as f64 / 1024.0
    );
    println!(
        "  one bare sim agent (peak) : {:>8.1} MB  (the same binary, for scale)",
        agent_peak as f64 / 1024.0
    );

    // 2. Many chains at once, their agents idle (the `hang` scenario): RSS and CPU of the
    // operator alone while nothing happens.
    let n = if full { 1000 } else { 20 };
    let n = std::env::var("OPERATOR_BENCH_CHAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    let mission = dir.path().join("many.toml");
    let mut m = format!(
        "name = \"many\"\nconcurrency = {n}\n[defaults]\nsim = {{ scenario = \"hang\" }}\n"
    );
    for i in 0..n {
        m.push_str(&format!(
            "[[chain]]\nname = \"c{i}\"\ntask = \"idle {i}\"\n"
        ));
    }
    std::fs::write(&mission, m).expect("mission");
    let child = operator(
        dir.path(),
        &["run", mission.to_str().expect("path"), "--quiet"],
        &[],
    )
    .spawn()
    .expect("operator");
    let pid = child.id();
    // Wait until every agent runs: the operator's children.
    let started = Instant::now();
    loop {
        // Children of any of the operator's threads.
        let kids: usize = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .count()
            })
            .sum();
        if kids >= n || started.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (t0, c0) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    std::thread::sleep(Duration::from_secs(if full { 10 } else { 3 }));
    let (t1, c1) = (t0.elapsed(), cpu_ticks(pid).unwrap_or(0));
    let rss = status_kb(pid, "VmRSS").unwrap_or(0);
    let anon = status_kb(pid, "RssAnon").unwrap_or(0);
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu = (c1 - c0) as f64 / ticks_per_s / t1.as_secs_f64() * 100.0;
    println!(
        "{n} concurrent chains with idle agents (all started in {:.1} s):",
        ready.as_secs_f64()
    );
    println!(
        "  operator RSS              : {:>8.1} MB",
        rss as f64 / 1024.0
    );
    println!(
        "  of which anonymous (heap) : {:>8.1} MB",
        anon as f64 / 1024.0
    );
    println!("  operator CPU while idle   : {cpu:>8.2} % of a core");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut child = child;
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();

    let sessions = std::env::var("OPERATOR_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 100 });
    long_run(dir.path(), sessions);
}

/// `GET /metrics` of the operator at `addr`: the sum of each metric's samples, by name.
fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    use std::io::Read;
    let mut out = std::collections::HashMap::new();
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    for line in text.lines().filter(|l| l.starts_with("operator_")) {
        let (name, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
        let name = name.split('{').next().unwrap_or(name).to_string();
        *out.entry(name).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// One operator running `sessions` sessions back to back: RSS, descriptors, threads and tasks
/// as the sessions go by.
fn long_run(dir: &std::path::Path, sessions: u32) {
    let data = dir.join("long-data");
    let child = operator(
        dir,
        &[
            "run",
            "--task",
            "long run",
            "--scenario",
            "incomplete",
            "--quiet",
            "--serve",
            "127.0.0.1:0",
            "--max-continuations",
            &sessions.to_string(),
            "--max-budget-usd",
            "1000",
        ],
        &[
            ("OPERATOR_DATA_DIR", data.to_str().expect("path")),
            ("OPERATOR_SIM__STEP", "0s"),
            ("OPERATOR_SIM__TURNS", "1"),
            ("OPERATOR_SIM__COMPLETE_AFTER", &(sessions - 1).to_string()),
        ],
    )
    .spawn()
    .expect("operator");
    let pid = child.id();
    let addr_file = data.join("api.addr");
    let started = Instant::now();
    let mut rows: Vec<(u64, u64, usize, u64, f64)> = Vec::new();
    let mut child = child;
    let mut next = sessions as u64 / 10;
    while child.try_wait().expect("wait").is_none() {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(url) = std::fs::read_to_string(&addr_file) else {
            continue;
        };
        let m = scrape(url.trim().trim_start_matches("http://"));
        let done = m.get("operator_sessions_total").copied().unwrap_or(0.0) as u64;
        if done < next {
            continue;
        }
        let step = (sessions as u64 / 10).max(1);
        next = (done / step + 1) * step;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        rows.push((
            done,
            status_kb(pid, "VmRSS").unwrap_or(0),
            fds,
            status_kb(pid, "Threads").unwrap_or(0),
            m.get("operator_runtime_tasks").copied().unwrap_or(0.0),
        ));
    }
    println!(
        "a long run: one chain of {sessions} sessions in {:.0} s (sampled after every tenth):",
        started.elapsed().as_secs_f64()
    );
    println!("  sessions   RSS MB   open fds   threads   tasks");
    for (done, rss, fds, threads, tasks) in &rows {
        println!(
            "  {done:>8} {:>8.1} {fds:>10} {threads:>9} {tasks:>7}",
            *rss as f64 / 1024.0
        );
    }
    if let (Some(first), Some(last)) = (rows.get(1), rows.last()) {
        println!(
            "  after the warm-up (from {} to {} sessions): RSS {:+.1} MB, fds {:+}, threads {:+}, tasks {:+}",
            first.0,
            last.0,
            (last.1 as f64 - first.1 as f64) / 1024.0,
            last.2 as i64 - first.2 as i64,
            last.3 as i64 - first.3 as i64,
            last.4 - first.4
        );
    }
}
