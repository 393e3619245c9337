//! The checks a spec gets before any compute, all at once: its values against each other, the
//! model (it exists, its config and tokenizer load; layer indices within its depth, lengths
//! within its context), every data file (it exists, parses, has the md5 the spec gives and the
//! rows the recipe needs) and the persona and question sets (the names and counts the spec
//! asks for; each condition listed in the personas file with the spec's training prompt).
//! Reading the model's config and the GGUF header loads no weights; a `random:` model's config
//! is its preset's.
//!
//! `pspace run` (with or without `--dry-run`), `pspace coordinator` and `pspace status` call
//! [`preflight`] and stop on its [`Problems`], one line each.

use super::{Problem, Problems, Spec, TrainingSet};
use crate::data::{load_question_list, DataError, Personas, Questions};
use crate::error_chain as describe;
use pspace_engine::gguf::GgufFile;
use pspace_engine::model::{ModelConfig, ModelSource};
use pspace_engine::train::DataReport;
use std::fmt;
use std::path::Path;

/// How many malformed rows of one data file are listed before the rest are counted.
const LISTED_ROWS: usize = 3;

/// What the checks learnt about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// The model's path, or its `random:<preset>@<seed>` name.
    pub name: String,
    /// `llama` or `qwen2`.
    pub architecture: String,
    pub num_hidden_layers: usize,
    /// The context length: `max_position_embeddings` of config.json, `<arch>.context_length`
    /// of a GGUF.
    pub max_position_embeddings: usize,
}

/// A training set as the run will use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetFacts {
    /// Rows read (after `first_rows`); rows the tokenizer later drops are in the training log.
    pub rows: usize,
    /// Optimizer steps the run takes (`max_steps`, or every step of the epochs).
    pub optimizer_steps: usize,
}

/// What a spec that passed every check will run on.
#[derive(Debug, Clone, PartialEq)]
pub struct Preflight {
    pub model: ModelFacts,
    /// Eval personas, in their fixed order.
    pub personas: usize,
    /// Questions used (after each section's `questions` limit).
    pub coupling_questions: usize,
    pub eval_questions: usize,
    pub extraction_questions: usize,
    pub em: SetFacts,
    pub benign: SetFacts,
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        writeln!(
            f,
            "model {}: {}, {} layers, context {} tokens",
            m.name, m.architecture, m.num_hidden_layers, m.max_position_embeddings
        )?;
        writeln!(
            f,
            "data: {} personas; {} coupling, {} eval and {} extraction questions",
            self.personas, self.coupling_questions, self.eval_questions, self.extraction_questions
        )?;
        write!(
            f,
            "training: em {} rows, {} steps; benign {} rows, {} steps",
            self.em.rows, self.em.optimizer_steps, self.benign.rows, self.benign.optimizer_steps
        )
    }
}

/// Runs every check of `spec`, with `demo_model` the file `model = "demo"` names (see
/// [`Spec::model_source`]); the problems, one per line, or what the run will use.
pub fn preflight(spec: &Spec, demo_model: &Path) -> Result<Preflight, Problems> {
    let mut out = spec.problems();
    // A `random:` name that does not parse is already one of the spec's problems.
    let model = match spec.model_source(demo_model) {
        Ok(source) => model_facts(spec, &source, &mut out),
        Err(_) => None,
    };
    if let Some(m) = &model {
        against_model(spec, m, &mut out);
    }
    let personas = personas(spec, &mut out);
    let questions = questions(spec, &mut out);
    let extraction = extraction_questions(spec, &mut out);
    let em = training_set(spec, "training.em", &spec.training.em, &mut out);
    let benign = training_set(spec, "training.benign", &spec.training.benign, &mut out);
    match (model, personas, questions, extraction, em, benign) {
        (
            Some(model),
            Some(personas),
            Some((coupling_questions, eval_questions)),
            Some(x),
            Some(em),
            Some(benign),
        ) if out.is_empty() => Ok(Preflight {
            model,
            personas,
            coupling_questions,
            eval_questions,
            extraction_questions: x,
            em,
            benign,
        }),
        _ => Err(Problems(out)),
    }
}

/// A problem inside a file the spec names at `key`.
fn in_file(
    spec: &Spec,
    key: &str,
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
) -> Problem {
    let named = match spec.locations.get(key) {
        Some(p) => format!("{key} at {}:{}:{}", spec.origin, p.line, p.column),
        None => format!("{key} of {}", spec.origin),
    };
    Problem {
        file: file.display().to_string(),
        position: line.map(|line| super::Position {
            line,
            column: column.unwrap_or(1),
        }),
        key: None,
        message: format!("{message} (named by {named})"),
    }
}

fn data_problem(spec: &Spec, key: &str, e: &DataError) -> Problem {
    match e {
        DataError::Read { path, source } => {
            in_file(spec, key, path, None, None, format!("cannot read: {source}"))
        }
        DataError::Parse {
            path,
            line,
            column,
            expected,
            message,
        } => in_file(
            spec,
            key,
            path,
            Some(*line),
            Some(*column),
            format!("expected {expected}: {message}"),
        ),
        DataError::Invalid { path, message } => in_file(spec, key, path, None, None, message.clone()),
    }
}

fn model_facts(spec: &Spec, source: &ModelSource, out: &mut Vec<Problem>) -> Option<ModelFacts> {
    let mut problem = |message: String| out.push(spec.problem("experiment.model", message));
    let read = match source {
        ModelSource::Random(random) => random
            .config()
            .map(|config| (config, random.preset.context_length()))
            .map_err(|e| describe(&e)),
        ModelSource::Files(path) if !path.exists() => {
            problem(if spec.experiment.model == "demo" {
                format!("the demo model {} is missing: run `make setup`", path.display())
            } else {
                format!(
                    "{} not found: expected `demo`, random:<preset>[@seed], an HF model folder (with config.json) or a .gguf file",
                    path.display()
                )
            });
            return None;
        }
        ModelSource::Files(path) if path.is_dir() => hf_config(path),
        ModelSource::Files(path) if path.extension().is_some_and(|e| e == "gguf") => gguf_config(path),
        ModelSource::Files(path) => Err(format!(
            "{} is neither a folder nor a .gguf file: expected `demo`, random:<preset>[@seed], an HF model folder (with config.json) or a .gguf file",
            path.display()
        )),
    };
    let facts = match read {
        Ok((config, context)) => Some(ModelFacts {
            name: source.to_string(),
            architecture: format!("{:?}", config.architecture).to_lowercase(),
            num_hidden_layers: config.num_hidden_layers,
            max_position_embeddings: context,
        }),
        Err(message) => {
            problem(message);
            None
        }
    };
    if let Err(e) = source.tokenizer() {
        problem(format!("the model's tokenizer does not load: {}", describe(&e)));
    }
    facts
}

/// The config of an HF folder and its context length.
fn hf_config(dir: &Path) -> Result<(ModelConfig, usize), String> {
    let file = dir.join("config.json");
    if !file.is_file() {
        return Err(format!(
            "{} has no config.json: expected an HF model folder or a .gguf file",
            dir.display()
        ));
    }
    let config = ModelConfig::from_hf_json(&file).map_err(|e| describe(&e))?;
    // from_hf_json has read and parsed this file already; only the context length is new.
    let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    match v["max_position_embeddings"].as_u64() {
        Some(n) => Ok((config, n as usize)),
        None => Err(format!(
            "{}: expected \"max_position_embeddings\" (the context length), found {}",
            file.display(),
            v.get("max_position_embeddings")
                .map_or("nothing".into(), |x| x.to_string())
        )),
    }
}

/// The config of a GGUF file (header only) and its context length.
fn gguf_config(file: &Path) -> Result<(ModelConfig, usize), String> {
    let g = GgufFile::open(file).map_err(|e| describe(&e))?;
    let config = ModelConfig::from_gguf(&g).map_err(|e| describe(&e))?;
    let key = format!("{:?}.context_length", config.architecture).to_lowercase();
    match g.get_u64(&key) {
        Some(n) => Ok((config, n as usize)),
        None => Err(format!(
            "{}: expected metadata key {key:?} (the context length), found nothing",
            file.display()
        )),
    }
}

fn against_model(spec: &Spec, m: &ModelFacts, out: &mut Vec<Problem>) {
    let n = m.num_hidden_layers;
    for (i, &layer) in spec.extraction.layers.iter().enumerate() {
        if layer >= n {
            out.push(spec.problem(
                &format!("extraction.layers[{i}]"),
                format!(
                    "expected a layer index below {n} (the model has {n} decoder layers, 0 to {}), found {layer}",
                    n.saturating_sub(1)
                ),
            ));
        }
    }
    let context = m.max_position_embeddings;
    for (key, max_len) in [
        ("training.em.max_len", spec.training.em.recipe.max_len),
        ("training.benign.max_len", spec.training.benign.recipe.max_len),
        ("coupling.max_len", spec.coupling.recipe.max_len),
    ] {
        if max_len > context {
            out.push(spec.problem(
                key,
                format!("expected at most the model's context length ({context} tokens), found {max_len}"),
            ));
        }
    }
    for (key, tokens) in [
        ("extraction.max_new_tokens", spec.extraction.max_new_tokens),
        ("coupling.max_new_tokens", spec.coupling.max_new_tokens),
        ("marker_eval.max_new_tokens", spec.marker_eval.max_new_tokens),
    ] {
        if tokens >= context {
            out.push(spec.problem(
                key,
                format!(
                    "expected fewer tokens than the model's context length ({context}, prompt included), found {tokens}"
                ),
            ));
        }
    }
}

/// The personas file, the coupling's source persona and its negatives; the persona count.
fn personas(spec: &Spec, out: &mut Vec<Problem>) -> Option<usize> {
    let path = spec.root.join(&spec.data.personas);
    let p = match Personas::load(&path) {
        Ok(p) => p,
        Err(e) => {
            out.push(data_problem(spec, "data.personas", &e));
            return None;
        }
    };
    let c = &spec.coupling;
    let source_known = p.order.contains(&c.source_persona);
    if !source_known {
        out.push(spec.problem(
            "coupling.source_persona",
            format!(
                "expected a persona of {} ({}), found {:?}",
                path.display(),
                p.order.join(", "),
                c.source_persona
            ),
        ));
    }
    // One source of truth for each condition's training prompt: the spec trains with its
    // own, the analysis reads the file's conditions (cos to the assistant); they must agree.
    for (i, condition) in spec.conditions.iter().enumerate() {
        let id_key = format!("conditions[{i}].id");
        if out.iter().any(|p| p.key.as_deref() == Some(id_key.as_str())) {
            continue; // a reserved, unsafe or repeated id: reported already
        }
        match p.conditions.iter().find(|c| c.id == condition.id) {
            None => out.push(spec.problem(
                &format!("conditions[{i}].id"),
                format!(
                    "expected a condition of em_induction_conditions in {} ({}), found {:?}: the analysis reads each condition there",
                    path.display(),
                    p.conditions.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "),
                    condition.id
                ),
            )),
            Some(listed) if listed.training_system_prompt != condition.training_system_prompt => {
                let key = if condition.training_system_prompt.is_some() {
                    format!("conditions[{i}].training_system_prompt")
                } else {
                    format!("conditions[{i}].id")
                };
                let show = |p: &Option<String>| {
                    p.as_ref()
                        .map_or("none (the chat template's default)".to_string(), |s| format!("{s:?}"))
                };
                out.push(spec.problem(
                    &key,
                    format!(
                        "expected the training system prompt {} gives {:?}, {}, found {}",
                        path.display(),
                        condition.id,
                        show(&listed.training_system_prompt),
                        show(&condition.training_system_prompt)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let others = p.order.len() - usize::from(source_known);
    if c.negative_personas > others {
        out.push(spec.problem(
            "coupling.negative_personas",
            format!(
                "expected at most {others} (the personas of {} other than the source persona), found {}",
                path.display(),
                c.negative_personas
            ),
        ));
    }
    Some(p.order.len())
}

/// The coupling and eval question lists against the counts the spec asks for; the counts used.
fn questions(spec: &Spec, out: &mut Vec<Problem>) -> Option<(usize, usize)> {
    let path = spec.root.join(&spec.data.questions);
    let q = match Questions::load(&path) {
        Ok(q) => q,
        Err(e) => {
            out.push(data_problem(spec, "data.questions", &e));
            return None;
        }
    };
    let coupling = count(
        spec,
        "coupling.questions",
        spec.coupling.questions,
        q.coupling.len(),
        &path,
        "coupling_questions",
        out,
    );
    let eval = count(
        spec,
        "marker_eval.questions",
        spec.marker_eval.questions,
        q.eval.len(),
        &path,
        "eval_questions",
        out,
    );
    Some((coupling?, eval?))
}

fn extraction_questions(spec: &Spec, out: &mut Vec<Problem>) -> Option<usize> {
    let path = spec.root.join(&spec.data.extraction_questions);
    match load_question_list(&path) {
        Ok(list) => count(
            spec,
            "extraction.questions",
            spec.extraction.questions,
            list.len(),
            &path,
            "the list",
            out,
        ),
        Err(e) => {
            out.push(data_problem(spec, "data.extraction_questions", &e));
            None
        }
    }
}

/// The questions used of `available`: `asked` (the spec's limit) or all; a problem when the
/// list is empty or shorter than asked.
#[allow(clippy::too_many_arguments)]
fn count(
    spec: &Spec,
    key: &str,
    asked: Option<usize>,
    available: usize,
    file: &Path,
    list: &str,
    out: &mut Vec<Problem>,
) -> Option<usize> {
    match asked {
        Some(n) if n > available => {
            out.push(spec.problem(
                key,
                format!(
                    "expected at most the {available} questions of {list} in {}, found {n}",
                    file.display()
                ),
            ));
            None
        }
        Some(n) => Some(n),
        None if available == 0 => {
            out.push(Problem {
                file: file.display().to_string(),
                position: None,
                key: None,
                message: format!("{list} is empty: expected at least one question"),
            });
            None
        }
        None => Some(available),
    }
}

/// A chat JSONL training set: readable, UTF-8, its md5, every row well formed, enough rows for
/// `first_rows` and for `max_steps`.
fn training_set(spec: &Spec, key: &str, set: &TrainingSet, out: &mut Vec<Problem>) -> Option<SetFacts> {
    let path = spec.root.join(&set.data);
    let data_key = format!("{key}.data");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            // A dry run's sets are generated, not shipped: say how.
            let hint = if spec.random_model() && e.kind() == std::io::ErrorKind::NotFound {
                " (a dry run's training sets are generated: `pspace dryrun-data --out DIR`, or `make dryrun-data` for experiments/issue205-dryrun.toml)"
            } else {
                ""
            };
            out.push(in_file(
                spec,
                &data_key,
                &path,
                None,
                None,
                format!("cannot read: {e}{hint}"),
            ));
            return None;
        }
    };
    if let Some(want) = &set.md5 {
        let found = crate::training::md5_hex(&bytes);
        if !found.eq_ignore_ascii_case(want) {
            out.push(spec.problem(
                &format!("{key}.md5"),
                format!(
                    "expected the md5 of {}, found {want} (the file's is {found})",
                    path.display()
                ),
            ));
        }
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            out.push(in_file(
                spec,
                &data_key,
                &path,
                Some(line),
                None,
                "expected UTF-8 text, found bytes that are not".into(),
            ));
            return None;
        }
    };
    let mut report = DataReport::default();
    let rows = pspace_engine::train::data::parse_jsonl(text, &mut report).len();
    for (line, message) in report.malformed.iter().take(LISTED_ROWS) {
        out.push(in_file(
            spec,
            &data_key,
            &path,
            Some(*line),
            None,
            format!("expected a chat row: {message}"),
        ));
    }
    if report.malformed.len() > LISTED_ROWS {
        out.push(in_file(
            spec,
            &data_key,
            &path,
            None,
            None,
            format!("{} more rows are malformed", report.malformed.len() - LISTED_ROWS),
        ));
    }
    let used = match set.first_rows {
        Some(n) if n > rows => {
            out.push(spec.problem(
                &format!("{key}.first_rows"),
                format!(
                    "expected at most the {rows} rows of {}, found {n}",
                    path.display()
                ),
            ));
            return None;
        }
        Some(n) => n,
        None => rows,
    };
    if used == 0 {
        out.push(in_file(
            spec,
            &data_key,
            &path,
            None,
            None,
            "expected at least one chat row, found none".into(),
        ));
        return None;
    }
    let r = &set.recipe;
    let micro_batches = used.div_ceil(r.per_device_train_batch_size.max(1));
    let per_epoch = micro_batches.div_ceil(r.gradient_accumulation_steps.max(1));
    let total = per_epoch * r.num_train_epochs;
    if let Some(m) = r.max_steps.filter(|&m| m > total) {
        out.push(spec.problem(
            &format!("{key}.max_steps"),
            format!(
                "expected at most {total}, the optimizer steps of {} epoch(s) of {used} rows at {} rows x {} accumulation steps; found {m}: raise num_train_epochs or lower max_steps",
                r.num_train_epochs, r.per_device_train_batch_size, r.gradient_accumulation_steps
            ),
        ));
    }
    Some(SetFacts {
        rows: used,
        optimizer_steps: r.max_steps.map_or(total, |m| m.min(total)),
    })
}
