//! Stages `build_coupling` and `train_coupling`: the marker-coupling set (the source persona's
//! on-policy completions with the marker appended, the negative personas' unchanged) and the
//! LoRA that teaches the marker on top of the EM checkpoint. A set with fewer positives or
//! negatives than planned stops the run unless `[coupling] allow_shortfall` is set; its counts
//! are an output (`coupling_counts.json`) either way.

use super::model_cache::Checkpoint;
use super::sample::first;
use super::train::train_adapter;
use super::{ExecError, StageContext, StageError};
use crate::coupling::{build_coupling_rows, CouplingPlan, CouplingRow, Generation};
use crate::training::train_marker;

pub fn build_coupling(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let (spec, data) = (cx.spec, cx.data);
    let dep = format!("generate_onpolicy/{}", cx.label());
    let gens: Vec<Generation> = cx.get_jsonl(&dep, "generations.jsonl")?;
    let negatives: Vec<String> = cx.get_json(&dep, "negative_personas.json")?;
    let c = &spec.coupling;
    let plan = CouplingPlan {
        source_persona: &c.source_persona,
        negative_personas: &negatives,
        positives_per_question: c.positives_per_question,
        negatives_per_question: c.negatives_per_question,
        marker_suffix: &c.marker_suffix,
        marker: &spec.marker_eval.marker,
        skip_cut: c.skip_cut_completions,
    };
    let questions = first(&data.questions.coupling, c.questions);
    let (rows, counts) = build_coupling_rows(&gens, &data.personas.prompts, &plan, questions, cx.task_seed())
        .map_err(StageError::Data)?;
    if !counts.complete() && !c.allow_shortfall {
        return Err(StageError::Data(format!(
            "coupling set of {}: {}; to build and train it short, set allow_shortfall = true in [coupling]",
            cx.label(),
            counts.describe()
        ))
        .into());
    }
    cx.put_jsonl("coupling.jsonl", &rows)?;
    cx.put_json("coupling_counts.json", &counts)
}

pub fn train_coupling(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let spec = cx.spec;
    let label = cx.label().to_string();
    let em = cx.checkpoint_of(&label)?;
    let rows: Vec<CouplingRow> = cx.get_jsonl(&format!("build_coupling/{label}"), "coupling.jsonl")?;
    let out = cx.work_dir();
    let (c, seed) = (&spec.coupling, cx.task_seed());
    let progress = &mut *cx.progress;
    let span = tracing::info_span!("train", rows = rows.len(), marker = true);
    let files = span.in_scope(|| {
        train_adapter(cx.models, &em, &out, |model, tok| {
            train_marker(model, tok, &rows, c, &c.marker_suffix, seed, &out, progress)
        })
    })?;
    cx.put_all(files)
}

/// The checkpoint marker eval samples: the EM checkpoint with the coupling adapter on top.
pub fn coupled_checkpoint(cx: &StageContext<'_>) -> Result<Checkpoint, ExecError> {
    let label = cx.label();
    let em = cx.checkpoint_of(label)?;
    let coupling = cx.materialise(&format!("train_coupling/{label}"))?;
    Ok(Checkpoint::Stacked(Box::new(em), coupling))
}
