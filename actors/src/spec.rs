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
    pub data: DataFiles,
    pub training: Training,
    pub extraction: Extraction,
    pub coupling: Coupling,
    pub marker_eval: MarkerEval,
    pub analysis: AnalysisParams,
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

/// Bundled and user-supplied data files (paths relative to the spec's folder).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// Eval personas, their order and cos-to-assistant values (the format of personas.json).
    pub personas: PathBuf,
    /// Coupling and eval questions (the format of questions.json).
    pub questions: PathBuf,
    /// Extraction questions for persona vectors: JSON list of strings.
    pub extraction_questions: PathBuf,
}

/// A LoRA configuration as the spec writes it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub rslora: bool,
}

/// One SFT recipe: every number of RECIPE.md's training sections is a field here.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub lora: LoraParams,
    pub epochs: f64,
    /// Stop after this many optimizer steps (the demo's budget); absent = full epochs.
    #[serde(default)]
    pub max_steps: Option<usize>,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: String,
    pub warmup_ratio: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub clip_grad_norm: f64,
    pub max_len: usize,
    pub pad_to_multiple: usize,
}

/// A training data set and the recipe applied to it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSet {
    pub data: PathBuf,
    /// Expected md5 of the data file, checked before training (user-supplied sets).
    #[serde(default)]
    pub md5: Option<String>,
    /// Use only the first N rows (the benign set is "the first 6,000 rows of Tulu-3").
    #[serde(default)]
    pub first_rows: Option<usize>,
    #[serde(flatten)]
    pub recipe: Recipe,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub em: TrainingSet,
    pub benign: TrainingSet,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Extraction {
    /// 0-indexed decoder layers whose OUTPUT is captured.
    pub layers: Vec<usize>,
    /// "A" (last prompt token) and/or "B" (mean over greedy response tokens).
    pub methods: Vec<String>,
    /// Method B's greedy response budget.
    pub max_new_tokens: usize,
    /// Use the first N extraction questions (all when absent).
    #[serde(default)]
    pub questions: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Coupling {
    pub source_persona: String,
    pub negative_personas: usize,
    pub completions_per_question: usize,
    pub positives_per_question: usize,
    pub negatives_per_question: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Appended to every positive completion.
    pub marker_suffix: String,
    /// Use the first N coupling questions (all when absent).
    #[serde(default)]
    pub questions: Option<usize>,
    #[serde(flatten)]
    pub recipe: Recipe,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerEval {
    pub completions: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// A hit is a case-insensitive substring match of this text.
    pub marker: String,
    /// Use the first N eval questions (all when absent).
    #[serde(default)]
    pub questions: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisParams {
    pub permutations: usize,
    pub bootstrap: usize,
    pub alpha: f64,
    pub cv_folds: usize,
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
        if self.extraction.layers.is_empty() {
            return Err(invalid(
                "[extraction].layers is empty: expected at least one layer".into(),
            ));
        }
        for m in &self.extraction.methods {
            if m != "A" && m != "B" {
                return Err(invalid(format!(
                    "[extraction].methods has {m:?}: expected \"A\" or \"B\""
                )));
            }
        }
        for (name, r) in [
            ("training.em", &self.training.em.recipe),
            ("training.benign", &self.training.benign.recipe),
            ("coupling", &self.coupling.recipe),
        ] {
            if r.schedule != "linear" && r.schedule != "cosine" {
                return Err(invalid(format!(
                    "[{name}].schedule is {:?}: expected \"linear\" or \"cosine\"",
                    r.schedule
                )));
            }
            if r.micro_batch == 0 || r.grad_accum == 0 {
                return Err(invalid(format!(
                    "[{name}]: micro_batch and grad_accum must be at least 1"
                )));
            }
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

    /// The spec section a task kind reads: part of its id, so changing a number re-runs exactly
    /// the tasks that depend on it.
    fn stage_params(&self, kind: TaskKind) -> serde_json::Value {
        let v = match kind {
            TaskKind::TrainEm => serde_json::to_value(&self.training.em),
            TaskKind::TrainBenign => serde_json::to_value(&self.training.benign),
            TaskKind::Extract => serde_json::to_value(&self.extraction),
            TaskKind::GenerateOnpolicy | TaskKind::BuildCoupling | TaskKind::TrainCoupling => {
                serde_json::to_value(&self.coupling)
            }
            TaskKind::MarkerEval => serde_json::to_value(&self.marker_eval),
            TaskKind::Analyse => serde_json::to_value(&self.analysis),
        };
        v.unwrap_or_default()
    }

    /// The tasks of one seed in dependency order (inputs before the tasks that read them).
    pub fn expand(&self, seed: u64) -> Vec<Task> {
        self.plan(seed).into_iter().map(|p| p.task).collect()
    }

    /// The DAG of one seed: every task with the keys (`kind/label`) of the tasks it reads, in an
    /// order where dependencies come first. The tasks' `inputs` are filled at run time with the
    /// content digests of their dependencies' outputs.
    pub fn plan(&self, seed: u64) -> Vec<PlannedTask> {
        let mk = |kind: TaskKind, label: &str, deps: Vec<String>| PlannedTask {
            task: Task {
                kind,
                label: label.to_string(),
                params: json!({
                    "experiment": self.experiment.name,
                    "seed": seed,
                    "model": self.experiment.model,
                    "stage": self.stage_params(kind),
                }),
                inputs: BTreeMap::new(),
            },
            depends_on: deps,
        };
        let key = |kind: TaskKind, label: &str| format!("{}/{label}", kind.as_str());
        let mut tasks = vec![mk(TaskKind::Extract, "base", vec![])];
        let mut analyse_deps = vec![key(TaskKind::Extract, "base")];
        for c in &self.conditions {
            let id = c.id.as_str();
            tasks.push(mk(TaskKind::TrainEm, id, vec![]));
            tasks.push(mk(TaskKind::Extract, id, vec![key(TaskKind::TrainEm, id)]));
            tasks.push(mk(
                TaskKind::GenerateOnpolicy,
                id,
                vec![key(TaskKind::TrainEm, id)],
            ));
            tasks.push(mk(
                TaskKind::BuildCoupling,
                id,
                vec![key(TaskKind::GenerateOnpolicy, id)],
            ));
            tasks.push(mk(
                TaskKind::TrainCoupling,
                id,
                vec![key(TaskKind::TrainEm, id), key(TaskKind::BuildCoupling, id)],
            ));
            tasks.push(mk(
                TaskKind::MarkerEval,
                id,
                vec![key(TaskKind::TrainEm, id), key(TaskKind::TrainCoupling, id)],
            ));
            analyse_deps.push(key(TaskKind::Extract, id));
            analyse_deps.push(key(TaskKind::MarkerEval, id));
        }
        tasks.push(mk(TaskKind::TrainBenign, "benign_sft", vec![]));
        tasks.push(mk(
            TaskKind::Extract,
            "benign_sft",
            vec![key(TaskKind::TrainBenign, "benign_sft")],
        ));
        analyse_deps.push(key(TaskKind::Extract, "benign_sft"));
        tasks.push(mk(TaskKind::Analyse, "all", analyse_deps));
        tasks
    }
}

/// A task of the DAG and the keys of the tasks whose outputs it reads.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub task: Task,
    pub depends_on: Vec<String>,
}

impl PlannedTask {
    /// `kind/label`, unique within one seed.
    pub fn key(&self) -> String {
        format!("{}/{}", self.task.kind.as_str(), self.task.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_spec_carries_the_recipe_numbers() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/issue205.toml");
        let spec = Spec::from_file(&path).unwrap();
        assert_eq!(spec.conditions.len(), 5);
        assert!(spec.conditions[0].training_system_prompt.is_none());
        let em = &spec.training.em.recipe;
        assert_eq!((em.lora.r, em.lora.alpha, em.lora.rslora), (32, 64.0, false));
        assert_eq!(
            (em.micro_batch * em.grad_accum, em.lr, em.max_len),
            (16, 1e-4, 2048)
        );
        assert_eq!(spec.extraction.layers, vec![7, 14, 20, 21, 27]);
        assert!(spec.coupling.recipe.lora.rslora);
        assert_eq!(
            (spec.coupling.recipe.lr, spec.coupling.recipe.epochs),
            (5e-6, 20.0)
        );
        assert_eq!(spec.analysis.permutations, 10_000);
    }

    #[test]
    fn the_embedded_demo_parses_and_expands() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        assert!(!spec.conditions.is_empty());
        let tasks = spec.expand(spec.experiment.seeds[0]);
        // base extract + 6 per condition + benign train/extract + analyse
        assert_eq!(tasks.len(), 1 + 6 * spec.conditions.len() + 3);
        let ids: std::collections::BTreeSet<_> = tasks.iter().map(Task::id).collect();
        assert_eq!(ids.len(), tasks.len(), "task ids must be unique");
        // Every dependency is planned before the task that reads it.
        let plan = spec.plan(42);
        for (i, t) in plan.iter().enumerate() {
            for d in &t.depends_on {
                let at = plan
                    .iter()
                    .position(|p| &p.key() == d)
                    .expect("dependency is planned");
                assert!(at < i, "{d} must come before {}", t.key());
            }
        }
        assert_eq!(
            plan.last().unwrap().depends_on.len(),
            2 + 2 * spec.conditions.len()
        );
    }

    #[test]
    fn errors_name_the_problem_and_the_file() {
        let no_seeds = DEMO_SPEC.replace("seeds = [42]", "seeds = []");
        let err = Spec::parse(&no_seeds, "x.toml", PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("seeds"), "{err}");
        let err = Spec::parse("[experiment]\nname='x'\n", "y.toml", PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("y.toml") && err.contains("model"), "{err}");
        let bad_method = DEMO_SPEC.replace(r#"methods = ["A", "B"]"#, r#"methods = ["A", "C"]"#);
        let err = Spec::parse(&bad_method, "z.toml", PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("z.toml") && err.contains("\"C\"") && err.contains("expected"),
            "{err}"
        );
    }
}
