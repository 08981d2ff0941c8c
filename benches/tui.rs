//! What `operator tui` costs, against baselines in the same run: the view's CPU, resident memory
//! and bytes written to its terminal (a pseudo-terminal read as fast as it comes), and the CPU of
//! the operator it watches, with and without the view attached. 100 chains listed; idle, then
//! with chains streaming their agents' output, on the chains screen and on an open chain.
//!
//! `cargo bench --bench tui` measures 15 s windows: 100 chains listed and idle, then 100 more
//! streaming (a tool call every 500 ms each, 200 output lines a second in all); without `--bench`
//! (under `cargo test --all-targets`) a quick pass of 2 s windows with 10 chains streaming, so CI
//! notices a bench that no longer runs.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_operator");

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A field of /proc/<pid>/status in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A mission of `n` sim chains, all at once, with these `[defaults]` lines.
fn mission(dir: &Path, name: &str, n: usize, defaults: &str) {
    let mut m = format!(
        "name = \"{name}\"\nconcurrency = {n}\n[defaults]\nagent = \"sim\"\nmax_continuations = 100000\n{defaults}"
    );
    for i in 0..n {
        m += &format!("[[chain]]\nname = \"{name}-{i}\"\ntask = \"Part {i} of the work.\"\n");
    }
    std::fs::write(dir.join(format!("config/missions/{name}.toml")), m).expect("mission");
}

struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    async fn start(&self, mission: &str) {
        let r = self
            .http
            .post(format!("{}/api/orchestrator/start", self.url))
            .bearer_auth(&self.token)
            .json(&json!({ "mission": mission }))
            .send()
            .await
            .expect("start");
        assert!(r.status().is_success(), "start {mission}: {}", r.status());
    }

    /// Waits until the chains list satisfies `pred`.
    async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let page = self.get("/api/chains?limit=200").await;
            if pred(page["chains"].as_array().map_or(&[][..], |v| v)) {
                return;
            }
            assert!(Instant::now() < end, "never: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The view on a pseudo-terminal, its output drained and counted by a thread (a fast terminal).
struct View {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn std::io::Write + Send>,
    written: Arc<AtomicU64>,
    _pair: portable_pty::PtyPair,
}

impl View {
    fn spawn(dir: &Path) -> View {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 50,
                cols: 140,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pty");
        let mut c = CommandBuilder::new(BIN);
        c.arg("tui");
        c.cwd(dir);
        c.env("OPERATOR_DATA_DIR", dir.join("data"));
        c.env("TERM", "xterm-256color");
        let child = pair.slave.spawn_command(c).expect("operator tui");
        let mut reader = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        View {
            child,
            writer,
            written,
            _pair: pair,
        }
    }

    fn pid(&self) -> u32 {
        self.child.process_id().expect("the view's pid")
    }

    fn send(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).expect("keys");
        self.writer.flush().expect("keys");
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One window's figures.
struct Window {
    view_cpu: Option<f64>,
    view_rss_mb: Option<f64>,
    written_kb_s: Option<f64>,
    operator_cpu: f64,
}

async fn window(secs: u64, operator: u32, view: Option<&View>) -> Window {
    let hz = ticks_per_second();
    let (op0, v0) = (cpu_ticks(operator), view.map(|v| cpu_ticks(v.pid())));
    let w0 = view.map(|v| v.written.load(Ordering::Relaxed));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let dt = t0.elapsed().as_secs_f64();
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / dt * 100.0;
    Window {
        view_cpu: view.zip(v0).map(|(v, t)| pct(t, cpu_ticks(v.pid()))),
        view_rss_mb: view.map(|v| status_kb(v.pid(), "VmRSS") as f64 / 1024.0),
        written_kb_s: view
            .zip(w0)
            .map(|(v, w)| (v.written.load(Ordering::Relaxed) - w) as f64 / 1024.0 / dt),
        operator_cpu: pct(op0, cpu_ticks(operator)),
    }
}

fn row(name: &str, w: &Window) {
    let opt = |v: Option<f64>, unit: &str| {
        v.map_or("        —".to_string(), |x| format!("{x:>7.2} {unit}"))
    };
    println!(
        "  {name:<40} {}  {}  {}  {:>7.2} %",
        opt(w.view_cpu, "%"),
        opt(w.view_rss_mb, "MB"),
        opt(w.written_kb_s, "KB/s"),
        w.operator_cpu
    );
}

fn stop(mut serve: Child) {
    let pid = nix::unistd::Pid::from_raw(serve.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(Some(_)) = serve.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (secs, streaming, step) = if full {
        (15, 100, "500ms")
    } else {
        (2, 10, "100ms")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("config/missions")).expect("missions dir");
    std::fs::create_dir_all(root.join("work")).expect("workdir");
    let listed = 100;
    mission(
        root,
        "done",
        listed,
        "sim = { scenario = \"complete\", step = \"1ms\", turns = 1 }\n",
    );
    mission(
        root,
        "live",
        streaming,
        &format!(
            "sim = {{ scenario = \"incomplete\", complete_after = 100000, step = \"{step}\", turns = 3 }}\n"
        ),
    );
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--agent",
        "sim",
        "--quiet",
    ])
    .current_dir(root)
    .env("OPERATOR_DATA_DIR", root.join("data"))
    .env("OPERATOR_WORKDIR", root.join("work"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OPERATOR_") && k != "OPERATOR_DATA_DIR" && k != "OPERATOR_WORKDIR" {
            cmd.env_remove(k);
        }
    }
    let serve = cmd.spawn().expect("operator serve");
    let operator = serve.id();
    let end = Instant::now() + Duration::from_secs(60);
    let (url, token) = loop {
        let url = std::fs::read_to_string(root.join("data/api.addr")).unwrap_or_default();
        let token = std::fs::read_to_string(root.join("data/api-token")).unwrap_or_default();
        if url.starts_with("http") && !token.trim().is_empty() {
            break (
                url.trim().trim_end_matches('/').to_string(),
                token.trim().to_string(),
            );
        }
        assert!(Instant::now() < end, "operator serve never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let api = Api {
        url,
        token,
        http: reqwest::Client::new(),
    };

    api.start("done").await;
    api.until("the listed chains complete", |c| {
        c.iter().filter(|c| c["status"] == "complete").count() == listed
    })
    .await;
    println!(
        "operator tui, {listed} chains listed, then {streaming} more streaming (a step every {step} each); {secs} s windows; the view on a 140×50 pty read as fast as it comes:"
    );
    println!(
        "  {:<40} {:>9}  {:>9}  {:>12}  {:>9}",
        "", "view CPU", "view RSS", "written", "operator"
    );
    let base_idle = window(secs, operator, None).await;
    row("nothing running, no view (baseline)", &base_idle);
    let mut view = View::spawn(root);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = window(secs, operator, Some(&view)).await;
    row("nothing running, chains screen", &idle);

    api.start("live").await;
    api.until("the live chains stream", |c| {
        c.iter().filter(|c| c["status"] == "running").count() == streaming
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listing = window(secs, operator, Some(&view)).await;
    row(&format!("{streaming} streaming, chains screen"), &listing);
    // Live chains first, then open the top one: its output follows the stream.
    view.send("s");
    view.send("\r");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = window(secs, operator, Some(&view)).await;
    row(&format!("{streaming} streaming, one chain open"), &open);
    let peak = status_kb(view.pid(), "VmHWM") as f64 / 1024.0;
    drop(view);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_live = window(secs, operator, None).await;
    row(
        &format!("{streaming} streaming, no view (baseline)"),
        &base_live,
    );
    println!("  the view's peak RSS: {peak:.1} MB");
    println!(
        "  the operator's CPU with the view attached, over its baseline: idle {:+.2} points, streaming {:+.2} points",
        idle.operator_cpu - base_idle.operator_cpu,
        open.operator_cpu - base_live.operator_cpu
    );
    stop(serve);
}
