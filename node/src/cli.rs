//! The command line: every subcommand and flag, with the help text users read.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "pspace",
    bin_name = "pspace",
    version,
    about = "Persona-geometry and marker-leakage experiments on fine-tuned language models",
    long_about = "pspace fine-tunes a base model under several system prompts, extracts persona vectors \
from its residual stream, measures how a trained marker leaks between personas, and tests it all \
with permutation statistics and FDR control.\n\nStart with `pspace run` (the embedded demo \
experiment on CPU) or `pspace doctor` (what this machine can do)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment spec end to end (default: the embedded demo), resuming finished tasks.
    ///
    /// Every task commits its outputs with a manifest written last; a rerun skips committed tasks
    /// (and re-runs any whose outputs no longer match). Environment: AWS_* for an s3:// store,
    /// PSPACE_SCRATCH for local work files, OTEL_EXPORTER_OTLP_ENDPOINT to export the run as a
    /// trace (OTLP/HTTP, e.g. Jaeger on port 4318).
    Run(RunArgs),
    /// Report libtorch, CUDA devices, matmul speed and where the demo model is.
    Doctor(DoctorArgs),
    /// Statistics, verdicts, figures and report of a run (or of marker hits alone).
    Analyze(Box<crate::analyze::AnalyzeArgs>),
    /// LoRA SFT (em, benign or marker coupling): writes a PEFT adapter and a JSON training log.
    Train(Box<crate::train::TrainArgs>),
    /// One chat prompt through a model: template text and ids, layer states of the last prompt
    /// token, optionally a greedy continuation; one JSON object on stdout.
    Probe(crate::probe::ProbeArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment spec (TOML). Without it the embedded `experiments/demo.toml` runs.
    pub spec: Option<PathBuf>,
    /// Device for model work: cpu, cuda or cuda:N. Overrides the spec's [experiment].device.
    #[arg(long)]
    pub device: Option<String>,
    /// Print the task plan and exit without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the run's artifacts go: a folder, or s3://BUCKET[/PREFIX] on any S3-compatible
    /// server (connection from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT,
    /// AWS_ALLOW_HTTP). Overrides the spec's [experiment].store.
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Device to check: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
