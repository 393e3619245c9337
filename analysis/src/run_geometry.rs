//! The geometry side of a run directory: finding and checking the activation files
//! (`RUN/activations/<checkpoint>/<method>.safetensors`) before anything is computed, and
//! turning the geometry module's per-cell tests into the three geometry families.

use crate::families::Family;
use crate::input::Personas;
use crate::pipeline::{Options, PipelineError};
use crate::result::GeometrySummary;
use std::path::{Path, PathBuf};

/// The activation files of a run, found and checked.
#[derive(Debug, Clone, Default)]
pub struct GeometryRun {
    /// (input name, path) of every activation file.
    pub files: Vec<(String, PathBuf)>,
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
                found.files.push((
                    format!("activations/{checkpoint}/{method}"),
                    dir.join(format!("{method}.safetensors")),
                ));
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

/// Computes the geometry families of a checked run. A run without activation files (allowed
/// only with `--allow-partial`) has no geometry. With `--allow-partial`, checkpoints that lack
/// a method file are left out of the geometry (they are already listed as missing).
pub fn compute(
    run: &GeometryRun,
    personas: &Personas,
    options: &Options,
) -> Result<(Option<GeometrySummary>, Vec<Family>), PipelineError> {
    use crate::geometry::{self, GeometryConfig, GeometryInput};
    if run.files.is_empty() {
        return Ok((None, Vec::new()));
    }
    let geometry_error = |e: geometry::GeometryError| PipelineError::Geometry(e.to_string());
    let complete: Vec<String> = run
        .checkpoints
        .iter()
        .filter(|c| {
            run.methods.iter().all(|m| {
                run.files
                    .iter()
                    .any(|(name, _)| *name == format!("activations/{c}/{m}"))
            })
        })
        .cloned()
        .collect();
    if !complete.iter().any(|c| c == "base") {
        return Err(PipelineError::Geometry(
            "the geometry needs the base checkpoint's activations for every method".into(),
        ));
    }
    let first_condition = personas
        .conditions
        .first()
        .ok_or_else(|| PipelineError::Geometry("the persona file lists no EM conditions".into()))?;
    if !complete.contains(&first_condition.id) {
        return Err(PipelineError::Geometry(format!(
            "the geometry needs the activations of {} (its shift defines the M2 axis)",
            first_condition.id
        )));
    }
    let conditions: Vec<_> = personas
        .conditions
        .iter()
        .filter(|c| complete.contains(&c.id))
        .collect();
    let benign = complete.iter().find(|c| *c == "benign_sft").cloned();
    let mut order = vec!["base".to_string()];
    order.extend(conditions.iter().map(|c| c.id.clone()));
    order.extend(benign.iter().cloned());
    let files: Vec<(String, String, PathBuf)> = order
        .iter()
        .flat_map(|c| {
            run.methods.iter().map(move |m| {
                (
                    c.clone(),
                    m.clone(),
                    run.files
                        .iter()
                        .find(|(name, _)| *name == format!("activations/{c}/{m}"))
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default(),
                )
            })
        })
        .collect();
    let methods = geometry::load(&files, &order).map_err(geometry_error)?;
    let input = GeometryInput {
        base: "base".into(),
        conditions: conditions.iter().map(|c| c.id.clone()).collect(),
        cos_to_assistant: conditions.iter().map(|c| c.cos_to_assistant).collect(),
        benign,
        axis_persona: first_condition.induction_persona.clone(),
        methods,
    };
    let config = GeometryConfig {
        seed: options.behavior.seed,
        permutations: options.behavior.permutations,
        ci_level: options.behavior.ci_level,
        ..GeometryConfig::default()
    };
    let out = geometry::compute(&input, &config).map_err(geometry_error)?;
    let alpha = options.thresholds.fdr_alpha;
    let mut families = vec![Family::new(
        crate::families::GEOMETRY_EM_PRE_POST,
        alpha,
        out.em_pre_post,
    )?];
    if input.benign.is_some() {
        families.push(Family::new(
            crate::families::GEOMETRY_BENIGN_PRE_POST,
            alpha,
            out.benign_pre_post,
        )?);
        families.push(Family::new(
            crate::families::GEOMETRY_EM_VS_BENIGN,
            alpha,
            out.em_vs_benign,
        )?);
    }
    Ok((Some(out.summary), families))
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
