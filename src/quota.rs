//! The operator-wide quota scheduler: a usage limit seen by one chain holds every chain of the same
//! account (the same agent credentials) until the reset, and releases them with jitter; caps on sessions
//! started per hour and running at once per account; quiet hours when no session starts.
//!
//! The decision is a plain function of an account's state and the time ([`decide`]); [`Quota`]
//! keeps the state for the whole operator behind a std mutex (never held across an await).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Operator-wide limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Sessions started per rolling hour, per account.
    pub per_hour: Option<u32>,
    /// Sessions running at once, per account.
    pub concurrent: Option<u32>,
    /// No session starts inside this daily window (UTC, seconds since midnight; may wrap).
    pub quiet: Option<(u32, u32)>,
    /// Released chains start spread over this long.
    pub jitter: Duration,
}

/// One account's state.
#[derive(Debug, Clone, Default)]
pub struct Account {
    held_until: Option<SystemTime>,
    held_by: Option<String>,
    started: VecDeque<SystemTime>,
    /// Chains with a session running.
    running: std::collections::HashSet<String>,
}

/// May a session start?
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Go,
    /// Not before `until`, because of `reason`.
    Wait {
        until: SystemTime,
        reason: String,
    },
}

fn secs_of_day(t: SystemTime) -> u32 {
    let s = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (s % 86_400) as u32
}

/// When the quiet window containing `now` ends, if `now` is in it.
pub fn quiet_until(now: SystemTime, (from, to): (u32, u32)) -> Option<SystemTime> {
    let s = secs_of_day(now);
    let inside = if from <= to {
        s >= from && s < to
    } else {
        s >= from || s < to
    };
    if !inside {
        return None;
    }
    let left = if s < to { to - s } else { 86_400 - s + to };
    Some(now + Duration::from_secs(u64::from(left)))
}

/// Parses `"22:00-06:00"` (or with seconds, `"22:00:00-06:00:30"`), UTC.
pub fn parse_quiet(s: &str) -> Result<(u32, u32), String> {
    let one = |t: &str| -> Result<u32, String> {
        let parts: Vec<&str> = t.trim().split(':').collect();
        let n = |i: usize, max: u32| -> Result<u32, String> {
            match parts.get(i) {
                None => Ok(0),
                Some(p) => p
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v < max)
                    .ok_or_else(|| format!("`{t}` is not a time of day (HH:MM or HH:MM:SS)")),
            }
        };
        if !(2..=3).contains(&parts.len()) {
            return Err(format!("`{t}` is not a time of day (HH:MM or HH:MM:SS)"));
        }
        Ok(n(0, 24)? * 3600 + n(1, 60)? * 60 + n(2, 60)?)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a window (expected e.g. 22:00-06:00)"))?;
    let (from, to) = (one(a)?, one(b)?);
    if from == to {
        return Err(format!("`{s}` is an empty window"));
    }
    Ok((from, to))
}

/// The decision for one account at `now`.
pub fn decide(a: &Account, limits: &Limits, now: SystemTime) -> Admission {
    if let Some(until) = a.held_until.filter(|u| *u > now) {
        return Admission::Wait {
            until,
            reason: format!(
                "the account's usage limit{} resets at {}",
                a.held_by
                    .as_deref()
                    .map(|c| format!(" (hit by chain {c})"))
                    .unwrap_or_default(),
                humantime::format_rfc3339_seconds(until)
            ),
        };
    }
    if let Some(until) = limits.quiet.and_then(|q| quiet_until(now, q)) {
        return Admission::Wait {
            until,
            reason: "quiet hours".into(),
        };
    }
    if let Some(max) = limits.concurrent
        && a.running.len() as u32 >= max
    {
        return Admission::Wait {
            until: now + Duration::from_secs(5),
            reason: format!("{max} session(s) of this account already run"),
        };
    }
    if let Some(max) = limits.per_hour {
        let hour_ago = now - Duration::from_secs(3600);
        let recent: Vec<&SystemTime> = a.started.iter().filter(|t| **t > hour_ago).collect();
        if recent.len() as u32 >= max
            && let Some(oldest) = recent.first()
        {
            return Admission::Wait {
                until: **oldest + Duration::from_secs(3600),
                reason: format!("{max} session(s) of this account started in the last hour"),
            };
        }
    }
    Admission::Go
}

/// The scheduler, shared by every chain.
#[derive(Debug, Default)]
pub struct Quota {
    accounts: Mutex<HashMap<String, Account>>,
    pub limits: Limits,
}

impl Quota {
    pub fn new(limits: Limits) -> Self {
        Self {
            accounts: Mutex::default(),
            limits,
        }
    }

    fn with<T>(&self, account: &str, f: impl FnOnce(&mut Account) -> T) -> T {
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(account.to_string()).or_default())
    }

    /// A usage limit holds `account` now.
    pub fn is_held(&self, account: &str) -> bool {
        let now = SystemTime::now();
        self.with(account, |a| a.held_until.is_some_and(|u| u > now))
    }

    /// A chain of `account` hit its usage limit: nothing of the account starts before `until`.
    pub fn hold(&self, account: &str, until: SystemTime, chain: &str) {
        self.with(account, |a| {
            if a.held_until.is_none_or(|u| u < until) {
                a.held_until = Some(until);
                a.held_by = Some(chain.to_string());
            }
        });
    }

    /// Asks to start a session; `Go` counts it as started and running.
    pub fn admit(&self, account: &str, chain: &str) -> Admission {
        self.admit_with(account, chain, None)
    }

    /// [`Quota::admit`] for a fleet: the account's running sessions and those started in the
    /// last hour are the fleet's (`usage`, from the shared store) besides this process's own.
    pub fn admit_with(
        &self,
        account: &str,
        chain: &str,
        usage: Option<&crate::store::AccountUsage>,
    ) -> Admission {
        let now = SystemTime::now();
        self.with(account, |a| {
            let d = match usage {
                None => decide(a, &self.limits, now),
                Some(u) => {
                    let mut fleet = a.clone();
                    fleet.running.extend(u.running.iter().cloned());
                    fleet.started = u
                        .started
                        .iter()
                        .filter_map(|t| humantime::parse_rfc3339_weak(t).ok())
                        .collect();
                    decide(&fleet, &self.limits, now)
                }
            };
            if d == Admission::Go {
                a.running.insert(chain.to_string());
                a.started.push_back(now);
                let hour_ago = now - Duration::from_secs(3600);
                while a.started.front().is_some_and(|t| *t <= hour_ago) {
                    a.started.pop_front();
                }
            }
            d
        })
    }

    /// The chain's session admitted by [`Quota::admit`] ended (or the chain restarted).
    pub fn finished(&self, account: &str, chain: &str) {
        self.with(account, |a| {
            a.running.remove(chain);
        });
    }

    /// A random delay within the jitter, so released chains do not all start in one second.
    pub fn jitter(&self) -> Duration {
        let ms = self.limits.jitter.as_millis() as u64;
        if ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(fastrand::u64(..ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_hold_waits_until_its_reset_for_every_chain_of_the_account() {
        let q = Quota::new(Limits::default());
        let until = SystemTime::now() + Duration::from_secs(60);
        q.hold("claude:a", until, "c-1");
        assert!(
            matches!(q.admit("claude:a", "c-9"), Admission::Wait { until: u, ref reason } if u == until && reason.contains("c-1"))
        );
        assert_eq!(
            q.admit("claude:b", "c-9"),
            Admission::Go,
            "another account is not held"
        );
        // An earlier reset never shortens a hold.
        q.hold("claude:a", until - Duration::from_secs(30), "c-2");
        assert!(
            matches!(q.admit("claude:a", "c-9"), Admission::Wait { until: u, .. } if u == until)
        );
    }

    #[test]
    fn caps_per_hour_and_at_once() {
        let limits = Limits {
            per_hour: Some(2),
            concurrent: Some(1),
            ..Default::default()
        };
        let mut a = Account::default();
        assert_eq!(decide(&a, &limits, at(10_000)), Admission::Go);
        a.running.insert("c-1".into());
        assert!(matches!(
            decide(&a, &limits, at(10_000)),
            Admission::Wait { .. }
        ));
        a.running.clear();
        a.started = [at(9_000), at(9_500)].into_iter().collect();
        match decide(&a, &limits, at(10_000)) {
            Admission::Wait { until, .. } => assert_eq!(until, at(12_600)),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(&a, &limits, at(12_601)), Admission::Go);
    }

    #[test]
    fn quiet_hours_wrap_around_midnight() {
        let w = parse_quiet("22:00-06:00").unwrap();
        assert_eq!(w, (79_200, 21_600));
        let day = 86_400 * 20_000;
        assert_eq!(
            quiet_until(at(day + 23 * 3600), w),
            Some(at(day + 86_400 + 6 * 3600))
        );
        assert_eq!(quiet_until(at(day + 3600), w), Some(at(day + 6 * 3600)));
        assert_eq!(quiet_until(at(day + 12 * 3600), w), None);
        assert!(parse_quiet("25:00-06:00").is_err());
        assert!(parse_quiet("nonsense").is_err());
        assert_eq!(parse_quiet("01:02:03-01:02:04").unwrap(), (3723, 3724));
    }
}
