//! The operator's run mode (running, paused, stopping), shared by every chain through a watch channel.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// No new session starts; running sessions finish.
    Paused,
    /// Sessions are interrupted and chains left `interrupted`.
    Stopping,
}

pub type ModeTx = watch::Sender<Mode>;
pub type ModeRx = watch::Receiver<Mode>;

pub fn channel(initial: Mode) -> (ModeTx, ModeRx) {
    watch::channel(initial)
}
