//! Failure classes, their retry budgets and backoff, and the lease timing.
//!
//! Failures are classified because one budget for all of them burns the wrong way: Ray added a
//! separate out-of-memory budget after OOM-killed tasks used up the ordinary retry count, and a
//! lost pod is no fault of the task at all (Ray and Temporal both treat it as a retry that costs
//! nothing but time). A deterministic error (bad input) cannot be cured by retrying, so its
//! default budget is one attempt: the run stops with the task's message.

use super::SchedulerError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an attempt ended without a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Host or device memory ran out (CUDA OOM, the kernel's OOM killer).
    OutOfMemory,
    /// The lease expired or was lost: pod loss, SIGSTOP, a network partition.
    Preempted,
    /// A panic, or the actor or process died.
    Crash,
    /// Bad input: retrying cannot help.
    Deterministic,
}

impl FailureClass {
    pub const ALL: [FailureClass; 4] = [
        FailureClass::OutOfMemory,
        FailureClass::Preempted,
        FailureClass::Crash,
        FailureClass::Deterministic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::OutOfMemory => "out of memory",
            FailureClass::Preempted => "preempted",
            FailureClass::Crash => "crash",
            FailureClass::Deterministic => "deterministic",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The budget and backoff of one failure class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPolicy {
    /// Failures of this class a task may have; the one that reaches it fails the run
    /// (0 behaves as 1).
    pub max_attempts: u32,
    /// Wait before the retry after the first failure of this class, in ms; doubles with each.
    pub backoff_base_ms: u64,
    /// Cap of the wait, in ms.
    pub backoff_max_ms: u64,
}

impl ClassPolicy {
    /// Wait before the retry after the `failures`-th failure of this class (counting from 1):
    /// min(base * 2^(failures - 1), max), saturating instead of overflowing.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let factor = 1u64.checked_shl(failures.saturating_sub(1)).unwrap_or(u64::MAX);
        self.backoff_base_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }

    /// Whether `failures` failures of this class spend the budget.
    pub fn is_spent(&self, failures: u32) -> bool {
        failures >= self.max_attempts.max(1)
    }
}

/// One [`ClassPolicy`] per [`FailureClass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub out_of_memory: ClassPolicy,
    pub preempted: ClassPolicy,
    pub crash: ClassPolicy,
    pub deterministic: ClassPolicy,
}

impl RetryPolicy {
    pub fn for_class(&self, class: FailureClass) -> &ClassPolicy {
        match class {
            FailureClass::OutOfMemory => &self.out_of_memory,
            FailureClass::Preempted => &self.preempted,
            FailureClass::Crash => &self.crash,
            FailureClass::Deterministic => &self.deterministic,
        }
    }
}

impl Default for RetryPolicy {
    /// OOM: 3 attempts, 5 s doubling to 60 s (memory may free up once a neighbour finishes);
    /// preempted: 30, no wait (the work was fine, the machine went away); crash: 4, 1 s doubling
    /// to 30 s; deterministic: 1, no retry.
    fn default() -> RetryPolicy {
        let class = |max_attempts, backoff_base_ms, backoff_max_ms| ClassPolicy {
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
        };
        RetryPolicy {
            out_of_memory: class(3, 5_000, 60_000),
            preempted: class(30, 0, 0),
            crash: class(4, 1_000, 30_000),
            deterministic: class(1, 0, 0),
        }
    }
}

/// How long a worker retries the report of a finished (or stopped) task while the coordinator
/// is unreachable: three lease times, at least 30 s, so a short network partition or a
/// coordinator restart does not lose it. The coordinator decides whether it still counts (a
/// lease that expired meanwhile is refused and nothing of it is committed), and after the run
/// ends it keeps serving until the reports of expired leases arrived or this window passed, so
/// a cut-off worker hears "refused" rather than finding no coordinator.
pub fn report_window(lease: std::time::Duration) -> std::time::Duration {
    (lease * 3).max(std::time::Duration::from_secs(30))
}

/// Lease duration and the heartbeat interval workers renew at, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
}

impl Timing {
    /// The lease must outlast three heartbeat intervals, so that two lost or late heartbeats
    /// do not cost a healthy worker its task.
    pub fn check(&self) -> Result<(), SchedulerError> {
        if self.heartbeat_ms == 0 || self.lease_ms <= self.heartbeat_ms.saturating_mul(3) {
            return Err(SchedulerError::LeaseTooShort {
                lease_ms: self.lease_ms,
                heartbeat_ms: self.heartbeat_ms,
            });
        }
        Ok(())
    }
}

impl Default for Timing {
    /// 30 s leases renewed every 5 s: six heartbeats per lease.
    fn default() -> Timing {
        Timing {
            lease_ms: 30_000,
            heartbeat_ms: 5_000,
        }
    }
}
