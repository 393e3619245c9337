//! Stages `train_em` and `train_benign`: LoRA SFT of the base model on a chat data set (EM data
//! under the condition's training system prompt, or the benign set), writing a PEFT adapter and
//! its training log. The recipe-to-trainer bridge is `crate::training`.

use super::model_cache::Checkpoint;
use super::{ExecError, StageContext, StageError};
use crate::spec::TrainingSet;
use crate::training::{train_chat, DataFile};
use pspace_engine::model::Model;
use pspace_engine::tokenizer::ChatTokenizer;
use std::path::Path;

pub fn train_em(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    // None is the spec's way to train with the chat template's default system prompt.
    let system = cx.condition()?.training_system_prompt.clone();
    let set = cx.spec.training.em.clone();
    sft(cx, "training.em", "em_data", &set, system.as_deref())
}

pub fn train_benign(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let set = cx.spec.training.benign.clone();
    sft(cx, "training.benign", "benign_data", &set, None)
}

/// `key` names the spec section; `file` the data file in the task's `files` parameter, whose
/// digest the file read here must have.
fn sft(
    cx: &mut StageContext<'_>,
    key: &str,
    file: &str,
    set: &TrainingSet,
    system: Option<&str>,
) -> Result<(), ExecError> {
    let out = cx.work_dir();
    let data = DataFile {
        path: cx.spec.root.join(&set.data),
        sha256: cx.job.task.params["files"][file].as_str().map(str::to_string),
    };
    let seed = cx.task_seed();
    let progress = &mut *cx.progress;
    let span = tracing::info_span!("train", data = %set.data.display());
    let files = span.in_scope(|| {
        train_adapter(cx.models, &Checkpoint::Base, &out, |model, tok| {
            train_chat(model, tok, key, &data, set, system, seed, &out, progress)
        })
    })?;
    cx.put_all(files)
}

/// A LoRA training on `checkpoint`: `run` gets the loaded model and tokenizer and writes the
/// adapter into `out`; returns the adapter files `(name, bytes)` (shared with the coupling).
pub fn train_adapter(
    models: &mut super::ModelCache,
    checkpoint: &Checkpoint,
    out: &Path,
    run: impl FnOnce(&Model, &ChatTokenizer) -> Result<(), StageError>,
) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    let model = models.load(checkpoint)?;
    let tok = models.tokenizer()?;
    // A previous attempt's files in the same folder must not leak into this one's outputs.
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| StageError::io(out, e))?;
    }
    run(&model, &tok)?;
    read_tree(out)
}

/// Every file under `dir`, as (relative name, bytes), sorted by name.
pub fn read_tree(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| StageError::io(&d, e))?;
        for entry in entries {
            let path = entry.map_err(|e| StageError::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                files.push((name, bytes));
            }
        }
    }
    files.sort();
    Ok(files)
}
