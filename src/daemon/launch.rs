//! The one composition root of a run: `operator run`, `serve`, `worker`, `doctor --session` and the
//! in-process tests build the store's bus, the signals and the hooks here, then call [`Launch::run`].

use tokio::sync::mpsc;

use super::{Batch, Hooks, RunError, RunOptions, RunReport, run};
use crate::events::Bus;
use crate::signals::SignalEvent;
use crate::store::SharedStore;

/// A run being put together: its store and options, the bus made from the store, where its
/// signals come from, and what it may do besides its batch.
pub struct Launch {
    store: SharedStore,
    opts: RunOptions,
    bus: Bus,
    signals: Option<mpsc::UnboundedReceiver<SignalEvent>>,
    hooks: Hooks,
}

impl Launch {
    /// A run on `store` with `opts`: no signals, no API, no reload until asked for.
    pub fn new(store: SharedStore, opts: RunOptions) -> Self {
        Self {
            bus: Bus::new(store.clone()),
            store,
            opts,
            signals: None,
            hooks: Hooks::default(),
        }
    }

    /// The run's bus (the live view subscribes before the run starts).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Steered by this process's signals: SIGINT and SIGTERM stop, SIGUSR1 pauses, SIGUSR2
    /// resumes, SIGHUP reloads.
    pub fn with_os_signals(mut self) -> std::io::Result<Self> {
        self.signals = Some(crate::signals::listen()?);
        Ok(self)
    }

    /// Steered by these signals (a test sends them).
    pub fn with_signals(mut self, signals: mpsc::UnboundedReceiver<SignalEvent>) -> Self {
        self.signals = Some(signals);
        self
    }

    /// What the run may do besides its batch: reload, start chains, serve the API, take work
    /// from a fleet.
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Runs `batch` to its end (or until a signal stops it) and returns the chains' records.
    pub async fn run(self, batch: Batch) -> Result<RunReport, RunError> {
        // Without a source of signals, none ever arrives: the run ends when its chains do.
        let signals = self.signals.unwrap_or_else(|| mpsc::unbounded_channel().1);
        run(self.store, batch, &self.opts, signals, self.bus, self.hooks).await
    }
}
