//! The experiment spec: a TOML file that names the model, data, conditions and every number of
//! the recipe, and expands into the task DAG.
//!
//! `experiments/demo.toml` is embedded in the binary and is what `pspace run` runs with no
//! argument; `experiments/issue205.toml` is the real experiment. Paths inside a spec are
//! relative to the spec file's folder.

use crate::task::{Task, TaskKind};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The embedded default spec.
pub const DEMO_SPEC: &str = include_str!("../../experiments/demo.toml");

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("spec {origin} is not valid: {message}")]
    Parse { origin: String, message: String },
    #[error("spec {origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub experiment: Experiment,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub stages: BTreeMap<String, toml::Table>,
    /// Folder the spec's relative paths are resolved against (not part of the file).
    #[serde(skip)]
    pub root: PathBuf,
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    /// Base model: `demo` (the bundled SmolLM2 GGUF) or a path to an HF folder or GGUF file.
    pub model: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default = "default_device")]
    pub device: String,
    /// Where runs are stored: a folder, or `s3://bucket/prefix`.
    #[serde(default = "default_store")]
    pub store: String,
}

fn default_seeds() -> Vec<u64> {
    vec![42]
}
fn default_device() -> String {
    "cpu".into()
}
fn default_store() -> String {
    "runs".into()
}

/// One EM-induction condition: an id and the system prompt active during EM training (none
/// means the chat template's default applies).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub id: String,
    #[serde(default)]
    pub training_system_prompt: Option<String>,
}

impl Spec {
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Spec::parse(&text, &path.display().to_string(), root)
    }

    /// The embedded demo spec, with paths resolved against `root` (the repository's
    /// `experiments/` folder).
    pub fn demo(root: PathBuf) -> Result<Spec, SpecError> {
        Spec::parse(DEMO_SPEC, "experiments/demo.toml (embedded)", root)
    }

    pub fn parse(text: &str, origin: &str, root: PathBuf) -> Result<Spec, SpecError> {
        let mut spec: Spec = toml::from_str(text).map_err(|e| SpecError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.root = root;
        spec.origin = origin.to_string();
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), SpecError> {
        let invalid = |message: String| SpecError::Invalid {
            origin: self.origin.clone(),
            message,
        };
        if self.experiment.seeds.is_empty() {
            return Err(invalid(
                "[experiment].seeds is empty: expected at least one seed".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.conditions {
            if !seen.insert(&c.id) {
                return Err(invalid(format!(
                    "condition id {:?} appears twice in [[conditions]]",
                    c.id
                )));
            }
        }
        Ok(())
    }

    /// The tasks of one seed in dependency order (inputs before the tasks that read them).
    pub fn expand(&self, seed: u64) -> Vec<Task> {
        let mk = |kind: TaskKind, label: &str| Task {
            kind,
            label: label.to_string(),
            params: json!({
                "experiment": self.experiment.name,
                "seed": seed,
                "model": self.experiment.model,
                "stage": self.stages.get(kind.as_str()).map(|t| serde_json::to_value(t).unwrap_or_default()),
            }),
            inputs: BTreeMap::new(),
        };
        let mut tasks = vec![mk(TaskKind::Extract, "base")];
        for c in &self.conditions {
            tasks.push(mk(TaskKind::TrainEm, &c.id));
            tasks.push(mk(TaskKind::Extract, &c.id));
            tasks.push(mk(TaskKind::GenerateOnpolicy, &c.id));
            tasks.push(mk(TaskKind::BuildCoupling, &c.id));
            tasks.push(mk(TaskKind::TrainCoupling, &c.id));
            tasks.push(mk(TaskKind::MarkerEval, &c.id));
        }
        tasks.push(mk(TaskKind::TrainBenign, "benign_sft"));
        tasks.push(mk(TaskKind::Extract, "benign_sft"));
        tasks.push(mk(TaskKind::Analyse, "all"));
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_demo_parses_and_expands() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        assert!(!spec.conditions.is_empty());
        let tasks = spec.expand(spec.experiment.seeds[0]);
        // base extract + 6 per condition + benign train/extract + analyse
        assert_eq!(tasks.len(), 1 + 6 * spec.conditions.len() + 3);
        let ids: std::collections::BTreeSet<_> = tasks.iter().map(Task::id).collect();
        assert_eq!(ids.len(), tasks.len(), "task ids must be unique");
    }

    #[test]
    fn errors_name_the_problem_and_the_file() {
        let err = Spec::parse(
            "[experiment]\nname='x'\nmodel='demo'\nseeds=[]\n",
            "x.toml",
            PathBuf::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml") && err.contains("seeds"), "{err}");
        let err = Spec::parse("[experiment]\nname='x'\n", "y.toml", PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("y.toml") && err.contains("model"), "{err}");
    }
}
