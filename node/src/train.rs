//! `pspace train`: one LoRA SFT run from the command line (EM, benign or marker coupling, with
//! the original run's numbers (experiments/issue205.toml) unless a flag overrides them). Writes the PEFT adapter and
//! `train_log.json` to `--out`, shows a progress bar on stderr and ends with a summary of the
//! data problems found (malformed lines by number, empty assistant turns, positives without
//! the marker, truncated sequences). A row that cannot be used stops the run unless
//! `--allow-shortfall` is given.

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pspace_engine::train::data::read_jsonl;
use pspace_engine::train::{run_sft, DataReport, SftConfig};
use pspace_engine::Device;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// `demo` (the bundled SmolLM2 GGUF), an HF model folder, a .gguf file, or
    /// `random:<preset>[@seed]` (random weights of qwen2.5-7b or tiny: for timing a training
    /// run at full size; the adapter it writes means nothing).
    #[arg(long)]
    pub model: String,
    /// JSONL rows: {"messages": [...]} or {"prompt": ..., "completion": ..., "positive": bool}.
    #[arg(long)]
    pub data: PathBuf,
    /// em, benign or coupling: the original run's settings for that training (the same numbers as experiments/issue205.toml's [training.em], [training.benign] and [coupling]).
    #[arg(long, value_parser = ["em", "benign", "coupling"])]
    pub recipe: String,
    /// System prompt put on every example (replacing any in the data); without it the rows
    /// stay as they are and the chat template's default applies.
    #[arg(long)]
    pub system: Option<String>,
    /// Stop after this many optimizer steps, at least 1 (the schedule spans them).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = at_least_one)]
    pub max_steps: Option<usize>,
    /// Number of epochs, at least 1 (default: the recipe's).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = at_least_one)]
    pub epochs: Option<usize>,
    /// Seed of the data order and the adapter's initialisation (default: the recipe's, 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Activation recomputation: less memory, about one more forward pass per step.
    #[arg(long)]
    pub recompute: bool,
    /// Pad each micro-batch to its longest row, as HF's Trainer does, instead of the default
    /// padding-free steps (each step's rows packed back to back; the same loss and gradient up
    /// to floating-point order). For comparing the two.
    #[arg(long)]
    pub padded: bool,
    /// Train on the rows that remain when some cannot be used (malformed, no final assistant
    /// turn, an empty turn, a template error, ...). Without it such a row stops the run before
    /// the first step, so the rows and steps trained are the ones asked for.
    #[arg(long)]
    pub allow_shortfall: bool,
    /// cpu, cuda (alias gpu) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::devices::device_arg)]
    pub device: String,
    /// Output folder: adapter_config.json, adapter_model.safetensors, train_log.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// Clap's check of a count that must be at least 1 (`--max-steps`, `--epochs`): 0 would train
/// nothing (no step runs, so no adapter is written). Negative numbers reach it as values
/// (`allow_negative_numbers`), so `-1` gets this message and not clap's "unexpected argument".
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.trim().parse::<i128>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        // Clap's line names the flag and the value: `invalid value '-1' for '--max-steps <N>'`.
        _ => Err("expected a whole number >= 1 (0 would train nothing)".to_string()),
    }
}

/// The recipe with the command line's overrides applied.
fn config(args: &TrainArgs) -> anyhow::Result<SftConfig> {
    let Some(mut config) = SftConfig::recipe(&args.recipe) else {
        bail!("--recipe {:?}: expected em, benign or coupling", args.recipe);
    };
    config.system = args.system.clone();
    if args.max_steps.is_some() {
        config.train.max_steps = args.max_steps;
    }
    if let Some(epochs) = args.epochs {
        config.train.epochs = epochs;
    }
    if let Some(seed) = args.seed {
        config.train.seed = seed;
        config.lora_seed = seed;
    }
    config.train.recompute = args.recompute;
    config.padding_free = !args.padded;
    config.allow_shortfall = args.allow_shortfall;
    Ok(config)
}

fn print_data_report(report: &DataReport) {
    eprintln!(
        "data: {} lines, {} examples used, {} rows dropped",
        report.lines_read,
        report.examples,
        report.dropped()
    );
    for (line, problem) in &report.malformed {
        eprintln!("  line {line}: malformed: {problem}");
    }
    for (line, problem) in &report.template_errors {
        eprintln!("  line {line}: chat template: {problem}");
    }
    let lists = [
        ("no final assistant turn", &report.no_final_assistant_turn),
        ("empty assistant turn", &report.empty_assistant_turn),
        ("coupling row without \"positive\"", &report.missing_positive_flag),
        ("positive without the marker", &report.positive_without_marker),
        ("no end-of-turn token", &report.no_end_of_turn_token),
        ("truncated to the maximum length", &report.truncated),
        ("nothing left to learn after truncation", &report.no_labels_left),
    ];
    for (what, lines) in lists {
        if !lines.is_empty() {
            eprintln!("  {what}: {} (lines {:?})", lines.len(), lines);
        }
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let source = crate::paths::resolve_model(&args.model)?;
    let device: Device = args.device.parse()?;
    let tch_device = device.activate()?;
    let model = source
        .load(tch_device, device.compute_kind())
        .with_context(|| format!("loading the model {source}"))?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {source}"))?;
    let mut report = DataReport::default();
    let rows = read_jsonl(&args.data, &mut report)?;

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let result = run_sft(
        &model,
        &tokenizer,
        &rows,
        report,
        &config,
        &args.out,
        &source.to_string(),
        &mut |step, total| {
            bar.set_length(total as u64);
            bar.set_position(step.step as u64);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} grad-norm {:.3} {:.0} tok/s",
                step.loss, step.lr, step.grad_norm, step.tokens_per_s
            ));
            std::ops::ControlFlow::Continue(())
        },
    );
    bar.finish();
    let log_path = args.out.join(pspace_engine::train::run::LOG_FILE);
    if let Ok(text) = std::fs::read_to_string(&log_path) {
        if let Ok(log) = serde_json::from_str::<pspace_engine::train::TrainLog>(&text) {
            print_data_report(&log.data);
        }
    }
    let report = result?;
    let last = report.log.steps.last();
    println!(
        "{}",
        serde_json::json!({
            "adapter": report.adapter_dir,
            "log": report.log_path,
            "steps": report.log.steps.len(),
            "final_loss": last.map(|s| s.loss),
            "seconds": report.log.seconds,
        })
    );
    Ok(())
}
