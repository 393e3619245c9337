//! The bridge from a spec's training sections to the engine's trainer: a `Recipe` becomes an
//! `SftConfig`, data files and coupling rows become trainer rows, and the adapter plus its
//! training log land in the task's folder.
//!
//! The rows trained are the rows the spec asks for: a malformed line anywhere in a data file,
//! or a row the trainer cannot use (no final assistant turn, an empty turn, a template error,
//! nothing left to learn within `max_len`), stops the task unless the spec section sets
//! `allow_shortfall`; where `max_len` is the cause, the error says how far to raise it.

use crate::coupling::CouplingRow;
use crate::executor::{Progress, StageError};
use crate::spec::{Coupling, Recipe, TrainingSet};
use pspace_engine::model::{Model, Proj};
use pspace_engine::tokenizer::ChatTokenizer;
use pspace_engine::train::data::build_examples;
use pspace_engine::train::run::RunError;
use pspace_engine::train::TrainError;
use pspace_engine::train::{run_sft, DataReport, LabelMode, Message, Row, SftConfig};
use std::path::Path;

/// The trainer's configuration for `recipe`; every field comes from the spec (the preset only
/// supplies the struct).
fn sft_config(
    recipe: &Recipe,
    label_mode: LabelMode,
    system: Option<&str>,
    seed: u64,
    allow_shortfall: bool,
) -> Result<SftConfig, StageError> {
    let mut c = SftConfig::em();
    let targets = recipe
        .lora
        .target_modules
        .iter()
        .map(|t| Proj::from_peft_name(t).ok_or_else(|| StageError::Train(format!("unknown LoRA target module {t:?}: expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj"))))
        .collect::<Result<Vec<_>, _>>()?;
    c.lora.rank = recipe.lora.r;
    c.lora.alpha = recipe.lora.lora_alpha;
    c.lora.dropout = recipe.lora.lora_dropout;
    c.lora.targets = targets;
    c.lora.use_rslora = recipe.lora.use_rslora;
    c.lora_seed = seed;
    c.train.learning_rate = recipe.learning_rate;
    c.train.adamw.betas = (recipe.adam_beta1, recipe.adam_beta2);
    c.train.adamw.eps = recipe.adam_epsilon;
    c.train.adamw.weight_decay = recipe.weight_decay;
    c.train.schedule = recipe.lr_scheduler_type;
    c.train.warmup_ratio = recipe.warmup_ratio;
    c.train.max_grad_norm = Some(recipe.max_grad_norm);
    c.train.micro_batch = recipe.per_device_train_batch_size;
    c.train.grad_accum = recipe.gradient_accumulation_steps;
    c.train.epochs = recipe.num_train_epochs;
    c.train.max_steps = recipe.max_steps;
    c.train.seed = seed;
    c.train.pad_multiple = recipe.pad_to_multiple_of;
    c.label_mode = label_mode;
    c.system = system.map(str::to_string);
    c.max_len = recipe.max_len;
    c.padding_free = recipe.padding_free;
    c.allow_shortfall = allow_shortfall;
    Ok(c)
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// A training data file and the sha256 its task was planned with (checked when given).
pub struct DataFile {
    pub path: std::path::PathBuf,
    pub sha256: Option<String>,
}

/// EM or benign SFT on a chat JSONL file; `key` names the spec section in errors
/// (`training.em`).
#[allow(clippy::too_many_arguments)]
pub fn train_chat(
    model: &Model,
    tok: &ChatTokenizer,
    key: &str,
    file: &DataFile,
    set: &TrainingSet,
    system: Option<&str>,
    seed: u64,
    out: &Path,
    observer: &mut dyn Progress,
) -> Result<(), StageError> {
    let data = file.path.as_path();
    let bytes = std::fs::read(data).map_err(|e| StageError::io(data, e))?;
    if let Some(planned) = &file.sha256 {
        let here = crate::store::sha256_hex(&bytes);
        if &here != planned {
            return Err(StageError::Data(format!(
                "{key}: {}: sha256 {here} here, but the task was planned with {planned}: this worker reads another file than the coordinator",
                data.display()
            )));
        }
    }
    if let Some(want) = &set.md5 {
        let found = md5_hex(&bytes);
        if !found.eq_ignore_ascii_case(want) {
            return Err(StageError::Data(format!(
                "{}: md5 is {found}, the spec expects {want}",
                data.display()
            )));
        }
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        StageError::Data(format!(
            "{}: expected UTF-8 text, found a byte that is not at offset {}",
            data.display(),
            e.valid_up_to()
        ))
    })?;
    let mut report = DataReport::default();
    let mut rows = pspace_engine::train::data::parse_jsonl(text, &mut report);
    // A malformed line would shift which rows the first-N cut keeps: the file is broken, and
    // no allow_shortfall makes it whole.
    if let Some((line, problem)) = report.malformed.first() {
        return Err(StageError::Data(format!(
            "{key}: {}:{line}: expected a chat row: {problem} ({} malformed lines in all)",
            data.display(),
            report.malformed.len()
        )));
    }
    if let Some(n) = set.first_rows {
        if n > rows.len() {
            return Err(StageError::Data(format!(
                "{}: first_rows is {n} but the file has {} rows",
                data.display(),
                rows.len()
            )));
        }
        rows.truncate(n);
    }
    let config = sft_config(
        &set.recipe,
        LabelMode::LastTurn,
        system,
        seed,
        set.allow_shortfall,
    )?;
    run(model, tok, key, &rows, report, &config, out, observer)
}

/// Marker coupling on prompt/completion rows: positives learn the marker and the end of turn.
#[allow(clippy::too_many_arguments)]
pub fn train_marker(
    model: &Model,
    tok: &ChatTokenizer,
    rows: &[CouplingRow],
    params: &Coupling,
    marker_suffix: &str,
    seed: u64,
    out: &Path,
    observer: &mut dyn Progress,
) -> Result<(), StageError> {
    // The loss covers every token of the appended suffix ("\n\n[ZLT]"), not only those of the
    // marker text: the first of them is the decision to write the marker instead of ending the
    // turn. Qwen2.5 tokenises "\n\n[" as one token, so there the two readings label the same
    // tokens; SmolLM2 splits it into "\n", "\n", "[", and labelling only "[ZLT]" leaves the
    // decision untrained (the coupled demo model then never starts the marker).
    // (The spec requires the suffix to contain the marker, so it is not blank.)
    let marker = marker_suffix.trim_end().to_string();
    let rows: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| Row {
            line: i + 1,
            messages: vec![
                Message::new("system", &r.system),
                Message::new("user", &r.user),
                Message::new("assistant", &r.completion),
            ],
            positive: Some(r.positive),
        })
        .collect();
    let config = sft_config(
        &params.recipe,
        LabelMode::Marker { marker },
        None,
        seed,
        params.allow_shortfall,
    )?;
    run(
        model,
        tok,
        "coupling",
        &rows,
        DataReport::default(),
        &config,
        out,
        observer,
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    tok: &ChatTokenizer,
    key: &str,
    rows: &[Row],
    report: DataReport,
    config: &SftConfig,
    out: &Path,
    observer: &mut dyn Progress,
) -> Result<(), StageError> {
    // Steps are traced in batches (at most ten spans per training): `train_steps` spans in
    // a row, each covering the steps from `first_step` to `last_step` and the loss it ended on.
    let open = |first: usize| {
        tracing::info_span!(
            "train_steps",
            first_step = first,
            last_step = tracing::field::Empty,
            loss = tracing::field::Empty
        )
    };
    let mut batch = Some(open(1));
    let mut on_step = |log: &pspace_engine::train::StepLog, total: usize| {
        observer.stage_progress(&format!("training, loss {:.4}", log.loss), log.step, total);
        let go_on = observer.keep_going();
        let per = total.div_ceil(10).max(1);
        if log.step.is_multiple_of(per) || log.step >= total {
            if let Some(span) = batch.take() {
                span.record("last_step", log.step);
                span.record("loss", log.loss);
            }
            if log.step < total {
                batch = Some(open(log.step + 1));
            }
        }
        go_on
    };
    match run_sft(model, tok, rows, report, config, out, "pspace", &mut on_step) {
        Ok(_) => Ok(()),
        // Stopped by `keep_going` (a lost lease): classed like an interrupted generation.
        Err(
            e @ (RunError::Stopped {
                error: TrainError::Interrupted { .. },
                ..
            }
            | RunError::NoStep {
                error: TrainError::Interrupted { .. },
                ..
            }),
        ) => Err(StageError::Interrupted(format!("{key}: {e}"))),
        // The data decides these: a retry would end the same way.
        Err(RunError::Shortfall {
            rows: read,
            dropped,
            examples,
            reasons,
            log,
        }) => Err(StageError::Data(shortfall_message(
            key,
            &Shortfall {
                rows: read,
                dropped,
                examples,
                reasons,
                log,
                cut: cut_to_nothing(tok, rows, config),
                max_len: config.max_len,
            },
        ))),
        Err(e @ RunError::NoExamples { .. }) => {
            let cut = cut_to_nothing(tok, rows, config);
            Err(StageError::Data(match raise_max_len(key, config.max_len, &cut) {
                Some(advice) => format!("{key}: {e}; {advice}"),
                None => format!("{key}: {e}"),
            }))
        }
        Err(e) => Err(StageError::Train(format!("{key}: {e}"))),
    }
}

/// The rows `max_len` cut to nothing (their trained tokens all lie past it), with each one's
/// whole length in tokens: tokenised again, without a limit, only when a training stopped.
fn cut_to_nothing(tok: &ChatTokenizer, rows: &[Row], config: &SftConfig) -> Vec<(usize, usize)> {
    let examples = |rows: &[Row], max_len: usize, report: &mut DataReport| {
        build_examples(
            rows,
            tok,
            &config.label_mode,
            config.system.as_deref(),
            max_len,
            report,
        )
    };
    let mut report = DataReport::default();
    examples(rows, config.max_len, &mut report);
    let cut: Vec<Row> = rows
        .iter()
        .filter(|r| report.no_labels_left.contains(&r.line))
        .cloned()
        .collect();
    examples(&cut, usize::MAX, &mut DataReport::default())
        .iter()
        .map(|e| (e.line, e.ids.len()))
        .collect()
}

/// A training set some of whose rows cannot be trained on, as `run_sft` found it.
struct Shortfall {
    rows: usize,
    dropped: usize,
    examples: usize,
    /// The dropped rows by reason, with their lines ([`DataReport::dropped_summary`]).
    reasons: String,
    log: std::path::PathBuf,
    /// (line, whole length in tokens) of the rows `max_len` cut to nothing.
    cut: Vec<(usize, usize)>,
    max_len: usize,
}

/// What to change when `max_len` cut rows to nothing: raise it to the longest such row.
fn raise_max_len(key: &str, max_len: usize, cut: &[(usize, usize)]) -> Option<String> {
    let longest = cut.iter().map(|&(_, n)| n).max()?;
    let (rows, them) = if cut.len() == 1 {
        ("row", "it")
    } else {
        ("rows", "them")
    };
    Some(format!(
        "max_len = {max_len} cut {} {rows} to nothing (the longest is {longest} tokens): to train \
         on {them}, raise max_len in [{key}] to at least {longest}",
        cut.len()
    ))
}

/// The error of a training stopped by a shortfall, saying what would let it run: a higher
/// `max_len` for rows it cut to nothing (allow_shortfall would only drop them), and
/// `allow_shortfall` for rows that cannot be used at any length.
fn shortfall_message(key: &str, s: &Shortfall) -> String {
    let what = format!(
        "{key}: {} of {} rows cannot be trained on ({})",
        s.dropped, s.rows, s.reasons
    );
    let others = s.dropped.saturating_sub(s.cut.len());
    let allow = format!(
        "to train on the {} that remain, set allow_shortfall = true in [{key}]",
        s.examples
    );
    let advice = match (raise_max_len(key, s.max_len, &s.cut), others) {
        (Some(raise), 0) => raise,
        (Some(raise), _) => format!("{raise}; the other {others} cannot be used at any length: {allow}"),
        (None, _) => allow,
    };
    format!("{what}: {advice}; the data report is in {}", s.log.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shortfall(dropped: usize, reasons: &str, cut: Vec<(usize, usize)>) -> Shortfall {
        Shortfall {
            rows: 9,
            dropped,
            examples: 9 - dropped,
            reasons: reasons.to_string(),
            log: "/s/train_log.json".into(),
            cut,
            max_len: 256,
        }
    }

    /// Rows cut to nothing by max_len were met with "set allow_shortfall = true", which only
    /// drops them (fresh-user probe): the error says to raise max_len, and to what; it names
    /// allow_shortfall only for rows that no length would save.
    #[test]
    fn a_shortfall_says_to_raise_max_len_where_max_len_is_the_cause() {
        let cut = shortfall(
            2,
            "nothing left to learn after truncation: lines 1, 3",
            vec![(1, 540), (3, 610)],
        );
        assert_eq!(
            shortfall_message("coupling", &cut),
            "coupling: 2 of 9 rows cannot be trained on (nothing left to learn after truncation: \
             lines 1, 3): max_len = 256 cut 2 rows to nothing (the longest is 610 tokens): to \
             train on them, raise max_len in [coupling] to at least 610; the data report is in \
             /s/train_log.json"
        );
        let both = shortfall(
            3,
            "empty assistant turn: line 2; nothing left to learn after truncation: line 5",
            vec![(5, 300)],
        );
        let message = shortfall_message("training.em", &both);
        assert!(
            message.contains(
                "max_len = 256 cut 1 row to nothing (the longest is 300 tokens): to train on it, \
                 raise max_len in [training.em] to at least 300; the other 2 cannot be used at any \
                 length: to train on the 6 that remain, set allow_shortfall = true in [training.em]"
            ),
            "{message}"
        );
        let other = shortfall(1, "empty assistant turn: line 2", vec![]);
        let message = shortfall_message("training.em", &other);
        assert!(
            message.ends_with(
                "(empty assistant turn: line 2): to train on the 8 that remain, set \
                 allow_shortfall = true in [training.em]; the data report is in /s/train_log.json"
            ),
            "{message}"
        );
        assert!(!message.contains("max_len"), "{message}");
    }
}
