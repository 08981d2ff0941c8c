//! Draws the state (ratatui): the chains table, a chain's sessions and live output, the help, a
//! question to confirm, the link's state and a key line. Narrow terminals truncate, never wrap.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState};

use super::state::{Link, Pane, Screen, State};
use crate::model::{ChainRecord, ChainStatus};

/// Colours, or none (`NO_COLOR`, a dumb terminal): then emphasis only.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub colour: bool,
}

impl Theme {
    fn status(self, s: ChainStatus) -> Style {
        if !self.colour {
            return Style::default();
        }
        use ratatui::style::Color::*;
        Style::default().fg(match s {
            ChainStatus::Running => Cyan,
            ChainStatus::Complete | ChainStatus::AssumedComplete => Green,
            ChainStatus::Failed
            | ChainStatus::BudgetExceeded
            | ChainStatus::Aborted
            | ChainStatus::MergeFailed
            | ChainStatus::ChecksTimeout => Red,
            ChainStatus::AwaitingApproval
            | ChainStatus::AwaitingChecks
            | ChainStatus::Merging
            | ChainStatus::Paused
            | ChainStatus::Waiting => Yellow,
            _ => Reset,
        })
    }

    fn alert(self) -> Style {
        if self.colour {
            Style::default().fg(ratatui::style::Color::Red).bold()
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
}

/// The whole screen.
pub fn draw(f: &mut Frame, s: &State, theme: Theme, now_s: i64) {
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(header(s, theme)), top);
    match &s.screen {
        Screen::Chains => chains(f, body, s, theme, now_s),
        Screen::Chain(id) => chain(f, body, s, id, theme),
        Screen::Costs => costs(f, body, s),
        Screen::Fleet => fleet(f, body, s, theme),
        Screen::Missions => missions(f, body, s),
    }
    f.render_widget(Paragraph::new(footer(s)), bottom);
    if s.help {
        help(f, body);
    }
    if let Some(c) = &s.confirm {
        let width = (c.question.chars().count() as u16 + 4).clamp(40, body.width.max(40));
        let area = centered(body, width, 3);
        f.render_widget(Clear, area);
        f.render_widget(
            Paragraph::new(c.question.as_str())
                .style(theme.alert())
                .block(Block::default().borders(Borders::ALL)),
            area,
        );
    }
}

fn header(s: &State, theme: Theme) -> Line<'static> {
    let mut spans = vec![Span::from(" operator ").bold()];
    match &s.link {
        Link::Up => {
            if let Some(st) = &s.status {
                spans.push(Span::from(format!(
                    "· {} · {} running · {} queued",
                    st.mode,
                    st.running.len(),
                    st.queued.len()
                )));
            }
        }
        Link::Connecting => spans.push(Span::from("· connecting…")),
        Link::Down { why, retry_s } => spans.push(Span::styled(
            format!("· DISCONNECTED ({why}) · retrying in {retry_s}s"),
            theme.alert(),
        )),
    }
    Line::from(spans)
}

fn footer(s: &State) -> Line<'static> {
    if s.filtering {
        return Line::from(format!(
            " filter: {}▏ (Enter keeps it, Esc clears it)",
            s.filter
        ));
    }
    if let Some(m) = &s.message {
        return Line::from(format!(" {m}"));
    }
    let keys = match s.screen {
        Screen::Chains => {
            " ? help · q quit · Enter open · / filter · s sort · m missions · c costs · f fleet · p pause/resume · x kill · S stop"
        }
        Screen::Missions => {
            " ? help · q quit · Esc back · ↑↓ select · Enter: its plan, then y starts it"
        }
        Screen::Costs | Screen::Fleet => {
            " ? help · q quit · Esc back · c costs · f fleet · p pause/resume · P pause now · S stop · r read again"
        }
        Screen::Chain(_) => {
            " ? help · q quit · Esc back · h handoff/output · a approve · d deny · x kill · R resume · p pause/resume · S stop"
        }
    };
    Line::from(keys)
}

fn age(started_at: &str, now_s: i64) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(started_at) else {
        return "-".into();
    };
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| now_s - d.as_secs() as i64)
        .unwrap_or(0)
        .max(0);
    match since {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn sessions_of(c: &ChainRecord) -> String {
    let max = c.config["max_continuations"]
        .as_u64()
        .map(|m| (m + 1).to_string())
        .unwrap_or_else(|| "?".into());
    format!("{}/{max}", c.totals.sessions)
}

fn chains(f: &mut Frame, area: Rect, s: &State, theme: Theme, now_s: i64) {
    let list = s.visible();
    let rows: Vec<Row> = list
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(c.id.clone()),
                Cell::from(c.name.clone()),
                Cell::from(c.status.as_str()).style(theme.status(c.status)),
                Cell::from(sessions_of(c)),
                Cell::from(c.totals.turns.to_string()),
                Cell::from(format!("${:.2}", c.totals.cost_usd)),
                Cell::from(s.worker_of(&c.id).unwrap_or("-").to_string()),
                Cell::from(age(&c.started_at, now_s)),
            ])
        })
        .collect();
    let title = format!(
        " chains ({} of {}) · sort: {}{} ",
        list.len(),
        s.chains.len(),
        s.sort.label(),
        if s.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter: {}", s.filter)
        }
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(19),
            Constraint::Min(8),
            Constraint::Length(17),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(4),
        ],
    )
    .header(
        Row::new([
            "CHAIN", "NAME", "STATE", "SESS", "TURNS", "COST", "WORKER", "AGE",
        ])
        .add_modifier(Modifier::BOLD),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::TOP).title(title));
    let mut ts = TableState::default().with_selected(Some(s.selected));
    f.render_stateful_widget(table, area, &mut ts);
}

fn chain(f: &mut Frame, area: Rect, s: &State, id: &str, theme: Theme) {
    let Some(c) = &s.detail else {
        f.render_widget(Paragraph::new(format!(" loading {id}…")), area);
        return;
    };
    let sessions = c.sessions.len().min(8) as u16;
    let pending = if s.pending.is_empty() {
        0
    } else {
        2 + s.pending.len().min(3) as u16
    };
    let decided = if s.decisions.is_empty() {
        0
    } else {
        1 + s.decisions.len().min(3) as u16
    };
    let [info, table, held, decisions, out] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(sessions + 2),
        Constraint::Length(pending),
        Constraint::Length(decided),
        Constraint::Min(3),
    ])
    .areas(area);
    let reason = c
        .reason
        .as_deref()
        .map(|r| format!(" · {r}"))
        .unwrap_or_default();
    f.render_widget(
        Paragraph::new(vec![
            Line::from(vec![
                Span::from(format!(" {} ", c.id)).bold(),
                Span::styled(c.status.as_str().to_string(), theme.status(c.status)),
                Span::from(format!(
                    " · {} sessions · {} turns · ${:.2}{reason}",
                    sessions_of(c),
                    c.totals.turns,
                    c.totals.cost_usd
                )),
            ]),
            Line::from(format!(
                " {}",
                crate::progress::printable(&c.task).replace('\n', " ")
            )),
        ]),
        info,
    );
    let rows: Vec<Row> = c
        .sessions
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(|x| {
            let handoff = match (x.handoff_complete, x.handoff_synthetic, &x.handoff_file) {
                (true, _, _) => "COMPLETE",
                (_, true, _) => "synthetic",
                (_, _, Some(_)) => "written",
                _ => "-",
            };
            Row::new(vec![
                Cell::from(x.index.to_string()),
                Cell::from(x.status.as_str()),
                Cell::from(x.turns.to_string()),
                Cell::from(format!("${:.2}", x.cost_usd)),
                Cell::from(format!("{:.0}s", x.duration_ms as f64 / 1000.0)),
                Cell::from(handoff),
                Cell::from(format!(
                    "{}{}",
                    if x.attempts > 1 {
                        format!("{} attempts ", x.attempts)
                    } else {
                        String::new()
                    },
                    x.error.as_deref().unwrap_or("")
                )),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(4),
                Constraint::Length(12),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(10),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["#", "SESSION", "TURNS", "COST", "TIME", "HANDOFF", "ERRORS"])
                .add_modifier(Modifier::BOLD),
        )
        .block(Block::default().borders(Borders::TOP).title(" sessions ")),
        table,
    );
    if !s.pending.is_empty() {
        let lines: Vec<Line> = s
            .pending
            .iter()
            .take(3)
            .map(|p| Line::from(format!(" {} {}", p.id, p.summary)))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" waiting for a person: a approves, d denies the first ")
                    .style(theme.alert()),
            ),
            held,
        );
    }
    if !s.decisions.is_empty() {
        let lines: Vec<Line> = s
            .decisions
            .iter()
            .skip(s.decisions.len().saturating_sub(3))
            .map(|l| Line::from(l.clone()))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" tool permissions "),
            ),
            decisions,
        );
    }
    let rows = out.height.saturating_sub(1) as usize;
    let (title, lines): (String, Vec<Line>) = match s.pane {
        Pane::Output => (
            " live output (h: last handoff) ".into(),
            s.output
                .iter()
                .skip(s.output.len().saturating_sub(rows))
                .map(|l| Line::from(l.clone()))
                .collect(),
        ),
        Pane::Handoff => match &s.handoff {
            Some(h) => (
                format!(
                    " handoff of session {}{} (h: live output) ",
                    h.index,
                    if h.synthetic { ", synthetic" } else { "" }
                ),
                markdown(&h.text),
            ),
            None => (" no handoff yet (h: live output) ".into(), Vec::new()),
        },
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)),
        out,
    );
}

/// A handoff's markdown for the terminal: headings bold, the rest as written (escaped).
fn markdown(text: &str) -> Vec<Line<'static>> {
    crate::progress::printable(&text.replace('\t', "    "))
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with('#') {
                Line::from(Span::from(t.trim_start_matches('#').trim().to_string()).bold())
            } else {
                Line::from(l.to_string())
            }
        })
        .collect()
}

fn costs(f: &mut Frame, area: Rect, s: &State) {
    let Some(r) = &s.costs else {
        f.render_widget(Paragraph::new(" reading the costs…"), area);
        return;
    };
    let line = |name: &str, l: &crate::store::CostLine| {
        Line::from(format!(
            " {name:<14} ${:>10.4} {:>7} sessions",
            l.cost_usd, l.sessions
        ))
    };
    let mut lines = vec![
        Line::from(" spent").bold(),
        line("today (UTC)", &r.today),
        line("last hour", &r.last_hour),
        line("last 7 days", &r.week),
        line("all time", &r.all_time),
        Line::from(""),
        Line::from(" forecast").bold(),
    ];
    lines.extend(
        r.forecast(r.daily_cap_usd)
            .into_iter()
            .map(|l| Line::from(format!(" {l}"))),
    );
    lines.push(Line::from(""));
    lines.push(Line::from(" per model").bold());
    for m in r.by_model.iter().take(5) {
        lines.push(line(&crate::progress::truncate(&m.model, 14), &m.cost));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(" most expensive chains").bold());
    for c in r.by_chain.iter().take(5) {
        lines.push(Line::from(format!(
            " {:<19} {:<16} ${:>10.4}",
            c.chain_id,
            c.status.as_str(),
            c.cost.cost_usd
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(" costs ")),
        area,
    );
}

fn missions(f: &mut Frame, area: Rect, s: &State) {
    let rows: Vec<Row> = s
        .missions
        .iter()
        .map(|m| {
            Row::new(vec![
                Cell::from(m.name.clone()),
                Cell::from(m.chains.to_string()),
                Cell::from(if m.readable {
                    m.note.clone()
                } else {
                    format!("cannot be read: {}", m.note)
                }),
            ])
        })
        .collect();
    let title = if s.missions.is_empty() {
        " missions: none in the missions folder (operator init writes one) "
    } else {
        " missions "
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(["MISSION", "CHAINS", "ABOUT"]).add_modifier(Modifier::BOLD))
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::TOP).title(title));
    let mut ts = TableState::default().with_selected(Some(s.mission_selected));
    f.render_stateful_widget(table, area, &mut ts);
}

fn fleet(f: &mut Frame, area: Rect, s: &State, theme: Theme) {
    let block = Block::default().borders(Borders::TOP).title(" fleet ");
    if !s.fleet.shared {
        f.render_widget(
            Paragraph::new(
                " This operator's store is its own (SQLite): no workers share it. A fleet shares a PostgreSQL store (docs/fleet.md).",
            )
            .block(block),
            area,
        );
        return;
    }
    let rows: Vec<Row> = s
        .fleet
        .workers
        .iter()
        .map(|w| {
            let silent = if w.silent_secs > 30.0 {
                theme.alert()
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(w.id.clone()),
                Cell::from(w.host.clone()),
                Cell::from(w.pid.to_string()),
                Cell::from(format!("{}/{}", w.load, w.capacity)),
                Cell::from(format!("{:.0}s ago", w.silent_secs)).style(silent),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(16),
                Constraint::Length(16),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(11),
            ],
        )
        .header(
            Row::new(["WORKER", "HOST", "PID", "LOAD", "HEARTBEAT"]).add_modifier(Modifier::BOLD),
        )
        .block(block),
        area,
    );
}

fn help(f: &mut Frame, body: Rect) {
    let text = [
        "Chains screen",
        "  ↑/↓ j/k  select          Enter  open the chain",
        "  /        filter          s      sort: newest, state, cost, name",
        "Everywhere",
        "  c   costs: today, burn rate, the cap      f  fleet: workers and heartbeats",
        "  m   missions: Enter shows one's plan (a dry run), y starts it",
        "  h   (a chain) its last handoff / its live output",
        "  p   pause (no new session) / resume       P  pause now (sessions hand off)",
        "  x   kill the chain (asks first)           S  stop the operator (asks first)",
        "  R   resume the chain from its last handoff (asks first)",
        "  a/d approve / deny the held tool call     o  the chain's dashboard URL",
        "  r   read everything again                 q  quit (the operator goes on)",
        "",
        "Any key closes this help.",
    ];
    let area = centered(body, 78, text.len() as u16 + 2);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(text.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::default().borders(Borders::ALL).title(" keys ")),
        area,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(s: &State, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, s, Theme { colour: false }, 0)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn chain(id: &str) -> ChainRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": "refactor", "mission": null, "task": "Split the parser",
            "status": "running", "reason": null, "startedAt": "2026-12-02T10:00:00Z",
            "updatedAt": "2026-12-02T10:00:00Z", "config": {"max_continuations": 5},
            "sessions": [], "totals": {"sessions": 2, "turns": 7, "costUsd": 0.42, "durationMs": 0},
            "archived": false
        }))
        .unwrap()
    }

    #[test]
    fn every_row_is_readable_at_80_by_24() {
        let mut s = State {
            link: Link::Up,
            ..Default::default()
        };
        s.set_chains(
            (0..30)
                .map(|i| chain(&format!("c-20261202-{i:06}")))
                .collect(),
        );
        let text = screen(&s, 80, 24);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24);
        assert!(
            lines[2].contains("CHAIN") && lines[2].contains("STATE"),
            "{text}"
        );
        assert!(
            lines[3].contains("c-20261202-000") && lines[3].contains("running"),
            "{text}"
        );
        assert!(
            lines[3].contains("2/6") && lines[3].contains("$0.42"),
            "{text}"
        );
        assert!(lines[23].contains("? help · q quit"), "{text}");
    }

    #[test]
    fn a_lost_link_is_shown() {
        let s = State {
            link: Link::Down {
                why: "connection refused".into(),
                retry_s: 4,
            },
            ..Default::default()
        };
        let text = screen(&s, 80, 24);
        assert!(
            text.lines().next().unwrap().contains("DISCONNECTED"),
            "{text}"
        );
    }
}
