//! The executor: runs ONE task from its job (the task with its inputs' digests, where it writes,
//! and its dependencies' committed manifests) against the store, on a worker's resident model,
//! and returns the manifest that would commit it. It does not commit: whoever handed out the
//! task (the coordinator, which checks the lease first) does.
//!
//! The same code runs a task whether it came from the in-process scheduler of `pspace run` or
//! over gRPC from a coordinator. One module per stage: `train` (EM and benign SFT), `extract`
//! (persona vectors), `sample` (on-policy generation), `couple` (coupling set and marker
//! training), `evaluate` (marker eval), `analyse` (statistics and report). Outputs go under the
//! job's attempt prefix (`<task dir>/<attempt>/`), so two attempts never write the same object.

pub mod analyse;
mod context;
pub mod couple;
pub mod evaluate;
pub mod extract;
pub mod model_cache;
pub mod progress;
pub mod sample;
pub mod summarise;
pub mod train;

pub use context::StageContext;
pub use model_cache::{Checkpoint, ModelCache};
pub use progress::{CancelToken, Cancellable, NoProgress, Progress};

use crate::data::{load_question_list, DataError, Personas, Questions};
use crate::fingerprint::{DigestCache, FingerprintError, Fingerprints};
use crate::scheduler::FailureClass;
use crate::spec::Spec;
use crate::store::{Manifest, Store, StoreError};
use crate::task::{Task, TaskKind};
use pspace_engine::model::ModelSource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A committed dependency as a job carries it: its task folder and manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub dir: String,
    pub manifest: Manifest,
}

/// Everything a worker needs to run one task, as a lease carries it (JSON on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The experiment seed this task belongs to.
    pub seed: u64,
    /// The task, its `inputs` filled with its dependencies' digests (its id hashes them).
    pub task: Task,
    /// The task folder in the store: `<experiment>/<seed>/<kind>/<label>-<id>`.
    pub dir: String,
    /// This attempt's prefix inside `dir` (e.g. `a2-9f3c01d2`): outputs go to `dir/attempt/`.
    pub attempt: String,
    /// Dependencies by `kind/label` (the same keys as `task.inputs`).
    pub deps: BTreeMap<String, Dependency>,
}

impl Job {
    /// `kind/label`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.task.kind.as_str(), self.task.label)
    }
}

/// A spec's fixed data (personas, coupling/eval questions, extraction questions), read once per
/// worker, with the sha256 of every file a task can read as this worker's copy hashes.
#[derive(Debug, Clone)]
pub struct RunData {
    pub personas: Personas,
    pub questions: Questions,
    pub extraction: Vec<String>,
    /// (path, sha256) by the name a task's `files` parameter gives the file (the names of
    /// [`Fingerprints::get`]): the base model, the data files and both training sets.
    pub digests: BTreeMap<&'static str, (PathBuf, String)>,
}

impl RunData {
    /// Reads the spec's data files and hashes every file a task can read, the base model
    /// `model` included, with the coordinator's own code ([`Fingerprints::compute`]) through
    /// `cache` (a worker's `<scratch>/file-digests.json`: a restarted worker, or the in-process
    /// worker of `pspace run`, which shares the coordinator's scratch, hashes nothing again).
    pub fn load(spec: &Spec, model: &ModelSource, cache: &mut DigestCache) -> Result<RunData, DataError> {
        let files = Fingerprints::compute(spec, model, cache).map_err(|e| match e {
            FingerprintError::Read { path, error } => DataError::Read { path, source: error },
            // Only `save` writes the cache.
            FingerprintError::Cache { path, error } => DataError::Read { path, source: error },
        })?;
        let model_path = match model {
            ModelSource::Files(path) => path.clone(),
            ModelSource::Random(_) => PathBuf::from(model.to_string()),
        };
        let digests = [
            ("model", model_path),
            ("personas", spec.root.join(&spec.data.personas)),
            ("questions", spec.root.join(&spec.data.questions)),
            (
                "extraction_questions",
                spec.root.join(&spec.data.extraction_questions),
            ),
            ("em_data", spec.root.join(&spec.training.em.data)),
            ("benign_data", spec.root.join(&spec.training.benign.data)),
        ]
        .into_iter()
        .map(|(name, path)| (name, (path, files.get(name).to_string())))
        .collect();
        Ok(RunData {
            personas: Personas::load(&spec.root.join(&spec.data.personas))?,
            questions: Questions::load(&spec.root.join(&spec.data.questions))?,
            extraction: load_question_list(&spec.root.join(&spec.data.extraction_questions))?,
            digests,
        })
    }

    /// Every file `task` reads (its `files` parameter: the base model, data and training
    /// files, with the digests the coordinator computed) must be the file this worker holds at
    /// that path: a worker whose copy differs would compute outputs that the task's id does
    /// not describe. The error names the file, the digest the task was planned with and the
    /// one found here; it is deterministic (the run stops: retrying on this worker cannot help).
    pub fn check(&self, task: &Task) -> Result<(), DataError> {
        let files = task.params.get("files").and_then(|f| f.as_object());
        let Some(files) = files else {
            return Err(DataError::Invalid {
                path: PathBuf::from(task.label.as_str()),
                message: format!(
                    "task {}/{} carries no `files` digests to check this worker's files against (a coordinator of another pspace version?)",
                    task.kind.as_str(),
                    task.label
                ),
            });
        };
        for (name, planned) in files {
            let Some((path, here)) = self.digests.get(name.as_str()) else {
                return Err(DataError::Invalid {
                    path: PathBuf::from(name),
                    message: format!(
                        "task {}/{} reads a file called {name:?} that this worker does not know (a coordinator of another pspace version?)",
                        task.kind.as_str(),
                        task.label
                    ),
                });
            };
            let planned = planned
                .as_str()
                .map_or_else(|| planned.to_string(), str::to_string);
            if &planned != here {
                let what = match name.as_str() {
                    "model" if path.is_dir() => "the base model (sha256 over its files' names and digests)",
                    "model" => "the base model",
                    _ => name.as_str(),
                };
                return Err(DataError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "this worker's copy of {what} is not the one task {}/{} was planned with: expected sha256 {planned} (the coordinator's), found {here} here; give every machine the same files at the same path",
                        task.kind.as_str(),
                        task.label
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A failure inside a stage's model or file work.
///
/// Each variant says its cause in its own text and does not return it as `source()`: an
/// error chain (`{:#}`, [`crate::error_chain`]) then says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot write or read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("model: {0}")]
    Model(pspace_engine::model::LoadError),
    #[error("tokenizer: {0}")]
    Tokenizer(pspace_engine::tokenizer::TokenizerError),
    #[error("extraction: {0}")]
    Extract(pspace_engine::extract::ExtractError),
    #[error("device: {0}")]
    Device(pspace_engine::DeviceError),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error("training: {0}")]
    Train(String),
    #[error("analysis: {0}")]
    Analysis(String),
    #[error("activations: {0}")]
    Activations(crate::activations::ActivationsError),
    #[error("cannot encode output {output}: {message}")]
    Encode { output: String, message: String },
    #[error("tensor: {0}")]
    Tensor(String),
    /// The data a stage was given does not hold what the spec plans (a persona without a
    /// prompt, a coupling set short of its planned rows).
    #[error("{0}")]
    Data(String),
    #[error("the system clock reads before 1970: {0}")]
    Clock(std::time::SystemTimeError),
    /// An engine loop stopped because the task was cancelled (its lease is gone).
    #[error("{0}")]
    Interrupted(String),
}

/// `From` for the variants that wrap another crate's error (written out rather than
/// `#[from]`, which would also make the wrapped error the `source()`).
macro_rules! stage_error_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for StageError {
            fn from(e: $ty) -> StageError {
                StageError::$variant(e)
            }
        }
    )*};
}

stage_error_from!(
    Model(pspace_engine::model::LoadError),
    Tokenizer(pspace_engine::tokenizer::TokenizerError),
    Device(pspace_engine::DeviceError),
    Activations(crate::activations::ActivationsError),
);

/// An extraction stopped by its progress callback is an interruption (a lost lease), classed
/// like any other stop rather than as an extraction failure.
impl From<pspace_engine::extract::ExtractError> for StageError {
    fn from(e: pspace_engine::extract::ExtractError) -> StageError {
        match e {
            pspace_engine::extract::ExtractError::Interrupted(stop) => {
                StageError::Interrupted(stop.to_string())
            }
            e => StageError::Extract(e),
        }
    }
}

impl StageError {
    pub fn io(path: &Path, error: std::io::Error) -> StageError {
        StageError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Why a job did not produce its outputs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("the job carries no dependency {dependency}")]
    MissingDependency { dependency: String },
    #[error("input {output} of {dependency}: {message}")]
    BadInput {
        dependency: String,
        output: String,
        message: String,
    },
    #[error("cancelled: the task's lease was lost")]
    Cancelled,
    #[error("injected fault: {0}")]
    Injected(String),
}

impl ExecError {
    /// How the scheduler should treat this failure: an out-of-memory is retried on its own
    /// budget, a lost lease is a preemption, a store or I/O hiccup and a panic are crashes
    /// (retried with backoff), and a bad input, model or spec is deterministic (retrying cannot
    /// help: the run stops with this message).
    pub fn class(&self) -> FailureClass {
        let oom = |m: &str| m.to_ascii_lowercase().contains("out of memory");
        match self {
            ExecError::Cancelled => FailureClass::Preempted,
            ExecError::Store(_) | ExecError::Injected(_) => FailureClass::Crash,
            ExecError::Data(_) | ExecError::MissingDependency { .. } | ExecError::BadInput { .. } => {
                FailureClass::Deterministic
            }
            ExecError::Stage(e) => match e {
                StageError::Io { .. } => FailureClass::Crash,
                StageError::Extract(_)
                | StageError::Train(_)
                | StageError::Tensor(_)
                | StageError::Device(_) => {
                    if oom(&e.to_string()) {
                        FailureClass::OutOfMemory
                    } else {
                        FailureClass::Crash
                    }
                }
                StageError::Model(_)
                | StageError::Tokenizer(_)
                | StageError::Adapter(_)
                | StageError::Analysis(_)
                | StageError::Activations(_)
                | StageError::Encode { .. }
                | StageError::Data(_) => FailureClass::Deterministic,
                StageError::Clock(_) => FailureClass::Crash,
                StageError::Interrupted(_) => FailureClass::Preempted,
            },
        }
    }
}

/// A worker's side of running tasks: the spec, its data, the store and the resident model.
pub struct Executor {
    pub spec: Arc<Spec>,
    pub data: Arc<RunData>,
    pub store: Store,
    pub runtime: tokio::runtime::Handle,
    pub models: ModelCache,
    /// Local folder for working files (adapters, the analysis's input tree).
    pub scratch: PathBuf,
}

/// Milliseconds since 1970 for the manifest's timings; a clock set before 1970 is an error
/// rather than a made-up 0.
fn now_ms() -> Result<u64, StageError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(StageError::Clock)
}

/// Hands the heap memory freed since the last call back to the operating system. libtorch's
/// CPU tensors come from glibc's malloc, which keeps freed memory for reuse in the arena of
/// the thread that allocated it, and every task runs on a pool thread: the process kept each
/// task's peak in another arena, and the demo's 34 tasks grew it to 14 GB resident where the
/// largest task needs about 3. (A fixed mmap threshold bounded it too, at twice the run time.)
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Executor {
    /// Runs the job's stage and uploads its outputs under the attempt prefix; returns the
    /// manifest that commits them. Must run on a thread outside the runtime's workers.
    pub fn run(
        &mut self,
        job: &Job,
        progress: &mut dyn Progress,
        cancel: &CancelToken,
    ) -> Result<Manifest, ExecError> {
        let outcome = self.run_stage(job, progress, cancel);
        release_freed_memory();
        outcome
    }

    fn run_stage(
        &mut self,
        job: &Job,
        progress: &mut dyn Progress,
        cancel: &CancelToken,
    ) -> Result<Manifest, ExecError> {
        let started_unix_ms = now_ms()?;
        self.data.check(&job.task)?;
        let spec = self.spec.clone();
        let data = self.data.clone();
        let mut progress = Cancellable::new(progress, cancel);
        let mut cx = StageContext {
            spec: &spec,
            data: &data,
            models: &mut self.models,
            progress: &mut progress,
            job,
            store: &self.store,
            runtime: &self.runtime,
            scratch: &self.scratch,
            cancel,
            manifest: Manifest::default(),
        };
        let ran = match job.task.kind {
            TaskKind::TrainEm => train::train_em(&mut cx),
            TaskKind::TrainBenign => train::train_benign(&mut cx),
            TaskKind::Extract => extract::extract(&mut cx),
            TaskKind::GenerateOnpolicy => sample::generate_onpolicy(&mut cx),
            TaskKind::BuildCoupling => couple::build_coupling(&mut cx),
            TaskKind::TrainCoupling => couple::train_coupling(&mut cx),
            TaskKind::MarkerEval => evaluate::marker_eval(&mut cx),
            TaskKind::Analyse => analyse::analyse(&mut cx),
            TaskKind::Summarise => summarise::summarise(&mut cx),
        };
        // A stage its lost lease stopped mid-loop fails with its loop's error (an interrupted
        // training or generation): the cause to report is the lease.
        cx.check_cancelled()?;
        ran?;
        let spec_json = serde_json::from_str(&job.task.canonical_json()).map_err(|e| StageError::Encode {
            output: "manifest.json".into(),
            message: e.to_string(),
        })?;
        Ok(Manifest {
            task_id: job.task.id(),
            kind: job.task.kind.as_str().to_string(),
            label: job.task.label.clone(),
            spec: spec_json,
            attempt: job.attempt.clone(),
            pspace_version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix_ms,
            finished_unix_ms: now_ms()?,
            ..cx.manifest
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Resident memory of this process in bytes (Linux).
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Memory a finished task's thread freed goes back to the system (it stayed resident, one
    /// task peak per pool thread, until the demo run held 14 GB).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn memory_freed_on_another_thread_is_handed_back() {
        const BLOCK: usize = 64 * 1024;
        const BLOCKS: usize = 4096; // 256 MiB in blocks below malloc's mmap threshold
                                    // Every 16th block outlives the thread, so the freed ones are holes malloc keeps
                                    // (free memory at the top of a heap it trims by itself).
        let kept = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8 | 1; BLOCK]).collect();
            let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
            drop(blocks);
            kept
        })
        .join()
        .unwrap();
        let before = resident_bytes();
        release_freed_memory();
        let after = resident_bytes();
        assert_eq!(kept.len(), BLOCKS / 16);
        assert!(
            before.saturating_sub(after) > (BLOCK * BLOCKS / 2) as u64,
            "resident {before} bytes before, {after} after"
        );
    }

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// A worker whose copy of the base model differs from the one the coordinator fingerprinted
    /// refuses every task that reads the model, with an error naming the model's path, the
    /// planned digest and the one found; tasks that do not read the model still run, and a
    /// worker with the same files refuses nothing. (Before, only the persona and question
    /// files were checked: a worker on another model computed outputs under the wrong ids.)
    #[test]
    fn a_worker_with_another_model_refuses_the_tasks_that_read_it() {
        let spec = Spec::demo(repo().join("experiments")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir(&model_dir).unwrap();
        let fixture = repo().join("engine/tests/fixtures/tiny-qwen2");
        for entry in std::fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), model_dir.join(entry.file_name())).unwrap();
        }
        let model = ModelSource::Files(model_dir.clone());
        let planned = Fingerprints::compute(&spec, &model, &mut DigestCache::in_memory()).unwrap();
        let tasks = spec.expand(42, &planned);

        let same = RunData::load(&spec, &model, &mut DigestCache::in_memory()).unwrap();
        for t in &tasks {
            same.check(t).unwrap();
        }
        // The cross-seed summary of a multi-seed run too (it carried no `files`, and every
        // multi-seed run stopped at it).
        same.check(&spec.summary_task()).unwrap();

        std::fs::write(model_dir.join("config.json"), b"{\"edited\": true}").unwrap();
        let other = RunData::load(&spec, &model, &mut DigestCache::in_memory()).unwrap();
        let found = &other.digests["model"].1;
        assert_ne!(found, &planned.model);
        let mut refused = 0;
        for t in &tasks {
            let reads_model = t.params["files"].get("model").is_some();
            match other.check(t) {
                Ok(()) => assert!(!reads_model, "{} ran on another model", t.label),
                Err(e) => {
                    assert!(reads_model, "{} does not read the model: {e}", t.label);
                    let text = e.to_string();
                    assert!(
                        text.starts_with(&format!("{}: ", model_dir.display()))
                            && text.contains(&format!("expected sha256 {}", planned.model))
                            && text.contains(&format!("found {found} here")),
                        "{text}"
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0 && refused < tasks.len(),
            "{refused} of {}",
            tasks.len()
        );
        // Deterministic: retrying on this worker cannot help, the run stops.
        let e = ExecError::from(other.check(&tasks[0]).unwrap_err());
        assert_eq!(e.class(), FailureClass::Deterministic);
    }
}
