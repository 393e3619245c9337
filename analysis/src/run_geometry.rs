//! The geometry side of a run directory: finding and checking the activation files
//! (`RUN/activations/<checkpoint>/<method>.safetensors`) before anything is computed, and
//! turning the geometry module's per-cell tests into the three geometry families.

use crate::families::Family;
use crate::geometry::MethodActivations;
use crate::input::Personas;
use crate::pipeline::{PipelineError, Settings};
use crate::result::GeometrySummary;
use std::path::{Path, PathBuf};

/// The activation files of a run, found and checked.
#[derive(Debug, Clone, Default)]
pub struct GeometryRun {
    /// (input name, path) of every activation file.
    pub files: Vec<(String, PathBuf)>,
    /// (checkpoint, method, path) of every activation file, for the geometry loader.
    pub entries: Vec<(String, String, PathBuf)>,
    /// Extraction methods present (file stems of the base checkpoint).
    pub methods: Vec<String>,
    /// Checkpoints present.
    pub checkpoints: Vec<String>,
    /// What is missing, one line each.
    pub missing: Vec<String>,
}

/// Finds the activation files of every checkpoint and method; what is absent goes to
/// `missing` (checkpoint folders, or a method file some checkpoints lack).
pub fn check(run: &Path, checkpoints: &[String], _personas: &Personas) -> Result<GeometryRun, PipelineError> {
    let root = run.join("activations");
    let mut found = GeometryRun::default();
    if !root.is_dir() {
        found
            .missing
            .push(format!("no activations in {}", root.display()));
        return Ok(found);
    }
    let mut methods = std::collections::BTreeSet::new();
    let mut per_checkpoint = Vec::new();
    for checkpoint in checkpoints {
        let dir = root.join(checkpoint);
        let mut these = std::collections::BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "safetensors") {
                    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                        these.insert(stem.to_string());
                    }
                }
            }
        }
        if these.is_empty() {
            found.missing.push(format!(
                "checkpoint {checkpoint}: no {}/*.safetensors",
                dir.display()
            ));
        } else {
            found.checkpoints.push(checkpoint.clone());
        }
        methods.extend(these.iter().cloned());
        per_checkpoint.push((checkpoint.clone(), dir, these));
    }
    for (checkpoint, dir, these) in &per_checkpoint {
        if these.is_empty() {
            continue;
        }
        for method in &methods {
            if these.contains(method) {
                let path = dir.join(format!("{method}.safetensors"));
                found
                    .files
                    .push((format!("activations/{checkpoint}/{method}"), path.clone()));
                found.entries.push((checkpoint.clone(), method.clone(), path));
            } else {
                found.missing.push(format!(
                    "checkpoint {checkpoint}: no {method}.safetensors in {}",
                    dir.display()
                ));
            }
        }
    }
    found.methods = methods.into_iter().collect();
    Ok(found)
}

/// Reads and cross-checks the activation files of a checked run (`pspace_analysis::geometry`
/// rejects wrong shapes, dtypes, metadata and NaN vectors; here the persona order is checked
/// against the persona file), before anything is computed. A run
/// with no activation files, or with some missing (both allowed only with `--allow-partial`,
/// and then listed among the partial reasons), has no geometry: the geometry compares every
/// checkpoint of a method with the others, so it is not computed on a subset.
pub fn load(run: &GeometryRun, personas: &Personas) -> Result<Option<Vec<MethodActivations>>, PipelineError> {
    if run.files.is_empty() || !run.missing.is_empty() {
        return Ok(None);
    }
    let checkpoints = crate::pipeline::run_checkpoints(personas);
    let methods = crate::geometry::load(&run.entries, &checkpoints).map_err(geometry_error)?;
    for method in &methods {
        for activations in &method.checkpoints {
            if activations.personas != personas.eval_order {
                return Err(PipelineError::Geometry(format!(
                    "activations of checkpoint {} method {}: persona order [{}] differs from the persona file's eval_persona_order [{}]",
                    activations.checkpoint,
                    activations.method,
                    activations.personas.join(", "),
                    personas.eval_order.join(", ")
                )));
            }
        }
    }
    Ok(Some(methods))
}

fn geometry_error(e: crate::geometry::GeometryError) -> PipelineError {
    PipelineError::Geometry(e.to_string())
}

/// Computes the geometry families from loaded activations (see `load`).
/// The M2 axis is the anchor condition's induction persona, anchor minus base
/// (`Settings::anchor`: E0 unless the settings name another).
pub fn compute(
    loaded: Option<Vec<MethodActivations>>,
    personas: &Personas,
    options: &Settings,
) -> Result<(Option<GeometrySummary>, Vec<Family>), PipelineError> {
    let Some(methods) = loaded else {
        return Ok((None, Vec::new()));
    };
    let anchor = options.anchor(personas)?;
    let input = crate::geometry::GeometryInput {
        base: "base".into(),
        conditions: personas.conditions.iter().map(|c| c.id.clone()).collect(),
        cos_to_assistant: personas.conditions.iter().map(|c| c.cos_to_assistant).collect(),
        benign: Some("benign_sft".into()),
        anchor_condition: anchor.id.clone(),
        axis_persona: anchor.induction_persona.clone(),
        methods,
    };
    let output = crate::geometry::compute(&input, &options.geometry_config()).map_err(geometry_error)?;
    let fdr_alpha = options.thresholds.fdr_alpha;
    let families = vec![
        Family::new(
            crate::families::GEOMETRY_EM_PRE_POST,
            fdr_alpha,
            output.em_pre_post,
        )?,
        Family::new(
            crate::families::GEOMETRY_BENIGN_PRE_POST,
            fdr_alpha,
            output.benign_pre_post,
        )?,
        Family::new(
            crate::families::GEOMETRY_EM_VS_BENIGN,
            fdr_alpha,
            output.em_vs_benign,
        )?,
    ];
    Ok((Some(output.summary), families))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn personas() -> Personas {
        Personas::from_value(
            &json!({
                "eval_persona_order": ["a", "src"],
                "em_induction_conditions": [{"id": "E0", "slug": "a", "cos_to_assistant": 1.0}]
            }),
            Path::new("p.json"),
        )
        .unwrap()
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn every_checkpoint_and_method_is_found() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = crate::pipeline::run_checkpoints(&personas());
        assert_eq!(checkpoints, vec!["base", "E0", "benign_sft"]);
        for c in &checkpoints {
            for m in ["A", "B"] {
                touch(&run.path().join(format!("activations/{c}/{m}.safetensors")));
            }
        }
        let found = check(run.path(), &checkpoints, &personas()).unwrap();
        assert!(found.missing.is_empty(), "{:?}", found.missing);
        assert_eq!(found.methods, vec!["A", "B"]);
        assert_eq!(found.files.len(), 6);
    }

    #[test]
    fn a_missing_checkpoint_or_method_is_named() {
        let run = tempfile::tempdir().unwrap();
        let checkpoints = crate::pipeline::run_checkpoints(&personas());
        touch(&run.path().join("activations/base/A.safetensors"));
        touch(&run.path().join("activations/base/B.safetensors"));
        touch(&run.path().join("activations/E0/A.safetensors"));
        let found = check(run.path(), &checkpoints, &personas()).unwrap();
        let text = found.missing.join("\n");
        assert!(text.contains("checkpoint E0: no B.safetensors"), "{text}");
        assert!(text.contains("checkpoint benign_sft"), "{text}");
    }

    #[test]
    fn no_activation_folder_is_one_missing_line() {
        let run = tempfile::tempdir().unwrap();
        let found = check(run.path(), &["base".to_string()], &personas()).unwrap();
        assert_eq!(found.missing.len(), 1);
        assert!(found.missing[0].contains("no activations"));
    }
}
