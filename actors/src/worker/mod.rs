//! A worker process (or the worker half of `pspace run`): a node supervisor actor that owns one
//! slot per device; each slot pulls leases from the coordinator and hands jobs to its role
//! actors. The worker registers first and learns the run from the coordinator (spec, model,
//! store, timing), so `pspace worker` needs nothing but the coordinator's address.

pub mod heartbeat;
pub mod restart;
pub mod roles;
pub mod slot;

pub use heartbeat::OnLost;
pub use restart::RestartPolicy;

use crate::executor::{Executor, ModelCache, RunData};
use crate::fingerprint::{DigestCache, CACHE_FILE};
use crate::spec::Spec;
use crate::store::Store;
use crate::transport::{backoff, Transport, TransportError};
use pspace_engine::model::ModelSource;
use pspace_proto::{RunInfo, WorkerInfo};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use slot::{Slot, SlotArgs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Spec and Data return their cause from `source()` (which may have a cause of its own,
    /// an I/O error) and so do not repeat it in their text: `{:#}` says each once.
    #[error("the coordinator's spec")]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the spec's data")]
    Data(#[from] crate::data::DataError),
    /// The digest cache could not be written to the worker's scratch folder.
    #[error(transparent)]
    Fingerprint(#[from] crate::fingerprint::FingerprintError),
    #[error("the coordinator's model {model} is not on this machine (expected it at the same path)")]
    NoModel { model: String },
    #[error("cannot start the worker's actors: {0}")]
    Spawn(String),
    #[error("the coordinator settled the spec's dtype to {0:?}, expected \"f32\" or \"bf16\" (a coordinator of another pspace version?)")]
    Dtype(String),
}

/// How a worker is set up.
pub struct WorkerConfig {
    pub transport: Transport,
    /// Unique per process: slots are `<name>/<device>`.
    pub name: String,
    pub node_name: String,
    pub devices: Vec<pspace_engine::Device>,
    pub on_lost: OnLost,
    pub restart: RestartPolicy,
    /// Local folder for working files.
    pub scratch: PathBuf,
    /// Give up when the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// The store to use instead of opening the coordinator's location (in-process runs share
    /// the coordinator's).
    pub store: Option<Store>,
    /// Set it to drain the worker: each slot finishes the task in hand, asks for no new lease,
    /// and the worker ends with [`WorkerOutcome::Drained`] (what a Kubernetes pod's SIGTERM asks
    /// for before its grace period ends).
    pub draining: Arc<AtomicBool>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerOutcome {
    /// Every task is committed.
    Finished,
    /// The run failed (a budget spent), or this worker gave up; the message says which.
    Failed(String),
    /// Asked to stop (`WorkerConfig::draining`): every slot finished its task in hand and took
    /// no new one; the run goes on with other workers.
    Drained,
}

/// Registers with the coordinator (retrying with capped backoff while it is unreachable), then
/// runs one slot per device until the coordinator reports the run finished or failed.
pub async fn run_worker(config: WorkerConfig) -> Result<WorkerOutcome, WorkerError> {
    let info = register(&config).await?;
    let mut spec = Spec::parse(&info.spec_toml, &info.spec_origin, PathBuf::from(&info.spec_root))?;
    // The coordinator's settled `dtype = "auto"`: the task ids name it, so this worker computes
    // in it rather than settling its own.
    if !info.dtype.is_empty() {
        let dtype = info
            .dtype
            .parse()
            .map_err(|_| WorkerError::Dtype(info.dtype.clone()))?;
        spec.settle_dtype(dtype);
    }
    let spec = Arc::new(spec);
    let store = match &config.store {
        Some(s) => s.clone(),
        None => Store::open(&info.store)?,
    };
    // A path must exist here too; `random:` weights are built on the device.
    let source = match ModelSource::parse(&info.model) {
        Ok(ModelSource::Files(path)) if !path.exists() => None,
        Ok(source) => Some(source),
        Err(_) => None,
    };
    let Some(source) = source else {
        return Err(WorkerError::NoModel { model: info.model });
    };
    // Digests of the model and data files as this machine holds them; each task checks them
    // against the coordinator's (RunData::check).
    let mut cache = DigestCache::open(&config.scratch.join(CACHE_FILE));
    let data = Arc::new(RunData::load(&spec, &source, &mut cache)?);
    cache.save()?;
    let runtime = tokio::runtime::Handle::current();
    let mut slots = Vec::new();
    for device in &config.devices {
        let executor = Executor {
            spec: spec.clone(),
            data: data.clone(),
            store: store.clone(),
            runtime: runtime.clone(),
            models: ModelCache::new(
                source.clone(),
                spec.experiment.model.clone(),
                *device,
                spec.experiment.fixed_dtype(),
            ),
            scratch: config.scratch.join(device.to_string().replace(':', "-")),
        };
        slots.push(SlotArgs {
            worker_id: format!("{}/{device}", config.name),
            node_name: config.node_name.clone(),
            device: device.to_string(),
            transport: config.transport.clone(),
            executor: Arc::new(Mutex::new(executor)),
            heartbeat: Duration::from_millis(info.heartbeat_ms),
            lease: Duration::from_millis(info.lease_ms),
            on_lost: config.on_lost,
            restart: config.restart,
            give_up_after: config.give_up_after,
            draining: config.draining.clone(),
        });
    }
    let outcome = Arc::new(Mutex::new(None));
    let (_node, handle) = Actor::spawn(None, NodeSupervisor, (slots, outcome.clone()))
        .await
        .map_err(|e| WorkerError::Spawn(e.to_string()))?;
    let _ = handle.await;
    let ended = outcome.lock().ok().and_then(|mut o| o.take());
    Ok(ended.unwrap_or_else(|| WorkerOutcome::Failed("the worker's node supervisor stopped".into())))
}

async fn register(config: &WorkerConfig) -> Result<RunInfo, WorkerError> {
    let mut client = config.transport.client()?;
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let info = WorkerInfo {
            worker_id: config.name.clone(),
            node_name: config.node_name.clone(),
            kinds: Vec::new(),
            device: config
                .devices
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        match client.register(info).await {
            Ok(run) => return Ok(run),
            Err(e) if e.is_transient() && started.elapsed() < config.give_up_after => {
                failures += 1;
                let wait = backoff(failures, Duration::from_secs(5));
                eprintln!("worker {}: {e}; retrying in {wait:?}", config.name);
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The node supervisor: one slot per device. A slot that fails is restarted within the restart
/// budget; past it the node stops (the process exits with the reason). The node ends when every
/// slot has ended: finished when one of them heard so from the coordinator.
pub struct NodeSupervisor;

pub struct NodeState {
    running: usize,
    slots: Vec<SlotArgs>,
    slot_of: std::collections::BTreeMap<ractor::ActorId, usize>,
    budget: restart::RestartBudget,
    outcome: Arc<Mutex<Option<WorkerOutcome>>>,
}

impl NodeSupervisor {
    async fn spawn_slot(
        myself: &ActorRef<()>,
        state: &mut NodeState,
        index: usize,
    ) -> Result<(), ActorProcessingErr> {
        let (slot, _) =
            Actor::spawn_linked(None, Slot, state.slots[index].clone(), myself.get_cell()).await?;
        state.slot_of.insert(slot.get_id(), index);
        Ok(())
    }

    fn record(state: &NodeState, outcome: WorkerOutcome) {
        if let Ok(mut o) = state.outcome.lock() {
            // A failure outranks everything; a drain outranks a finish reported by another
            // slot (the process stopped because it was asked to).
            let keep = matches!(
                (&*o, &outcome),
                (Some(WorkerOutcome::Failed(_)), _) | (Some(WorkerOutcome::Drained), WorkerOutcome::Finished)
            );
            if !keep {
                *o = Some(outcome);
            }
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = NodeState;
    type Arguments = (Vec<SlotArgs>, Arc<Mutex<Option<WorkerOutcome>>>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (slots, outcome): Self::Arguments,
    ) -> Result<NodeState, ActorProcessingErr> {
        let restart = slots.first().map(|s| s.restart).unwrap_or_default();
        let mut state = NodeState {
            running: slots.len(),
            slots,
            slot_of: Default::default(),
            budget: restart::RestartBudget::new(restart),
            outcome,
        };
        for index in 0..state.slots.len() {
            NodeSupervisor::spawn_slot(&myself, &mut state, index).await?;
        }
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if state.slot_of.remove(&cell.get_id()).is_none() {
                    return Ok(());
                }
                let reason = reason.unwrap_or_default();
                let outcome = match reason.strip_prefix("failed: ") {
                    Some(why) => WorkerOutcome::Failed(why.to_string()),
                    None if reason == slot::DRAINED => WorkerOutcome::Drained,
                    None => WorkerOutcome::Finished,
                };
                NodeSupervisor::record(state, outcome);
                state.running = state.running.saturating_sub(1);
                if state.running == 0 {
                    myself.stop(None);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(index) = state.slot_of.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let device = state.slots[index].device.clone();
                match state.budget.allow(Instant::now()) {
                    Some(wait) => {
                        eprintln!("worker: slot {device} failed ({error}); restarting it in {wait:?}");
                        tokio::time::sleep(wait).await;
                        NodeSupervisor::spawn_slot(&myself, state, index).await?;
                    }
                    None => {
                        NodeSupervisor::record(
                            state,
                            WorkerOutcome::Failed(format!("slot {device}: {error}")),
                        );
                        myself.stop(None);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
