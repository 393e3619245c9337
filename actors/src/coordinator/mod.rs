//! The coordinator: one ractor actor that owns the run's scheduler and is the only writer of
//! commits. Workers (in this process for `pspace run`, over gRPC for `pspace worker`) register,
//! acquire leases, heartbeat and complete through its messages; the actor checks every lease
//! event against the scheduler, commits a worker's manifest create-only in the store, journals
//! grants and failures, and expires leases on a timer.
//!
//! Its state comes back from the store after a restart: committed manifests (probed in plan
//! order, so a task whose inputs are committed and whose manifest exists is never run again)
//! and the journal (attempt numbers and spent budgets). Tasks that were in flight run again.

pub mod journal;
mod state;
pub mod status;

pub use state::CoordinatorState;
pub use status::{LeaseProgress, RunStatus, TaskOutcome, WorkerView};

/// How a recorded failure's reply begins when it failed the run (the run's failure follows):
/// a worker then says only that the task failed, since the failure ends the output of whoever
/// ran it (`pspace run`'s error, a worker's exit line), and said twice it read as two errors.
pub const RUN_FAILED: &str = "the run has failed: ";

use crate::plan::PlanEntry;
use crate::scheduler::{RetryPolicy, SchedulerError, Timing};
use crate::spec::Spec;
use crate::store::{Store, StoreError};
use crate::transport::trace::TraceCarrier;
use pspace_proto::{
    CompleteReply, Heartbeat, HeartbeatReply, LeaseReply, LeaseRequest, RunInfo, TaskResult, WorkerInfo,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("cannot start the coordinator actor: {0}")]
    Spawn(String),
}

/// What a coordinator serves.
#[derive(Clone)]
pub struct CoordinatorConfig {
    pub spec: Arc<Spec>,
    /// The spec's TOML text and name, as workers receive them.
    pub spec_toml: String,
    /// The model as workers should open it (the resolved path, or `demo`).
    pub model: String,
    pub store_location: String,
    pub store: Store,
    pub timing: Timing,
    pub policy: RetryPolicy,
    /// The run's root span: every task's span is its child.
    pub run_span: tracing::Span,
}

/// The coordinator's messages: one per RPC of `pspace.v1.Coordinator`, the status query, and
/// the expiry timer.
pub enum CoordinatorMsg {
    Register(WorkerInfo, RpcReplyPort<RunInfo>),
    /// The reply carries the trace context of the granted lease's span.
    Acquire(
        LeaseRequest,
        RpcReplyPort<Result<(LeaseReply, TraceCarrier), String>>,
    ),
    KeepAlive(Heartbeat, RpcReplyPort<HeartbeatReply>),
    /// With the trace context of the worker's span that reports it.
    Complete(
        TaskResult,
        TraceCarrier,
        RpcReplyPort<Result<CompleteReply, String>>,
    ),
    Status(RpcReplyPort<RunStatus>),
    Tick,
}

/// The actor (its state is [`CoordinatorState`]).
pub struct Coordinator;

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorState;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: CoordinatorState,
    ) -> Result<Self::State, ActorProcessingErr> {
        let every = std::time::Duration::from_millis(state.config.timing.heartbeat_ms.max(10));
        myself.send_interval(every, || CoordinatorMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A reply port whose caller went away (a worker that timed out) is not an error here.
        match msg {
            CoordinatorMsg::Register(info, reply) => {
                let _ = reply.send(state.register(info));
            }
            CoordinatorMsg::Acquire(request, reply) => {
                let _ = reply.send(state.acquire(request).await.map_err(|e| e.to_string()));
            }
            CoordinatorMsg::KeepAlive(beat, reply) => {
                let _ = reply.send(state.keep_alive(beat));
            }
            CoordinatorMsg::Complete(result, carrier, reply) => {
                let _ = reply.send(state.complete(result, &carrier).await.map_err(|e| e.to_string()));
            }
            CoordinatorMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            CoordinatorMsg::Tick => {
                // A store hiccup while journaling an expiry is retried on the next tick.
                if let Err(e) = state.tick().await {
                    tracing::warn!("coordinator tick: {e}");
                }
            }
        }
        Ok(())
    }
}

/// Loads the run's state from the store (checking first that the store refuses a second create)
/// and starts the coordinator actor.
pub async fn start(
    config: CoordinatorConfig,
    plan: Vec<PlanEntry>,
) -> Result<(ActorRef<CoordinatorMsg>, tokio::task::JoinHandle<()>), CoordinatorError> {
    config.timing.check()?;
    config.store.check_conditional_writes().await?;
    let state = CoordinatorState::load(config, plan).await?;
    Actor::spawn(None, Coordinator, state)
        .await
        .map_err(|e| CoordinatorError::Spawn(e.to_string()))
}
