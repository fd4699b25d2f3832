//! When to start a server again after it exited: the `[supervise]` policy
//! as a pure function of the exits so far and the clock, so that it can be
//! tested without processes or timers.

use super::settings::{RestartPolicy, SuperviseConfig};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do about one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`.
    Restart { delay: Duration },
    /// Leave it: it exited with status 0 and the policy restarts only
    /// failures (or nothing).
    Exited,
    /// Leave it: it failed and the policy is `never`.
    Failed,
    /// Leave it: it was already restarted `restarts` times within the window.
    GaveUp { restarts: usize },
}

/// The restart policy of one node with its history of restarts.
#[derive(Debug, Clone)]
pub struct Restarts {
    policy: RestartPolicy,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    max_restarts: usize,
    window: Duration,
    /// When each restart within the window happened, oldest first.
    recent: VecDeque<Instant>,
}

impl Restarts {
    pub fn new(sv: &SuperviseConfig) -> Restarts {
        Restarts {
            policy: sv.restart,
            backoff_initial_ms: sv.backoff_initial_ms,
            backoff_max_ms: sv.backoff_max_ms,
            max_restarts: usize::try_from(sv.max_restarts).unwrap_or(usize::MAX),
            window: Duration::from_secs(sv.restart_window_s),
            recent: VecDeque::new(),
        }
    }

    /// Decides about an exit at `now` (`success`: status 0).
    pub fn decide(&mut self, success: bool, now: Instant) -> Decision {
        let restart = match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        if !restart {
            return if success {
                Decision::Exited
            } else {
                Decision::Failed
            };
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts {
            return Decision::GaveUp {
                restarts: self.recent.len(),
            };
        }
        Decision::Restart {
            delay: Duration::from_millis(backoff_ms(
                self.backoff_initial_ms,
                self.backoff_max_ms,
                self.recent.len(),
            )),
        }
    }

    /// Records that the node was started again at `now`.
    pub fn record_restart(&mut self, now: Instant) {
        self.recent.push_back(now);
    }
}

/// The delay before restart number `n + 1` (0-based `n`): initial * 2^n,
/// capped at max.
pub fn backoff_ms(initial: u64, max: u64, n: usize) -> u64 {
    let factor = 2u64.saturating_pow(u32::try_from(n).unwrap_or(u32::MAX));
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(restart: RestartPolicy) -> SuperviseConfig {
        SuperviseConfig {
            restart,
            backoff_initial_ms: 10,
            backoff_max_ms: 25,
            max_restarts: 3,
            restart_window_s: 60,
            ..SuperviseConfig::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff_ms(200, 5000, 0), 200);
        assert_eq!(backoff_ms(200, 5000, 1), 400);
        assert_eq!(backoff_ms(200, 5000, 5), 5000);
        assert_eq!(backoff_ms(200, 5000, 200), 5000);
    }

    #[test]
    fn policy_chooses_which_exits_restart() {
        let t = Instant::now();
        let mut never = Restarts::new(&config(RestartPolicy::Never));
        assert_eq!(never.decide(false, t), Decision::Failed);
        assert_eq!(never.decide(true, t), Decision::Exited);
        let mut on_failure = Restarts::new(&config(RestartPolicy::OnFailure));
        assert_eq!(on_failure.decide(true, t), Decision::Exited);
        assert_eq!(
            on_failure.decide(false, t),
            Decision::Restart { delay: ms(10) }
        );
        let mut always = Restarts::new(&config(RestartPolicy::Always));
        assert_eq!(always.decide(true, t), Decision::Restart { delay: ms(10) });
    }

    #[test]
    fn backs_off_then_gives_up_within_the_window() {
        let t0 = Instant::now();
        let mut r = Restarts::new(&config(RestartPolicy::OnFailure));
        let mut now = t0;
        for want in [10, 20, 25] {
            assert_eq!(r.decide(false, now), Decision::Restart { delay: ms(want) });
            now += ms(want);
            r.record_restart(now);
        }
        assert_eq!(r.decide(false, now), Decision::GaveUp { restarts: 3 });
        // Once the old restarts fall out of the window, it starts over.
        let later = now + Duration::from_secs(61);
        assert_eq!(r.decide(false, later), Decision::Restart { delay: ms(10) });
    }
}
