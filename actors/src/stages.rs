//! The model work of each task kind, on the engine: loading a checkpoint (base, base + an
//! adapter, base + EM adapter + coupling adapter, merged in memory), extracting persona vectors,
//! sampling completions, training adapters, and handing a run to the analysis.
//!
//! Functions here take plain values and return the bytes of their output files; the runner
//! (`local.rs`) owns ids, the store and commits.

use crate::activations::Activations;
use crate::coupling::Generation;
use crate::data::Personas;
use crate::local::RunObserver;
use crate::spec::{AnalysisParams, Extraction};
use pspace_engine::generate::{generate_with_progress, SamplingParams};
use pspace_engine::model::Model;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot write or read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model: {0}")]
    Model(#[from] pspace_engine::model::LoadError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] pspace_engine::tokenizer::TokenizerError),
    #[error("extraction: {0}")]
    Extract(#[from] pspace_engine::extract::ExtractError),
    #[error("device: {0}")]
    Device(#[from] pspace_engine::DeviceError),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error("training: {0}")]
    Train(String),
    #[error("analysis: {0}")]
    Analysis(String),
    #[error("activations: {0}")]
    Activations(#[from] crate::activations::ActivationsError),
}

/// Which weights a task runs on.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    Base,
    /// Base + a PEFT adapter folder, merged.
    Adapter(PathBuf),
    /// A checkpoint with one more PEFT adapter merged on top (coupling on EM).
    Stacked(Box<Checkpoint>, PathBuf),
}

/// The base model and tokenizer, loaded once and shared by every task.
pub struct Engine {
    pub model_path: PathBuf,
    /// The spec's name for the model (recorded in outputs).
    pub model_name: String,
    pub device: pspace_engine::Device,
    base: Option<Arc<Model>>,
    tokenizer: Option<Arc<ChatTokenizer>>,
    /// Token budget of one extraction batch.
    pub max_batch_tokens: usize,
    /// Rows decoded together.
    pub max_batch_rows: usize,
}

impl Engine {
    pub fn new(model_path: PathBuf, model_name: String, device: pspace_engine::Device) -> Engine {
        let gpu = matches!(device, pspace_engine::Device::Cuda(_));
        Engine {
            model_path,
            model_name,
            device,
            base: None,
            tokenizer: None,
            max_batch_tokens: if gpu { 65_536 } else { 8_192 },
            max_batch_rows: if gpu { 512 } else { 64 },
        }
    }

    pub fn base(&mut self) -> Result<Arc<Model>, StageError> {
        if let Some(m) = &self.base {
            return Ok(m.clone());
        }
        let tdev = self.device.activate()?;
        let model = Arc::new(Model::load(&self.model_path, tdev, self.device.compute_kind())?);
        self.base = Some(model.clone());
        Ok(model)
    }

    pub fn tokenizer(&mut self) -> Result<Arc<ChatTokenizer>, StageError> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        let t = Arc::new(ChatTokenizer::load(&self.model_path)?);
        self.tokenizer = Some(t.clone());
        Ok(t)
    }

    /// The weights of a checkpoint, adapters merged in memory (untouched tensors are shared
    /// with the base model).
    pub fn load(&mut self, checkpoint: &Checkpoint) -> Result<Arc<Model>, StageError> {
        match checkpoint {
            Checkpoint::Base => self.base(),
            Checkpoint::Adapter(dir) => {
                let base = self.base()?;
                Ok(Arc::new(merge_adapter(&base, dir)?))
            }
            Checkpoint::Stacked(inner, dir) => {
                let under = self.load(inner)?;
                Ok(Arc::new(merge_adapter(&under, dir)?))
            }
        }
    }
}

fn merge_adapter(model: &Model, dir: &Path) -> Result<Model, StageError> {
    let (lora, _meta) =
        pspace_engine::peft::load(dir, model).map_err(|e| StageError::Adapter(e.to_string()))?;
    Ok(lora.merged_into(model))
}

fn chat(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage {
            role: "system".into(),
            content: s.into(),
        });
    }
    m.push(ChatMessage {
        role: "user".into(),
        content: user.into(),
    });
    m
}

/// Persona vectors of one checkpoint: Method A and/or B over every persona x question.
/// Returns `(file name, bytes)` per method (`A.safetensors`, `B.safetensors`).
pub fn extract(
    engine: &mut Engine,
    checkpoint: &Checkpoint,
    checkpoint_name: &str,
    params: &Extraction,
    personas: &Personas,
    questions: &[String],
    observer: &mut dyn RunObserver,
) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    let model = engine.load(checkpoint)?;
    let tok = engine.tokenizer()?;
    let questions: Vec<&String> = questions
        .iter()
        .take(params.questions.unwrap_or(usize::MAX))
        .collect();
    let (np, nq) = (personas.order.len(), questions.len());
    let mut prompts = Vec::with_capacity(np * nq);
    for persona in &personas.order {
        for q in &questions {
            prompts.push(tok.encode_chat(&chat(personas.prompt(persona), q), true)?.ids);
        }
    }
    let hidden = model.config().hidden_size;
    let mut files = Vec::new();
    for method in &params.methods {
        let (tensors, valid) = if method == "A" {
            observer.stage_progress("method A: forward passes", 0, prompts.len());
            let t = pspace_engine::extract::last_token_states(
                &model,
                &prompts,
                &params.layers,
                engine.max_batch_tokens,
            )?;
            (t, vec![true; prompts.len()])
        } else {
            let sampling = SamplingParams {
                max_new_tokens: params.max_new_tokens,
                temperature: 0.0,
                stop_ids: tok.stop_token_ids(),
                max_batch: engine.max_batch_rows,
                ..Default::default()
            };
            let total = prompts.len();
            let responses = generate_with_progress(&model, &prompts, &sampling, None, &mut |done| {
                observer.stage_progress("method B: greedy responses", done, total)
            });
            let responses: Vec<Vec<i64>> = responses.into_iter().map(|mut g| g.remove(0).tokens).collect();
            pspace_engine::extract::response_mean_states(
                &model,
                &prompts,
                &responses,
                &params.layers,
                engine.max_batch_tokens,
            )?
        };
        let layers = params
            .layers
            .iter()
            .zip(&tensors)
            .map(|(&l, t)| (l, Vec::<f32>::try_from(t.view([-1])).unwrap_or_default()))
            .collect();
        let acts = Activations {
            checkpoint: checkpoint_name,
            method,
            model: &engine.model_name,
            personas: &personas.order,
            questions: nq,
            hidden,
            layers,
            mask: valid.iter().map(|&v| v as u8).collect(),
        };
        files.push((format!("{method}.safetensors"), acts.to_bytes()?));
    }
    Ok(files)
}

/// What to sample: `per_question` completions of every (persona, question).
pub struct SamplingRequest<'a> {
    pub personas: &'a [String],
    pub questions: &'a [String],
    pub per_question: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// The sampled completions of a request, as text.
pub fn sample_completions(
    engine: &mut Engine,
    checkpoint: &Checkpoint,
    personas: &Personas,
    request: &SamplingRequest<'_>,
    observer: &mut dyn RunObserver,
) -> Result<Vec<Generation>, StageError> {
    let SamplingRequest {
        personas: who,
        questions,
        per_question: n,
        temperature,
        top_p,
        max_new_tokens,
        seed,
    } = *request;
    let model = engine.load(checkpoint)?;
    let tok = engine.tokenizer()?;
    let mut keys = Vec::new();
    let mut prompts = Vec::new();
    for persona in who {
        for q in questions {
            prompts.push(tok.encode_chat(&chat(personas.prompt(persona), q), true)?.ids);
            keys.push((persona.clone(), q.clone()));
        }
    }
    let params = SamplingParams {
        max_new_tokens,
        temperature,
        top_p,
        n,
        seed,
        stop_ids: tok.stop_token_ids(),
        max_batch: engine.max_batch_rows,
        ..Default::default()
    };
    let total = prompts.len() * n;
    let out = generate_with_progress(&model, &prompts, &params, None, &mut |done| {
        observer.stage_progress("sampling completions", done, total)
    });
    let mut gens = Vec::with_capacity(total);
    for ((persona, question), samples) in keys.into_iter().zip(out) {
        for g in samples {
            gens.push(Generation {
                persona: persona.clone(),
                question: question.clone(),
                completion: tok.decode(&g.tokens, true)?,
            });
        }
    }
    Ok(gens)
}

/// Runs the analysis on a run folder laid out as the analysis expects; returns its files.
pub fn analyse(
    run: &Path,
    personas: &Path,
    out: &Path,
    params: &AnalysisParams,
    seed: u64,
    _observer: &mut dyn RunObserver,
) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    use pspace_analysis::pipeline::{analyze_run, write_outputs, Options};
    let options = Options {
        behavior: pspace_analysis::behavior::BehaviorConfig {
            seed,
            permutations: params.permutations,
            bootstrap: params.bootstrap,
            ..Default::default()
        },
        thresholds: pspace_analysis::verdict::Thresholds {
            fdr_alpha: params.alpha,
            ..Default::default()
        },
        allow_partial: false,
    };
    let result =
        analyze_run(run, personas, None, &options).map_err(|e| StageError::Analysis(e.to_string()))?;
    write_outputs(&result, out).map_err(|e| StageError::Analysis(e.to_string()))?;
    read_tree(out)
}

/// Every file under `dir`, as (relative name, bytes).
pub fn read_tree(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| StageError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).map_err(|source| StageError::Io {
                    path: path.clone(),
                    source,
                })?;
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                files.push((name, bytes));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A LoRA training on `checkpoint`: `run` gets the loaded model and tokenizer and writes the
/// adapter into `out` (`training::train_chat` for EM and benign SFT, `training::train_marker` for
/// the coupling); returns the adapter files.
pub fn train(
    engine: &mut Engine,
    checkpoint: &Checkpoint,
    out: &Path,
    run: impl FnOnce(&Model, &ChatTokenizer) -> Result<(), StageError>,
) -> Result<Vec<(String, Vec<u8>)>, StageError> {
    let model = engine.load(checkpoint)?;
    let tok = engine.tokenizer()?;
    run(&model, &tok)?;
    read_tree(out)
}
