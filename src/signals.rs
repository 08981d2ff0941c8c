//! Unix signals (signal-hook) mapped to what they mean to the operator: stop, pause, resume, reload.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT or SIGTERM: graceful stop (a second one: at once).
    Stop,
    /// SIGUSR1.
    Pause,
    /// SIGUSR2.
    Resume,
    /// SIGHUP.
    Reload,
}

/// What a signal number means.
pub fn meaning(sig: i32) -> Option<SignalEvent> {
    match sig {
        SIGINT | SIGTERM => Some(SignalEvent::Stop),
        SIGUSR1 => Some(SignalEvent::Pause),
        SIGUSR2 => Some(SignalEvent::Resume),
        SIGHUP => Some(SignalEvent::Reload),
        _ => None,
    }
}

/// Installs the handlers and forwards signals from a dedicated thread. From here on the
/// default actions (terminate) no longer apply: the operator decides.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<SignalEvent>> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if let Some(ev) = meaning(sig)
                    && tx.send(ev).is_err()
                {
                    return;
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanings() {
        assert_eq!(meaning(SIGINT), Some(SignalEvent::Stop));
        assert_eq!(meaning(SIGTERM), Some(SignalEvent::Stop));
        assert_eq!(meaning(SIGUSR1), Some(SignalEvent::Pause));
        assert_eq!(meaning(SIGUSR2), Some(SignalEvent::Resume));
        assert_eq!(meaning(SIGHUP), Some(SignalEvent::Reload));
        assert_eq!(meaning(9), None);
    }
}
