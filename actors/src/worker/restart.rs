//! A restart budget for supervised actors, Erlang-style: at most `max_restarts` within a sliding
//! window of `window`; each restart waits an exponentially growing backoff; past the budget the
//! supervisor escalates instead of restarting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// 5 restarts in 60 s, backoff 200 ms doubling to 5 s.
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The restarts one supervisor has made recently.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(policy: RestartPolicy) -> RestartBudget {
        RestartBudget {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Some(backoff before restarting) if another restart fits in the budget at `now`, None
    /// when the budget is spent (escalate).
    pub fn allow(&mut self, now: Instant) -> Option<Duration> {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.policy.max_restarts {
            return None;
        }
        let n = self.recent.len() as u32;
        self.recent.push_back(now);
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        Some(
            self.policy
                .backoff_base
                .saturating_mul(factor)
                .min(self.policy.backoff_max),
        )
    }

    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_then_escalate_and_the_window_forgets() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
        };
        let mut b = RestartBudget::new(policy);
        let t0 = Instant::now();
        assert_eq!(b.allow(t0), Some(Duration::from_millis(100)));
        assert_eq!(b.allow(t0), Some(Duration::from_millis(200)));
        assert_eq!(b.allow(t0), Some(Duration::from_millis(300)), "capped");
        assert_eq!(b.allow(t0), None, "budget spent: escalate");
        assert_eq!(
            b.allow(t0 + Duration::from_secs(11)),
            Some(Duration::from_millis(100))
        );
    }
}
