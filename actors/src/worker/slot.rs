//! A slot: one device of a worker process. It pulls leases for every task kind, hands each job
//! to the role actor of its kind, keeps the lease alive from its heartbeat thread while the job
//! runs, and reports the manifest or the failure. It supervises its role actors: one that fails
//! (a panicking stage) is restarted within the restart budget, past which the slot fails and
//! its node supervisor decides.

use super::heartbeat::{Heartbeats, OnLost, ProgressCell};
use super::restart::{RestartBudget, RestartPolicy};
use super::roles::{Role, RoleActor, RunJob, TaskFailure};
use crate::executor::{CancelToken, Executor, Job};
use crate::scheduler::{report_window, FailureClass};
use crate::task::TaskKind;
use crate::transport::trace::{self, TraceCarrier};
use crate::transport::{backoff, CoordinatorClient, Transport};
use pspace_proto::{complete_reply, task_result, Failure, Lease, LeaseRequest, TaskResult, WorkerInfo};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How a slot is set up.
#[derive(Clone)]
pub struct SlotArgs {
    pub worker_id: String,
    pub node_name: String,
    pub device: String,
    pub transport: Transport,
    pub executor: Arc<Mutex<Executor>>,
    pub heartbeat: Duration,
    pub lease: Duration,
    pub on_lost: OnLost,
    pub restart: RestartPolicy,
    /// Give up when the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// Set when the worker is asked to stop (SIGTERM): finish the task in hand, take no new one.
    pub draining: Arc<AtomicBool>,
}

/// A slot's stop reason when it stopped asking for leases because the worker is draining.
pub const DRAINED: &str = "drained";

pub enum SlotMsg {
    /// Ask for the next lease (the slot sends this to itself).
    Next,
}

pub struct Slot;

pub struct SlotState {
    args: SlotArgs,
    client: CoordinatorClient,
    roles: BTreeMap<Role, ActorRef<RunJob>>,
    role_of: BTreeMap<ActorId, Role>,
    budget: RestartBudget,
    heartbeats: Heartbeats,
    unreachable_since: Option<Instant>,
    transport_failures: u32,
}

impl Slot {
    async fn spawn_role(
        myself: &ActorRef<SlotMsg>,
        state: &mut SlotState,
        role: Role,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, _) = Actor::spawn_linked(
            None,
            RoleActor { role },
            state.args.executor.clone(),
            myself.get_cell(),
        )
        .await?;
        state.role_of.insert(actor.get_id(), role);
        state.roles.insert(role, actor);
        Ok(())
    }
}

impl Actor for Slot {
    type Msg = SlotMsg;
    type State = SlotState;
    type Arguments = SlotArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SlotMsg>,
        args: SlotArgs,
    ) -> Result<SlotState, ActorProcessingErr> {
        let client = args.transport.client()?;
        let heartbeats = Heartbeats::start(
            args.transport.clone(),
            args.worker_id.clone(),
            args.heartbeat,
            args.lease,
            args.on_lost,
        );
        let mut state = SlotState {
            budget: RestartBudget::new(args.restart),
            args,
            client,
            roles: BTreeMap::new(),
            role_of: BTreeMap::new(),
            heartbeats,
            unreachable_since: None,
            transport_failures: 0,
        };
        for role in Role::ALL {
            Slot::spawn_role(&myself, &mut state, role).await?;
        }
        myself.send_message(SlotMsg::Next)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SlotMsg>,
        _msg: SlotMsg,
        state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        if state.args.draining.load(Ordering::SeqCst) {
            myself.stop(Some(DRAINED.into()));
            return Ok(());
        }
        let request = LeaseRequest {
            worker: Some(WorkerInfo {
                worker_id: state.args.worker_id.clone(),
                node_name: state.args.node_name.clone(),
                kinds: TaskKind::ALL.iter().map(|k| k.as_str().to_string()).collect(),
                device: state.args.device.clone(),
            }),
        };
        let (reply, carrier) = match state.client.acquire(request).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                let since = *state.unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > state.args.give_up_after {
                    myself.stop(Some(format!("failed: {e} (for {:?})", since.elapsed())));
                    return Ok(());
                }
                state.transport_failures += 1;
                let wait = backoff(state.transport_failures, Duration::from_secs(5));
                tracing::warn!("worker {}: {e}; retrying in {wait:?}", state.args.worker_id);
                myself.send_after(wait, || SlotMsg::Next);
                return Ok(());
            }
            Err(e) => {
                myself.stop(Some(format!("failed: {e}")));
                return Ok(());
            }
        };
        state.unreachable_since = None;
        state.transport_failures = 0;
        if !reply.failed.is_empty() {
            myself.stop(Some(format!("failed: {}", reply.failed)));
        } else if reply.finished {
            myself.stop(Some("finished".into()));
        } else if let Some(lease) = reply.lease {
            run_lease(state, lease, &carrier).await;
            myself.send_message(SlotMsg::Next)?;
        } else {
            myself.send_after(
                Duration::from_millis(reply.retry_after_ms.clamp(10, 5_000)),
                || SlotMsg::Next,
            );
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SlotMsg>,
        event: SupervisionEvent,
        state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        // ractor's default stops the supervisor when a child dies; a slot restarts it instead.
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let Some(role) = state.role_of.remove(&cell.get_id()) else {
                return Ok(());
            };
            match state.budget.allow(Instant::now()) {
                Some(wait) => {
                    eprintln!(
                        "worker {}: the {} actor failed ({error}); restarting it in {wait:?}",
                        state.args.worker_id,
                        role.name()
                    );
                    tokio::time::sleep(wait).await;
                    Slot::spawn_role(&myself, state, role).await?;
                }
                None => {
                    let p = state.budget.policy();
                    return Err(format!(
                        "the {} actor failed more than {} times in {:?} (last: {error}); giving up on this slot",
                        role.name(),
                        p.max_restarts,
                        p.window
                    )
                    .into());
                }
            }
        }
        Ok(())
    }
}

// A report is retried for `report_window` (scheduler::policy). One try over gRPC ends within
// the transport's call deadline (20 s), sooner when its connection is found dead (HTTP/2
// keep-alive), and the next try connects afresh; so a report sent into a partition still gets
// its answer in the window.

/// Runs one lease to its end and reports the outcome (retrying the report while the
/// coordinator is unreachable, see [`crate::scheduler::report_window`]). Everything happens in an `execute`
/// span whose parent is the coordinator's span of this lease (`carrier`), so the stages' spans
/// and the coordinator's commit land under the lease in the run's trace.
async fn run_lease(state: &mut SlotState, lease: Lease, carrier: &TraceCarrier) {
    let worker_id = state.args.worker_id.clone();
    let span = tracing::info_span!(
        "execute",
        otel.name = %format!("execute {}", lease.task),
        task.key = %lease.task,
        attempt = lease.attempt,
        worker = %worker_id,
        device = %state.args.device,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    trace::set_parent(&span, carrier);
    let outcome = match serde_json::from_str::<Job>(&lease.job_json) {
        Ok(job) => run_job(state, &lease, job, &span).instrument(span.clone()).await,
        Err(e) => Err(TaskFailure {
            class: FailureClass::Deterministic,
            message: format!("the lease carries a job this worker cannot read: {e}"),
        }),
    };
    if let Err(f) = &outcome {
        span.record("otel.status_code", "ERROR");
        span.record("error", format!("{}: {}", f.class.as_str(), f.message));
    }
    let cancelled = matches!(&outcome, Err(f) if f.class == FailureClass::Preempted);
    let outcome = match outcome {
        Ok(manifest) => match serde_json::to_string(&manifest) {
            Ok(json) => task_result::Outcome::ManifestJson(json),
            Err(e) => task_result::Outcome::Failure(Failure {
                class: FailureClass::Crash.as_str().into(),
                message: format!("cannot encode the manifest: {e}"),
            }),
        },
        Err(f) => task_result::Outcome::Failure(Failure {
            class: f.class.as_str().into(),
            message: f.message,
        }),
    };
    let result = TaskResult {
        lease_id: lease.lease_id.clone(),
        worker_id: worker_id.clone(),
        outcome: Some(outcome),
    };
    let started = Instant::now();
    let mut tries = 0;
    loop {
        match state
            .client
            .complete(result.clone())
            .instrument(span.clone())
            .await
        {
            Ok(reply) => {
                let status =
                    complete_reply::Status::try_from(reply.status).unwrap_or(complete_reply::Status::Refused);
                span.record("outcome", status.as_str_name().to_ascii_lowercase().as_str());
                match status {
                    complete_reply::Status::Committed => {}
                    complete_reply::Status::Lost => {
                        eprintln!(
                            "worker {worker_id}: {} was committed by another attempt; ours is discarded",
                            lease.task
                        )
                    }
                    complete_reply::Status::Refused => {
                        eprintln!(
                            "worker {worker_id}: completion of {} refused: {}",
                            lease.task, reply.message
                        )
                    }
                    complete_reply::Status::Recorded => {
                        if reply.message.starts_with(crate::coordinator::RUN_FAILED) {
                            eprintln!("worker {worker_id}: {} failed, and the run with it", lease.task)
                        } else {
                            eprintln!("worker {worker_id}: {} failed: {}", lease.task, reply.message)
                        }
                    }
                }
                break;
            }
            Err(e) if e.is_transient() && started.elapsed() < report_window(state.args.lease) => {
                if tries == 0 {
                    eprintln!(
                        "worker {worker_id}: reporting {} failed ({e}); retrying for up to {:?}",
                        lease.task,
                        report_window(state.args.lease)
                    );
                }
                tries += 1;
                tokio::time::sleep(backoff(tries, Duration::from_secs(2))).await;
            }
            Err(e) => {
                eprintln!("worker {worker_id}: cannot report {}: {e}", lease.task);
                break;
            }
        }
    }
    if cancelled && state.args.on_lost == OnLost::Exit {
        eprintln!(
            "worker {worker_id}: exiting after losing the lease of {}",
            lease.task
        );
        std::process::exit(3);
    }
}

async fn run_job(
    state: &mut SlotState,
    lease: &Lease,
    job: Job,
    span: &tracing::Span,
) -> Result<crate::store::Manifest, TaskFailure> {
    let role = Role::for_kind(job.task.kind);
    let crashed = |why: String| TaskFailure {
        class: FailureClass::Crash,
        message: why,
    };
    let Some(actor) = state.roles.get(&role).cloned() else {
        return Err(crashed(format!(
            "the {} actor is not running (being restarted)",
            role.name()
        )));
    };
    let cancel = CancelToken::new();
    let progress = ProgressCell::default();
    state.heartbeats.track(&lease.lease_id, &cancel, &progress);
    let job = Box::new(job);
    let answer = actor
        .call(
            |reply| RunJob {
                job,
                cancel: cancel.clone(),
                progress: progress.clone(),
                span: span.clone(),
                reply,
            },
            None,
        )
        .await;
    state.heartbeats.untrack();
    let outcome = match answer {
        Ok(CallResult::Success(outcome)) => outcome,
        Ok(_) | Err(_) => Err(crashed(format!(
            "the {} actor stopped before answering",
            role.name()
        ))),
    };
    if cancel.is_cancelled() {
        if let Err(f) = &outcome {
            return Err(TaskFailure {
                class: FailureClass::Preempted,
                message: f.message.clone(),
            });
        }
    }
    outcome
}
