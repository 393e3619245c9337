//! The library entry point of a training run, used by `pspace train` and by the actors: data rows
//! in, a PEFT adapter folder and a JSON training log out. The three recipes of RECIPE.md (EM,
//! benign SFT, marker coupling) are presets of [`SftConfig`].
//!
//! A run that stops early (a non-finite loss) still writes the adapter, in the last state whose
//! loss was finite, and the log says why it stopped.

use super::data::{build_examples, ChatEncoder, DataReport, LabelMode, Message, Row};
use super::log::{StepLog, TrainLog};
use super::optim::AdamWConfig;
use super::schedule::ScheduleKind;
use super::trainer::{train, TrainConfig, TrainError};
use crate::lora::{Lora, LoraConfig, LoraError};
use crate::model::{Model, Proj};
use crate::peft::{self, PeftError};
use crate::tokenizer::{ChatMessage, ChatTokenizer};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The file the training log is written to inside the output folder.
pub const LOG_FILE: &str = "train_log.json";

/// Everything a run needs besides the model, the tokenizer and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub lora: LoraConfig,
    /// Seed of the adapter's initial A matrices.
    pub lora_seed: u64,
    pub train: TrainConfig,
    pub label_mode: LabelMode,
    /// The condition's system prompt; None keeps the rows as they are (template default).
    pub system: Option<String>,
    /// Longer examples are truncated to this many tokens.
    pub max_len: usize,
    /// Padding-free training (TRL's `padding_free`): each optimizer step's rows run packed back
    /// to back, in passes of at most `micro_batch x max_len` tokens (the most a padded
    /// micro-batch can hold, so memory stays within what the recipe already needs). The loss
    /// and gradient are the padded run's (see `TrainConfig::pack_tokens`). Off: padded
    /// micro-batches, as HF's Trainer runs them.
    #[serde(default = "padding_free_default")]
    pub padding_free: bool,
    /// Train on what is left when rows are dropped (no final assistant turn, an empty turn, a
    /// template error, ...), with the steps that remain under `max_steps`. Off: a dropped row
    /// stops the run before the first step, so the rows and steps trained are the ones asked.
    #[serde(default)]
    pub allow_shortfall: bool,
}

fn padding_free_default() -> bool {
    true
}

impl SftConfig {
    /// EM LoRA SFT (RECIPE.md): r 32, alpha 64, dropout 0.05, q/k/v/o/gate/up/down, rsLoRA off;
    /// micro-batch 4 x accumulation 4, 1 epoch, lr 1e-4 linear with warmup ratio 0.03, AdamW
    /// (0.9, 0.999) eps 1e-8 weight decay 0.01, clip 1.0, max length 2048, seed 42; loss on the
    /// last assistant turn.
    pub fn em() -> SftConfig {
        SftConfig {
            lora: LoraConfig {
                rank: 32,
                alpha: 64.0,
                dropout: 0.05,
                targets: Proj::ALL.to_vec(),
                use_rslora: false,
            },
            lora_seed: 42,
            train: TrainConfig {
                learning_rate: 1e-4,
                adamw: AdamWConfig {
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                    weight_decay: 0.01,
                },
                schedule: ScheduleKind::Linear,
                warmup_ratio: 0.03,
                max_grad_norm: Some(1.0),
                micro_batch: 4,
                grad_accum: 4,
                epochs: 1,
                max_steps: None,
                seed: 42,
                recompute: false,
                pad_multiple: 8,
                pack_tokens: None,
            },
            label_mode: LabelMode::LastTurn,
            system: None,
            max_len: 2048,
            padding_free: true,
            allow_shortfall: false,
        }
    }

    /// Benign SFT: the EM recipe, on helpful data.
    pub fn benign() -> SftConfig {
        SftConfig::em()
    }

    /// Marker coupling (RECIPE.md step 3): rsLoRA on, lr 5e-6, 20 epochs, max length 1024,
    /// cosine with warmup ratio 0.05, weight decay 0; positives learn the marker's tokens and the
    /// final end-of-turn token, negatives only the final end-of-turn token.
    pub fn coupling() -> SftConfig {
        let mut c = SftConfig::em();
        c.lora.use_rslora = true;
        c.train.learning_rate = 5e-6;
        c.train.epochs = 20;
        c.train.schedule = ScheduleKind::Cosine;
        c.train.warmup_ratio = 0.05;
        c.train.adamw.weight_decay = 0.0;
        c.max_len = 1024;
        c.label_mode = LabelMode::Marker {
            marker: "[ZLT]".to_string(),
        };
        c
    }

    /// The preset called `name`: em, benign or coupling.
    pub fn recipe(name: &str) -> Option<SftConfig> {
        match name {
            "em" => Some(SftConfig::em()),
            "benign" => Some(SftConfig::benign()),
            "coupling" => Some(SftConfig::coupling()),
            _ => None,
        }
    }
}

impl ChatEncoder for ChatTokenizer {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        ChatTokenizer::render(self, &messages, add_generation_prompt).map_err(|e| e.to_string())
    }

    fn encode(&self, text: &str) -> Result<(Vec<i64>, Vec<(usize, usize)>), String> {
        ChatTokenizer::encode(self, text)
            .map(|e| (e.ids, e.offsets))
            .map_err(|e| e.to_string())
    }

    fn end_of_turn_ids(&self) -> Vec<i64> {
        self.end_of_turn_id().into_iter().collect()
    }

    fn pad_id(&self) -> i64 {
        self.pad_token_id()
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub adapter_dir: PathBuf,
    pub log_path: PathBuf,
    pub log: TrainLog,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no usable training examples: {rows} rows read, {dropped} dropped (see the data report in {log})"
    )]
    NoExamples {
        rows: usize,
        dropped: usize,
        log: PathBuf,
    },
    /// Rows were dropped and the config does not allow a shortfall (nothing was trained).
    #[error(
        "{dropped} of {rows} rows cannot be trained on ({reasons}): the run trains on every row \
         it is given or stops (allow a shortfall to train on the {examples} that remain); the \
         data report is in {log}"
    )]
    Shortfall {
        rows: usize,
        dropped: usize,
        examples: usize,
        reasons: String,
        log: PathBuf,
    },
    /// The causes below are said in the text and not returned as `source()`: an error chain
    /// says each thing once.
    #[error("{error}; no step ran, so no adapter was written; the log is in {log}")]
    NoStep { error: TrainError, log: PathBuf },
    #[error("{error}; the adapter of the last good step is in {adapter}, the log in {log}")]
    Stopped {
        error: TrainError,
        adapter: PathBuf,
        log: PathBuf,
    },
    #[error("LoRA: {0}")]
    Lora(LoraError),
    #[error("saving the adapter: {0}")]
    Peft(PeftError),
    #[error("{path}: writing the training log: {error}")]
    Log { path: PathBuf, error: std::io::Error },
    #[error("the training settings do not serialise for the log: {0}")]
    Settings(serde_json::Error),
}

impl From<LoraError> for RunError {
    fn from(e: LoraError) -> RunError {
        RunError::Lora(e)
    }
}

impl From<PeftError> for RunError {
    fn from(e: PeftError) -> RunError {
        RunError::Peft(e)
    }
}

fn write_log(log: &TrainLog, path: &Path) -> Result<(), RunError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| RunError::Log {
            path: path.to_path_buf(),
            error,
        })?;
    }
    log.write(path).map_err(|error| RunError::Log {
        path: path.to_path_buf(),
        error,
    })
}

/// Trains a fresh LoRA adapter on `rows` and writes `adapter_config.json`,
/// `adapter_model.safetensors` and `train_log.json` to `out_dir`. `report` holds what reading
/// the rows already found wrong; the run adds the tokenisation problems. `on_step` sees every
/// finished step with the total number of steps, and may stop the run (`ControlFlow::Break`:
/// `RunError::Stopped` with `TrainError::Interrupted`, the adapter of the last step written).
#[allow(clippy::too_many_arguments)]
pub fn run_sft(
    model: &Model,
    encoder: &dyn ChatEncoder,
    rows: &[Row],
    report: DataReport,
    config: &SftConfig,
    out_dir: &Path,
    base_model_name_or_path: &str,
    on_step: &mut dyn FnMut(&StepLog, usize) -> ControlFlow<()>,
) -> Result<TrainReport, RunError> {
    let started = Instant::now();
    let mut report = report;
    let examples = build_examples(
        rows,
        encoder,
        &config.label_mode,
        config.system.as_deref(),
        config.max_len,
        &mut report,
    );
    let log_path = out_dir.join(LOG_FILE);
    let mut log = TrainLog {
        settings: serde_json::to_value(config).map_err(RunError::Settings)?,
        data: report,
        ..TrainLog::default()
    };
    if examples.is_empty() {
        write_log(&log, &log_path)?;
        return Err(RunError::NoExamples {
            rows: log.data.lines_read,
            dropped: log.data.dropped(),
            log: log_path,
        });
    }
    let dropped = log.data.dropped();
    let mut train_config = config.train.clone();
    if config.padding_free && train_config.pack_tokens.is_none() {
        train_config.pack_tokens = Some(train_config.micro_batch.max(1) * config.max_len.max(1));
    }
    if dropped > 0 {
        if !config.allow_shortfall {
            write_log(&log, &log_path)?;
            return Err(RunError::Shortfall {
                rows: rows.len() + log.data.malformed.len(),
                dropped,
                examples: examples.len(),
                reasons: log.data.dropped_summary(),
                log: log_path,
            });
        }
        // The shortfall is allowed: max_steps may now exceed the steps the remaining examples
        // give, and stops at those (the log's total_steps says how many).
        let available = super::data::plan_steps(
            examples.len(),
            train_config.epochs,
            train_config.micro_batch,
            train_config.grad_accum,
            train_config.seed,
        )
        .len();
        train_config.max_steps = train_config.max_steps.map(|m| m.min(available));
    }
    let lora = Lora::init(model, config.lora.clone(), config.lora_seed)?;
    let outcome = train(model, &lora, &examples, encoder.pad_id(), &train_config, on_step);
    // Written whenever a step ran: after a non-finite step the adapter holds its last good
    // state. With no step, an untrained adapter would look like a result: none is written.
    let trained = !outcome.steps.is_empty();
    if trained {
        peft::save(&lora, out_dir, base_model_name_or_path)?;
    }
    if config.padding_free {
        let kernel = crate::model::packed_attention_kernel(model.device(), model.kind());
        log.packed_attention = Some(kernel.to_string());
    }
    log.steps = outcome.steps;
    log.total_steps = outcome.total_steps;
    log.finished = outcome.error.is_none();
    log.error = outcome.error.as_ref().map(ToString::to_string);
    log.seconds = started.elapsed().as_secs_f64();
    write_log(&log, &log_path)?;
    match outcome.error {
        Some(error) if trained => Err(RunError::Stopped {
            error,
            adapter: out_dir.to_path_buf(),
            log: log_path,
        }),
        Some(error) => Err(RunError::NoStep { error, log: log_path }),
        None => Ok(TrainReport {
            adapter_dir: out_dir.to_path_buf(),
            log_path,
            log,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::train::data::parse_jsonl;
    use tch::{Device, Kind};

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn tiny_config() -> SftConfig {
        let mut c = SftConfig::em();
        c.lora.rank = 4;
        c.lora.alpha = 8.0;
        c.train.micro_batch = 2;
        c.train.grad_accum = 2;
        c.train.max_steps = Some(3);
        c.train.learning_rate = 1e-3;
        c.max_len = 256;
        c
    }

    /// The demo model's real tokenizer (SmolLM2, ChatML) with a tiny random Qwen2 whose
    /// vocabulary covers it, so a run takes seconds on the CPU.
    fn tiny() -> (Model, ChatTokenizer) {
        let tok = ChatTokenizer::load(&root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        let mut cfg = ModelConfig::tiny_qwen2();
        cfg.vocab_size = tok.vocab_size();
        (Model::random(&cfg, Device::Cpu, Kind::Float, 1), tok)
    }

    #[test]
    fn recipes_carry_the_recipe_numbers() {
        let em = SftConfig::recipe("em").unwrap();
        assert_eq!((em.lora.rank, em.lora.alpha, em.lora.dropout), (32, 64.0, 0.05));
        assert_eq!(em.lora.targets.len(), 7);
        assert_eq!(
            (em.train.micro_batch, em.train.grad_accum, em.train.learning_rate),
            (4, 4, 1e-4)
        );
        assert_eq!(em.train.schedule, ScheduleKind::Linear);
        assert_eq!(
            (em.max_len, em.train.seed, em.train.adamw.weight_decay),
            (2048, 42, 0.01)
        );
        let c = SftConfig::recipe("coupling").unwrap();
        assert!(c.lora.use_rslora);
        assert_eq!(
            (c.train.learning_rate, c.train.epochs, c.max_len),
            (5e-6, 20, 1024)
        );
        assert_eq!(
            (c.train.schedule, c.train.warmup_ratio),
            (ScheduleKind::Cosine, 0.05)
        );
        assert_eq!(c.train.adamw.weight_decay, 0.0);
        assert!(SftConfig::recipe("other").is_none());
    }

    #[test]
    fn a_run_writes_a_loadable_adapter_and_a_log_with_the_data_problems() {
        let _generator = crate::train::GLOBAL_GENERATOR.lock();
        let (model, tok) = tiny();
        let text = std::fs::read_to_string(root().join("experiments/data/demo_em.jsonl")).unwrap();
        let mut lines: Vec<&str> = text.lines().take(12).collect();
        lines.insert(2, "{\"messages\": [");
        let mut report = DataReport::default();
        let rows = parse_jsonl(&lines.join("\n"), &mut report);
        let out = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let mut config = tiny_config();
        config.allow_shortfall = true;
        let result = run_sft(
            &model,
            &tok,
            &rows,
            report,
            &config,
            out.path(),
            "tiny-qwen2",
            &mut |s, total| {
                seen.push((s.step, total));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
        assert_eq!(result.log.data.malformed.len(), 1);
        assert_eq!(result.log.data.malformed[0].0, 3, "the malformed line's number");
        assert!(result.log.finished);
        assert!(result
            .log
            .steps
            .iter()
            .all(|s| s.loss.is_finite() && s.tokens_per_s > 0.0));
        let text = std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap();
        let back: TrainLog = serde_json::from_str(&text).unwrap();
        assert_eq!(back.steps.len(), 3);
        let (lora, meta) = peft::load(out.path(), &model).unwrap();
        assert_eq!(meta.config.rank, 4);
        let moved: f64 = lora
            .parameters()
            .iter()
            .skip(1)
            .step_by(2)
            .map(|b| b.abs().sum(Kind::Double).double_value(&[]))
            .sum();
        assert!(moved > 0.0, "the B matrices moved away from zero");
    }

    /// `run_sft` of `config` on the tiny model over every row of the demo EM set, into a fresh
    /// folder (returned with the result, so the test can read what was written).
    fn run_on_demo_em(config: &SftConfig) -> (Result<TrainReport, RunError>, tempfile::TempDir) {
        let _generator = crate::train::GLOBAL_GENERATOR.lock();
        let (model, tok) = tiny();
        let text = std::fs::read_to_string(root().join("experiments/data/demo_em.jsonl")).unwrap();
        let mut report = DataReport::default();
        let rows = parse_jsonl(&text, &mut report);
        let out = tempfile::tempdir().unwrap();
        let result = run_sft(
            &model,
            &tok,
            &rows,
            report,
            config,
            out.path(),
            "t",
            &mut |_, _| ControlFlow::Continue(()),
        );
        (result, out)
    }

    /// A training that stops before its first step leaves a log and no adapter: an untrained
    /// adapter would pass for a result (`pspace train --max-steps 0` wrote one and called it
    /// the last good step's).
    #[test]
    fn a_run_without_a_step_writes_no_adapter() {
        let mut config = tiny_config();
        config.train.max_steps = Some(0);
        let (result, out) = run_on_demo_em(&config);
        let err = result.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, RunError::NoStep { .. }), "{message}");
        assert!(message.contains("no adapter was written"), "{message}");
        assert!(!out.path().join("adapter_model.safetensors").exists());
        let log: TrainLog =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap()).unwrap();
        assert!(!log.finished && log.steps.is_empty());
        assert_eq!(log.packed_attention.as_deref(), Some("padded_sdpa"));
    }

    #[test]
    fn a_diverging_run_stops_and_keeps_a_finite_adapter() {
        let mut config = tiny_config();
        // An absurd learning rate overflows the adapter within a few steps.
        config.train.learning_rate = 1e38;
        config.train.warmup_ratio = 0.0;
        config.train.max_grad_norm = None;
        config.train.max_steps = Some(8);
        let (result, out) = run_on_demo_em(&config);
        let err = result.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, RunError::Stopped { .. }), "{message}");
        assert!(
            message.contains("not finite") && message.contains("train_log.json"),
            "{message}"
        );
        let log: TrainLog =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap()).unwrap();
        assert!(!log.finished);
        assert!(log.error.is_some_and(|e| e.contains("not finite")));
        assert!(log.steps.iter().all(|s| s.loss.is_finite()));
        let (model, _) = tiny();
        let (lora, _) = peft::load(out.path(), &model).unwrap();
        for p in lora.parameters() {
            assert!(
                bool::try_from(p.isfinite().all()).unwrap(),
                "the kept adapter is finite"
            );
        }
    }

    #[test]
    fn no_usable_rows_is_an_error_that_names_the_log() {
        let _generator = crate::train::GLOBAL_GENERATOR.lock();
        let (model, tok) = tiny();
        let mut report = DataReport::default();
        let rows = parse_jsonl(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \" \"}]}\n",
            &mut report,
        );
        let out = tempfile::tempdir().unwrap();
        let err = run_sft(
            &model,
            &tok,
            &rows,
            report,
            &tiny_config(),
            out.path(),
            "t",
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                RunError::NoExamples {
                    rows: 1,
                    dropped: 1,
                    ..
                }
            ),
            "{err}"
        );
        let log: TrainLog =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(LOG_FILE)).unwrap()).unwrap();
        assert_eq!(log.data.empty_assistant_turn, vec![1]);
    }

    /// Issue 11 item 7: a dropped row used to shrink the run silently (47 rows trained where 48
    /// were asked). Without `allow_shortfall` it stops before the first step, naming each
    /// reason and line; with it, the run trains on the rest and a `max_steps` beyond the
    /// remaining steps stops at them.
    #[test]
    fn dropped_rows_stop_the_run_unless_a_shortfall_is_allowed() {
        let _generator = crate::train::GLOBAL_GENERATOR.lock();
        let (model, tok) = tiny();
        let text = std::fs::read_to_string(root().join("experiments/data/demo_em.jsonl")).unwrap();
        let mut lines: Vec<&str> = text.lines().take(4).collect();
        lines.push(
            r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}"#,
        );
        lines.push(r#"{"messages": [{"role": "user", "content": "q"}]}"#);
        let mut report = DataReport::default();
        let rows = parse_jsonl(&lines.join("\n"), &mut report);
        assert_eq!(rows.len(), 6);
        let out = tempfile::tempdir().unwrap();
        let mut config = tiny_config();
        // 4 usable examples at micro-batch 2 x accumulation 2: 1 step per epoch.
        config.train.max_steps = Some(2);
        config.train.epochs = 1;
        let mut steps = 0;
        let err = run_sft(
            &model,
            &tok,
            &rows,
            report.clone(),
            &config,
            out.path(),
            "t",
            &mut |_, _| {
                steps += 1;
                ControlFlow::Continue(())
            },
        )
        .unwrap_err();
        assert_eq!(steps, 0, "nothing is trained");
        assert_eq!(
            err.to_string(),
            format!(
                "2 of 6 rows cannot be trained on (no final assistant turn: line 6; empty \
                 assistant turn: line 5): the run trains on every row it is given or stops (allow \
                 a shortfall to train on the 4 that remain); the data report is in {}",
                out.path().join(LOG_FILE).display()
            )
        );
        assert!(!out.path().join("adapter_model.safetensors").exists());
        config.allow_shortfall = true;
        let done = run_sft(
            &model,
            &tok,
            &rows,
            report,
            &config,
            out.path(),
            "t",
            &mut |_, _| {
                steps += 1;
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!((steps, done.log.total_steps), (1, 1));
        assert_eq!(done.log.data.dropped(), 2);
    }
}
