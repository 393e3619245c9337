//! What `pspace status`, the progress bars and the summary line read from a coordinator: the
//! scheduler's snapshot plus what only the coordinator knows (how each task ended, the progress
//! workers report in their heartbeats, the workers it has seen). Serialisable, so the same value
//! travels over gRPC as JSON.

use crate::scheduler::{Snapshot, TaskPhase};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a committed task got there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub task_id: String,
    pub dir: String,
    /// Where its outputs are (`dir/attempt`).
    pub outputs_dir: String,
    /// Found committed in the store rather than run now.
    pub cached: bool,
    /// The committing attempt's time, from its grant to the commit, s (0 when cached).
    pub seconds: f64,
    /// The rest of the task's time from its first grant to the commit: attempts that did not
    /// commit (failed, expired, lost to another), and the waits between them, s. Kept apart so
    /// that time by stage is the time a stage takes, not what its retries cost.
    #[serde(default)]
    pub lost_seconds: f64,
    /// Order of commit in this coordinator's life (cached ones first, in plan order).
    pub order: usize,
}

/// The latest heartbeat of a leased task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseProgress {
    pub worker: String,
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

/// A worker as the coordinator last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub node: String,
    pub device: String,
    pub last_seen_unix_ms: u64,
}

/// A coordinator's whole view of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub experiment: String,
    pub store: String,
    pub snapshot: Snapshot,
    /// By task key.
    pub outcomes: BTreeMap<String, TaskOutcome>,
    /// By task key, for leased tasks.
    pub progress: BTreeMap<String, LeaseProgress>,
    pub workers: BTreeMap<String, WorkerView>,
    /// Leases that expired while their worker was silent (cut off, paused, or gone), by lease
    /// id: the unix ms until which that worker may still send its late report (lease expiry +
    /// one lease to notice + the report window). The entry goes when the report arrives (it is
    /// refused) or the time passes; a finished run's coordinator keeps serving until none is
    /// left, so the worker hears the refusal instead of finding no coordinator.
    #[serde(default)]
    pub awaiting_reports: BTreeMap<String, u64>,
}

impl RunStatus {
    /// (ran, already committed) among the committed tasks.
    pub fn ran_and_cached(&self) -> (usize, usize) {
        let cached = self.outcomes.values().filter(|o| o.cached).count();
        (self.outcomes.len() - cached, cached)
    }

    /// A table for people: one line per task (state, attempts, worker, progress or failures),
    /// then the counts and the workers.
    pub fn render(&self) -> String {
        let mut out = format!(
            "experiment {}  store {}  coordinator epoch {}\n",
            self.experiment, self.store, self.snapshot.epoch
        );
        for t in &self.snapshot.tasks {
            let key = t.task.as_str();
            let mut line = format!("  {:<36} {:<9} attempts {}", key, t.state.as_str(), t.attempts);
            if let Some(o) = self.outcomes.get(key) {
                if o.cached {
                    line.push_str("  (already committed)");
                } else {
                    line.push_str(&format!("  {:.1}s", o.seconds));
                }
            }
            if let Some(p) = self.progress.get(key) {
                line.push_str(&format!("  on {}: {} {}/{}", p.worker, p.stage, p.done, p.total));
            } else if let Some(w) = &t.worker {
                if t.state == TaskPhase::Leased {
                    line.push_str(&format!("  on {w}"));
                }
            }
            if let Some(ms) = t.retry_in_ms {
                line.push_str(&format!("  retry in {:.1}s", ms as f64 / 1000.0));
            }
            for (class, message) in &t.failures {
                let first = message.lines().next().unwrap_or_default();
                line.push_str(&format!("\n      failed ({class}): {first}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
        let c = &self.snapshot.counts;
        out.push_str(&format!(
            "tasks: {} committed, {} leased, {} ready, {} in backoff, {} waiting, {} failed\n",
            c.committed, c.leased, c.ready, c.backoff, c.waiting, c.failed
        ));
        for (id, w) in &self.workers {
            out.push_str(&format!("worker {id} on {} ({})\n", w.node, w.device));
        }
        if let Some(f) = &self.snapshot.failure {
            out.push_str(&format!("run failed: {f}\n"));
        } else if self.snapshot.finished {
            out.push_str("run finished\n");
        }
        out
    }
}
