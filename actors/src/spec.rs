//! The experiment spec: a TOML file that names the model, data, conditions and every number of
//! the recipe, and expands into the task DAG.
//!
//! `experiments/demo.toml` is embedded in the binary and is what `pspace run` runs with no
//! argument; `experiments/issue205.toml` is the real experiment. Paths inside a spec are
//! relative to the spec file's folder. Training keys carry the names transformers'
//! `TrainingArguments` and PEFT's `LoraConfig` give them (`docs/spec.md` lists every key).
//!
//! Reading a spec reports every problem of a kind at once, each as `file:line:column: key:
//! what was expected, what was found`: first TOML syntax, then the keys (renamed, unknown,
//! missing), then the values' types, then the checks that need no other file. [`preflight`]
//! adds the checks that read the data files and the model's config.

pub mod preflight;
mod schema;

pub use preflight::{preflight, Preflight};

use crate::fingerprint::Fingerprints;
use crate::task::{Task, TaskKind};
use pspace_engine::model::{ModelSource, RandomNameError};
use pspace_engine::train::ScheduleKind;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The embedded default spec.
pub const DEMO_SPEC: &str = include_str!("../../experiments/demo.toml");

/// Task labels the plan gives the base model's and the benign control's tasks; a condition
/// with one of these ids would share their store folders.
pub const RESERVED_LABELS: [&str; 2] = ["base", "benign_sft"];

/// What `[experiment] device` accepts, as messages say it (the schema's missing-key message and
/// [`Spec::device`]'s). `gpu` is the engine's alias of `cuda`.
pub(crate) const DEVICE_NAMES: &str = "\"cpu\", \"cuda\" (or its alias \"gpu\") or \"cuda:N\"";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Everything found wrong, one problem per line.
    #[error("{0}")]
    Problems(Problems),
}

/// A 1-based line and column (in characters) inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text`.
    pub fn of(text: &str, offset: usize) -> Position {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &text[..end];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One thing wrong with a spec or with a file it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file the problem is in: the spec, or a data or model file it names.
    pub file: String,
    pub position: Option<Position>,
    /// The spec key the problem is about (`training.em.learning_rate`, `extraction.layers[2]`).
    pub key: Option<String>,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `file:line:column: key: message`, leaving out the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found by one check, in the order found; displays one line per problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 1 {
            writeln!(f, "{} problems:", self.0.len())?;
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Where each key of a spec file is: key path (`coupling.lora.r`, `conditions[1].id`,
/// `extraction.layers[0]`) -> the position of its value.
#[derive(Debug, Clone, Default)]
pub struct Locations(BTreeMap<String, Position>);

impl Locations {
    pub fn get(&self, key: &str) -> Option<Position> {
        self.0.get(key).copied()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub experiment: Experiment,
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
    /// The spec's name in messages: its path, or what embedded it.
    #[serde(skip)]
    pub origin: String,
    /// Where each key sits in the file, for messages about values.
    #[serde(skip)]
    pub locations: Locations,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the run's store folder: letters, digits, `_`, `-` and `.` (not `.` or `..`).
    pub name: String,
    /// Base model: `demo` (the bundled SmolLM2 GGUF) or a path to an HF folder or GGUF file.
    pub model: String,
    pub seeds: Vec<u64>,
    /// `cpu`, `cuda` (alias `gpu`) or `cuda:N`, lower case as every named value of a spec;
    /// [`Spec::device`] reads it.
    pub device: String,
    /// The floating-point type models compute in: `f32`, `bf16`, or `auto` (absent: the
    /// device's default, bf16 on CUDA and f32 on CPU). When given, part of the ids of the tasks
    /// that run the model (bf16 moves trained adapters and sampled completions far past
    /// rounding, so an f32 result must not be reused by a bf16 run); absent, ids are as before
    /// the key existed. `auto` is settled once per run where it starts ([`Spec::settle_dtype`]).
    #[serde(default)]
    pub dtype: Option<DtypeSetting>,
    /// Where runs are stored: a folder, or `s3://bucket/prefix`.
    pub store: String,
}

/// One EM-induction condition: an id and the system prompt active during EM training (none
/// means the chat template's default applies).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Names the condition's task folders: letters, digits, `_` and `-`; not `base` or
    /// `benign_sft`.
    pub id: String,
    #[serde(default)]
    pub training_system_prompt: Option<String>,
}

/// Bundled and user-supplied data files (paths relative to the spec's folder).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    /// Eval personas, their order and cos-to-assistant values (the format of personas.json).
    pub personas: PathBuf,
    /// Coupling and eval questions (the format of questions.json).
    pub questions: PathBuf,
    /// Extraction questions for persona vectors: JSON list of strings.
    pub extraction_questions: PathBuf,
}

/// A LoRA configuration, keyed as PEFT's `LoraConfig`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    pub r: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// PEFT module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
}

/// One SFT recipe, keyed as transformers' `TrainingArguments`: every number of RECIPE.md's
/// training sections is a field here. In the file these keys sit in the training set's (or the
/// coupling's) own table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub lora: LoraParams,
    /// Whole epochs (the trainer has no partial epoch; `max_steps` stops earlier).
    #[serde(deserialize_with = "whole_epochs")]
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (the demo's budget); absent = full epochs.
    #[serde(default)]
    pub max_steps: Option<usize>,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub lr_scheduler_type: ScheduleKind,
    pub warmup_ratio: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Longer examples are truncated to this many tokens.
    pub max_len: usize,
    pub pad_to_multiple_of: usize,
    /// TRL's `padding_free`: each optimizer step's rows run packed back to back without padding
    /// (same loss and gradient as padded micro-batches, up to floating-point order; only the
    /// LoRA dropout masks are drawn in another layout). On unless set to false.
    #[serde(default = "yes")]
    pub padding_free: bool,
}

fn yes() -> bool {
    true
}

/// A training data set and the recipe applied to it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSet {
    pub data: PathBuf,
    /// Expected md5 of the data file, checked before training (user-supplied sets).
    #[serde(default)]
    pub md5: Option<String>,
    /// Use only the first N rows (the benign set is "the first 6,000 rows of Tulu-3").
    #[serde(default)]
    pub first_rows: Option<usize>,
    /// Train on the rows that remain when some cannot be used (no final assistant turn, an
    /// empty turn, a template error); off: such a row stops the run, so the rows and steps
    /// trained are the ones this spec asks for.
    #[serde(default)]
    pub allow_shortfall: bool,
    pub recipe: Recipe,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    pub em: TrainingSet,
    pub benign: TrainingSet,
}

/// A dry run's completion lengths (`dry_run_lengths = { mean = 50, sigma = 0.5 }` in a
/// generating section): random weights never emit an end token, so each completion ends at a
/// length drawn from a log-normal with this mean (tokens) and `sigma` (standard deviation of
/// the log; 0 = fixed), capped at the section's `max_new_tokens`. Refused unless the model is
/// `random:`; absent in real runs (and then no part of any task id).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunLengths {
    pub mean: f64,
    pub sigma: f64,
}

/// `[experiment] dtype` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeSetting {
    F32,
    Bf16,
    /// bf16 on CUDA; on a CPU whichever of f32 and bf16 multiplies faster there (CPUs of one
    /// kind differ by 9x either way), measured where the run starts, kept for the store, and
    /// followed by every worker.
    Auto,
}

impl Experiment {
    /// The type models compute in, when the spec fixes one: `f32` or `bf16`, or `auto` once
    /// settled. `None`: the device's default (also for an `auto` not settled, as in a tool that
    /// plans without running the model, so ids and compute still agree).
    pub fn fixed_dtype(&self) -> Option<pspace_engine::Dtype> {
        match self.dtype? {
            DtypeSetting::F32 => Some(pspace_engine::Dtype::F32),
            DtypeSetting::Bf16 => Some(pspace_engine::Dtype::Bf16),
            DtypeSetting::Auto => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Dry runs only: Method B's response lengths (see [`DryRunLengths`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_lengths: Option<DryRunLengths>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Dry runs only: on-policy completion lengths (see [`DryRunLengths`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_lengths: Option<DryRunLengths>,
    /// Build and train the coupling set when it has fewer positives or negatives than planned
    /// (a question with too few usable completions) or a row cannot be trained on; off: either
    /// stops the run with the counts.
    #[serde(default)]
    pub allow_shortfall: bool,
    /// Build the set only from completions the model ended itself, skipping (and counting)
    /// those the token budget cut: a cut text followed by the marker, or by the end of turn a
    /// negative learns, teaches the model to stop mid-sentence. A 512-token budget on a 7B
    /// model cuts almost nothing; a CPU demo's budget cuts more. Absent = false (the
    /// reference keeps every completion) and no part of any task id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_cut_completions: bool,
    pub recipe: Recipe,
}

impl Coupling {
    /// The keys on-policy sampling reads (part of its task id).
    fn sampling_params(&self) -> serde_json::Value {
        let mut v = json!({
            "source_persona": self.source_persona,
            "negative_personas": self.negative_personas,
            "completions_per_question": self.completions_per_question,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "questions": self.questions,
        });
        if let Some(lengths) = self.dry_run_lengths {
            v["dry_run_lengths"] = json!(lengths);
        }
        v
    }

    /// The keys building the coupling set reads: the sampling's and the set's own.
    fn set_params(&self) -> serde_json::Value {
        let mut v = self.sampling_params();
        v["positives_per_question"] = json!(self.positives_per_question);
        v["negatives_per_question"] = json!(self.negatives_per_question);
        v["marker_suffix"] = json!(self.marker_suffix);
        v["allow_shortfall"] = json!(self.allow_shortfall);
        if self.skip_cut_completions {
            v["skip_cut_completions"] = json!(true);
        }
        v
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Dry runs only: completion lengths (see [`DryRunLengths`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_lengths: Option<DryRunLengths>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisParams {
    pub permutations: usize,
    pub bootstrap: usize,
    /// The false discovery rate level of the Benjamini-Hochberg families (named apart from
    /// LoRA's `lora_alpha`).
    pub fdr_alpha: f64,
    pub cv_folds: usize,
    /// The condition whose induction persona's shift (anchor minus base) is the M2 axis;
    /// absent: the condition `E0` or `E0_*`.
    #[serde(default)]
    pub anchor_condition: Option<String>,
}

/// `num_train_epochs` as transformers writes it (a float) when it is a whole number >= 1: the
/// trainer runs whole epochs, so 0.5 or 1.5 is refused instead of rounded.
fn whole_epochs<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct Epochs;
    impl serde::de::Visitor<'_> for Epochs {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number of epochs >= 1 (to stop part-way, set max_steps)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            match usize::try_from(v) {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<usize, E> {
            if v.fract() == 0.0 && (1.0..=1e9).contains(&v) {
                Ok(v as usize)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Epochs)
}

impl Spec {
    /// Reads and fully checks a spec file (everything but the data files and the model, which
    /// [`preflight`] checks).
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let spec = Spec::from_file_well_formed(path)?;
        spec.checked()
    }

    /// Reads a spec file whose keys and value types are right, without the checks of values
    /// against each other: for callers that run [`preflight`] next, which reports those
    /// problems together with the data files' and the model's.
    pub fn from_file_well_formed(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // A bare file name has the empty path as its parent: the current directory.
        let root = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Spec::parse_well_formed(&text, &path.display().to_string(), root)
    }

    /// The embedded demo spec, with paths resolved against `root` (the repository's
    /// `experiments/` folder).
    pub fn demo(root: PathBuf) -> Result<Spec, SpecError> {
        Spec::parse(DEMO_SPEC, "experiments/demo.toml (embedded)", root)
    }

    /// Parses and fully checks spec text; `origin` names it in messages, `root` is the folder
    /// its relative paths start from.
    pub fn parse(text: &str, origin: &str, root: PathBuf) -> Result<Spec, SpecError> {
        Spec::parse_well_formed(text, origin, root)?.checked()
    }

    /// [`Spec::parse`] without the checks of values against each other (see
    /// [`Spec::from_file_well_formed`]).
    pub fn parse_well_formed(text: &str, origin: &str, root: PathBuf) -> Result<Spec, SpecError> {
        let (mut spec, locations) =
            schema::read(text, origin).map_err(|p| SpecError::Problems(Problems(p)))?;
        spec.root = root;
        spec.origin = origin.to_string();
        spec.locations = locations;
        Ok(spec)
    }

    fn checked(self) -> Result<Spec, SpecError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(SpecError::Problems(Problems(problems)))
        }
    }

    /// The base model: `demo` is `demo_model` (the bundled GGUF, found by the binary),
    /// `random:<preset>[@seed]` random weights of a preset architecture, anything else a path,
    /// relative to the spec's folder. The path is not checked here: [`preflight`] reports a
    /// missing model along with every other problem.
    pub fn model_source(&self, demo_model: &Path) -> Result<ModelSource, RandomNameError> {
        if self.experiment.model == "demo" {
            return Ok(ModelSource::Files(demo_model.to_path_buf()));
        }
        Ok(match ModelSource::parse(&self.experiment.model)? {
            ModelSource::Files(p) if p.is_relative() => ModelSource::Files(self.root.join(p)),
            source => source,
        })
    }

    /// Whether the model is `random:` weights (a dry run's model).
    pub fn random_model(&self) -> bool {
        self.experiment
            .model
            .starts_with(pspace_engine::model::random::PREFIX)
    }

    /// The device `[experiment] device` names. A name the engine does not know is a problem at
    /// the key's line, like every other wrong value: callers that need the device before the
    /// other checks run (`pspace run`, `coordinator`, `status`) report it in the spec's form
    /// rather than as the engine's bare parse error.
    pub fn device(&self) -> Result<pspace_engine::Device, SpecError> {
        let name = &self.experiment.device;
        name.parse().map_err(|_| {
            SpecError::Problems(Problems(vec![
                self.problem("experiment.device", device_message(name))
            ]))
        })
    }

    /// A problem about `key` of this spec, at the key's value.
    fn problem(&self, key: &str, message: String) -> Problem {
        Problem {
            file: self.origin.clone(),
            position: self.locations.get(key),
            key: Some(key.to_string()),
            message,
        }
    }

    /// Every value out of range or inconsistent with another, all at once.
    fn problems(&self) -> Vec<Problem> {
        let mut c = Checks {
            spec: self,
            out: Vec::new(),
        };
        c.experiment();
        c.conditions();
        for (path, set) in [
            ("training.em", &self.training.em),
            ("training.benign", &self.training.benign),
        ] {
            c.training_set(path, set);
        }
        c.recipe("coupling", &self.coupling.recipe);
        c.extraction();
        c.coupling();
        c.marker_eval();
        c.dry_run_lengths();
        c.analysis();
        c.out
    }

    /// The spec's values a task kind reads: part of its id, so changing a number re-runs
    /// exactly the tasks that depend on it. `label` is the task's condition (or checkpoint).
    fn stage_params(&self, kind: TaskKind, label: &str) -> serde_json::Value {
        let v = match kind {
            TaskKind::TrainEm => serde_json::to_value(&self.training.em),
            TaskKind::TrainBenign => serde_json::to_value(&self.training.benign),
            TaskKind::Extract => serde_json::to_value(&self.extraction),
            // Sampling reads the sampling keys only, and building the set those and the set's
            // quotas: a researcher tuning the coupling's training does not resample.
            TaskKind::GenerateOnpolicy => Ok(self.coupling.sampling_params()),
            TaskKind::BuildCoupling => Ok(self.coupling.set_params()),
            TaskKind::TrainCoupling => serde_json::to_value(&self.coupling),
            TaskKind::MarkerEval => serde_json::to_value(&self.marker_eval),
            TaskKind::Analyse | TaskKind::Summarise => serde_json::to_value(&self.analysis),
        };
        // These sections are structs of numbers, strings and lists with string keys, which
        // serde_json always serialises (a non-finite float becomes null, not an error).
        let mut v = v.expect("spec sections serialise to JSON");
        // Values a stage reads from outside its own section.
        match kind {
            TaskKind::TrainEm => {
                let prompt = self
                    .conditions
                    .iter()
                    .find(|c| c.id == label)
                    .and_then(|c| c.training_system_prompt.clone());
                v["training_system_prompt"] = json!(prompt);
            }
            // Positives that already carry the marker are skipped.
            TaskKind::BuildCoupling => v["marker"] = json!(self.marker_eval.marker),
            TaskKind::Summarise => v["result_schema"] = json!(pspace_analysis::result::SCHEMA_VERSION),
            TaskKind::Analyse => {
                // A result file of an older schema is not reused (a reader of the new schema
                // refuses it, e.g. the cross-seed summary).
                v["result_schema"] = json!(pspace_analysis::result::SCHEMA_VERSION);
                v["source_persona"] = json!(self.coupling.source_persona);
                let ids: Vec<&str> = self.conditions.iter().map(|c| c.id.as_str()).collect();
                v["conditions"] = json!(ids);
            }
            _ => {}
        }
        v
    }

    /// The cross-seed summary of a run of several seeds (label `seeds`): its parameters are the
    /// analysis section and the list of seeds; its inputs are each seed's analysis (whose ids
    /// cover the model and data files, so it names no file itself).
    pub fn summary_task(&self) -> Task {
        Task {
            kind: TaskKind::Summarise,
            label: "seeds".into(),
            params: json!({
                "experiment": self.experiment.name,
                "seeds": self.experiment.seeds,
                // It reads no model or data file (only each seed's analysis), but like every
                // task it says so: a worker checks `files` before it runs anything.
                "files": {},
                "stage": self.stage_params(TaskKind::Summarise, "seeds"),
            }),
            inputs: BTreeMap::new(),
        }
    }

    /// Settles `dtype = "auto"` to `chosen` (measured where the run starts; workers get it
    /// from the coordinator), so the ids and every worker's compute use one type; any other
    /// setting stays.
    pub fn settle_dtype(&mut self, chosen: pspace_engine::Dtype) {
        if self.experiment.dtype == Some(DtypeSetting::Auto) {
            self.experiment.dtype = Some(match chosen {
                pspace_engine::Dtype::F32 => DtypeSetting::F32,
                pspace_engine::Dtype::Bf16 => DtypeSetting::Bf16,
            });
        }
    }

    /// The tasks of one seed in dependency order (inputs before the tasks that read them).
    pub fn expand(&self, seed: u64, files: &Fingerprints) -> Vec<Task> {
        self.plan(seed, files).into_iter().map(|p| p.task).collect()
    }

    /// The DAG of one seed: every task with the keys (`kind/label`) of the tasks it reads, in an
    /// order where dependencies come first. A task's parameters hold the spec values it reads
    /// and the digests of the files it reads (`files`, see [`Fingerprints::read_by`]); its
    /// `inputs` are filled at run time with the content digests of its dependencies' outputs.
    pub fn plan(&self, seed: u64, files: &Fingerprints) -> Vec<PlannedTask> {
        let mk = |kind: TaskKind, label: &str, deps: Vec<String>| {
            let reads = files.read_by(kind);
            let runs_model = reads.contains_key("model");
            let mut params = json!({
                "experiment": self.experiment.name,
                "seed": seed,
                "files": reads,
                "stage": self.stage_params(kind, label),
            });
            if let (Some(dtype), true) = (self.experiment.fixed_dtype(), runs_model) {
                // Named apart from the key of earlier versions ("dtype"), whose tasks seeded
                // their draws with it: their stored outputs must not be reused.
                params[crate::task::COMPUTE_DTYPE] = json!(dtype);
            }
            PlannedTask {
                task: Task {
                    kind,
                    label: label.to_string(),
                    params,
                    inputs: BTreeMap::new(),
                },
                depends_on: deps,
            }
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
            // The report's Training section reads the trainings' logs and coupling counts.
            analyse_deps.push(key(TaskKind::TrainEm, id));
            analyse_deps.push(key(TaskKind::BuildCoupling, id));
            analyse_deps.push(key(TaskKind::TrainCoupling, id));
        }
        tasks.push(mk(TaskKind::TrainBenign, "benign_sft", vec![]));
        tasks.push(mk(
            TaskKind::Extract,
            "benign_sft",
            vec![key(TaskKind::TrainBenign, "benign_sft")],
        ));
        analyse_deps.push(key(TaskKind::Extract, "benign_sft"));
        analyse_deps.push(key(TaskKind::TrainBenign, "benign_sft"));
        tasks.push(mk(TaskKind::Analyse, "all", analyse_deps));
        tasks
    }
}

/// Whether `s` is usable as one path component of the store: a safe character set, not empty,
/// not `.` or `..`.
fn is_safe_name(s: &str, allow_dot: bool) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (allow_dot && c == '.'))
}

/// What an unknown `[experiment] device` gives: what is accepted and what was found. Names are
/// matched as written, as the spec's other named values (`dtype`, `lr_scheduler_type`) are; a
/// name that is only wrong in case says so, since `GPU` or `CPU` is the likely slip.
fn device_message(found: &str) -> String {
    let lower = found.to_lowercase();
    let hint = if lower != found && lower.parse::<pspace_engine::Device>().is_ok() {
        format!(" (names are lower case: write {lower:?})")
    } else {
        String::new()
    };
    format!("expected {DEVICE_NAMES}, found {found:?}{hint}")
}

/// The checks of [`Spec::problems`], one method per section.
struct Checks<'a> {
    spec: &'a Spec,
    out: Vec<Problem>,
}

impl Checks<'_> {
    fn push(&mut self, key: &str, message: String) {
        self.out.push(self.spec.problem(key, message));
    }

    /// `value` must lie in the interval; `what` names it for the message.
    fn within(&mut self, key: &str, value: f64, low: Bound, high: Bound) {
        let above = match low {
            Bound::Closed(l) => value >= l,
            Bound::Open(l) => value > l,
            Bound::None => true,
        };
        let below = match high {
            Bound::Closed(h) => value <= h,
            Bound::Open(h) => value < h,
            Bound::None => true,
        };
        if !(value.is_finite() && above && below) {
            let lo = match low {
                Bound::Closed(l) => format!("[{l}"),
                Bound::Open(l) => format!("({l}"),
                Bound::None => "(-inf".into(),
            };
            let hi = match high {
                Bound::Closed(h) => format!("{h}]"),
                Bound::Open(h) => format!("{h})"),
                Bound::None => "inf)".into(),
            };
            self.push(key, format!("expected a number in {lo}, {hi}, found {value}"));
        }
    }

    fn at_least_one(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.push(key, "expected a whole number >= 1, found 0".into());
        }
    }

    fn experiment(&mut self) {
        let spec = self.spec;
        let e = &spec.experiment;
        if !is_safe_name(&e.name, true) {
            self.push(
                "experiment.name",
                format!(
                    "expected 1 to 64 letters, digits, `_`, `-` or `.` (it names the run's store folder), found {:?}",
                    e.name
                ),
            );
        }
        if e.seeds.is_empty() {
            self.push("experiment.seeds", "expected at least one seed, found []".into());
        }
        let mut seen = BTreeSet::new();
        for (i, s) in e.seeds.iter().enumerate() {
            if !seen.insert(s) {
                self.push(
                    &format!("experiment.seeds[{i}]"),
                    format!("seed {s} appears twice"),
                );
            }
        }
        if e.device.parse::<pspace_engine::Device>().is_err() {
            self.push("experiment.device", device_message(&e.device));
        }
        if e.model.trim().is_empty() {
            self.push(
                "experiment.model",
                "expected `demo`, random:<preset>[@seed], an HF model folder or a .gguf file, found an empty string".into(),
            );
        } else if let Some(Err(err)) = pspace_engine::model::RandomModel::parse(&e.model) {
            self.push("experiment.model", err.message);
        }
        if e.store.trim().is_empty() {
            self.push(
                "experiment.store",
                "expected a folder or s3://bucket/prefix, found an empty string".into(),
            );
        }
    }

    fn conditions(&mut self) {
        if self.spec.conditions.is_empty() {
            self.out.push(Problem {
                file: self.spec.origin.clone(),
                position: None,
                key: Some("conditions".into()),
                message: "expected at least one [[conditions]] table, found none".into(),
            });
        }
        let spec = self.spec;
        let mut seen = BTreeSet::new();
        for (i, c) in spec.conditions.iter().enumerate() {
            let key = format!("conditions[{i}].id");
            if RESERVED_LABELS.contains(&c.id.as_str()) {
                self.push(
                    &key,
                    format!(
                        "{:?} is reserved for the {} tasks: expected another id",
                        c.id,
                        if c.id == "base" {
                            "base model's"
                        } else {
                            "benign control's"
                        }
                    ),
                );
            } else if !is_safe_name(&c.id, false) {
                self.push(
                    &key,
                    format!(
                        "expected 1 to 64 letters, digits, `_` or `-` (it names task folders), found {:?}",
                        c.id
                    ),
                );
            }
            if !seen.insert(c.id.as_str()) {
                self.push(&key, format!("condition id {:?} appears twice", c.id));
            }
        }
    }

    fn training_set(&mut self, path: &str, set: &TrainingSet) {
        if let Some(md5) = &set.md5 {
            if md5.len() != 32 || !md5.chars().all(|c| c.is_ascii_hexdigit()) {
                self.push(
                    &format!("{path}.md5"),
                    format!("expected 32 hexadecimal digits, found {md5:?}"),
                );
            }
        }
        if set.first_rows == Some(0) {
            self.at_least_one(&format!("{path}.first_rows"), 0);
        }
        self.recipe(path, &set.recipe);
    }

    fn recipe(&mut self, path: &str, r: &Recipe) {
        let k = |name: &str| format!("{path}.{name}");
        if r.max_steps == Some(0) {
            self.at_least_one(&k("max_steps"), 0);
        }
        self.at_least_one(&k("per_device_train_batch_size"), r.per_device_train_batch_size);
        self.at_least_one(&k("gradient_accumulation_steps"), r.gradient_accumulation_steps);
        self.at_least_one(&k("max_len"), r.max_len);
        self.at_least_one(&k("pad_to_multiple_of"), r.pad_to_multiple_of);
        self.within(
            &k("learning_rate"),
            r.learning_rate,
            Bound::Open(0.0),
            Bound::None,
        );
        self.within(
            &k("warmup_ratio"),
            r.warmup_ratio,
            Bound::Closed(0.0),
            Bound::Open(1.0),
        );
        self.within(
            &k("adam_beta1"),
            r.adam_beta1,
            Bound::Closed(0.0),
            Bound::Open(1.0),
        );
        self.within(
            &k("adam_beta2"),
            r.adam_beta2,
            Bound::Closed(0.0),
            Bound::Open(1.0),
        );
        self.within(&k("adam_epsilon"), r.adam_epsilon, Bound::Open(0.0), Bound::None);
        self.within(
            &k("weight_decay"),
            r.weight_decay,
            Bound::Closed(0.0),
            Bound::None,
        );
        self.within(
            &k("max_grad_norm"),
            r.max_grad_norm,
            Bound::Open(0.0),
            Bound::None,
        );
        let lora = &r.lora;
        if lora.r < 1 {
            self.push(&k("lora.r"), format!("expected a rank >= 1, found {}", lora.r));
        }
        self.within(
            &k("lora.lora_alpha"),
            lora.lora_alpha,
            Bound::Open(0.0),
            Bound::None,
        );
        self.within(
            &k("lora.lora_dropout"),
            lora.lora_dropout,
            Bound::Closed(0.0),
            Bound::Open(1.0),
        );
        if lora.target_modules.is_empty() {
            self.push(
                &k("lora.target_modules"),
                "expected at least one module, found []".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, t) in lora.target_modules.iter().enumerate() {
            let key = format!("{path}.lora.target_modules[{i}]");
            if pspace_engine::model::Proj::from_peft_name(t).is_none() {
                self.push(
                    &key,
                    format!(
                        "expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, found {t:?}"
                    ),
                );
            } else if !seen.insert(t) {
                self.push(&key, format!("{t:?} appears twice"));
            }
        }
    }

    fn extraction(&mut self) {
        let spec = self.spec;
        let x = &spec.extraction;
        if x.layers.is_empty() {
            self.push(
                "extraction.layers",
                "expected at least one layer, found []".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, l) in x.layers.iter().enumerate() {
            if !seen.insert(l) {
                self.push(
                    &format!("extraction.layers[{i}]"),
                    format!("layer {l} appears twice"),
                );
            }
        }
        if x.methods.is_empty() {
            self.push(
                "extraction.methods",
                "expected \"A\", \"B\" or both, found []".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, m) in x.methods.iter().enumerate() {
            let key = format!("extraction.methods[{i}]");
            if m != "A" && m != "B" {
                self.push(&key, format!("expected \"A\" or \"B\", found {m:?}"));
            } else if !seen.insert(m) {
                self.push(&key, format!("method {m:?} appears twice"));
            }
        }
        self.at_least_one("extraction.max_new_tokens", x.max_new_tokens);
        if x.questions == Some(0) {
            self.at_least_one("extraction.questions", 0);
        }
    }

    fn coupling(&mut self) {
        let spec = self.spec;
        let c = &spec.coupling;
        if c.source_persona.is_empty() {
            self.push(
                "coupling.source_persona",
                "expected a persona name, found \"\"".into(),
            );
        }
        self.at_least_one("coupling.completions_per_question", c.completions_per_question);
        self.at_least_one("coupling.positives_per_question", c.positives_per_question);
        for (key, n) in [
            ("coupling.positives_per_question", c.positives_per_question),
            ("coupling.negatives_per_question", c.negatives_per_question),
        ] {
            if n > c.completions_per_question {
                self.push(
                    key,
                    format!(
                        "expected at most completions_per_question ({}), the completions sampled per question, found {n}",
                        c.completions_per_question
                    ),
                );
            }
        }
        self.within(
            "coupling.temperature",
            c.temperature,
            Bound::Closed(0.0),
            Bound::None,
        );
        self.within("coupling.top_p", c.top_p, Bound::Open(0.0), Bound::Closed(1.0));
        self.at_least_one("coupling.max_new_tokens", c.max_new_tokens);
        if c.questions == Some(0) {
            self.at_least_one("coupling.questions", 0);
        }
        let marker = &spec.marker_eval.marker;
        if !marker.is_empty() && !crate::coupling::contains_marker(&c.marker_suffix, marker) {
            self.push(
                "coupling.marker_suffix",
                format!(
                    "expected a suffix containing marker_eval.marker ({marker:?}), the text the evaluation counts, found {:?}",
                    c.marker_suffix
                ),
            );
        }
    }

    fn marker_eval(&mut self) {
        let spec = self.spec;
        let m = &spec.marker_eval;
        self.at_least_one("marker_eval.completions", m.completions);
        self.within(
            "marker_eval.temperature",
            m.temperature,
            Bound::Closed(0.0),
            Bound::None,
        );
        self.within("marker_eval.top_p", m.top_p, Bound::Open(0.0), Bound::Closed(1.0));
        self.at_least_one("marker_eval.max_new_tokens", m.max_new_tokens);
        if m.marker.trim().is_empty() {
            self.push(
                "marker_eval.marker",
                "expected the marker text, found an empty string".into(),
            );
        }
        if m.questions == Some(0) {
            self.at_least_one("marker_eval.questions", 0);
        }
    }

    /// Each section's `dry_run_lengths`: sensible numbers, and only for random weights (a real
    /// model ends its own completions).
    fn dry_run_lengths(&mut self) {
        let spec = self.spec;
        for (section, lengths) in [
            ("extraction", spec.extraction.dry_run_lengths),
            ("coupling", spec.coupling.dry_run_lengths),
            ("marker_eval", spec.marker_eval.dry_run_lengths),
        ] {
            let Some(d) = lengths else { continue };
            let key = format!("{section}.dry_run_lengths");
            if !spec.random_model() {
                self.push(
                    &key,
                    format!(
                        "ends completions at drawn lengths, which only a dry run on random weights may do: expected experiment.model = \"random:<preset>\", found {:?} (remove this key for a real model)",
                        spec.experiment.model
                    ),
                );
            }
            self.within(&format!("{key}.mean"), d.mean, Bound::Closed(1.0), Bound::None);
            self.within(
                &format!("{key}.sigma"),
                d.sigma,
                Bound::Closed(0.0),
                Bound::Closed(3.0),
            );
        }
    }

    fn analysis(&mut self) {
        let spec = self.spec;
        let a = &spec.analysis;
        self.at_least_one("analysis.permutations", a.permutations);
        self.at_least_one("analysis.bootstrap", a.bootstrap);
        self.within(
            "analysis.fdr_alpha",
            a.fdr_alpha,
            Bound::Open(0.0),
            Bound::Open(1.0),
        );
        if a.cv_folds < 2 {
            self.push(
                "analysis.cv_folds",
                format!("expected at least 2 folds, found {}", a.cv_folds),
            );
        }
        let ids: Vec<&str> = spec.conditions.iter().map(|c| c.id.as_str()).collect();
        match &a.anchor_condition {
            Some(anchor) if !ids.contains(&anchor.as_str()) => self.push(
                "analysis.anchor_condition",
                format!(
                    "expected one of the conditions ({}), found {anchor:?}",
                    ids.join(", ")
                ),
            ),
            Some(_) => {}
            // The analysis's default: the one condition E0 or E0_* (checked here, not after
            // hours of compute), once the ids themselves are sound (a reserved or repeated id
            // is its own problem).
            None if self
                .out
                .iter()
                .any(|p| p.key.as_deref().is_some_and(|k| k.starts_with("conditions"))) => {}
            None => {
                let e0: Vec<&str> = ids
                    .iter()
                    .copied()
                    .filter(|id| *id == "E0" || id.starts_with("E0_"))
                    .collect();
                if e0.len() != 1 && !ids.is_empty() {
                    let why = if e0.is_empty() {
                        format!("no condition is E0 or E0_* ({})", ids.join(", "))
                    } else {
                        format!("several conditions are E0 or E0_* ({})", e0.join(", "))
                    };
                    self.out.push(Problem {
                        file: spec.origin.clone(),
                        position: spec.locations.get("analysis"),
                        key: Some("analysis.anchor_condition".into()),
                        message: format!(
                            "missing: expected the condition whose shift is the M2 axis, as {why}"
                        ),
                    });
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Bound {
    Open(f64),
    Closed(f64),
    None,
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
        assert_eq!(
            (em.lora.r, em.lora.lora_alpha, em.lora.use_rslora),
            (32, 64.0, false)
        );
        assert_eq!(
            (
                em.per_device_train_batch_size * em.gradient_accumulation_steps,
                em.learning_rate,
                em.max_len
            ),
            (16, 1e-4, 2048)
        );
        assert_eq!(spec.extraction.layers, vec![7, 14, 20, 21, 27]);
        assert!(spec.coupling.recipe.lora.use_rslora);
        assert_eq!(
            (
                spec.coupling.recipe.learning_rate,
                spec.coupling.recipe.num_train_epochs
            ),
            (5e-6, 20)
        );
        assert_eq!(spec.analysis.permutations, 10_000);
        assert_eq!(spec.analysis.fdr_alpha, 0.01);
    }

    #[test]
    fn the_dry_run_spec_is_the_real_one_on_random_weights_and_drawn_lengths() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let real = Spec::from_file(&root.join("issue205.toml")).unwrap();
        let dry = Spec::from_file(&root.join("issue205-dryrun.toml")).unwrap();
        assert!(dry.random_model() && !real.random_model());
        assert_eq!(
            dry.model_source(Path::new("demo.gguf")).unwrap().to_string(),
            "random:qwen2.5-7b@0"
        );
        fn json<T: Serialize>(v: &T) -> serde_json::Value {
            serde_json::to_value(v).unwrap()
        }
        // Every recipe number, question set and count is the real spec's.
        for (a, b) in [
            (json(&real.training.em.recipe), json(&dry.training.em.recipe)),
            (
                json(&real.training.benign.recipe),
                json(&dry.training.benign.recipe),
            ),
            (json(&real.coupling.recipe), json(&dry.coupling.recipe)),
            (json(&real.analysis), json(&dry.analysis)),
            (json(&real.data), json(&dry.data)),
        ] {
            assert_eq!(a, b);
        }
        let without_lengths = |mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("dry_run_lengths");
            v
        };
        for (a, b) in [
            (json(&real.extraction), json(&dry.extraction)),
            (json(&real.coupling), json(&dry.coupling)),
            (json(&real.marker_eval), json(&dry.marker_eval)),
        ] {
            assert_eq!(a, without_lengths(b));
        }
        let ids = |s: &Spec| {
            s.conditions
                .iter()
                .map(|c| (c.id.clone(), c.training_system_prompt.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&real), ids(&dry));
        assert_eq!(dry.training.benign.first_rows, Some(6000));
        let fifty = Some(DryRunLengths {
            mean: 50.0,
            sigma: 0.5,
        });
        assert_eq!(
            (dry.coupling.dry_run_lengths, dry.marker_eval.dry_run_lengths),
            (fifty, fifty)
        );
        assert_eq!(
            dry.extraction.dry_run_lengths,
            Some(DryRunLengths {
                mean: 256.0,
                sigma: 0.0
            })
        );
    }

    #[test]
    fn dry_run_lengths_are_no_part_of_a_real_runs_task_ids() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        for t in spec.expand(42, &Fingerprints::placeholder()) {
            assert!(!t.canonical_json().contains("dry_run_lengths"), "{:?}", t.kind);
        }
    }

    #[test]
    fn the_embedded_demo_parses_and_expands() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        assert!(!spec.conditions.is_empty());
        let tasks = spec.expand(spec.experiment.seeds[0], &Fingerprints::placeholder());
        // base extract + 6 per condition + benign train/extract + analyse
        assert_eq!(tasks.len(), 1 + 6 * spec.conditions.len() + 3);
        let ids: BTreeSet<_> = tasks.iter().map(Task::id).collect();
        assert_eq!(ids.len(), tasks.len(), "task ids must be unique");
        // Every dependency is planned before the task that reads it.
        let plan = spec.plan(42, &Fingerprints::placeholder());
        for (i, t) in plan.iter().enumerate() {
            for d in &t.depends_on {
                let at = plan
                    .iter()
                    .position(|p| &p.key() == d)
                    .expect("dependency is planned");
                assert!(at < i, "{d} must come before {}", t.key());
            }
        }
        // The analysis reads base's, benign's and every condition's vectors, every marker
        // eval, and every training's log (EM, benign, coupling and its set's counts).
        assert_eq!(
            plan.last().unwrap().depends_on.len(),
            3 + 5 * spec.conditions.len()
        );
    }

    #[test]
    fn a_changed_recipe_number_changes_exactly_the_ids_that_read_it() {
        // (Ids before inputs are filled: a task downstream of a changed one also changes at run
        // time, through its inputs' digests.)
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        let files = Fingerprints::placeholder();
        let changed = |edit: &dyn Fn(&mut Spec), kinds: &[TaskKind]| {
            let mut other = spec.clone();
            edit(&mut other);
            for (a, b) in spec.expand(42, &files).iter().zip(other.expand(42, &files)) {
                assert_eq!(
                    a.id() != b.id(),
                    kinds.contains(&a.kind),
                    "{:?}/{}",
                    a.kind,
                    a.label
                );
            }
        };
        // The coupling's training recipe: only the coupling training (issue 15: sampling and
        // the set are not redone when a researcher tunes its learning rate).
        changed(
            &|s| s.coupling.recipe.learning_rate *= 0.8,
            &[TaskKind::TrainCoupling],
        );
        // Its sampling: everything of the coupling.
        changed(
            &|s| s.coupling.max_new_tokens += 1,
            &[
                TaskKind::GenerateOnpolicy,
                TaskKind::BuildCoupling,
                TaskKind::TrainCoupling,
            ],
        );
        // The set's quotas: the set and its training.
        changed(
            &|s| s.coupling.positives_per_question += 1,
            &[TaskKind::BuildCoupling, TaskKind::TrainCoupling],
        );
        changed(
            &|s| s.training.em.recipe.learning_rate *= 0.8,
            &[TaskKind::TrainEm],
        );
    }

    /// Issue 11 item 1: a task id changes when a file it reads changes (the base model, the
    /// personas, question and extraction-question files, either training set) and only then;
    /// before, the ids held the model's name and no file's content.
    #[test]
    fn a_changed_file_changes_exactly_the_ids_of_the_tasks_that_read_it() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        let base = Fingerprints::placeholder();
        let before = spec.expand(42, &base);
        let reads = |kind: TaskKind, file: &str| -> bool {
            use TaskKind::*;
            match file {
                "model" => !matches!(kind, BuildCoupling | Analyse),
                "personas" => matches!(
                    kind,
                    Extract | GenerateOnpolicy | BuildCoupling | MarkerEval | Analyse
                ),
                "questions" => matches!(kind, GenerateOnpolicy | MarkerEval),
                "extraction_questions" => kind == Extract,
                "em_data" => kind == TrainEm,
                "benign_data" => kind == TrainBenign,
                _ => unreachable!(),
            }
        };
        for file in [
            "model",
            "personas",
            "questions",
            "extraction_questions",
            "em_data",
            "benign_data",
        ] {
            let mut changed = base.clone();
            let digest = match file {
                "model" => &mut changed.model,
                "personas" => &mut changed.personas,
                "questions" => &mut changed.questions,
                "extraction_questions" => &mut changed.extraction_questions,
                "em_data" => &mut changed.em_data,
                _ => &mut changed.benign_data,
            };
            *digest = "another file".into();
            for (a, b) in before.iter().zip(spec.expand(42, &changed)) {
                assert_eq!(
                    a.id() != b.id(),
                    reads(a.kind, file),
                    "{file}: {:?}/{}",
                    a.kind,
                    a.label
                );
            }
        }
    }

    /// A condition's training prompt is part of its EM training's id (it was not: an edited
    /// prompt reused the adapter trained under the old one).
    #[test]
    fn a_changed_training_prompt_changes_that_condition_s_training() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        let mut other = spec.clone();
        let c = other
            .conditions
            .iter_mut()
            .find(|c| c.training_system_prompt.is_some())
            .unwrap();
        c.training_system_prompt = Some("You are someone else.".into());
        let changed_id = c.id.clone();
        let files = Fingerprints::placeholder();
        for (a, b) in spec.expand(42, &files).iter().zip(other.expand(42, &files)) {
            if a.kind == TaskKind::TrainEm {
                assert_eq!(a.id() != b.id(), a.label == changed_id, "{}", a.label);
            }
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match Spec::parse(text, "x.toml", PathBuf::new()) {
            Ok(_) => Vec::new(),
            Err(SpecError::Problems(p)) => p.0.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    /// A count that must be at least 1 says so for a negative value too: a message saying
    /// ">= 0" led the user to 0, which the next run refused (fresh-user probe).
    #[test]
    fn a_count_s_bound_is_the_same_for_a_negative_value_and_for_zero() {
        for (key, bad) in [
            ("completions", "-2"),
            ("completions", "0"),
            ("permutations", "-1"),
        ] {
            let text = DEMO_SPEC.replacen(&format!("\n{key} = "), &format!("\n{key} = {bad}\n# was: "), 1);
            assert_ne!(text, DEMO_SPEC, "{key} not in the demo spec");
            let found = problems(&text);
            assert!(
                found
                    .iter()
                    .any(|p| p.contains(key) && p.contains("expected a whole number >= 1")),
                "{key} = {bad}: {found:?}"
            );
        }
    }

    /// The demo spec with `dtype = VALUE` (VALUE as TOML, e.g. `"bf16"`), or without the key.
    fn demo_with_dtype(value: Option<&str>) -> String {
        let without: String = DEMO_SPEC
            .lines()
            .filter(|l| !l.starts_with("dtype"))
            .map(|l| format!("{l}\n"))
            .collect();
        match value {
            Some(value) => without.replacen("device = ", &format!("dtype = {value}\ndevice = "), 1),
            None => without,
        }
    }

    /// A given `dtype` is part of the ids of the tasks that run the model, so a bf16 run does
    /// not reuse an f32 run's adapters or completions; tasks without the model keep their ids,
    /// and a spec without the key keeps every id.
    #[test]
    fn dtype_is_in_the_ids_of_tasks_that_run_the_model() {
        let (without, with) = (demo_with_dtype(None), |value: &str| demo_with_dtype(Some(value)));
        let ids = |text: &str| -> Vec<(String, String)> {
            let spec = Spec::parse(text, "x.toml", PathBuf::new()).unwrap();
            spec.expand(42, &Fingerprints::placeholder())
                .into_iter()
                .map(|t| (format!("{}/{}", t.kind.as_str(), t.label), t.id()))
                .collect()
        };
        let (none, f32, bf16) = (ids(&without), ids(&with("\"f32\"")), ids(&with("\"bf16\"")));
        let files = Fingerprints::placeholder();
        for ((name, a), ((_, b), (_, c))) in none.iter().zip(f32.iter().zip(bf16.iter())) {
            let kind = name.split('/').next().unwrap();
            let runs_model = crate::task::TaskKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .is_some_and(|k| files.read_by(k).contains_key("model"));
            if runs_model {
                assert!(a != b && b != c && a != c, "{name}: {a} {b} {c}");
            } else {
                assert!(a == b && b == c, "{name}: {a} {b} {c}");
            }
        }
    }

    /// `dtype` is optional (the device's default) and names f32 or bf16; anything else is a
    /// located problem.
    #[test]
    fn dtype_is_optional_and_names_a_float_type() {
        let (without, with) = (demo_with_dtype(None), |value: &str| demo_with_dtype(Some(value)));
        let parse = |text: &str| Spec::parse(text, "x.toml", PathBuf::new());
        assert_eq!(parse(&without).unwrap().experiment.dtype, None);
        assert_eq!(
            parse(&with("\"bf16\"")).unwrap().experiment.fixed_dtype(),
            Some(pspace_engine::Dtype::Bf16)
        );
        assert_eq!(
            parse(&with("\"f32\"")).unwrap().experiment.fixed_dtype(),
            Some(pspace_engine::Dtype::F32)
        );
        // `auto` until settled plans as the device's default; settled, as the type it chose.
        let mut auto = parse(&with("\"auto\"")).unwrap();
        assert_eq!(auto.experiment.fixed_dtype(), None);
        let default_ids = parse(&without).unwrap().expand(42, &Fingerprints::placeholder());
        let ids = |s: &Spec| -> Vec<String> {
            s.expand(42, &Fingerprints::placeholder())
                .iter()
                .map(Task::id)
                .collect()
        };
        assert_eq!(ids(&auto), default_ids.iter().map(Task::id).collect::<Vec<_>>());
        auto.settle_dtype(pspace_engine::Dtype::Bf16);
        assert_eq!(auto.experiment.dtype, Some(DtypeSetting::Bf16));
        assert_eq!(ids(&auto), ids(&parse(&with("\"bf16\"")).unwrap()));
        let found = problems(&with("\"fp16\""));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("experiment.dtype") && found[0].contains("fp16"),
            "{found:?}"
        );
    }

    /// `device` names cpu, cuda (alias gpu) or cuda:N, as written; any other name is a problem
    /// at its line that says what is accepted, with a hint when only the case is wrong.
    /// `Spec::device` gives the same problem to the commands that read the device before the
    /// other checks.
    #[test]
    fn device_names_are_lower_case_and_a_wrong_one_is_located() {
        let with = |name: &str| DEMO_SPEC.replace("device = \"cpu\"", &format!("device = \"{name}\""));
        let well_formed = |text: &str| Spec::parse_well_formed(text, "x.toml", PathBuf::new()).unwrap();
        for (name, device) in [
            ("cpu", pspace_engine::Device::Cpu),
            ("cuda", pspace_engine::Device::Cuda(0)),
            ("gpu", pspace_engine::Device::Cuda(0)),
            ("cuda:1", pspace_engine::Device::Cuda(1)),
        ] {
            assert_eq!(well_formed(&with(name)).device().unwrap(), device, "{name}");
            assert_eq!(problems(&with(name)), Vec::<String>::new(), "{name}");
        }
        let text = with("GPU");
        let line = text.lines().position(|l| l == "device = \"GPU\"").unwrap() + 1;
        let want = format!(
            "x.toml:{line}:10: experiment.device: expected \"cpu\", \"cuda\" (or its alias \"gpu\") or \"cuda:N\", found \"GPU\" (names are lower case: write \"gpu\")"
        );
        assert_eq!(problems(&text), vec![want.clone()]);
        assert_eq!(well_formed(&text).device().unwrap_err().to_string(), want);
        let text = with("tpu");
        assert!(
            well_formed(&text)
                .device()
                .unwrap_err()
                .to_string()
                .ends_with("or \"cuda:N\", found \"tpu\""),
            "no case hint where the case is not the fault"
        );
    }

    #[test]
    fn a_problem_names_file_line_column_and_key() {
        let text = DEMO_SPEC.replace("seeds = [42]", "seeds = []");
        let line = text.lines().position(|l| l == "seeds = []").unwrap() + 1;
        assert_eq!(
            problems(&text),
            [format!(
                "x.toml:{line}:9: experiment.seeds: expected at least one seed, found []"
            )]
        );
    }

    #[test]
    fn position_counts_characters_from_one() {
        let text = "a\nbé = 1\n";
        assert_eq!(Position::of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of(text, 2), Position { line: 2, column: 1 });
        assert_eq!(Position::of(text, 7), Position { line: 2, column: 5 });
    }

    #[test]
    fn epochs_must_be_whole() {
        for (epochs, ok) in [
            ("1", true),
            ("2.0", true),
            ("0.5", false),
            ("0", false),
            ("1.5", false),
        ] {
            // The coupling table's own epochs line, whatever its value, gives way to the one
            // under test.
            let (head, coupling) = DEMO_SPEC.split_once("[coupling]\n").unwrap();
            let coupling: String = coupling
                .lines()
                .filter(|l| !l.starts_with("num_train_epochs"))
                .map(|l| format!("{l}\n"))
                .collect();
            let text = format!("{head}[coupling]\nnum_train_epochs = {epochs}\n{coupling}");
            let found = problems(&text);
            assert_eq!(found.is_empty(), ok, "{epochs}: {found:?}");
            if !ok {
                assert!(
                    found[0].contains("coupling.num_train_epochs: expected a whole number of epochs >= 1"),
                    "{found:?}"
                );
            }
        }
    }
}
