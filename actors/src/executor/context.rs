//! What a stage sees while it runs one job: the spec and its data, the worker's resident model,
//! its inputs (dependencies' outputs, read back from the store and checked against their
//! manifests' hashes), and where its own outputs go (the job's attempt prefix in the store).
//!
//! Stages are synchronous (model work blocks a thread for minutes); store calls are driven on
//! the worker's tokio runtime through its handle, so this must run on a thread that is not one
//! of that runtime's workers (a blocking thread or a plain thread).

use super::{Dependency, ExecError, Job, ModelCache, Progress, RunData, StageError};
use crate::executor::model_cache::Checkpoint;
use crate::executor::progress::CancelToken;
use crate::spec::{Condition, DryRunLengths, Spec};
use crate::store::{sha256_hex, Manifest, Store};
use crate::task::{canonical, stable_seed, task_seed};
use pspace_engine::generate::EndLengths;
use std::path::{Path, PathBuf};
use tokio::runtime::Handle;

/// One stage's view of its job (see the module doc).
pub struct StageContext<'a> {
    pub spec: &'a Spec,
    pub data: &'a RunData,
    pub models: &'a mut ModelCache,
    pub progress: &'a mut dyn Progress,
    pub job: &'a Job,
    pub(super) store: &'a Store,
    pub(super) runtime: &'a Handle,
    pub(super) scratch: &'a Path,
    pub(super) cancel: &'a CancelToken,
    /// Collects the outputs (hash, size, entity tag) as they are uploaded.
    pub(super) manifest: Manifest,
}

impl StageContext<'_> {
    /// The job's condition or checkpoint label (`base`, `benign_sft`, a condition id, `all`).
    pub fn label(&self) -> &str {
        &self.job.task.label
    }

    /// The seed of every random draw this task makes: the experiment seed and the task's
    /// parameters, never its inputs' digests (an upstream float output; see `crate::task`).
    pub fn task_seed(&self) -> u64 {
        task_seed(self.job.seed, &self.job.task)
    }

    /// A dry run's completion lengths (a section's `dry_run_lengths`) with their seed: from the
    /// experiment seed and the task's kind, label and parameters through a stable hash, not
    /// from its inputs, so every checkpoint draws the same lengths for the same section.
    pub fn end_lengths(&self, lengths: Option<DryRunLengths>) -> Option<EndLengths> {
        let task = &self.job.task;
        lengths.map(|d| EndLengths {
            mean: d.mean,
            sigma: d.sigma,
            seed: stable_seed(
                self.job.seed,
                &format!(
                    "dry_run_lengths {} {}",
                    task.kind.as_str(),
                    canonical(&task.params)
                ),
            ),
        })
    }

    /// The spec's `[[conditions]]` entry this job belongs to: an error for a label that names
    /// none (the plan gives condition tasks their condition's id).
    pub fn condition(&self) -> Result<&Condition, StageError> {
        let label = &self.job.task.label;
        self.spec
            .conditions
            .iter()
            .find(|c| &c.id == label)
            .ok_or_else(|| StageError::Data(format!("the spec has no condition {label:?}")))
    }

    /// A local folder for this attempt's working files (adapters are written as files).
    pub fn work_dir(&self) -> PathBuf {
        self.scratch.join(&self.job.dir).join(&self.job.attempt)
    }

    /// Err(Cancelled) once the lease is gone: stages call this between units of work.
    pub fn check_cancelled(&self) -> Result<(), ExecError> {
        if self.cancel.is_cancelled() {
            Err(ExecError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Uploads one output under the job's attempt prefix and records its hash and size.
    pub fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), ExecError> {
        self.check_cancelled()?;
        let key = format!("{}/{}/{name}", self.job.dir, self.job.attempt);
        let _span = tracing::info_span!("upload", output = name, bytes = bytes.len()).entered();
        let uploaded = self.runtime.block_on(self.store.put_output(&key, bytes))?;
        self.manifest.record_output(name, &uploaded);
        Ok(())
    }

    pub fn put_all(&mut self, files: Vec<(String, Vec<u8>)>) -> Result<(), ExecError> {
        for (name, bytes) in files {
            self.put(&name, bytes)?;
        }
        Ok(())
    }

    /// One pretty-printed JSON document.
    pub fn put_json<T: serde::Serialize>(&mut self, name: &str, value: &T) -> Result<(), ExecError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StageError::Encode {
            output: name.to_string(),
            message: e.to_string(),
        })?;
        self.put(name, bytes)
    }

    /// One JSON object per line.
    pub fn put_jsonl<T: serde::Serialize>(&mut self, name: &str, items: &[T]) -> Result<(), ExecError> {
        let mut text = String::new();
        for item in items {
            let line = serde_json::to_string(item).map_err(|e| StageError::Encode {
                output: name.to_string(),
                message: e.to_string(),
            })?;
            text.push_str(&line);
            text.push('\n');
        }
        self.put(name, text.into_bytes())
    }

    fn dependency(&self, dep: &str) -> Result<&Dependency, ExecError> {
        self.job
            .deps
            .get(dep)
            .ok_or_else(|| ExecError::MissingDependency {
                dependency: dep.to_string(),
            })
    }

    /// The bytes of output `name` of dependency `dep` (`kind/label`), checked against the sha256
    /// its manifest records (resume trusts sizes; a read for use hashes in full).
    pub fn get(&self, dep: &str, name: &str) -> Result<Vec<u8>, ExecError> {
        let d = self.dependency(dep)?;
        let want = d.manifest.outputs.get(name).ok_or_else(|| ExecError::BadInput {
            dependency: dep.to_string(),
            output: name.to_string(),
            message: "its manifest lists no such output".into(),
        })?;
        let key = d.manifest.output_key(&d.dir, name);
        let _span = tracing::info_span!("download", dependency = dep, output = name).entered();
        let bytes = self.runtime.block_on(self.store.get(&key))?.to_vec();
        let found = sha256_hex(&bytes);
        if &found != want {
            return Err(ExecError::BadInput {
                dependency: dep.to_string(),
                output: name.to_string(),
                message: format!("sha256 is {found}, its manifest says {want}"),
            });
        }
        Ok(bytes)
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&self, dep: &str, name: &str) -> Result<T, ExecError> {
        let bytes = self.get(dep, name)?;
        serde_json::from_slice(&bytes).map_err(|e| ExecError::BadInput {
            dependency: dep.to_string(),
            output: name.to_string(),
            message: e.to_string(),
        })
    }

    pub fn get_jsonl<T: serde::de::DeserializeOwned>(
        &self,
        dep: &str,
        name: &str,
    ) -> Result<Vec<T>, ExecError> {
        let bytes = self.get(dep, name)?;
        let text = String::from_utf8(bytes).map_err(|e| ExecError::BadInput {
            dependency: dep.to_string(),
            output: name.to_string(),
            message: format!("not UTF-8: {e}"),
        })?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| ExecError::BadInput {
                    dependency: dep.to_string(),
                    output: name.to_string(),
                    message: format!("line {}: {e}", i + 1),
                })
            })
            .collect()
    }

    /// Copies a dependency's outputs into a local folder (adapters are read from files) and
    /// returns it.
    pub fn materialise(&self, dep: &str) -> Result<PathBuf, ExecError> {
        let d = self.dependency(dep)?;
        let local = self.scratch.join(&d.dir).join(&d.manifest.attempt);
        for name in d.manifest.outputs.keys() {
            let bytes = self.get(dep, name)?;
            let path = local.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
            }
            std::fs::write(&path, &bytes).map_err(|e| StageError::io(&path, e))?;
        }
        Ok(local)
    }

    /// The model a task of checkpoint `label` runs on: base, or base + that condition's EM (or
    /// benign) adapter, read from the training task's outputs.
    pub fn checkpoint_of(&self, label: &str) -> Result<Checkpoint, ExecError> {
        let dep = match label {
            "base" => return Ok(Checkpoint::Base),
            "benign_sft" => "train_benign/benign_sft".to_string(),
            condition => format!("train_em/{condition}"),
        };
        Ok(Checkpoint::Adapter(self.materialise(&dep)?))
    }
}
