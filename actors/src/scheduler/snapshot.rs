//! A serialisable picture of the scheduler for `pspace status`: every task with its state,
//! attempts, lease and failures, and the counts by state.

use super::state::Phase;
use super::{Committed, FailureClass, RunFailure, Scheduler, TaskRef};
use crate::task::TaskKind;
use serde::{Deserialize, Serialize};

/// A task's state as `pspace status` shows it (`waiting`, `ready`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    /// A dependency is not committed yet.
    Waiting,
    Ready,
    /// Failed, waiting out its backoff before the next attempt.
    Backoff,
    Leased,
    Committed,
    /// Its retry budget is spent.
    Failed,
}

impl TaskPhase {
    /// The state's name, as `pspace status` prints it and as its JSON (serde) writes it: one
    /// vocabulary whether a coordinator answers or the store is read.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Waiting => "waiting",
            TaskPhase::Ready => "ready",
            TaskPhase::Backoff => "backoff",
            TaskPhase::Leased => "leased",
            TaskPhase::Committed => "committed",
            TaskPhase::Failed => "failed",
        }
    }
}

/// One task in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task: TaskRef,
    pub kind: TaskKind,
    pub state: TaskPhase,
    /// The attempt number of the latest lease (0 before the first).
    pub attempts: u32,
    /// The worker that holds, or last held, a lease on the task.
    pub worker: Option<String>,
    /// The current lease in its wire form, while `leased`.
    pub lease: Option<String>,
    /// Time left on the current lease, ms (0 once past its deadline but not yet expired).
    pub expires_in_ms: Option<u64>,
    /// Time left in backoff, ms, while `backoff`.
    pub retry_in_ms: Option<u64>,
    pub commit: Option<Committed>,
    /// Every failure, oldest first.
    pub failures: Vec<(FailureClass, String)>,
}

/// Number of tasks in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub waiting: usize,
    pub ready: usize,
    pub backoff: usize,
    pub leased: usize,
    pub committed: usize,
    pub failed: usize,
}

/// The whole scheduler at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub epoch: u64,
    /// The caller's clock when the snapshot was taken, ms.
    pub now_ms: u64,
    pub tasks: Vec<TaskStatus>,
    pub counts: StateCounts,
    pub finished: bool,
    /// Why the run failed, once it has.
    pub failure: Option<RunFailure>,
}

impl Scheduler {
    /// Every task in plan order at `now_ms`; a task whose backoff has passed shows as `ready`.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let mut counts = StateCounts::default();
        let tasks: Vec<TaskStatus> = self
            .entries
            .iter()
            .map(|entry| {
                let mut status = TaskStatus {
                    task: entry.task.clone(),
                    kind: entry.kind,
                    state: TaskPhase::Waiting,
                    attempts: entry.attempts,
                    worker: entry.worker.clone(),
                    lease: None,
                    expires_in_ms: None,
                    retry_in_ms: None,
                    commit: None,
                    failures: entry.failures.clone(),
                };
                status.state = match &entry.phase {
                    Phase::Waiting => TaskPhase::Waiting,
                    Phase::Ready => TaskPhase::Ready,
                    Phase::Backoff { not_before_ms } if *not_before_ms <= now_ms => TaskPhase::Ready,
                    Phase::Backoff { not_before_ms } => {
                        status.retry_in_ms = Some(not_before_ms - now_ms);
                        TaskPhase::Backoff
                    }
                    Phase::Leased { lease, expires_ms } => {
                        status.lease = Some(lease.to_string());
                        status.expires_in_ms = Some(expires_ms.saturating_sub(now_ms));
                        TaskPhase::Leased
                    }
                    Phase::Committed(commit) => {
                        status.commit = Some(commit.clone());
                        TaskPhase::Committed
                    }
                    Phase::Failed => TaskPhase::Failed,
                };
                *counts.slot(status.state) += 1;
                status
            })
            .collect();
        Snapshot {
            epoch: self.epoch,
            now_ms,
            tasks,
            counts,
            finished: self.is_finished(),
            failure: self.failure.clone(),
        }
    }
}

impl StateCounts {
    fn slot(&mut self, state: TaskPhase) -> &mut usize {
        match state {
            TaskPhase::Waiting => &mut self.waiting,
            TaskPhase::Ready => &mut self.ready,
            TaskPhase::Backoff => &mut self.backoff,
            TaskPhase::Leased => &mut self.leased,
            TaskPhase::Committed => &mut self.committed,
            TaskPhase::Failed => &mut self.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskPhase;

    /// The printed name of each state is its JSON name, so `pspace status` says the same word
    /// in its table and in `--json`, from a coordinator or from the store.
    #[test]
    fn a_state_prints_as_its_json_name() {
        for phase in [
            TaskPhase::Waiting,
            TaskPhase::Ready,
            TaskPhase::Backoff,
            TaskPhase::Leased,
            TaskPhase::Committed,
            TaskPhase::Failed,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
