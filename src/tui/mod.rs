//! `operator tui`: a full-screen terminal view of a running operator, through its HTTP API and
//! WebSocket only (so the same for `run --serve`, `serve` and a fleet's `serve --store`). The
//! state and its keys are plain values (`state`), drawing is `view`, the link is `client`; this
//! file is the loop and the terminal's care (raw mode restored on quit, panic and SIGTERM).

pub mod client;
pub mod state;
pub mod view;

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

pub use client::Target;
use client::{Client, Snapshot};
use state::{Action, Link, Screen, State};

/// The most often the screen is drawn: events are applied as they come, frames are dropped.
const FRAME: Duration = Duration::from_millis(100);
/// The least time between two reads of the lists after a key or a write.
const READ_GAP: Duration = Duration::from_millis(300);
/// The least time between two reads of the lists that events asked for: with a hundred chains
/// streaming, sessions end many times a second, and each read of the lists costs the operator
/// (benches/tui.rs).
const EVENT_READ_GAP: Duration = Duration::from_secs(1);
/// How often the lists are read again without an event (ages, and while the socket is down).
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// How the view looks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Off with `NO_COLOR` or a dumb terminal.
    pub colour: bool,
}

impl Options {
    /// Colours unless `NO_COLOR` is set or the terminal is dumb.
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").map_or(true, |t| t == "dumb");
        Self {
            colour: !no_color && !dumb,
        }
    }
}

/// The terminal in raw mode on the alternate screen, put back when dropped — and by the panic
/// hook, since a panic may unwind past nothing that drops it.
struct Screenful;

impl Screenful {
    fn enter() -> Result<Self, std::io::Error> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        TAKEN.store(true, std::sync::atomic::Ordering::SeqCst);
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::terminal::Clear(crossterm::terminal::ClearType::All),
            crossterm::cursor::Hide
        )?;
        Ok(Self)
    }
}

impl Drop for Screenful {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether the terminal is ours (raw, alternate screen). Put back once only: leaving the
/// alternate screen twice moves the cursor back over what was printed in between (the panic's
/// message).
static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn restore() {
    if !TAKEN.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

enum Msg {
    Data(Result<Box<Snapshot>, String>),
    Done(String),
    Planned(String, Result<serde_json::Value, String>),
}

/// The run a view started (`operator run --tui`), watched by it.
pub struct Owned {
    pub pid: u32,
    /// Its exit code once it has ended.
    pub ended: tokio::sync::watch::Receiver<Option<i32>>,
}

/// How the view ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The user quit (or a signal ended the view); a run it started goes on.
    Quit,
    /// The user asked the run it started to stop; the stop was sent.
    StopRun,
}

/// Runs the view until the user quits, SIGTERM/SIGHUP arrives or the terminal closes.
pub async fn run(target: Target, opts: Options, own: Option<Owned>) -> Result<Outcome, TuiError> {
    let client = Client::new(target.clone());
    let _screen = Screenful::enter()?;
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    // No `Terminal::clear`: it asks the terminal where its cursor is, which not every terminal
    // answers (`script` with a pipe for input, some consoles); the alternate screen is cleared
    // on entry instead.
    let mut term = ratatui::Terminal::new(backend)?;
    let theme = view::Theme {
        colour: opts.colour,
    };

    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (link_tx, mut link_rx) = mpsc::channel(16);
    let (follow_tx, follow_rx) = tokio::sync::watch::channel(None::<String>);
    let ws = tokio::spawn(client.clone().follow(ev_tx, link_tx, follow_rx));
    let (msg_tx, mut msg_rx) = mpsc::channel::<Msg>(64);
    let mut keys = EventStream::new();
    // SIGTERM, SIGHUP (the ssh session closed) and SIGINT end the view; looked at every frame.
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, ended.clone())?;
    }
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut s = State::default();
    let (own_pid, mut own_ended) = match own {
        Some(o) => (Some(o.pid), Some(o.ended)),
        None => (None, None),
    };
    s.own = own_pid.map(|pid| state::OwnRun { pid, ended: None });
    let mut dirty = true;
    // One read at a time, at most one every READ_GAP: a burst of events makes one read, not one
    // per event; a refresh asked for meanwhile runs after it.
    let mut reading = false;
    let mut wanted = true;
    // A read that events asked for, held to EVENT_READ_GAP.
    let mut wanted_by_events = false;
    let mut last_read: Option<tokio::time::Instant> = None;
    let read = |s: &State, tx: &mpsc::Sender<Msg>| {
        let screen = s.screen.clone();
        let first = matches!(s.screen, Screen::Chain(_)) && s.detail.is_none();
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let r = client.snapshot(&screen, first).await.map(Box::new);
            let _ = tx.send(Msg::Data(r)).await;
        });
    };

    loop {
        let mut actions = Vec::new();
        tokio::select! {
            k = keys.next() => match k {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                    debug_panic(&k);
                    actions = s.key(k);
                    if !actions.is_empty() || matches!(k.code, crossterm::event::KeyCode::Char(_)) {
                        s.message = s.message.take().filter(|_| actions.is_empty() && s.confirm.is_none());
                    }
                    dirty = true;
                }
                Some(Ok(Event::Resize(_, _))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            Some(ev) = ev_rx.recv() => {
                actions = s.event(&ev);
                let before = actions.len();
                actions.retain(|a| *a != Action::Refresh);
                wanted_by_events |= actions.len() != before;
                dirty = true;
            }
            Some(link) = link_rx.recv() => {
                if link == Link::Up {
                    actions.push(Action::Refresh);
                }
                s.link = link;
                dirty = true;
            }
            Some(m) = msg_rx.recv() => {
                match m {
                    Msg::Data(Ok(snap)) => {
                        reading = false;
                        let snap = *snap;
                        s.set_chains(snap.chains);
                        s.status = Some(snap.status);
                        s.fleet = snap.fleet;
                        if let (Screen::Chain(id), Some((c, p))) = (&s.screen, snap.detail)
                            && &c.id == id
                        {
                            if let Some(list) = snap.decisions.filter(|_| s.detail.is_none()) {
                                for e in list {
                                    s.decision(e["sessionIndex"].as_u64().unwrap_or(0), &e["data"]);
                                }
                            }
                            s.detail = Some(c);
                            s.pending = p;
                            s.handoff = snap.handoff;
                        }
                        if s.screen == Screen::Costs {
                            s.costs = snap.costs;
                        }
                        if let (Screen::Missions, Some(m)) = (&s.screen, snap.missions) {
                            s.missions = m;
                            s.mission_selected = s.mission_selected.min(s.missions.len().saturating_sub(1));
                        }
                    }
                    Msg::Data(Err(why)) => {
                        reading = false;
                        s.message = Some(format!("could not read: {why}"));
                    }
                    Msg::Done(m) => {
                        s.message = Some(m);
                        actions.push(Action::Refresh);
                    }
                    Msg::Planned(mission, Ok(plan)) => s.planned(&mission, &plan),
                    Msg::Planned(mission, Err(e)) => {
                        s.message = Some(format!("{mission} cannot start: {e}"));
                    }
                }
                dirty = true;
            }
            code = async {
                match own_ended.as_mut() {
                    Some(rx) => rx.wait_for(Option::is_some).await.ok().and_then(|c| *c),
                    None => std::future::pending().await,
                }
            }, if own_ended.is_some() => {
                own_ended = None;
                if let (Some(o), Some(code)) = (s.own.as_mut(), code) {
                    o.ended = Some(code);
                    s.message = Some(format!("the run ended (exit code {code}); q quits"));
                }
                dirty = true;
            }
            _ = poll.tick() => actions.push(Action::Refresh),
            _ = frame.tick() => {
                if ended.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let since = last_read.map(|t| t.elapsed());
                let due = since.is_none_or(|t| t >= READ_GAP);
                let due_events = since.is_none_or(|t| t >= EVENT_READ_GAP);
                if !reading && ((wanted && due) || (wanted_by_events && due_events)) {
                    wanted = false;
                    wanted_by_events = false;
                    reading = true;
                    last_read = Some(tokio::time::Instant::now());
                    read(&s, &msg_tx);
                }
                if dirty {
                    let now = now_s();
                    term.draw(|f| view::draw(f, &s, theme, now))?;
                    dirty = false;
                }
            }
        }
        let open = match &s.screen {
            Screen::Chain(id) => Some(id.clone()),
            _ => None,
        };
        if *follow_tx.borrow() != open {
            let _ = follow_tx.send(open);
        }
        for a in actions {
            match a {
                Action::Quit => {
                    ws.abort();
                    return Ok(Outcome::Quit);
                }
                Action::StopRun => {
                    ws.abort();
                    if let Err(e) = client.post("/api/orchestrator/stop", json!({})).await {
                        tracing::debug!(cause = %e, "the stop was not acknowledged");
                    }
                    return Ok(Outcome::StopRun);
                }
                Action::Refresh => wanted = true,
                Action::Plan(mission) => {
                    let (client, tx) = (client.clone(), msg_tx.clone());
                    tokio::spawn(async move {
                        let plan = client.plan(&mission).await;
                        let _ = tx.send(Msg::Planned(mission, plan)).await;
                    });
                }
                Action::Browse(id) => {
                    let url = format!("{}/chains/{id}", target.url.trim_end_matches('/'));
                    s.message = Some(
                        if crate::model::is_valid_chain_id(&id) && open_in_browser(&url) {
                            format!("opened {url} in your browser")
                        } else {
                            url
                        },
                    );
                }
                other => act(&client, other, &msg_tx),
            }
        }
    }
    ws.abort();
    Ok(Outcome::Quit)
}

/// Carries out a write in the background; its outcome goes to the status line.
fn act(client: &Client, a: Action, tx: &mpsc::Sender<Msg>) {
    let (path, body, done) = match a {
        Action::Pause { now } => (
            "/api/orchestrator/pause".to_string(),
            json!({"now": now}),
            if now {
                "paused now: running sessions hand off"
            } else {
                "paused: no new session starts"
            },
        ),
        Action::Resume => ("/api/orchestrator/resume".into(), json!({}), "resumed"),
        Action::Stop => ("/api/orchestrator/stop".into(), json!({}), "stopping"),
        Action::Kill(id) => (format!("/api/chains/{id}/abort"), json!({}), "killed"),
        Action::ResumeChain(id) => (format!("/api/chains/{id}/resume"), json!({}), "resumed"),
        Action::Approve { chain, approval } => (
            format!("/api/chains/{chain}/approvals/{approval}"),
            json!({"decision": "approve"}),
            "approved",
        ),
        Action::Deny { chain, approval } => (
            format!("/api/chains/{chain}/approvals/{approval}"),
            json!({"decision": "deny", "message": "denied from the terminal view"}),
            "denied",
        ),
        Action::Start(mission) => (
            "/api/orchestrator/start".to_string(),
            json!({"mission": mission}),
            "started",
        ),
        Action::Refresh | Action::Browse(_) | Action::Plan(_) | Action::Quit | Action::StopRun => {
            return;
        }
    };
    let (client, tx) = (client.clone(), tx.clone());
    tokio::spawn(async move {
        let m = match client.post(&path, body).await {
            Ok(()) => done.to_string(),
            Err(e) => format!("refused: {e}"),
        };
        let _ = tx.send(Msg::Done(m)).await;
    });
}

/// Opens `url` in the desktop's browser when the view runs on a desktop (a display, no ssh);
/// whether it did. Over ssh the URL is only shown: a browser there would open on the far machine.
fn open_in_browser(url: &str) -> bool {
    let var = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let desktop = (var("DISPLAY") || var("WAYLAND_DISPLAY") || cfg!(target_os = "macos"))
        && !var("SSH_CONNECTION")
        && !var("SSH_TTY");
    if !desktop {
        return false;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match tokio::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            true
        }
        Err(_) => false,
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Debug builds panic on `F12` when `OPERATOR_TUI_PANIC` is set: the tests check that the
/// terminal is given back.
fn debug_panic(k: &crossterm::event::KeyEvent) {
    if cfg!(debug_assertions)
        && k.code == crossterm::event::KeyCode::F(12)
        && std::env::var_os("OPERATOR_TUI_PANIC").is_some()
    {
        panic!("a panic injected for the tests (OPERATOR_TUI_PANIC)");
    }
}
