//! The scheduler: which tasks are ready, which lease holds which task, attempts and retry
//! budgets. A pure state machine: no I/O, no async, no clock of its own (every call that needs
//! the time takes `now_ms`, milliseconds on a clock the caller supplies), no engine import, so a
//! coordinator on a CPU box need not link libtorch and tests drive it by feeding events.
//!
//! What it decides, and why (the lessons ARCHITECTURE.md's "Leases" paragraph cites):
//! - At-least-once execution is the contract (Ray, Temporal): a task may run twice, so
//!   correctness comes from the create-only commit in the store, not from deduplicating here.
//!   The scheduler only keeps the bookkeeping consistent with the store: [`Scheduler::committed`]
//!   after the store accepted a commit, [`Scheduler::mark_committed`] for commits found there.
//! - A task is ready when every dependency is committed; a [`Grant`] carries the dependencies'
//!   [`Committed`] values (directory, digest) in plan order, so a worker can run the task from
//!   the grant alone. Among the tasks ready for a worker, the one on the longest remaining
//!   chain is granted first (its bottom level: its [`PlanNode::cost`] plus the largest bottom
//!   level among its dependants, HLFET list scheduling), ties in plan order: granted in plan
//!   order, the longest chain (train_benign, the longest single task, late in the plan) started
//!   last and a run on several GPUs ended on one busy GPU. The order is fixed by the plan alone,
//!   so runs and tests stay deterministic.
//! - A lease is per acquisition, never per worker ([`LeaseId`]: epoch, task, attempt, nonce), and
//!   every event is checked against the current lease of its task: a worker that was SIGSTOPped
//!   past its lease wakes up holding an id that is no longer current, so it can neither extend
//!   nor complete (nor fail) its replacement's lease; it gets a [`Refusal`] and nothing changes.
//!   A coordinator restart bumps the epoch, so every older lease is [`Refusal::WrongEpoch`].
//! - Attempts start at 1 and grow by one with every new lease of a task, whatever ended the
//!   previous one; [`Scheduler::restore`] carries them over a restart so a restarted
//!   coordinator neither reuses attempt numbers nor refills spent budgets.
//! - Failures are classified ([`FailureClass`]) with a budget and backoff each
//!   ([`RetryPolicy`]): Ray added a separate OOM budget after OOM kills burned the ordinary one;
//!   an expired lease (pod loss, SIGSTOP) is `Preempted` and retried at once; a deterministic
//!   input error stops the run with the task's message instead of retrying forever.
//! - Once any task's budget is spent the run has failed: [`Scheduler::acquire`] answers
//!   [`Acquire::Failed`] from then on, but leases already out may still commit (their work is
//!   kept, a rerun resumes from it).
//! - The lease time must exceed three heartbeat intervals ([`Timing::check`], at construction).
//!
//! What it leaves to the caller: calling [`Scheduler::expire`] on a timer (expiry is an event the
//! coordinator journals, so `acquire` never expires leases behind its back), journaling grants
//! and failures, and writing to the store.

mod graph;
mod lease;
mod policy;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;

pub use lease::{LeaseId, ParseLeaseIdError, TaskRef};
pub use policy::{report_window, ClassPolicy, FailureClass, RetryPolicy, Timing};
pub use snapshot::{Snapshot, StateCounts, TaskPhase, TaskStatus};
pub use state::Scheduler;

use crate::task::TaskKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest [`Acquire::Wait`] the scheduler asks for, in ms: workers poll at least this often,
/// so a task readied by a commit or an expiry is picked up within about a second.
pub const MAX_WAIT_MS: u64 = 1_000;

/// One task of the plan and the tasks whose outputs it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanNode {
    pub task: TaskRef,
    pub kind: TaskKind,
    /// In the order the task reads them; a [`Grant`] lists their commits in this order.
    pub depends_on: Vec<TaskRef>,
    /// The task's expected cost, a relative weight (the plan gives `plan::expected_cost` of its
    /// kind): it only orders grants (critical path first), never what a task computes or its id.
    /// Absent in serialised form it is 0; a plan whose costs are all 0 is granted in plan order.
    #[serde(default)]
    pub cost: u64,
}

/// A committed task's outputs, as downstream task ids hash them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Committed {
    /// Where the outputs live in the store, e.g. `runs/<experiment>/<seed>/<kind>/<task-id>`.
    pub dir: String,
    /// The content digest of the manifest.
    pub digest: String,
}

/// A lease handed to a worker: what to run and the inputs it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: LeaseId,
    pub kind: TaskKind,
    /// The dependencies' commits, in the plan's `depends_on` order.
    pub deps: Vec<(TaskRef, Committed)>,
    /// Deadline on the caller's clock, ms; renew with [`Scheduler::keep_alive`] before it.
    pub expires_ms: u64,
}

/// The answer to a worker asking for work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acquire {
    Granted(Grant),
    /// Nothing for this worker now; ask again after at most [`MAX_WAIT_MS`].
    Wait {
        retry_after_ms: u64,
    },
    /// Every task is committed: the worker may exit.
    Finished,
    /// A task's retry budget is spent: the run has failed, no more grants.
    Failed(RunFailure),
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepAlive {
    Extended {
        expires_ms: u64,
    },
    /// Not the current lease of its task (superseded, expired, released, unknown or of another
    /// epoch): stop the task.
    Lost,
}

/// Why an event about a lease was refused; a refused event changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("no such lease was granted in this epoch")]
    UnknownLease,
    #[error("the lease was superseded: another attempt holds the task now")]
    Superseded,
    #[error("the lease expired")]
    Expired,
    #[error("the task is already committed")]
    AlreadyCommitted,
    #[error("the lease is from an earlier coordinator epoch")]
    WrongEpoch,
    /// The lease already ended with a reported failure (added to the brief's list: neither
    /// expired nor superseded describes it).
    #[error("the lease already ended with a reported failure")]
    Released,
}

/// What happens after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The task goes back to the queue; its next lease is `attempt`, granted no earlier than
    /// `not_before_ms` (caller's clock).
    Retry { attempt: u32, not_before_ms: u64 },
    /// The class's budget is spent (or the error is deterministic): the run has failed.
    RunFailed(RunFailure),
}

/// Why a run failed: the task whose budget was spent first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    pub task: TaskRef,
    pub class: FailureClass,
    /// Failures of `class` the task had: the spent budget.
    pub attempts: u32,
    /// The last failure's message, as the worker reported it.
    pub message: String,
}

impl fmt::Display for RunFailure {
    /// One line, e.g. `task 42/extract/base failed 4 times (crash), last error: ...`; line breaks
    /// of the message (a panic's backtrace) are folded into ` / `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message: Vec<&str> = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let message = message.join(" / ");
        match (self.class, self.attempts) {
            (FailureClass::Deterministic, _) => {
                write!(
                    f,
                    "task {} failed with a deterministic error (not retried): {message}",
                    self.task
                )
            }
            (class, 1) => write!(
                f,
                "task {} failed once ({class}), last error: {message}",
                self.task
            ),
            (class, n) => write!(
                f,
                "task {} failed {n} times ({class}), last error: {message}",
                self.task
            ),
        }
    }
}

impl std::error::Error for RunFailure {}

/// A plan or call the scheduler cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error(
        "lease time {lease_ms} ms must exceed three heartbeat intervals (3 x {heartbeat_ms} ms), and the heartbeat must be > 0"
    )]
    LeaseTooShort { lease_ms: u64, heartbeat_ms: u64 },
    #[error("plan: task {task} appears twice")]
    DuplicateTask { task: TaskRef },
    #[error("plan: task {task} depends on {dependency}, which is not in the plan")]
    UnknownDependency { task: TaskRef, dependency: TaskRef },
    #[error("plan: task {task} lists dependency {dependency} twice")]
    DuplicateDependency { task: TaskRef, dependency: TaskRef },
    #[error("plan: dependency cycle {} (each task depends on the next)", arrows(cycle))]
    Cycle {
        /// The tasks on the cycle, each depending on the next, the first repeated at the end.
        cycle: Vec<TaskRef>,
    },
    #[error("task {task} is not in the plan")]
    UnknownTask { task: TaskRef },
    #[error("task {task} is already committed as {existing:?}, not {found:?}")]
    CommitConflict {
        task: TaskRef,
        existing: Committed,
        found: Committed,
    },
}

/// `a -> b -> a`, for the cycle error.
fn arrows(tasks: &[TaskRef]) -> String {
    tasks.iter().map(TaskRef::as_str).collect::<Vec<_>>().join(" -> ")
}
