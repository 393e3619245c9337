//! The coordinator actor's state and what each message does to it: the scheduler's decisions
//! turned into leases (jobs a worker can run alone), store commits and journal entries.

use super::journal::{current_run, histories, run_trace, unix_ms, Event, Journal};
use super::status::{LeaseProgress, RunStatus, TaskOutcome, WorkerView};
use super::{CoordinatorConfig, CoordinatorError};
use crate::executor::{Dependency, Job};
use crate::plan::{manifest_digest, PlanEntry};
use crate::scheduler::{
    report_window, Acquire, Committed, Decision, FailureClass, KeepAlive, LeaseId, Scheduler, TaskRef,
};
use crate::store::{CommitOutcome, Manifest, StoreError};
use crate::task::TaskKind;
use crate::transport::trace::{self, TraceCarrier};
use pspace_proto::{
    complete_reply, task_result, CompleteReply, Heartbeat, HeartbeatReply, Lease, LeaseReply, LeaseRequest,
    RunInfo, TaskResult, WorkerInfo,
};
use std::collections::{BTreeMap, BTreeSet};

/// A lease out with a worker.
struct Out {
    worker: String,
    dir: String,
    attempt: String,
    /// When it was granted (unix ms): a committing attempt's time runs from here.
    granted_ms: u64,
    progress: LeaseProgress,
    /// Open from grant to its end (committed, lost, failed, expired); child of the task's span,
    /// parent of the worker's spans for this attempt.
    span: tracing::Span,
}

impl Out {
    /// Ends the lease's span with how the lease ended (and the error, for a failure).
    fn end(self, outcome: &str, error: Option<&str>) {
        self.span.record("outcome", outcome);
        if let Some(e) = error {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error", e);
        }
    }
}

pub struct CoordinatorState {
    pub(super) config: CoordinatorConfig,
    scheduler: Scheduler,
    entries: BTreeMap<TaskRef, PlanEntry>,
    order: Vec<TaskRef>,
    committed: BTreeMap<TaskRef, Dependency>,
    probed: BTreeSet<TaskRef>,
    outcomes: BTreeMap<TaskRef, TaskOutcome>,
    leases: BTreeMap<String, Out>,
    workers: BTreeMap<String, WorkerView>,
    /// First grant of each running task (unix ms), for its duration.
    started: BTreeMap<TaskRef, u64>,
    /// One span per task, child of the run span, open from first grant to commit.
    spans: BTreeMap<TaskRef, tracing::Span>,
    journal: Journal,
    ended: bool,
    /// Expired leases whose worker may still report, see [`RunStatus::awaiting_reports`].
    awaiting_reports: BTreeMap<String, u64>,
}

impl CoordinatorState {
    /// The run as the store has it: a new epoch, attempts and budgets from the journal,
    /// committed tasks probed in plan order.
    pub async fn load(config: CoordinatorConfig, plan: Vec<PlanEntry>) -> Result<Self, CoordinatorError> {
        let (mut journal, events) = Journal::open(&config.store, &config.spec.experiment.name).await?;
        join_run_trace(&config.run_span, current_run(&events), &mut journal).await;
        let nodes = plan.iter().map(PlanEntry::node).collect();
        let nonce_seed = unix_ms() ^ journal.epoch.rotate_left(32);
        let mut scheduler = Scheduler::new(nodes, journal.epoch, config.timing, config.policy, nonce_seed)?;
        let order: Vec<TaskRef> = plan.iter().map(|e| e.key.clone()).collect();
        let entries: BTreeMap<TaskRef, PlanEntry> = plan.into_iter().map(|e| (e.key.clone(), e)).collect();
        for (task, history) in histories(current_run(&events)) {
            if entries.contains_key(&task) {
                scheduler.restore(&task, history.attempts, &history.failures);
            }
        }
        let mut state = CoordinatorState {
            config,
            scheduler,
            entries,
            order,
            committed: BTreeMap::new(),
            probed: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            leases: BTreeMap::new(),
            workers: BTreeMap::new(),
            started: BTreeMap::new(),
            spans: BTreeMap::new(),
            journal,
            ended: false,
            awaiting_reports: BTreeMap::new(),
        };
        state.settle().await?;
        Ok(state)
    }

    pub fn epoch(&self) -> u64 {
        self.journal.epoch
    }

    /// The digest a dependant's id hashes, for a committed task.
    fn digest_of(&self, key: &TaskRef) -> Option<String> {
        self.committed.get(key).map(|d| manifest_digest(&d.manifest))
    }

    /// The task of `key` with its inputs filled in, and its store folder; None while a
    /// dependency is not committed.
    fn resolve(&self, key: &TaskRef) -> Option<(crate::task::Task, String)> {
        let entry = self.entries.get(key)?;
        let task = entry.resolve(|d| self.digest_of(d))?;
        let dir = entry.dir(&self.config.spec.experiment.name, &task);
        Some((task, dir))
    }

    /// Marks committed every task whose inputs are committed and whose manifest is already in
    /// the store (plan order is dependency order, so one pass follows chains).
    async fn settle(&mut self) -> Result<(), StoreError> {
        for key in self.order.clone() {
            if self.committed.contains_key(&key) || self.probed.contains(&key) {
                continue;
            }
            let Some((task, dir)) = self.resolve(&key) else {
                continue;
            };
            self.probed.insert(key.clone());
            let store = &self.config.store;
            let found = store.committed_manifest(&dir).await?;
            if found.is_none() && store.read_manifest(&dir).await?.is_some() {
                // A manifest whose outputs changed since it was written: set it aside (the
                // create-only commit of the re-run needs its place) and run the task again.
                let key = format!("{dir}/manifest.json");
                let aside = format!("{dir}/manifest.damaged-{}.json", unix_ms());
                let bytes = store.get(&key).await?;
                store.put(&aside, bytes.to_vec()).await?;
                store.delete(&key).await?;
                tracing::warn!("{dir}: an output no longer matches its manifest; moved it to {aside} and running the task again");
                eprintln!("coordinator: {dir}: an output no longer matches its manifest (kept as {aside}); running it again");
            }
            if let Some(manifest) = found {
                let span = self.task_span(&key, &task);
                span.record("cached", true);
                self.spans.remove(&key);
                self.record_commit(&key, &task.id(), dir, manifest, None);
            }
        }
        Ok(())
    }

    fn task_span(&mut self, key: &TaskRef, task: &crate::task::Task) -> tracing::Span {
        let parent = self.config.run_span.clone();
        let seed = self.entries.get(key).map(|e| e.seed).unwrap_or_default();
        self.spans
            .entry(key.clone())
            .or_insert_with(|| {
                tracing::info_span!(
                    parent: &parent,
                    "task",
                    otel.name = %format!("{}/{}", task.kind.as_str(), task.label),
                    task.key = %key,
                    task.id = %task.id(),
                    task.kind = task.kind.as_str(),
                    task.label = %task.label,
                    seed,
                    cached = tracing::field::Empty,
                    attempts = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                )
            })
            .clone()
    }

    /// Records a commit; `granted_ms`: the committing lease's grant (None: found committed in
    /// the store, cached).
    fn record_commit(
        &mut self,
        key: &TaskRef,
        task_id: &str,
        dir: String,
        manifest: Manifest,
        granted_ms: Option<u64>,
    ) {
        let cached = granted_ms.is_none();
        let digest = manifest_digest(&manifest);
        if !cached {
            // The scheduler learnt of it through `committed`.
        } else if let Err(e) = self.scheduler.mark_committed(
            key,
            Committed {
                dir: dir.clone(),
                digest,
            },
        ) {
            tracing::warn!("{e}");
        }
        // The attempt that committed, apart from the ones before it: a retried task's first
        // grant would otherwise count its failed attempts into its stage's time.
        let now = unix_ms();
        let (seconds, lost_seconds) = match granted_ms {
            None => (0.0, 0.0),
            Some(granted) => {
                let first = self.started.get(key).copied().unwrap_or(granted).min(granted);
                let seconds = now.saturating_sub(granted) as f64 / 1000.0;
                (seconds, (granted - first) as f64 / 1000.0)
            }
        };
        let order = self.outcomes.len();
        self.outcomes.insert(
            key.clone(),
            TaskOutcome {
                task_id: task_id.to_string(),
                outputs_dir: manifest.output_key(&dir, "").trim_end_matches('/').to_string(),
                dir: dir.clone(),
                cached,
                seconds,
                lost_seconds,
                order,
            },
        );
        self.committed.insert(key.clone(), Dependency { dir, manifest });
    }

    pub fn register(&mut self, info: WorkerInfo) -> RunInfo {
        self.workers.insert(
            info.worker_id.clone(),
            WorkerView {
                node: info.node_name.clone(),
                device: info.device.clone(),
                last_seen_unix_ms: unix_ms(),
            },
        );
        tracing::info!(worker = %info.worker_id, device = %info.device, "worker registered");
        RunInfo {
            spec_toml: self.config.spec_toml.clone(),
            spec_origin: self.config.spec.origin.clone(),
            spec_root: self.config.spec.root.display().to_string(),
            model: self.config.model.clone(),
            store: self.config.store_location.clone(),
            heartbeat_ms: self.config.timing.heartbeat_ms,
            lease_ms: self.config.timing.lease_ms,
            epoch: self.journal.epoch,
            dtype: self
                .config
                .spec
                .experiment
                .fixed_dtype()
                .map(|d| d.to_string())
                .unwrap_or_default(),
        }
    }

    fn seen(&mut self, worker: &str) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen_unix_ms = unix_ms();
        }
    }

    /// A lease for the worker (with the trace context of the lease's span), or why not.
    pub async fn acquire(&mut self, request: LeaseRequest) -> Result<(LeaseReply, TraceCarrier), StoreError> {
        let worker = request.worker.unwrap_or_default();
        self.seen(&worker.worker_id);
        let kinds: Vec<TaskKind> = worker.kinds.iter().filter_map(|k| TaskKind::parse(k)).collect();
        let now = unix_ms();
        match self.scheduler.acquire(&worker.worker_id, &kinds, now) {
            Acquire::Granted(grant) => {
                let key = grant.lease.task.clone();
                let Some((task, dir)) = self.resolve(&key) else {
                    // The scheduler granted a task whose inputs are not all committed: a bug.
                    let reply = LeaseReply {
                        failed: format!("internal error: {key} granted before its inputs committed"),
                        ..Default::default()
                    };
                    return Ok((reply, TraceCarrier::new()));
                };
                let entry = &self.entries[&key];
                let deps = entry
                    .deps
                    .iter()
                    .filter_map(|(k, input)| Some((input.clone(), self.committed.get(k)?.clone())))
                    .collect();
                let attempt = crate::store::attempt_name(grant.lease.attempt, grant.lease.nonce);
                let job = Job {
                    seed: entry.seed,
                    task: task.clone(),
                    dir: dir.clone(),
                    attempt: attempt.clone(),
                    deps,
                };
                let lease_id = grant.lease.to_string();
                self.journal
                    .append(&Event::Granted {
                        task: key.clone(),
                        id: Some(task.id()),
                        attempt: grant.lease.attempt,
                        lease: lease_id.clone(),
                        worker: worker.worker_id.clone(),
                        unix_ms: now,
                    })
                    .await?;
                self.started.entry(key.clone()).or_insert(now);
                let span = self.task_span(&key, &task);
                span.record("attempts", grant.lease.attempt);
                let lease_span = tracing::info_span!(
                    parent: &span,
                    "lease",
                    otel.name = %format!("lease a{}", grant.lease.attempt),
                    task.key = %key,
                    attempt = grant.lease.attempt,
                    worker = %worker.worker_id,
                    lease = %lease_id,
                    outcome = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                );
                let carrier = trace::carrier_of(&lease_span);
                self.leases.insert(
                    lease_id.clone(),
                    Out {
                        worker: worker.worker_id.clone(),
                        dir,
                        attempt,
                        granted_ms: now,
                        progress: LeaseProgress {
                            worker: worker.worker_id.clone(),
                            stage: "starting".into(),
                            done: 0,
                            total: 0,
                        },
                        span: lease_span,
                    },
                );
                let job_json = serde_json::to_string(&job).map_err(|cause| StoreError::BadManifest {
                    key: format!("job of {key}"),
                    cause,
                })?;
                let reply = LeaseReply {
                    lease: Some(Lease {
                        lease_id,
                        task: key.to_string(),
                        kind: grant.kind.as_str().to_string(),
                        job_json,
                        expires_unix_ms: grant.expires_ms,
                        attempt: grant.lease.attempt,
                    }),
                    ..Default::default()
                };
                Ok((reply, carrier))
            }
            Acquire::Wait { retry_after_ms } => Ok((
                LeaseReply {
                    retry_after_ms,
                    ..Default::default()
                },
                TraceCarrier::new(),
            )),
            Acquire::Finished => {
                self.end(None).await;
                let reply = LeaseReply {
                    finished: true,
                    ..Default::default()
                };
                Ok((reply, TraceCarrier::new()))
            }
            Acquire::Failed(failure) => {
                self.end(Some(failure.to_string())).await;
                let reply = LeaseReply {
                    failed: failure.to_string(),
                    ..Default::default()
                };
                Ok((reply, TraceCarrier::new()))
            }
        }
    }

    /// Journals the end of the run once (a later start then begins with fresh budgets).
    async fn end(&mut self, failure: Option<String>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Err(e) = self
            .journal
            .append(&Event::RunEnded {
                failure,
                unix_ms: unix_ms(),
            })
            .await
        {
            tracing::warn!("cannot journal the end of the run: {e}");
        }
    }

    pub fn keep_alive(&mut self, beat: Heartbeat) -> HeartbeatReply {
        self.seen(&beat.worker_id);
        let lost = HeartbeatReply {
            expires_unix_ms: 0,
            still_yours: false,
        };
        let Ok(lease) = beat.lease_id.parse::<LeaseId>() else {
            return lost;
        };
        match self.scheduler.keep_alive(&lease, unix_ms()) {
            KeepAlive::Extended { expires_ms } => {
                if let Some(out) = self.leases.get_mut(&beat.lease_id) {
                    out.progress.stage = beat.stage;
                    out.progress.done = beat.done;
                    out.progress.total = beat.total;
                }
                HeartbeatReply {
                    expires_unix_ms: expires_ms,
                    still_yours: true,
                }
            }
            KeepAlive::Lost => lost,
        }
    }

    /// A worker's result: a manifest to commit or a failure to record. `carrier` is the trace
    /// context of the worker's span that sent it: the commit span is its child (else the
    /// lease's).
    pub async fn complete(
        &mut self,
        result: TaskResult,
        carrier: &TraceCarrier,
    ) -> Result<CompleteReply, StoreError> {
        let span = match self.leases.get(&result.lease_id) {
            Some(out) => {
                tracing::info_span!(parent: &out.span, "commit", worker = %result.worker_id, outcome = tracing::field::Empty, reason = tracing::field::Empty)
            }
            None => {
                tracing::info_span!(parent: &self.config.run_span, "commit", worker = %result.worker_id, outcome = tracing::field::Empty, reason = tracing::field::Empty)
            }
        };
        trace::set_parent(&span, carrier);
        let reply = tracing::Instrument::instrument(self.complete_in_span(result), span.clone()).await?;
        let outcome = complete_reply::Status::try_from(reply.status)
            .map(|s| s.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| format!("unknown status {}", reply.status));
        span.record("outcome", outcome.as_str());
        if !reply.message.is_empty() {
            span.record("reason", reply.message.as_str());
        }
        Ok(reply)
    }

    async fn complete_in_span(&mut self, result: TaskResult) -> Result<CompleteReply, StoreError> {
        self.seen(&result.worker_id);
        self.awaiting_reports.remove(&result.lease_id);
        let refused = |message: String| CompleteReply {
            status: complete_reply::Status::Refused as i32,
            message,
        };
        let lease = match result.lease_id.parse::<LeaseId>() {
            Ok(l) => l,
            Err(e) => return Ok(refused(e.to_string())),
        };
        match result.outcome {
            None => Ok(refused(
                "the result carries neither a manifest nor a failure".into(),
            )),
            Some(task_result::Outcome::Failure(f)) => {
                Ok(self.failed(&result.lease_id, &lease, &f.class, &f.message).await)
            }
            Some(task_result::Outcome::ManifestJson(json)) => {
                let manifest: Manifest = match serde_json::from_str(&json) {
                    Ok(m) => m,
                    Err(e) => return Ok(refused(format!("the manifest is not valid JSON: {e}"))),
                };
                self.commit(&result.lease_id, &lease, manifest).await
            }
        }
    }

    async fn failed(&mut self, lease_id: &str, lease: &LeaseId, class: &str, message: &str) -> CompleteReply {
        let class = FailureClass::ALL
            .into_iter()
            .find(|c| c.as_str() == class)
            .unwrap_or(FailureClass::Crash);
        let now = unix_ms();
        match self.scheduler.failed(lease, class, message, now) {
            Err(refusal) => CompleteReply {
                status: complete_reply::Status::Refused as i32,
                message: refusal.to_string(),
            },
            Ok(decision) => {
                if let Some(out) = self.leases.remove(lease_id) {
                    out.end("failed", Some(&format!("{class}: {message}")));
                }
                self.journal_failure(lease, class, message, &decision).await;
                CompleteReply {
                    status: complete_reply::Status::Recorded as i32,
                    message: describe(&decision),
                }
            }
        }
    }

    async fn journal_failure(
        &mut self,
        lease: &LeaseId,
        class: FailureClass,
        message: &str,
        decision: &Decision,
    ) {
        if let Some(span) = self.spans.get(&lease.task) {
            span.in_scope(|| tracing::warn!(attempt = lease.attempt, %class, "attempt failed: {message}"));
            if let Decision::RunFailed(f) = decision {
                span.record("otel.status_code", "ERROR");
                span.record("error", tracing::field::display(f));
            }
        }
        let event = Event::Failed {
            task: lease.task.clone(),
            // Its inputs stay committed, so it resolves to the id it was granted under.
            id: self.resolve(&lease.task).map(|(task, _)| task.id()),
            attempt: lease.attempt,
            class,
            message: message.to_string(),
            unix_ms: unix_ms(),
        };
        if let Err(e) = self.journal.append(&event).await {
            tracing::warn!("cannot journal a failure of {}: {e}", lease.task);
        }
    }

    async fn commit(
        &mut self,
        lease_id: &str,
        lease: &LeaseId,
        manifest: Manifest,
    ) -> Result<CompleteReply, StoreError> {
        let reply = |status: complete_reply::Status, message: String| CompleteReply {
            status: status as i32,
            message,
        };
        if let Err(refusal) = self.scheduler.check_completion(lease, unix_ms()) {
            // A late report of a task another attempt committed: its outputs are in the store
            // by now (a worker uploads before it reports) and no manifest will name them.
            if let Some(done) = self.committed.get(&lease.task) {
                let (dir, keep) = (done.dir.clone(), done.manifest.attempt.clone());
                self.remove_other_attempts(&dir, &keep).await;
            }
            return Ok(reply(complete_reply::Status::Refused, refusal.to_string()));
        }
        let Some(out) = self.leases.get(lease_id) else {
            return Ok(reply(
                complete_reply::Status::Refused,
                "no such lease is out".into(),
            ));
        };
        if manifest.attempt != out.attempt {
            return Ok(reply(
                complete_reply::Status::Refused,
                format!(
                    "the manifest is of attempt {:?}, the lease of {:?}",
                    manifest.attempt, out.attempt
                ),
            ));
        }
        let dir = out.dir.clone();
        let granted_ms = out.granted_ms;
        let (status, manifest) = match self.config.store.commit_create(&dir, &manifest).await? {
            CommitOutcome::Committed => (complete_reply::Status::Committed, manifest),
            CommitOutcome::Lost(there) => (complete_reply::Status::Lost, there),
        };
        // Whichever attempt won, the others' outputs (lost leases, killed workers) go.
        self.remove_other_attempts(&dir, &manifest.attempt).await;
        let digest = manifest_digest(&manifest);
        if let Err(refusal) = self.scheduler.committed(
            lease,
            Committed {
                dir: dir.clone(),
                digest,
            },
        ) {
            return Ok(reply(complete_reply::Status::Refused, refusal.to_string()));
        }
        if let Some(out) = self.leases.remove(lease_id) {
            let outcome = match status {
                complete_reply::Status::Committed => "committed",
                _ => "lost",
            };
            out.end(outcome, None);
        }
        if let Some(span) = self.spans.remove(&lease.task) {
            span.record("cached", false);
        }
        let task_id = manifest.task_id.clone();
        self.record_commit(&lease.task, &task_id, dir, manifest, Some(granted_ms));
        self.settle().await?;
        Ok(reply(status, String::new()))
    }

    /// Deletes the outputs that attempts other than the committed one (`keep`) left in the
    /// task folder `dir` (`Store::remove_other_attempts`); a failure is logged, never the
    /// commit's. Inline, not spawned: one listing of the task folder per commit (and deletions
    /// only where an attempt was lost), and a run's last commit must not exit before it.
    async fn remove_other_attempts(&self, dir: &str, keep: &str) {
        match self.config.store.remove_other_attempts(dir, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{dir}: removed {n} objects of attempts other than {keep}"),
            Err(e) => tracing::warn!("{dir}: cannot remove other attempts' outputs: {e}"),
        }
    }

    /// Expires the leases past their deadline (their tasks go back with attempt + 1).
    pub async fn tick(&mut self) -> Result<(), StoreError> {
        let now = unix_ms();
        self.awaiting_reports.retain(|_, until| *until > now);
        let lease_time = std::time::Duration::from_millis(self.config.timing.lease_ms);
        let late_for = (lease_time + report_window(lease_time)).as_millis() as u64;
        for (lease, decision) in self.scheduler.expire(now) {
            let id = lease.to_string();
            self.awaiting_reports.insert(id.clone(), now + late_for);
            let out = self.leases.remove(&id);
            // A lease granted before a coordinator restart has no record here.
            let worker = out
                .as_ref()
                .map(|o| o.worker.clone())
                .unwrap_or_else(|| "(not recorded)".into());
            let message = format!("lease expired: worker {worker} stopped renewing it");
            if let Some(out) = out {
                out.end("expired", Some(&message));
            }
            tracing::warn!(task = %lease.task, attempt = lease.attempt, "{message}");
            self.journal_failure(&lease, FailureClass::Preempted, &message, &decision)
                .await;
        }
        if self.scheduler.is_finished() {
            self.end(None).await;
        } else if let Some(f) = self.scheduler.failure() {
            let f = f.to_string();
            self.end(Some(f)).await;
        }
        Ok(())
    }

    pub fn status(&self) -> RunStatus {
        RunStatus {
            experiment: self.config.spec.experiment.name.clone(),
            store: self.config.store_location.clone(),
            snapshot: self.scheduler.snapshot(unix_ms()),
            outcomes: self
                .outcomes
                .iter()
                .map(|(k, o)| (k.to_string(), o.clone()))
                .collect(),
            progress: self
                .leases
                .iter()
                .filter_map(|(id, out)| {
                    let lease = id.parse::<LeaseId>().ok()?;
                    Some((lease.task.to_string(), out.progress.clone()))
                })
                .collect(),
            workers: self.workers.clone(),
            awaiting_reports: self.awaiting_reports.clone(),
        }
    }
}

/// One trace per run across coordinator restarts. The first coordinator of a run journals its
/// run span's trace context; a later one (a restart, before the run ended) makes its run span a
/// child of that saved span, so its tasks, leases and the workers' spans under them carry the
/// run's trace id. Must run before anything enters the run span or opens a child of it (an
/// OpenTelemetry span's parent is fixed when it starts). Tracing off: nothing is journaled.
async fn join_run_trace(run_span: &tracing::Span, run: &[Event], journal: &mut Journal) {
    if run_span.is_disabled() {
        return;
    }
    run_span.record("epoch", journal.epoch);
    if let Some(saved) = run_trace(run) {
        let carrier: TraceCarrier = saved.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        trace::set_parent(run_span, &carrier);
        return;
    }
    let context = trace::carrier_of(run_span);
    if context.is_empty() {
        return;
    }
    let event = Event::RunTrace {
        context: context.into_iter().collect(),
        unix_ms: unix_ms(),
    };
    // Without it a restart starts a trace of its own; the run itself is unaffected.
    if let Err(e) = journal.append(&event).await {
        tracing::warn!("cannot journal the run's trace context: {e}");
    }
}

fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Retry {
            attempt,
            not_before_ms,
        } => {
            let wait = not_before_ms.saturating_sub(unix_ms());
            format!("retried as attempt {attempt} in {:.1}s", wait as f64 / 1000.0)
        }
        Decision::RunFailed(f) => format!("{}{f}", super::RUN_FAILED),
    }
}
