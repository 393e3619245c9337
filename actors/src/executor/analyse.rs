//! Stage `analyse`: once all seven checkpoints' persona vectors and every condition's marker
//! hits are committed, lays them out as the analysis reads a run folder (activations/<checkpoint>/,
//! marker_hits/<condition>.json, personas.json, and training/ with the trainings' logs and the
//! coupling sets' counts) and runs the statistics, figures and report.

use super::{ExecError, StageContext, StageError};
use crate::spec::Spec;
use pspace_analysis::pipeline::Settings;
use pspace_engine::train::run::LOG_FILE as TRAIN_LOG;
use std::path::Path;

pub fn analyse(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let spec = cx.spec;
    let job = cx.job;
    let run = cx.work_dir().join("analysis-input");
    if run.exists() {
        std::fs::remove_dir_all(&run).map_err(|e| StageError::io(&run, e))?;
    }
    for dep in job.deps.keys() {
        let (kind, label) = dep.split_once('/').ok_or_else(|| ExecError::BadInput {
            dependency: dep.clone(),
            output: String::new(),
            message: "expected a dependency named kind/label".into(),
        })?;
        let manifest = &job.deps[dep].manifest;
        for name in manifest.outputs.keys() {
            // The trainings' logs and the coupling sets' counts feed the report's Training
            // section (only their losses and counts are read, never their timings).
            let training = |sub: &str| run.join("training").join(sub).join(format!("{label}.json"));
            let target = match (kind, name.as_str()) {
                ("extract", _) => run.join("activations").join(label).join(name),
                ("marker_eval", "marker_hits.json") => run.join("marker_hits").join(format!("{label}.json")),
                ("train_em", TRAIN_LOG) => training("em"),
                ("train_benign", TRAIN_LOG) => training("benign"),
                ("train_coupling", TRAIN_LOG) => training("coupling"),
                ("build_coupling", "coupling_counts.json") => training("coupling_counts"),
                _ => continue,
            };
            let bytes = cx.get(dep, name)?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
            }
            std::fs::write(&target, &bytes).map_err(|e| StageError::io(&target, e))?;
        }
    }
    let personas_path = run.join("personas.json");
    let conditions: Vec<String> = spec.conditions.iter().map(|c| c.id.clone()).collect();
    write_run_personas(&spec.root.join(&spec.data.personas), &conditions, &personas_path)?;
    let out = run.join("analysis");
    let files = tracing::info_span!("analyse", seed = job.seed)
        .in_scope(|| run_analysis(&run, &personas_path, &out, &settings(spec, job.seed)))?;
    cx.put_all(files)
}

/// The analysis settings of a spec: every number of its `[analysis]` section, the coupling's
/// source persona and the experiment seed; the rest are the pre-registered defaults.
pub fn settings(spec: &Spec, seed: u64) -> Settings {
    let a = &spec.analysis;
    let mut s = Settings {
        seed,
        permutations: a.permutations,
        bootstrap: a.bootstrap,
        cv_folds: a.cv_folds,
        source_persona: spec.coupling.source_persona.clone(),
        anchor_condition: a.anchor_condition.clone(),
        allow_partial: false,
        ..Settings::default()
    };
    s.thresholds.fdr_alpha = a.fdr_alpha;
    s
}

/// Runs the analysis on a run folder laid out as the analysis expects; returns its files.
fn run_analysis(
    run: &Path,
    personas: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    use pspace_analysis::pipeline::{analyze_run_with, write_outputs};
    let result = analyze_run_with(run, personas, None, settings)
        .map_err(|e| StageError::Analysis(crate::error_chain(&e)))?;
    write_outputs(&result, out).map_err(|e| StageError::Analysis(crate::error_chain(&e)))?;
    super::train::read_tree(out)
}

/// The persona file for the analysis of a run: the spec's persona file with only the
/// conditions the spec runs, in the spec's order.
fn write_run_personas(source: &Path, conditions: &[String], target: &Path) -> Result<(), StageError> {
    let text = std::fs::read_to_string(source).map_err(|e| StageError::io(source, e))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| StageError::Analysis(format!("{}: not valid JSON: {e}", source.display())))?;
    let list = v["em_induction_conditions"].as_array().ok_or_else(|| {
        StageError::Data(format!(
            "{}: expected an em_induction_conditions list",
            source.display()
        ))
    })?;
    // A condition the file does not list would silently drop out of the analysis.
    let kept = conditions
        .iter()
        .map(|id| {
            list.iter()
                .find(|c| c["id"].as_str() == Some(id))
                .cloned()
                .ok_or_else(|| {
                    StageError::Data(format!(
                        "{}: em_induction_conditions has no condition {id:?}",
                        source.display()
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    v["em_induction_conditions"] = serde_json::Value::Array(kept);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
    }
    let bytes = serde_json::to_vec_pretty(&v).map_err(|e| StageError::Encode {
        output: target.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(target, bytes).map_err(|e| StageError::io(target, e))
}
