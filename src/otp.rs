//! OTP supervision in Erlang's own words, as plain policy: child specs, restart types, strategies
//! and restart intensity. ractor supplies the events (`ActorFailed`, `ActorTerminated`); the
//! actors ask [`Supervisor::on_exit`] what to do with them.
//!
//! Nested intensities multiply (OTP's warning): a chain gives its children 5 restarts in 10 s
//! before it gives up and fails itself; the Operator gives each chain 3 restarts in 60 s; so a
//! child that always crashes costs at most 4 × 6 restarts before its chain is recorded failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after a failure (not after a normal exit).
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    BrutalKill,
    Timeout(Duration),
}

/// Which children a restart concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that ended.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The child that ended and those started after it.
    RestForOne,
}

/// At most `intensity` restarts within `period`; one more and the supervisor gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    pub intensity: usize,
    pub period: Duration,
}

impl Default for RestartIntensity {
    /// OTP's default: 1 restart in 5 seconds.
    fn default() -> Self {
        Self {
            intensity: 1,
            period: Duration::from_secs(5),
        }
    }
}

/// Restarts seen within the period.
#[derive(Debug, Clone, Default)]
pub struct RestartLog(VecDeque<Instant>);

impl RestartLog {
    /// Records a restart at `now`; false when it exceeds the intensity (escalate instead).
    pub fn allow(&mut self, limit: RestartIntensity, now: Instant) -> bool {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.period)
        {
            self.0.pop_front();
        }
        if self.0.len() >= limit.intensity {
            return false;
        }
        self.0.push_back(now);
        true
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A child of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec<Id> {
    pub id: Id,
    pub restart: Restart,
    pub shutdown: Shutdown,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Normal,
    Failed,
}

/// What the supervisor does about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<Id> {
    Ignore,
    /// Restart these children, in start order (after stopping the others among them).
    Restart(Vec<Id>),
    /// The intensity was exceeded: give up and fail upwards.
    Escalate(String),
}

/// The policy of one supervisor over a fixed list of children (in start order).
#[derive(Debug, Clone)]
pub struct Supervisor<Id> {
    pub strategy: Strategy,
    pub intensity: RestartIntensity,
    pub children: Vec<ChildSpec<Id>>,
    log: RestartLog,
}

impl<Id: Clone + PartialEq + std::fmt::Debug> Supervisor<Id> {
    pub fn new(
        strategy: Strategy,
        intensity: RestartIntensity,
        children: Vec<ChildSpec<Id>>,
    ) -> Self {
        Self {
            strategy,
            intensity,
            children,
            log: RestartLog::default(),
        }
    }

    /// Decides what to do when child `id` ended with `exit` at `now`.
    pub fn on_exit(&mut self, id: &Id, exit: Exit, now: Instant) -> Action<Id> {
        let Some(pos) = self.children.iter().position(|c| &c.id == id) else {
            return Action::Ignore;
        };
        let restart = match (self.children[pos].restart, exit) {
            (Restart::Permanent, _) => true,
            (Restart::Transient, Exit::Failed) => true,
            (Restart::Transient, Exit::Normal) | (Restart::Temporary, _) => false,
        };
        if !restart {
            return Action::Ignore;
        }
        if !self.log.allow(self.intensity, now) {
            return Action::Escalate(format!(
                "{:?} ended; more than {} restarts in {:?}",
                id, self.intensity.intensity, self.intensity.period
            ));
        }
        let ids = match self.strategy {
            Strategy::OneForOne => vec![id.clone()],
            Strategy::OneForAll => self.children.iter().map(|c| c.id.clone()).collect(),
            Strategy::RestForOne => self.children[pos..].iter().map(|c| c.id.clone()).collect(),
        };
        Action::Restart(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &'static str, restart: Restart) -> ChildSpec<&'static str> {
        ChildSpec {
            id,
            restart,
            shutdown: Shutdown::Timeout(Duration::from_secs(1)),
        }
    }

    fn sup(strategy: Strategy) -> Supervisor<&'static str> {
        Supervisor::new(
            strategy,
            RestartIntensity {
                intensity: 2,
                period: Duration::from_secs(10),
            },
            vec![
                spec("a", Restart::Permanent),
                spec("b", Restart::Transient),
                spec("c", Restart::Temporary),
            ],
        )
    }

    #[test]
    fn restart_types() {
        let now = Instant::now();
        let mut s = sup(Strategy::OneForOne);
        assert_eq!(
            s.on_exit(&"a", Exit::Normal, now),
            Action::Restart(vec!["a"])
        );
        let mut s = sup(Strategy::OneForOne);
        assert_eq!(s.on_exit(&"b", Exit::Normal, now), Action::Ignore);
        assert_eq!(
            s.on_exit(&"b", Exit::Failed, now),
            Action::Restart(vec!["b"])
        );
        assert_eq!(s.on_exit(&"c", Exit::Failed, now), Action::Ignore);
        assert_eq!(s.on_exit(&"zz", Exit::Failed, now), Action::Ignore);
    }

    #[test]
    fn strategies() {
        let now = Instant::now();
        assert_eq!(
            sup(Strategy::OneForAll).on_exit(&"b", Exit::Failed, now),
            Action::Restart(vec!["a", "b", "c"])
        );
        assert_eq!(
            sup(Strategy::RestForOne).on_exit(&"b", Exit::Failed, now),
            Action::Restart(vec!["b", "c"])
        );
        assert_eq!(
            sup(Strategy::RestForOne).on_exit(&"a", Exit::Failed, now),
            Action::Restart(vec!["a", "b", "c"])
        );
    }

    #[test]
    fn intensity_escalates_and_forgets_after_the_period() {
        let t0 = Instant::now();
        let mut s = sup(Strategy::OneForOne);
        assert!(matches!(
            s.on_exit(&"a", Exit::Failed, t0),
            Action::Restart(_)
        ));
        assert!(matches!(
            s.on_exit(&"a", Exit::Failed, t0 + Duration::from_secs(1)),
            Action::Restart(_)
        ));
        assert!(matches!(
            s.on_exit(&"a", Exit::Failed, t0 + Duration::from_secs(2)),
            Action::Escalate(_)
        ));
        // Ten seconds after the first restarts, the window is empty again.
        assert!(matches!(
            s.on_exit(&"a", Exit::Failed, t0 + Duration::from_secs(12)),
            Action::Restart(_)
        ));
    }

    #[test]
    fn the_otp_default_is_one_in_five_seconds() {
        let d = RestartIntensity::default();
        assert_eq!((d.intensity, d.period), (1, Duration::from_secs(5)));
        let mut log = RestartLog::default();
        let t0 = Instant::now();
        assert!(log.allow(d, t0));
        assert!(!log.allow(d, t0 + Duration::from_secs(4)));
        assert!(log.allow(d, t0 + Duration::from_secs(5)));
    }
}
