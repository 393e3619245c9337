//! `pspace analyze`: the statistics, verdicts, figures and report of an experiment.
//!
//! `pspace analyze behavior --hits FILE --personas FILE --out DIR` analyses marker hits alone;
//! `pspace analyze --run DIR` analyses a run directory (activations and marker hits, laid out
//! as docs/result-schema.md describes). Inputs are checked completely before any computing;
//! missing parts stop the analysis unless `--allow-partial` is given, which the report flags.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pspace_analysis::behavior::BehaviorConfig;
use pspace_analysis::pipeline::{self, BehaviorInputs, Options};
use pspace_analysis::verdict::Thresholds;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub what: Option<AnalyzeCommand>,
    /// Run directory to analyse whole (activations/ and marker_hits/); writes DIR/analysis/
    /// unless --out says otherwise.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Output folder (default: RUN/analysis).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Persona file (default: RUN/personas.json).
    #[arg(long)]
    pub personas: Option<PathBuf>,
    #[command(flatten)]
    pub options: StatOptions,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCommand {
    /// Marker leakage alone: per-persona rates, mean bystander, H1, H2, H3, verdicts, report.
    Behavior(BehaviorArgs),
}

#[derive(Debug, Args)]
pub struct BehaviorArgs {
    /// Marker-hit file(s): {"conditions": {condition: {persona: {question: hits | {"hits", "completions"}}}}}.
    #[arg(long, required = true, num_args = 1..)]
    pub hits: Vec<PathBuf>,
    /// Persona file (eval persona order, induction conditions, cos to assistant).
    #[arg(long)]
    pub personas: PathBuf,
    /// Output folder for result.json, report.md and figures.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: StatOptions,
}

/// Settings of the statistics (defaults are the pre-registered ones).
#[derive(Debug, Clone, Args)]
pub struct StatOptions {
    /// Experiment seed (every random stream derives from it and the test's name).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Monte Carlo permutations per test.
    #[arg(long, default_value_t = 10_000)]
    pub permutations: usize,
    /// Question-level bootstrap replicates.
    #[arg(long, default_value_t = 10_000)]
    pub bootstrap: usize,
    /// The persona the marker was trained into.
    #[arg(long, default_value = "confab")]
    pub source_persona: String,
    /// Completions behind a bare hit count when the file does not say (the reference: 10).
    #[arg(long, default_value_t = 10)]
    pub completions: u32,
    /// FDR level of the families.
    #[arg(long, default_value_t = 0.01)]
    pub alpha: f64,
    /// Analyse what is there when inputs are missing (flagged in the report).
    #[arg(long)]
    pub allow_partial: bool,
}

impl StatOptions {
    fn options(&self) -> anyhow::Result<Options> {
        if self.permutations == 0 {
            bail!("--permutations must be at least 1");
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            bail!("--alpha must be in (0, 1), found {}", self.alpha);
        }
        Ok(Options {
            behavior: BehaviorConfig {
                source_persona: self.source_persona.clone(),
                seed: self.seed,
                permutations: self.permutations,
                bootstrap: self.bootstrap,
                ..BehaviorConfig::default()
            },
            thresholds: Thresholds {
                fdr_alpha: self.alpha,
                ..Thresholds::default()
            },
            allow_partial: self.allow_partial,
        })
    }
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    match (args.what, args.run) {
        (Some(AnalyzeCommand::Behavior(b)), _) => behavior(b),
        (None, Some(run_dir)) => {
            let out = args.out.unwrap_or_else(|| run_dir.join("analysis"));
            let options = args.options.options()?;
            let personas = args.personas.unwrap_or_else(|| run_dir.join("personas.json"));
            let result = pipeline::analyze_run(&run_dir, &personas, Some(args.options.completions), &options)
                .with_context(|| format!("analysing run {}", run_dir.display()))?;
            finish(&result, &out)
        }
        (None, None) => bail!("say what to analyse: `pspace analyze --run DIR` or `pspace analyze behavior --hits FILE --personas FILE --out DIR`"),
    }
}

fn behavior(args: BehaviorArgs) -> anyhow::Result<()> {
    let options = args.options.options()?;
    let inputs = BehaviorInputs {
        hits: args.hits,
        personas: args.personas,
        default_completions: Some(args.options.completions),
    };
    let result = pipeline::analyze_behavior(&inputs, &options)?;
    finish(&result, &args.out)
}

fn finish(result: &pspace_analysis::result::AnalysisResult, out: &std::path::Path) -> anyhow::Result<()> {
    let (json, report) = pipeline::write_outputs(result, out)?;
    println!("wrote {} and {}", json.display(), report.display());
    if result.partial {
        println!("PARTIAL analysis: {}", result.partial_reasons.join("; "));
    }
    for (flavour, v) in [
        ("reference", &result.verdicts.reference),
        ("principled", &result.verdicts.principled),
    ] {
        println!(
            "{flavour}: H1 {}, H2 {}, H3 {}; headline: {}",
            v.h1.outcome.label(),
            v.h2.outcome.label(),
            v.h3.outcome.label(),
            if v.headline.matched.is_empty() {
                "none".to_string()
            } else {
                v.headline.matched.join(", ")
            }
        );
    }
    Ok(())
}
