//! The role actors: trainer (train_em, train_benign), coupler (generate_onpolicy,
//! build_coupling, train_coupling), extractor (extract), evaluator (marker_eval) and analyst
//! (analyse). Thin ractor shells: each runs the executor's stage for the job it is handed on a
//! blocking thread (an await point cannot interrupt tch work) and answers with the manifest or
//! a classified failure. A panicking stage answers `crash` and then fails the actor, so its slot
//! restarts it within its budget. No stage logic lives here.

use crate::executor::{CancelToken, Executor, Job};
use crate::scheduler::FailureClass;
use crate::store::Manifest;
use crate::task::TaskKind;
use crate::worker::heartbeat::ProgressCell;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::{Arc, Mutex, PoisonError};

/// The five roles of the design card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Trainer,
    Coupler,
    Extractor,
    Evaluator,
    Analyst,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Trainer,
        Role::Coupler,
        Role::Extractor,
        Role::Evaluator,
        Role::Analyst,
    ];

    pub fn for_kind(kind: TaskKind) -> Role {
        match kind {
            TaskKind::TrainEm | TaskKind::TrainBenign => Role::Trainer,
            TaskKind::GenerateOnpolicy | TaskKind::BuildCoupling | TaskKind::TrainCoupling => Role::Coupler,
            TaskKind::Extract => Role::Extractor,
            TaskKind::MarkerEval => Role::Evaluator,
            TaskKind::Analyse | TaskKind::Summarise => Role::Analyst,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Trainer => "trainer",
            Role::Coupler => "coupler",
            Role::Extractor => "extractor",
            Role::Evaluator => "evaluator",
            Role::Analyst => "analyst",
        }
    }
}

/// Why a job produced no manifest, as the coordinator is told.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub class: FailureClass,
    pub message: String,
}

/// One job for a role actor.
pub struct RunJob {
    pub job: Box<Job>,
    pub cancel: CancelToken,
    pub progress: ProgressCell,
    /// The worker's span of this attempt: the stage's spans are its children.
    pub span: tracing::Span,
    pub reply: RpcReplyPort<Result<Manifest, TaskFailure>>,
}

pub struct RoleActor {
    pub role: Role,
}

/// A role actor's state: the slot's executor (one resident model per device, shared by the
/// slot's roles; only one job runs at a time per slot).
pub struct RoleState {
    executor: Arc<Mutex<Executor>>,
}

impl Actor for RoleActor {
    type Msg = RunJob;
    type State = RoleState;
    type Arguments = Arc<Mutex<Executor>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RunJob>,
        executor: Self::Arguments,
    ) -> Result<RoleState, ActorProcessingErr> {
        Ok(RoleState { executor })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RunJob>,
        msg: RunJob,
        state: &mut RoleState,
    ) -> Result<(), ActorProcessingErr> {
        let RunJob {
            job,
            cancel,
            mut progress,
            span,
            reply,
        } = msg;
        let executor = state.executor.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // A panic in an earlier job poisoned the lock; the executor's state (a loaded model,
            // a scratch folder) is still usable, and each job starts from its own inputs.
            let mut ex = executor.lock().unwrap_or_else(PoisonError::into_inner);
            let _in_span = span.enter();
            inject_fault(&job);
            ex.run(&job, &mut progress, &cancel)
        })
        .await;
        match joined {
            Ok(Ok(manifest)) => {
                let _ = reply.send(Ok(manifest));
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = reply.send(Err(TaskFailure {
                    class: e.class(),
                    message: crate::error_chain(&e),
                }));
                Ok(())
            }
            Err(join) => {
                let message = panic_message(join);
                let _ = reply.send(Err(TaskFailure {
                    class: panic_class(&message),
                    message: format!("{} panicked: {message}", self.role.name()),
                }));
                // Fail the actor: its slot restarts it (or escalates past the budget).
                Err(format!("{} panicked: {message}", self.role.name()).into())
            }
        }
    }
}

/// The class of a stage that panicked: tch turns a libtorch error into a panic, and an
/// allocation failure (`CUDA out of memory`, `DefaultCPUAllocator: ... out of memory`) must get
/// the out-of-memory budget and backoff, not the crash budget.
fn panic_class(message: &str) -> FailureClass {
    if message.to_ascii_lowercase().contains("out of memory") {
        FailureClass::OutOfMemory
    } else {
        FailureClass::Crash
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return join.to_string();
    }
    let payload = join.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Fault injection for the supervision tests: `PSPACE_FAULT_PANIC=<kind>/<label>:<n>` makes the
/// first `n` attempts of every task with that key panic inside the stage's thread (attempt
/// numbers come from the job's attempt prefix `a<N>-...`). Unset in real runs.
fn inject_fault(job: &Job) {
    let Ok(spec) = std::env::var("PSPACE_FAULT_PANIC") else {
        return;
    };
    let Some((key, n)) = spec.rsplit_once(':') else {
        return;
    };
    let attempt: u32 = job
        .attempt
        .strip_prefix('a')
        .and_then(|a| a.split('-').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    if key == job.key() && n.parse::<u32>().is_ok_and(|n| attempt <= n) {
        panic!("injected fault (PSPACE_FAULT_PANIC={spec}) in attempt {attempt} of {key}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_from_an_allocation_failure_is_out_of_memory() {
        let cuda = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")";
        assert_eq!(panic_class(cuda), FailureClass::OutOfMemory);
        assert_eq!(
            panic_class(
                "DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes; Out of memory"
            ),
            FailureClass::OutOfMemory
        );
        assert_eq!(panic_class("index out of bounds"), FailureClass::Crash);
    }
}
