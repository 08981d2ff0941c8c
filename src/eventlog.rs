//! Per-chain log files: every event of a chain as one line in `<data_dir>/chains/<id>/chain.log`
//! (operator-wide events in `<data_dir>/operator.log`), secrets masked.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Body, Bus, Event};
use crate::redact::redact;

/// One log line for an event.
pub fn format(ev: &Event) -> String {
    let session = ev
        .session_index
        .map(|i| format!(" session {i}"))
        .unwrap_or_default();
    let detail = match &ev.body {
        Body::Output { text, .. } => text.replace(['\n', '\r'], " "),
        body => match body.data() {
            Value::Object(o) if o.is_empty() => String::new(),
            data => data.to_string(),
        },
    };
    let line = format!("{} {}{session} {detail}", ev.at, ev.kind());
    redact(line.trim_end()).into_owned()
}

fn path_for(data_dir: &Path, ev: &Event) -> PathBuf {
    let d = crate::datadir::DataDir::new(data_dir);
    match &ev.chain_id {
        Some(id) => d.chain_log(id),
        None => d.operator_log(),
    }
}

/// Writes the bus to log files until `stop` fires (then drains what is queued).
pub fn spawn(
    bus: &Bus,
    data_dir: PathBuf,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let mut files: HashMap<PathBuf, std::io::BufWriter<std::fs::File>> = HashMap::new();
        let mut write = |ev: &Event| {
            let path = path_for(&data_dir, ev);
            if !files.contains_key(&path) {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                {
                    Ok(f) => {
                        files.insert(path.clone(), std::io::BufWriter::new(f));
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, path = %path.display(), "cannot write a chain log");
                        return;
                    }
                }
            }
            if let Some(f) = files.get_mut(&path) {
                let _ = writeln!(f, "{}", format(ev));
                // Final events flush at once, so a reader sees the whole chain's log.
                if ev.body.ending().is_some() {
                    let _ = f.flush();
                }
            }
        };
        let mut stopping = false;
        loop {
            let ev = if stopping {
                match rx.try_recv() {
                    Ok(ev) => Ok(ev),
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    ev = rx.recv() => ev,
                    _ = &mut stop => { stopping = true; continue; }
                }
            };
            match ev {
                Ok(ev) => write(&ev),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the chain logs fell behind the event bus");
                }
                Err(RecvError::Closed) => break,
            }
        }
        for f in files.values_mut() {
            let _ = f.flush();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_single_and_masked() {
        let ev = Event {
            id: Some(1),
            chain_id: Some("c".into()),
            session_index: Some(2),
            body: Body::Output {
                text: "running env\nANTHROPIC_API_KEY=sk-ant-api03-abcdefghijkl".into(),
                turns: 1,
            },
            at: "2026-11-25T00:00:00.000Z".into(),
        };
        let line = format(&ev);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("2026-11-25T00:00:00.000Z session:output session 2 running env"));
        assert!(!line.contains("abcdefghijkl"), "{line}");
    }
}
