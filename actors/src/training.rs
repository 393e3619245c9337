//! The bridge from a spec's training sections to the engine's trainer: a `Recipe` becomes an
//! `SftConfig`, data files and coupling rows become trainer rows, and the adapter plus its
//! training log land in the task's folder.

use crate::coupling::CouplingRow;
use crate::local::RunObserver;
use crate::spec::{Coupling, Recipe, TrainingSet};
use crate::stages::StageError;
use pspace_engine::model::{Model, Proj};
use pspace_engine::tokenizer::ChatTokenizer;
use pspace_engine::train::{run_sft, DataReport, LabelMode, Message, Row, ScheduleKind, SftConfig};
use std::path::Path;

fn sft_config(
    recipe: &Recipe,
    label_mode: LabelMode,
    system: Option<&str>,
    seed: u64,
) -> Result<SftConfig, StageError> {
    let mut c = SftConfig::em();
    let targets = recipe
        .lora
        .targets
        .iter()
        .map(|t| Proj::from_peft_name(t).ok_or_else(|| StageError::Train(format!("unknown LoRA target {t:?}: expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj"))))
        .collect::<Result<Vec<_>, _>>()?;
    c.lora.rank = recipe.lora.r;
    c.lora.alpha = recipe.lora.alpha;
    c.lora.dropout = recipe.lora.dropout;
    c.lora.targets = targets;
    c.lora.use_rslora = recipe.lora.rslora;
    c.lora_seed = seed;
    c.train.learning_rate = recipe.lr;
    c.train.adamw.betas = (recipe.betas[0], recipe.betas[1]);
    c.train.adamw.eps = recipe.eps;
    c.train.adamw.weight_decay = recipe.weight_decay;
    c.train.schedule = if recipe.schedule == "cosine" {
        ScheduleKind::Cosine
    } else {
        ScheduleKind::Linear
    };
    c.train.warmup_ratio = recipe.warmup_ratio;
    c.train.max_grad_norm = Some(recipe.clip_grad_norm);
    c.train.micro_batch = recipe.micro_batch;
    c.train.grad_accum = recipe.grad_accum;
    c.train.epochs = recipe.epochs.ceil().max(1.0) as usize;
    c.train.max_steps = recipe.max_steps;
    c.train.seed = seed;
    c.train.pad_multiple = recipe.pad_to_multiple;
    c.label_mode = label_mode;
    c.system = system.map(str::to_string);
    c.max_len = recipe.max_len;
    Ok(c)
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// EM or benign SFT on a chat JSONL file.
#[allow(clippy::too_many_arguments)]
pub fn train_chat(
    model: &Model,
    tok: &ChatTokenizer,
    data: &Path,
    set: &TrainingSet,
    system: Option<&str>,
    seed: u64,
    out: &Path,
    observer: &mut dyn RunObserver,
) -> Result<(), StageError> {
    let bytes = std::fs::read(data).map_err(|source| StageError::Io {
        path: data.to_path_buf(),
        source,
    })?;
    if let Some(want) = &set.md5 {
        let found = md5_hex(&bytes);
        if &found != want {
            return Err(StageError::Train(format!(
                "{}: md5 is {found}, the spec expects {want}",
                data.display()
            )));
        }
    }
    let mut report = DataReport::default();
    let text = String::from_utf8_lossy(&bytes);
    let mut rows = pspace_engine::train::data::parse_jsonl(&text, &mut report);
    if let Some(n) = set.first_rows {
        rows.truncate(n);
    }
    let config = sft_config(&set.recipe, LabelMode::LastTurn, system, seed)?;
    run(model, tok, &rows, report, &config, out, observer)
}

/// Marker coupling on prompt/completion rows: positives learn the marker and the end of turn.
#[allow(clippy::too_many_arguments)]
pub fn train_marker(
    model: &Model,
    tok: &ChatTokenizer,
    rows: &[CouplingRow],
    params: &Coupling,
    marker_suffix: &str,
    seed: u64,
    out: &Path,
    observer: &mut dyn RunObserver,
) -> Result<(), StageError> {
    let marker = marker_suffix.trim().to_string();
    let rows: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            line: i + 1,
            messages: vec![
                Message::new("system", &r.system),
                Message::new("user", &r.user),
                Message::new("assistant", &r.completion),
            ],
            positive: Some(r.positive),
        })
        .collect();
    let config = sft_config(&params.recipe, LabelMode::Marker { marker }, None, seed)?;
    run(model, tok, &rows, DataReport::default(), &config, out, observer)
}

fn run(
    model: &Model,
    tok: &ChatTokenizer,
    rows: &[Row],
    report: DataReport,
    config: &SftConfig,
    out: &Path,
    observer: &mut dyn RunObserver,
) -> Result<(), StageError> {
    let mut on_step = |log: &pspace_engine::train::StepLog, total: usize| {
        observer.stage_progress(&format!("training, loss {:.4}", log.loss), log.step, total);
    };
    run_sft(model, tok, rows, report, config, out, "pspace", &mut on_step)
        .map_err(|e| StageError::Train(e.to_string()))?;
    Ok(())
}
