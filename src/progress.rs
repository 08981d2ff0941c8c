//! The terminal view: on a TTY, one live line per chain (state, session n/max, turns, cost, latest
//! activity) redrawn in place with indicatif; elsewhere the tracing log lines are the view.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Body, Bus, Event};

/// What the view shows of one chain.
#[derive(Debug, Clone, Default)]
pub struct Line {
    pub name: String,
    pub state: String,
    pub session: u32,
    pub max: u32,
    pub turns: u64,
    pub cost: f64,
    pub activity: String,
}

/// Renders a chain's line to fit `width` columns.
pub fn render(l: &Line, width: usize) -> String {
    let progress = if l.max == 0 {
        " -/- ".to_string()
    } else {
        format!("{:>2}/{:<2}", l.session, l.max)
    };
    let head = format!(
        "{:<14} {:<11} {progress} {:>4}t ${:>7.4}  ",
        truncate(&l.name, 14),
        truncate(&l.state, 11),
        l.turns,
        l.cost
    );
    let room = width.saturating_sub(head.chars().count() + 2);
    format!(
        "{head}{}",
        truncate(&l.activity.replace(['\n', '\r', '\t'], " "), room)
    )
}

/// `s` safe to print on a terminal: control characters other than newline and tab (an escape
/// sequence that sets the title or clears the screen, a NUL) are shown as `\u{1b}` instead of
/// acting. Task texts and handoffs are agent or user input.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `s` cut to `n` characters, with `…` when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else if n == 0 {
        String::new()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Applies an event to the chain's line.
pub fn apply(l: &mut Line, ev: &Event) {
    match &ev.body {
        Body::Started { .. } | Body::Resumed {} => l.state = "running".into(),
        Body::SessionStarted { max } => {
            l.state = "running".into();
            l.session = ev.session_index.unwrap_or(l.session);
            l.max = *max;
            l.activity = "starting the agent".into();
        }
        Body::Output { text, .. } => l.activity = text.clone(),
        Body::SessionComplete { session: s, .. } => {
            l.turns += u64::from(s.turns);
            l.cost += s.cost_usd;
            let handoff = if s.handoff_synthetic {
                "synthetic handoff"
            } else if s.handoff_complete {
                "COMPLETE handoff"
            } else {
                "handoff written"
            };
            l.activity = format!(
                "session {} {}, {handoff}",
                ev.session_index.unwrap_or(0),
                s.status.as_str()
            );
        }
        Body::ApprovalRequested {
            approval_id,
            tool,
            input,
            ..
        } => {
            l.state = "approval?".into();
            l.activity = format!(
                "waits for approval: {tool} `{input}` — operator approve|deny {} {approval_id}",
                ev.chain_id.as_deref().unwrap_or(""),
            );
        }
        Body::ApprovalAnswered {
            tool, status, by, ..
        } => {
            l.state = "running".into();
            l.activity = format!("{tool} {status}: {by}");
        }
        Body::Paused {} => l.state = "paused".into(),
        body => {
            if let Some((status, reason)) = body.ending() {
                l.state = status.as_str().into();
                if let Some(r) = reason {
                    l.activity = r.to_string();
                }
            }
        }
    }
}

/// Runs the live view until the bus closes or `stop` fires.
pub fn spawn(
    bus: &Bus,
    names: HashMap<String, String>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let style = ProgressStyle::with_template("{spinner:.cyan} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let width = || console_width().unwrap_or(80).clamp(40, 160);
        let mut bars: HashMap<String, (ProgressBar, Line)> = HashMap::new();
        let mut order: Vec<String> = names.keys().cloned().collect();
        order.sort();
        for id in &order {
            let pb = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
            pb.enable_steady_tick(Duration::from_millis(120));
            let line = Line {
                name: names[id].clone(),
                state: "queued".into(),
                ..Default::default()
            };
            pb.set_message(render(&line, width()));
            bars.insert(id.clone(), (pb, line));
        }
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = &mut stop => break,
            };
            match ev {
                Ok(ev) => {
                    let Some(id) = ev.chain_id.clone() else {
                        continue;
                    };
                    let Some((pb, line)) = bars.get_mut(&id) else {
                        continue;
                    };
                    apply(line, &ev);
                    pb.set_message(render(line, width()));
                    if ev.body.ending().is_some() {
                        pb.finish_with_message(render(line, width()));
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            }
        }
        for (pb, line) in bars.values() {
            if !pb.is_finished() {
                pb.finish_with_message(render(line, width()));
            }
        }
    })
}

fn console_width() -> Option<usize> {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChainStatus;

    fn ev(idx: Option<u32>, body: Body) -> Event {
        Event {
            id: None,
            chain_id: Some("c".into()),
            session_index: idx,
            body,
            at: String::new(),
        }
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(printable("plain\ntext\t!"), "plain\ntext\t!");
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b\u{1b}[2Jc\0"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2Jc\\u{0}"
        );
    }

    #[test]
    fn a_line_fits_80_columns() {
        let l = Line {
            name: "a-very-long-chain-name".into(),
            state: "running".into(),
            session: 3,
            max: 6,
            turns: 120,
            cost: 1.23456,
            activity: "x".repeat(200),
        };
        let r = render(&l, 80);
        assert!(r.chars().count() <= 80, "{}", r.chars().count());
        assert!(r.contains(" 3/6 "));
        assert!(r.contains("$ 1.2346"));
    }

    #[test]
    fn events_update_the_line() {
        let mut l = Line::default();
        apply(&mut l, &ev(Some(2), Body::SessionStarted { max: 6 }));
        assert_eq!((l.session, l.max), (2, 6));
        let output = Body::Output {
            text: "tool: Bash".into(),
            turns: 1,
        };
        apply(&mut l, &ev(Some(2), output));
        assert_eq!(l.activity, "tool: Bash");
        let session = serde_json::from_value(serde_json::json!({"index": 2, "sessionId": null,
            "status": "completed", "turns": 4, "costUsd": 0.5, "durationMs": 2000,
            "hitMaxTurns": false, "preCompacted": false, "handoffComplete": true,
            "handoffFile": null, "error": null, "errorKind": null, "handoffSynthetic": false,
            "askedAgain": false, "attempts": 1, "startedAt": "", "endedAt": null}))
        .unwrap();
        let complete = Body::SessionComplete {
            session,
            transcript_truncated: false,
        };
        apply(&mut l, &ev(Some(2), complete));
        assert_eq!(l.turns, 4);
        assert!(l.activity.contains("COMPLETE"));
        apply(&mut l, &ev(None, Body::ended(ChainStatus::Complete, None)));
        assert_eq!(l.state, "complete");
    }
}
