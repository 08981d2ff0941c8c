//! The operator's run mode (running, paused, stopping), shared by every chain through a watch channel.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// No new session starts. With `interrupt`, running sessions are interrupted and asked for
    /// their handoff (`operator pause --now`); without, they finish.
    Paused {
        interrupt: bool,
    },
    /// Sessions are interrupted and chains left `interrupted`.
    Stopping,
}

impl Mode {
    pub fn is_paused(self) -> bool {
        matches!(self, Mode::Paused { .. })
    }
}

pub type ModeTx = watch::Sender<Mode>;
pub type ModeRx = watch::Receiver<Mode>;

pub fn channel(initial: Mode) -> (ModeTx, ModeRx) {
    watch::channel(initial)
}
