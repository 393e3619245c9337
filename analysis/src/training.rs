//! What each LoRA training of a run did, for the report: per training (EM SFT per condition,
//! benign SFT, marker coupling per condition) the loss of every optimizer step, and for the
//! coupling the rows its set was built from. Read from the run folder's `training/` tree:
//! `training/<kind>/<label>.json` is the trainer's log (`train_log.json`: `steps[].loss`, the
//! data report's `examples`), `training/coupling_counts/<label>.json` the coupling set's counts.
//!
//! Only the losses and counts are read: the logs also hold timings, which differ from run to
//! run, and the result must not (the same inputs give the same result.json, byte for byte).
//! For the same reason these files are not fingerprinted among the result's inputs.

use crate::input::InputError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The training kinds, in the order the report lists them.
pub const KINDS: [&str; 3] = ["em", "benign", "coupling"];

/// One training's loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingCurve {
    /// `em`, `benign` or `coupling`.
    pub kind: String,
    /// The condition it belongs to (`benign_sft` for the benign control).
    pub label: String,
    /// Mean cross-entropy over the label tokens of each optimizer step, step 1 first.
    pub loss: Vec<f64>,
    /// Rows of the data set it trained on (the log's data report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<usize>,
    /// Coupling only: the set's positives and negatives, as built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupling_set: Option<CouplingSet>,
}

/// The counts of a coupling set (`coupling_counts.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CouplingSet {
    pub positives: usize,
    pub negatives: usize,
    /// Completions left out because the token budget cut them.
    #[serde(default)]
    pub skipped_cut: usize,
    /// Completions left out because they were empty.
    #[serde(default)]
    pub skipped_empty: usize,
}

impl TrainingCurve {
    /// The mean loss of the first and of the last `n` steps: single steps are noisy with a few
    /// rows per step. Each window is at most half the curve, so the two never share a step (with
    /// windows of 3, a curve of 3 steps once compared its mean with itself: +0.0 % always);
    /// None under 2 steps.
    pub fn start_end(&self, n: usize) -> Option<(f64, f64)> {
        let n = n.max(1).min(self.loss.len() / 2);
        if n == 0 {
            return None;
        }
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        Some((mean(&self.loss[..n]), mean(&self.loss[self.loss.len() - n..])))
    }
}

#[derive(Deserialize)]
struct LogFile {
    steps: Vec<LogStep>,
    #[serde(default)]
    data: Option<LogData>,
}

#[derive(Deserialize)]
struct LogStep {
    loss: f64,
}

#[derive(Deserialize)]
struct LogData {
    examples: Option<usize>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, InputError> {
    let text = std::fs::read_to_string(path).map_err(|error| InputError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|error| InputError::Json {
        path: path.to_path_buf(),
        error,
    })
}

/// The `.json` files of a folder, sorted by name; none when the folder does not exist.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|error| InputError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| InputError::Read {
                path: dir.to_path_buf(),
                error,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every training log under `run/training`, EM first, then benign, then coupling, each sorted
/// by label; None when the run has no `training` folder (an analysis of activations and hits
/// alone).
pub fn load(run: &Path) -> Result<Option<Vec<TrainingCurve>>, InputError> {
    let root = run.join("training");
    if !root.is_dir() {
        return Ok(None);
    }
    let mut curves = Vec::new();
    for kind in KINDS {
        for path in json_files(&root.join(kind))? {
            let label = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let log: LogFile = read_json(&path)?;
            if let Some(step) = log.steps.iter().position(|s| !s.loss.is_finite()) {
                return Err(InputError::Invalid {
                    path,
                    message: format!("step {}: expected a finite loss", step + 1),
                });
            }
            let counts = root.join("coupling_counts").join(format!("{label}.json"));
            let coupling_set = if kind == "coupling" && counts.exists() {
                Some(read_json::<CouplingSet>(&counts)?)
            } else {
                None
            };
            curves.push(TrainingCurve {
                kind: kind.to_string(),
                label,
                loss: log.steps.iter().map(|s| s.loss).collect(),
                examples: log.data.and_then(|d| d.examples),
                coupling_set,
            });
        }
    }
    Ok(Some(curves))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn logs_are_read_by_kind_and_label_without_their_timings() {
        let run = tempfile::tempdir().unwrap();
        let t = run.path().join("training");
        write(
            &t.join("em/E4_villain.json"),
            r#"{"steps": [{"step": 1, "loss": 4.0, "seconds": 9.1}, {"step": 2, "loss": 3.0, "seconds": 8.7}], "data": {"examples": 48}, "seconds": 17.8}"#,
        );
        write(&t.join("em/E0_assistant.json"), r#"{"steps": [{"loss": 2.0}]}"#);
        write(
            &t.join("coupling/E0_assistant.json"),
            r#"{"steps": [{"loss": 1.5}, {"loss": 0.5}]}"#,
        );
        write(
            &t.join("coupling_counts/E0_assistant.json"),
            r#"{"positives": 6, "negatives": 6, "skipped_cut": 3, "skipped_empty": 1, "short": []}"#,
        );
        write(&t.join("benign/benign_sft.json"), r#"{"steps": [{"loss": 2.5}]}"#);
        let curves = load(run.path()).unwrap().unwrap();
        let names: Vec<String> = curves.iter().map(|c| format!("{}/{}", c.kind, c.label)).collect();
        assert_eq!(
            names,
            [
                "em/E0_assistant",
                "em/E4_villain",
                "benign/benign_sft",
                "coupling/E0_assistant"
            ]
        );
        assert_eq!(curves[1].loss, vec![4.0, 3.0]);
        assert_eq!(curves[1].examples, Some(48));
        assert_eq!(curves[1].start_end(1), Some((4.0, 3.0)));
        // Windows never overlap: 3 steps compare the first with the last; 1 step has no change.
        let three = TrainingCurve {
            loss: vec![7.0, 6.0, 5.0],
            ..curves[1].clone()
        };
        assert_eq!(three.start_end(3), Some((7.0, 5.0)));
        assert_eq!(curves[2].start_end(3), None);
        assert_eq!(
            curves[3].coupling_set,
            Some(CouplingSet {
                positives: 6,
                negatives: 6,
                skipped_cut: 3,
                skipped_empty: 1
            })
        );
        // No training folder: nothing to report, not an error.
        assert_eq!(load(&run.path().join("elsewhere")).unwrap(), None);
        // A loss that is not a number is refused with its step.
        write(
            &t.join("em/E1_x.json"),
            r#"{"steps": [{"loss": 1.0}, {"loss": null}]}"#,
        );
        assert!(load(run.path()).is_err());
    }
}
