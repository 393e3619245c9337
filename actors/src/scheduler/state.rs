//! The scheduler's state and the events that change it.
//!
//! Every task is in one [`Phase`]; every event about a lease first resolves the lease against the
//! current lease of its task ([`Scheduler::resolve`]) and is refused without any change when it
//! is not that lease. Leases of this epoch that ended are remembered per task (a few dozen at
//! most), so a stale worker is told precisely why it was refused.

use super::graph::Graph;
use super::lease::SplitMix64;
use super::{
    Acquire, Committed, Decision, FailureClass, Grant, KeepAlive, LeaseId, PlanNode, Refusal, RetryPolicy,
    RunFailure, SchedulerError, TaskRef, Timing, MAX_WAIT_MS,
};
use crate::task::TaskKind;

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// A dependency is not committed yet.
    Waiting,
    Ready,
    /// Ready again once the caller's clock reaches `not_before_ms`.
    Backoff {
        not_before_ms: u64,
    },
    Leased {
        lease: LeaseId,
        expires_ms: u64,
    },
    Committed(Committed),
    /// Its budget is spent: the run has failed.
    Failed,
}

/// How a lease of this epoch that is no longer current ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    Expired,
    /// Its worker reported a failure.
    Failed,
    /// It committed, or the task was committed by another route ([`Scheduler::mark_committed`]).
    Committed,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) task: TaskRef,
    pub(super) kind: TaskKind,
    pub(super) phase: Phase,
    /// The attempt number of the latest lease (0 before the first).
    pub(super) attempts: u32,
    /// Every failure of the task, oldest first, restored ones included.
    pub(super) failures: Vec<(FailureClass, String)>,
    /// The worker that holds or last held a lease, for status only.
    pub(super) worker: Option<String>,
    /// (attempt, nonce, ending) of this epoch's leases that are no longer current.
    ended: Vec<(u32, u64, Ending)>,
}

impl Entry {
    fn failures_of(&self, class: FailureClass) -> u32 {
        let n = self.failures.iter().filter(|(c, _)| *c == class).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn end_lease(&mut self, ending: Ending) {
        if let Phase::Leased { lease, .. } = &self.phase {
            self.ended.push((lease.attempt, lease.nonce, ending));
        }
    }
}

/// The pure state machine described in the module doc.
#[derive(Debug)]
pub struct Scheduler {
    pub(super) epoch: u64,
    pub(super) timing: Timing,
    pub(super) policy: RetryPolicy,
    nonces: SplitMix64,
    graph: Graph,
    pub(super) entries: Vec<Entry>,
    pub(super) failure: Option<RunFailure>,
}

impl Scheduler {
    /// A scheduler for `plan` in coordinator `epoch` (bump it on every coordinator start), with
    /// nonces from SplitMix64 seeded by `nonce_seed`. Errors: the timing fails [`Timing::check`],
    /// or the plan has a duplicate key, an unknown or repeated dependency, or a cycle (the error
    /// names the tasks).
    pub fn new(
        plan: Vec<PlanNode>,
        epoch: u64,
        timing: Timing,
        policy: RetryPolicy,
        nonce_seed: u64,
    ) -> Result<Scheduler, SchedulerError> {
        timing.check()?;
        let graph = Graph::new(&plan)?;
        let entries = plan
            .into_iter()
            .map(|node| Entry {
                phase: if node.depends_on.is_empty() {
                    Phase::Ready
                } else {
                    Phase::Waiting
                },
                task: node.task,
                kind: node.kind,
                attempts: 0,
                failures: Vec::new(),
                worker: None,
                ended: Vec::new(),
            })
            .collect();
        Ok(Scheduler {
            epoch,
            timing,
            policy,
            nonces: SplitMix64::new(nonce_seed),
            graph,
            entries,
            failure: None,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Carries a task's history over a coordinator restart, from the journal: the next lease is
    /// attempt `max(attempts, failures.len()) + 1`, and `failures` (oldest first) replace the
    /// task's list, so spent budgets stay spent. If they spend a budget the run fails again, as
    /// it did before the restart; a task still in backoff is ready at once (there is no clock
    /// here). A task not in the plan is ignored: a journal may outlive a changed spec.
    pub fn restore(&mut self, task: &TaskRef, attempts: u32, failures: &[(FailureClass, String)]) {
        let Some(&i) = self.graph.index.get(task) else {
            return;
        };
        let entry = &mut self.entries[i];
        let recorded = u32::try_from(failures.len()).unwrap_or(u32::MAX);
        entry.attempts = entry.attempts.max(attempts).max(recorded);
        entry.failures = failures.to_vec();
        if matches!(entry.phase, Phase::Committed(_) | Phase::Leased { .. }) {
            return;
        }
        // Replay the budgets in order: the first failure that spent one is what failed the run.
        let mut counts = [0u32; FailureClass::ALL.len()];
        for (class, message) in failures {
            let n = &mut counts[*class as usize];
            *n = n.saturating_add(1);
            if self.policy.for_class(*class).is_spent(*n) {
                let failure = RunFailure {
                    task: task.clone(),
                    class: *class,
                    attempts: *n,
                    message: message.clone(),
                };
                self.fail_run(i, failure);
                return;
            }
        }
    }

    /// Records a commit that did not come through a lease of this scheduler: found in the store
    /// at start, or won by another attempt's create. Readies the dependants; a lease still out on
    /// the task is ended (its holder is told [`Refusal::AlreadyCommitted`] / [`KeepAlive::Lost`]).
    /// Idempotent for an equal commit; errors for a task not in the plan or a different commit.
    pub fn mark_committed(&mut self, task: &TaskRef, commit: Committed) -> Result<(), SchedulerError> {
        let i = *self
            .graph
            .index
            .get(task)
            .ok_or_else(|| SchedulerError::UnknownTask { task: task.clone() })?;
        match &self.entries[i].phase {
            Phase::Committed(existing) if *existing == commit => return Ok(()),
            Phase::Committed(existing) => {
                let existing = existing.clone();
                return Err(SchedulerError::CommitConflict {
                    task: task.clone(),
                    existing,
                    found: commit,
                });
            }
            _ => {}
        }
        self.entries[i].end_lease(Ending::Committed);
        self.commit(i, commit);
        Ok(())
    }

    /// A lease on the task of highest priority (the longest remaining chain, ties in plan order:
    /// see the module doc of `scheduler`) that is ready (or whose backoff has passed) and whose
    /// kind is in `kinds`; `worker` is recorded for status only. Otherwise `Finished` once
    /// every task is committed, `Failed` once the run has failed, or `Wait` for the time until
    /// the earliest backoff of a matching task ends, at least 1 ms and at most [`MAX_WAIT_MS`].
    /// Expired leases are not reclaimed here: call [`Scheduler::expire`].
    pub fn acquire(&mut self, worker: &str, kinds: &[TaskKind], now_ms: u64) -> Acquire {
        if self.is_finished() {
            return Acquire::Finished;
        }
        if let Some(failure) = &self.failure {
            return Acquire::Failed(failure.clone());
        }
        let mut wait = MAX_WAIT_MS;
        // By index: `grant` needs `self` mutably while the order is borrowed from it.
        for n in 0..self.graph.grant_order.len() {
            let i = self.graph.grant_order[n];
            if !kinds.contains(&self.entries[i].kind) {
                continue;
            }
            match self.entries[i].phase {
                Phase::Backoff { not_before_ms } if not_before_ms > now_ms => {
                    wait = wait.min(not_before_ms - now_ms);
                }
                Phase::Ready | Phase::Backoff { .. } => {
                    if let Some(grant) = self.grant(i, worker, now_ms) {
                        return Acquire::Granted(grant);
                    }
                }
                _ => {}
            }
        }
        Acquire::Wait {
            retry_after_ms: wait.max(1),
        }
    }

    /// Renews `lease` to `now_ms + lease_ms` if it is the current lease of its task and has not
    /// expired (`now_ms < expires_ms`); anything else is `Lost` and changes nothing.
    pub fn keep_alive(&mut self, lease: &LeaseId, now_ms: u64) -> KeepAlive {
        let lease_ms = self.timing.lease_ms;
        let Ok(i) = self.resolve(lease) else {
            return KeepAlive::Lost;
        };
        match &mut self.entries[i].phase {
            Phase::Leased { expires_ms, .. } if now_ms < *expires_ms => {
                *expires_ms = (*expires_ms).max(now_ms.saturating_add(lease_ms));
                KeepAlive::Extended {
                    expires_ms: *expires_ms,
                }
            }
            _ => KeepAlive::Lost,
        }
    }

    /// Whether the coordinator may commit the outputs of `lease`'s attempt: it must be the
    /// current lease of its task and not expired at `now_ms`. Changes nothing.
    pub fn check_completion(&self, lease: &LeaseId, now_ms: u64) -> Result<(), Refusal> {
        let i = self.resolve(lease)?;
        match self.entries[i].phase {
            Phase::Leased { expires_ms, .. } if now_ms >= expires_ms => Err(Refusal::Expired),
            _ => Ok(()),
        }
    }

    /// The store accepted `lease`'s commit: the task is committed, the lease released and the
    /// dependants whose dependencies are now all committed become ready. Takes no time: a lease
    /// that passed its deadline between [`Scheduler::check_completion`] and the store's answer
    /// but was not yet expired still commits. Refused (nothing changes) for any lease that is not
    /// the current one; if the store did accept that commit, record it with
    /// [`Scheduler::mark_committed`].
    pub fn committed(&mut self, lease: &LeaseId, commit: Committed) -> Result<(), Refusal> {
        let i = self.resolve(lease)?;
        self.entries[i].end_lease(Ending::Committed);
        self.commit(i, commit);
        Ok(())
    }

    /// The worker holding `lease` reports a failure of `class`: the lease is released and the
    /// task retried after its class's backoff, or, with the class's budget spent, the run fails.
    /// Refused (nothing changes) for any lease that is not the current one.
    pub fn failed(
        &mut self,
        lease: &LeaseId,
        class: FailureClass,
        message: &str,
        now_ms: u64,
    ) -> Result<Decision, Refusal> {
        let i = self.resolve(lease)?;
        self.entries[i].end_lease(Ending::Failed);
        Ok(self.record_failure(i, class, message.to_string(), now_ms))
    }

    /// Ends every lease whose deadline has passed (`now_ms >= expires_ms`) as a `Preempted`
    /// failure, in plan order, with what was decided for each.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(LeaseId, Decision)> {
        let mut decisions = Vec::new();
        for i in 0..self.entries.len() {
            let entry = &mut self.entries[i];
            let Phase::Leased { lease, expires_ms } = &entry.phase else {
                continue;
            };
            if now_ms < *expires_ms {
                continue;
            }
            let (lease, expires_ms) = (lease.clone(), *expires_ms);
            let holder = entry.worker.as_deref().unwrap_or("an unnamed worker");
            let message = format!("lease {lease} expired at {expires_ms} ms, held by {holder}");
            entry.end_lease(Ending::Expired);
            let decision = self.record_failure(i, FailureClass::Preempted, message, now_ms);
            decisions.push((lease, decision));
        }
        decisions
    }

    /// The attempt number of `task`'s latest lease (0 before the first), for the journal;
    /// `None` for a task not in the plan.
    pub fn attempts(&self, task: &TaskRef) -> Option<u32> {
        self.graph.index.get(task).map(|&i| self.entries[i].attempts)
    }

    /// Every failure of `task`, oldest first, restored ones included: what the coordinator
    /// journals for [`Scheduler::restore`] (e.g. the message of a failure [`Scheduler::expire`]
    /// recorded). `None` for a task not in the plan.
    pub fn failures(&self, task: &TaskRef) -> Option<&[(FailureClass, String)]> {
        self.graph
            .index
            .get(task)
            .map(|&i| self.entries[i].failures.as_slice())
    }

    /// Every task is committed.
    pub fn is_finished(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.phase, Phase::Committed(_)))
    }

    /// The first spent budget, once the run has failed.
    pub fn failure(&self) -> Option<&RunFailure> {
        self.failure.as_ref()
    }

    /// The index of `lease`'s task if `lease` is its current lease (whatever the time), or why not.
    fn resolve(&self, lease: &LeaseId) -> Result<usize, Refusal> {
        if lease.epoch != self.epoch {
            return Err(Refusal::WrongEpoch);
        }
        let i = *self.graph.index.get(&lease.task).ok_or(Refusal::UnknownLease)?;
        let entry = &self.entries[i];
        if let Phase::Leased { lease: current, .. } = &entry.phase {
            if current == lease {
                return Ok(i);
            }
        }
        let ending = entry
            .ended
            .iter()
            .find(|(attempt, nonce, _)| *attempt == lease.attempt && *nonce == lease.nonce)
            .map(|(_, _, ending)| *ending)
            .ok_or(Refusal::UnknownLease)?;
        Err(match (&entry.phase, ending) {
            (Phase::Committed(_), _) | (_, Ending::Committed) => Refusal::AlreadyCommitted,
            (Phase::Leased { .. }, _) => Refusal::Superseded,
            (_, Ending::Expired) => Refusal::Expired,
            (_, Ending::Failed) => Refusal::Released,
        })
    }

    /// Leases task `i` to `worker`; `None` if a dependency is not committed (never, for a task
    /// in `Ready` or `Backoff`: both are entered only with every dependency committed).
    fn grant(&mut self, i: usize, worker: &str, now_ms: u64) -> Option<Grant> {
        let deps = self.graph.deps[i]
            .iter()
            .map(|&d| match &self.entries[d].phase {
                Phase::Committed(c) => Some((self.entries[d].task.clone(), c.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let nonce = self.nonces.next_u64();
        let expires_ms = now_ms.saturating_add(self.timing.lease_ms);
        let entry = &mut self.entries[i];
        entry.attempts = entry.attempts.saturating_add(1);
        let lease = LeaseId {
            epoch: self.epoch,
            task: entry.task.clone(),
            attempt: entry.attempts,
            nonce,
        };
        entry.phase = Phase::Leased {
            lease: lease.clone(),
            expires_ms,
        };
        entry.worker = Some(worker.to_string());
        Some(Grant {
            lease,
            kind: entry.kind,
            deps,
            expires_ms,
        })
    }

    fn commit(&mut self, i: usize, commit: Committed) {
        self.entries[i].phase = Phase::Committed(commit);
        for k in 0..self.graph.dependants[i].len() {
            let d = self.graph.dependants[i][k];
            let all_committed = self.graph.deps[d]
                .iter()
                .all(|&x| matches!(self.entries[x].phase, Phase::Committed(_)));
            if all_committed && self.entries[d].phase == Phase::Waiting {
                self.entries[d].phase = Phase::Ready;
            }
        }
    }

    /// Counts the failure against its class's budget and decides: retry after the backoff, or
    /// fail the run.
    fn record_failure(&mut self, i: usize, class: FailureClass, message: String, now_ms: u64) -> Decision {
        let entry = &mut self.entries[i];
        entry.failures.push((class, message.clone()));
        let n = entry.failures_of(class);
        let policy = self.policy.for_class(class);
        if policy.is_spent(n) {
            let failure = RunFailure {
                task: entry.task.clone(),
                class,
                attempts: n,
                message,
            };
            self.fail_run(i, failure.clone());
            return Decision::RunFailed(failure);
        }
        let not_before_ms = now_ms.saturating_add(policy.backoff_ms(n));
        entry.phase = if not_before_ms > now_ms {
            Phase::Backoff { not_before_ms }
        } else {
            Phase::Ready
        };
        Decision::Retry {
            attempt: entry.attempts.saturating_add(1),
            not_before_ms,
        }
    }

    fn fail_run(&mut self, i: usize, failure: RunFailure) {
        self.entries[i].phase = Phase::Failed;
        self.failure.get_or_insert(failure);
    }
}
