//! The view's state as a plain value: what the API said, what the user chose, and the keys and
//! events that change it. No I/O: keys and events go in, the actions to carry out come out.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::api::OperatorStatus;
use crate::model::ChainRecord;

/// Lines of a chain's live output kept (older ones are dropped: memory stays bounded whatever
/// the agent prints).
pub const OUTPUT_LINES: usize = 500;
/// Characters of one output line kept.
pub const LINE_CHARS: usize = 400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Chains,
    Chain(String),
    /// Spending today, the burn rate and the daily cap's forecast.
    Costs,
    /// The workers sharing the store.
    Fleet,
    /// The missions folder, to start one.
    Missions,
}

/// A mission file the operator can start (`GET /api/missions`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mission {
    pub name: String,
    pub chains: u64,
    /// Its description, or why it cannot be read.
    pub note: String,
    pub readable: bool,
}

/// What the lower part of the chain screen shows (`h` switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Output,
    Handoff,
}

/// Permission decisions kept for the open chain.
pub const DECISIONS: usize = 50;

/// The order of the chains screen (`s` cycles through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Newest,
    State,
    Cost,
    Name,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Newest => Sort::State,
            Sort::State => Sort::Cost,
            Sort::Cost => Sort::Name,
            Sort::Name => Sort::Newest,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Newest => "newest",
            Sort::State => "state",
            Sort::Cost => "cost",
            Sort::Name => "name",
        }
    }
}

/// Whether the view reaches the operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Connecting,
    Up,
    /// Down since the last attempt failed with `why`; the next one in `retry_s` seconds.
    Down {
        why: String,
        retry_s: u64,
    },
}

/// What the loop must do for the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the chains (and the open chain) again.
    Refresh,
    Pause {
        now: bool,
    },
    Resume,
    Stop,
    Kill(String),
    /// Run an ended or interrupted chain again from its last handoff.
    ResumeChain(String),
    Approve {
        chain: String,
        approval: String,
    },
    Deny {
        chain: String,
        approval: String,
    },
    /// Show the chain's dashboard URL (and open it when a browser is at hand).
    Browse(String),
    /// Ask the operator for a mission's plan (a dry run), to confirm it.
    Plan(String),
    /// Start a mission whose plan was confirmed.
    Start(String),
    /// Stop the run this view started, then quit (`operator run --tui`).
    StopRun,
    Quit,
}

/// A question the user must answer with `yes` (`y`, mostly) before `action` is carried out;
/// `other` is a second answer (a key and its action) when the question has two. Any other key
/// cancels.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirm {
    pub question: String,
    pub yes: char,
    pub action: Action,
    pub other: Option<(char, Action)>,
}

impl Confirm {
    fn yes(question: String, action: Action) -> Self {
        Self {
            question,
            yes: 'y',
            action,
            other: None,
        }
    }
}

/// The run this view started (`operator run --tui`): quitting asks what becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnRun {
    pub pid: u32,
    /// Its exit code once it has ended on its own.
    pub ended: Option<i32>,
}

/// A tool call a chain holds for a person.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: String,
    pub summary: String,
}

#[derive(Debug, Clone)]
pub struct State {
    pub chains: Vec<ChainRecord>,
    pub status: Option<OperatorStatus>,
    pub screen: Screen,
    pub selected: usize,
    pub sort: Sort,
    pub filter: String,
    /// `/` was pressed: keys go to the filter until Enter or Esc.
    pub filtering: bool,
    pub help: bool,
    pub confirm: Option<Confirm>,
    /// The open chain, with its sessions.
    pub detail: Option<ChainRecord>,
    /// The open chain's held tool calls.
    pub pending: Vec<Pending>,
    /// The open chain's live output, newest last.
    pub output: VecDeque<String>,
    pub link: Link,
    /// The last thing done or refused, for the status line.
    pub message: Option<String>,
    /// The workers sharing the store, and which holds each chain (a fleet's).
    pub fleet: crate::store::Fleet,
    /// The cost report, while the costs screen is open.
    pub costs: Option<crate::store::CostReport>,
    /// The open chain's last handoff.
    pub handoff: Option<crate::model::HandoffRecord>,
    /// The open chain's tool-permission decisions, newest last.
    pub decisions: VecDeque<String>,
    pub pane: Pane,
    /// The missions folder, while the missions screen is open.
    pub missions: Vec<Mission>,
    pub mission_selected: usize,
    /// The run this view started, if it did.
    pub own: Option<OwnRun>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            chains: Vec::new(),
            status: None,
            screen: Screen::Chains,
            selected: 0,
            sort: Sort::Newest,
            filter: String::new(),
            filtering: false,
            help: false,
            confirm: None,
            detail: None,
            pending: Vec::new(),
            output: VecDeque::new(),
            link: Link::Connecting,
            message: None,
            fleet: Default::default(),
            costs: None,
            handoff: None,
            decisions: VecDeque::new(),
            pane: Pane::Output,
            missions: Vec::new(),
            mission_selected: 0,
            own: None,
        }
    }
}

impl State {
    /// The chains the screen lists: filtered (id, name, task, state) and sorted.
    pub fn visible(&self) -> Vec<&ChainRecord> {
        let f = self.filter.to_lowercase();
        let mut out: Vec<&ChainRecord> = self
            .chains
            .iter()
            .filter(|c| {
                f.is_empty()
                    || [&c.id, &c.name, &c.task, &c.status.as_str().to_string()]
                        .iter()
                        .any(|s| s.to_lowercase().contains(&f))
            })
            .collect();
        match self.sort {
            Sort::Newest => out.sort_by(|a, b| b.started_at.cmp(&a.started_at)),
            Sort::State => out.sort_by_key(|c| (c.status.is_terminal(), c.status.as_str())),
            Sort::Cost => out.sort_by(|a, b| b.totals.cost_usd.total_cmp(&a.totals.cost_usd)),
            Sort::Name => out.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        out
    }

    /// The worker that holds a chain, in a fleet.
    pub fn worker_of(&self, chain: &str) -> Option<&str> {
        self.fleet
            .chains
            .iter()
            .find(|h| h.chain_id == chain)
            .map(|h| h.worker.as_str())
    }

    fn selected_id(&self) -> Option<String> {
        match &self.screen {
            Screen::Chain(id) => Some(id.clone()),
            Screen::Chains => self.visible().get(self.selected).map(|c| c.id.clone()),
            Screen::Costs | Screen::Fleet | Screen::Missions => None,
        }
    }

    /// The plan of a mission (a dry run's answer): asks whether to start it.
    pub fn planned(&mut self, mission: &str, plans: &serde_json::Value) {
        let chains: Vec<String> = plans
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["chains"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                let st = &c["settings"];
                format!(
                    "{} ({} {}, up to {} sessions, ${})",
                    c["name"].as_str().unwrap_or("?"),
                    st["agent"].as_str().unwrap_or("?"),
                    st["model"].as_str().unwrap_or("?"),
                    st["max_continuations"].as_u64().map_or(0, |n| n + 1),
                    st["max_budget_usd"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let question = format!(
            "Start {mission}: {} chain(s): {}? (y/N)",
            chains.len(),
            crate::progress::printable(&chains.join("; "))
        );
        self.confirm = Some(Confirm::yes(question, Action::Start(mission.to_string())));
    }

    /// A permission decision of the open chain (`session:permission`'s data).
    pub fn decision(&mut self, index: u64, data: &serde_json::Value) {
        let s = |k: &str| data[k].as_str().unwrap_or_default();
        let line = format!(
            "[{index}] {:<5} {} {} ({})",
            s("decision"),
            s("tool"),
            s("input"),
            s("rule")
        );
        keep(&mut self.decisions, &line, DECISIONS);
    }

    /// The chains as read from the API; the selection stays in range.
    pub fn set_chains(&mut self, chains: Vec<ChainRecord>) {
        self.chains = chains;
        let n = self.visible().len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    /// A key pressed; what to do about it.
    pub fn key(&mut self, k: KeyEvent) -> Vec<Action> {
        let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
        if let Some(c) = self.confirm.take() {
            return match k.code {
                _ if ctrl_c => vec![Action::Quit],
                KeyCode::Char(ch) if ch.to_ascii_lowercase() == c.yes => vec![c.action],
                KeyCode::Char(ch) if c.other.as_ref().is_some_and(|(o, _)| *o == ch) => {
                    c.other.map(|(_, a)| a).into_iter().collect()
                }
                _ => {
                    self.message = Some("cancelled".into());
                    Vec::new()
                }
            };
        }
        if ctrl_c {
            return self.quit();
        }
        if self.filtering {
            match k.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if self.filter.chars().count() < 40 => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return Vec::new();
        }
        if self.help {
            self.help = false;
            return Vec::new();
        }
        match k.code {
            KeyCode::Char('q') => return self.quit(),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('/') if self.screen == Screen::Chains => self.filtering = true,
            KeyCode::Char('s') if self.screen == Screen::Chains => {
                self.sort = self.sort.next();
                self.selected = 0;
            }
            KeyCode::Down | KeyCode::Char('j')
                if self.screen == Screen::Missions
                    && self.mission_selected + 1 < self.missions.len() =>
            {
                self.mission_selected += 1;
            }
            KeyCode::Down | KeyCode::Char('j') if self.screen == Screen::Missions => {}
            KeyCode::Up | KeyCode::Char('k') if self.screen == Screen::Missions => {
                self.mission_selected = self.mission_selected.saturating_sub(1);
            }
            KeyCode::Enter if self.screen == Screen::Missions => {
                match self.missions.get(self.mission_selected) {
                    Some(m) if m.readable => return vec![Action::Plan(m.name.clone())],
                    Some(m) => {
                        self.message = Some(format!("{} cannot be started: {}", m.name, m.note))
                    }
                    None => {}
                }
            }
            KeyCode::Char('m') if self.screen != Screen::Missions => {
                self.screen = Screen::Missions;
                self.mission_selected = 0;
                return vec![Action::Refresh];
            }
            KeyCode::Down | KeyCode::Char('j') => {
                let n = self.visible().len();
                if self.selected + 1 < n {
                    self.selected += 1;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Enter => {
                if let Some(id) = self.selected_id()
                    && self.screen == Screen::Chains
                {
                    self.open(id);
                    return vec![Action::Refresh];
                }
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left if self.screen != Screen::Chains => {
                self.screen = Screen::Chains;
                self.detail = None;
                self.handoff = None;
                self.pending.clear();
                self.output.clear();
                self.decisions.clear();
            }
            KeyCode::Char('c') if self.screen != Screen::Costs => {
                self.screen = Screen::Costs;
                return vec![Action::Refresh];
            }
            KeyCode::Char('f') if self.screen != Screen::Fleet => {
                self.screen = Screen::Fleet;
                return vec![Action::Refresh];
            }
            KeyCode::Char('h') if matches!(self.screen, Screen::Chain(_)) => {
                self.pane = match self.pane {
                    Pane::Output => Pane::Handoff,
                    Pane::Handoff => Pane::Output,
                };
            }
            KeyCode::Char('p') => {
                let paused = self
                    .status
                    .as_ref()
                    .is_some_and(|s| s.mode.starts_with("paused"));
                return vec![if paused {
                    Action::Resume
                } else {
                    Action::Pause { now: false }
                }];
            }
            KeyCode::Char('P') => return vec![Action::Pause { now: true }],
            KeyCode::Char('S') => {
                self.confirm = Some(Confirm::yes(
                    "Stop the operator? Running sessions write their handoffs (y/N)".into(),
                    Action::Stop,
                ));
            }
            KeyCode::Char('x') => {
                if let Some(id) = self.selected_id() {
                    self.confirm = Some(Confirm::yes(
                        format!("Kill chain {id}? Its agent is stopped now (y/N)"),
                        Action::Kill(id),
                    ));
                }
            }
            KeyCode::Char('R') => {
                if let Some(id) = self.selected_id() {
                    self.confirm = Some(Confirm::yes(
                        format!("Resume chain {id}? It runs again from its last handoff (y/N)"),
                        Action::ResumeChain(id),
                    ));
                }
            }
            KeyCode::Char('a') | KeyCode::Char('d') => {
                if let (Screen::Chain(chain), Some(p)) = (&self.screen, self.pending.first()) {
                    let (chain, approval) = (chain.clone(), p.id.clone());
                    return vec![if k.code == KeyCode::Char('a') {
                        Action::Approve { chain, approval }
                    } else {
                        Action::Deny { chain, approval }
                    }];
                }
                self.message = Some("no tool call is waiting for an answer".into());
            }
            KeyCode::Char('o') => {
                if let Some(id) = self.selected_id() {
                    return vec![Action::Browse(id)];
                }
            }
            KeyCode::Char('r') => return vec![Action::Refresh],
            _ => {}
        }
        Vec::new()
    }

    /// `q` or Ctrl-C: quits at once, unless the view started a run that still goes on — then it
    /// asks whether to stop the run or leave it running.
    fn quit(&mut self) -> Vec<Action> {
        match self.own {
            Some(OwnRun { pid, ended: None }) => {
                self.confirm = Some(Confirm {
                    question: format!(
                        "Quit: s stops the run · l leaves it running (pid {pid}) · Esc stays"
                    ),
                    yes: 's',
                    action: Action::StopRun,
                    other: Some(('l', Action::Quit)),
                });
                Vec::new()
            }
            _ => vec![Action::Quit],
        }
    }

    fn open(&mut self, id: String) {
        self.screen = Screen::Chain(id);
        self.detail = None;
        self.handoff = None;
        self.pending.clear();
        self.output.clear();
        self.decisions.clear();
        self.pane = Pane::Output;
    }

    /// An event from the operator's WebSocket; `Refresh` when the lists changed.
    pub fn event(&mut self, ev: &serde_json::Value) -> Vec<Action> {
        let kind = ev["kind"].as_str().unwrap_or_default();
        if kind == "session:output" {
            let open = matches!(&self.screen, Screen::Chain(id) if ev["chainId"] == id.as_str());
            if let (true, Some(text)) = (open, ev["data"]["text"].as_str()) {
                let index = ev["sessionIndex"].as_u64().unwrap_or(0);
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    self.push_output(format!("[{index}] {line}"));
                }
            }
            return Vec::new();
        }
        if kind == "session:permission" {
            if matches!(&self.screen, Screen::Chain(id) if ev["chainId"] == id.as_str()) {
                self.decision(ev["sessionIndex"].as_u64().unwrap_or(0), &ev["data"]);
            }
            return Vec::new();
        }
        if kind.starts_with("chain:") || kind.starts_with("orchestrator:") || kind == "lagged" {
            return vec![Action::Refresh];
        }
        Vec::new()
    }

    fn push_output(&mut self, line: String) {
        keep(&mut self.output, &line, OUTPUT_LINES);
    }
}

/// Appends `line` — control characters escaped, cut to [`LINE_CHARS`] — to a list that keeps
/// its newest `cap` lines.
fn keep(list: &mut VecDeque<String>, line: &str, cap: usize) {
    if list.len() == cap {
        list.pop_front();
    }
    list.push_back(
        crate::progress::printable(line)
            .chars()
            .take(LINE_CHARS)
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChainStatus, Totals};

    fn chain(id: &str, status: ChainStatus, cost: f64, started: &str) -> ChainRecord {
        ChainRecord {
            id: id.into(),
            name: format!("name-{id}"),
            mission: None,
            task: format!("task of {id}"),
            status,
            reason: None,
            started_at: started.into(),
            updated_at: started.into(),
            config: serde_json::Value::Null,
            sessions: vec![],
            totals: Totals {
                cost_usd: cost,
                ..Default::default()
            },
            archived: false,
            verify: vec![],
        }
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn state() -> State {
        let mut s = State::default();
        s.set_chains(vec![
            chain("c-1", ChainStatus::Complete, 0.5, "2026-12-01"),
            chain("c-2", ChainStatus::Running, 2.0, "2026-12-02"),
            chain("c-3", ChainStatus::Failed, 1.0, "2026-11-30"),
        ]);
        s
    }

    fn ids(s: &State) -> Vec<&str> {
        s.visible().iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn quitting_a_view_that_started_its_run_asks_what_becomes_of_it() {
        let mut s = state();
        assert_eq!(s.key(key(KeyCode::Char('q'))), [Action::Quit]);
        s.own = Some(OwnRun {
            pid: 42,
            ended: None,
        });
        assert!(s.key(key(KeyCode::Char('q'))).is_empty());
        assert!(s.confirm.as_ref().unwrap().question.contains("pid 42"));
        assert!(
            s.key(key(KeyCode::Char('y'))).is_empty(),
            "y is no answer here"
        );
        s.key(key(KeyCode::Char('q')));
        assert_eq!(s.key(key(KeyCode::Char('s'))), [Action::StopRun]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert!(s.key(ctrl_c).is_empty(), "Ctrl-C asks too");
        assert_eq!(s.key(key(KeyCode::Char('l'))), [Action::Quit]);
        s.own = Some(OwnRun {
            pid: 42,
            ended: Some(0),
        });
        assert_eq!(s.key(key(KeyCode::Char('q'))), [Action::Quit]);
    }

    #[test]
    fn sorts_cycle_and_the_filter_narrows_the_list() {
        let mut s = state();
        assert_eq!(ids(&s), ["c-2", "c-1", "c-3"]);
        s.key(key(KeyCode::Char('s')));
        assert_eq!(ids(&s), ["c-2", "c-1", "c-3"], "live chains first");
        s.key(key(KeyCode::Char('s')));
        assert_eq!(ids(&s), ["c-2", "c-3", "c-1"], "most expensive first");
        s.key(key(KeyCode::Char('/')));
        for c in "fail".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        s.key(key(KeyCode::Enter));
        assert_eq!(ids(&s), ["c-3"]);
        // `q` typed into the filter does not quit.
        s.key(key(KeyCode::Char('/')));
        assert!(s.key(key(KeyCode::Char('q'))).is_empty());
        s.key(key(KeyCode::Esc));
        assert_eq!(ids(&s).len(), 3);
    }

    #[test]
    fn kill_and_stop_need_a_yes() {
        let mut s = state();
        assert!(s.key(key(KeyCode::Char('x'))).is_empty());
        assert!(s.confirm.as_ref().unwrap().question.contains("c-2"));
        assert!(s.key(key(KeyCode::Char('n'))).is_empty());
        assert!(s.confirm.is_none());
        s.key(key(KeyCode::Char('x')));
        assert_eq!(s.key(key(KeyCode::Char('y'))), [Action::Kill("c-2".into())]);
        s.key(key(KeyCode::Char('S')));
        assert_eq!(s.key(key(KeyCode::Char('y'))), [Action::Stop]);
        s.key(key(KeyCode::Char('R')));
        assert_eq!(
            s.key(key(KeyCode::Char('y'))),
            [Action::ResumeChain("c-2".into())]
        );
    }

    #[test]
    fn pause_toggles_with_the_operators_mode() {
        let mut s = state();
        assert_eq!(
            s.key(key(KeyCode::Char('p'))),
            [Action::Pause { now: false }]
        );
        s.status = Some(OperatorStatus {
            mode: "paused".into(),
            running: vec![],
            queued: vec![],
            concurrency: Default::default(),
            pid: 1,
            stays: true,
            daily_cap_usd: None,
        });
        assert_eq!(s.key(key(KeyCode::Char('p'))), [Action::Resume]);
        assert_eq!(
            s.key(key(KeyCode::Char('P'))),
            [Action::Pause { now: true }]
        );
    }

    #[test]
    fn the_open_chains_output_is_kept_bounded_and_escaped() {
        let mut s = state();
        s.key(key(KeyCode::Enter));
        assert_eq!(s.screen, Screen::Chain("c-2".into()));
        let out = |chain: &str, text: &str| {
            serde_json::json!({"kind": "session:output", "chainId": chain, "sessionIndex": 2,
                "data": {"text": text}})
        };
        s.event(&out("c-1", "another chain"));
        assert!(s.output.is_empty());
        s.event(&out("c-2", "hello\x1b]0;title\x07"));
        assert_eq!(s.output.len(), 1);
        assert!(s.output[0].starts_with("[2] hello") && !s.output[0].contains('\x1b'));
        for i in 0..OUTPUT_LINES + 50 {
            s.event(&out("c-2", &format!("line {i} {}", "x".repeat(1000))));
        }
        assert_eq!(s.output.len(), OUTPUT_LINES);
        assert!(s.output.iter().all(|l| l.chars().count() <= LINE_CHARS));
        assert_eq!(
            s.event(&serde_json::json!({"kind": "chain:completed"})),
            [Action::Refresh]
        );
        s.key(key(KeyCode::Esc));
        assert_eq!(s.screen, Screen::Chains);
        assert!(s.output.is_empty() && s.decisions.is_empty());
        assert_eq!(s.key(key(KeyCode::Char('c'))), [Action::Refresh]);
        assert_eq!(s.screen, Screen::Costs);
        s.key(key(KeyCode::Char('f')));
        assert_eq!(s.screen, Screen::Fleet);
    }
}
