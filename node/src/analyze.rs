//! `pspace analyze`: the statistics, verdicts, figures and report of an experiment.
//!
//! `pspace analyze behavior --hits FILE --personas FILE --out DIR` analyses marker hits alone;
//! `pspace analyze --run DIR` analyses a run directory (activations and marker hits, laid out
//! as docs/result-schema.md describes). Inputs are checked completely before any computing;
//! missing parts stop the analysis unless `--allow-partial` is given, which the report flags.
//!
//! Settings: a re-analysis of a run starts from the settings the run was analysed with
//! (`settings` of RUN/analysis/result.json, written by the runner from the experiment spec);
//! without such a file, from the pre-registered defaults. A flag given on the command line
//! overrides that one setting. The output says where the settings came from.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pspace_analysis::pipeline::{self, BehaviorInputs, Settings};
use std::path::{Path, PathBuf};

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
    /// Output folder for result.json, report.md, report.html and the figures (SVG and PNG).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: StatOptions,
}

/// Settings of the statistics. Unset flags keep the run's own settings (with --run) or the
/// pre-registered defaults shown in brackets.
#[derive(Debug, Clone, Args)]
pub struct StatOptions {
    /// Experiment seed; every random stream derives from it and the test's name [42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Monte Carlo draws per test (spec analysis.permutations) [10000].
    #[arg(long)]
    pub permutations: Option<usize>,
    /// Question-level bootstrap replicates, behaviour and geometry (spec analysis.bootstrap) [2000].
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// GroupKFold folds of M3 (spec analysis.cv_folds) [5].
    #[arg(long)]
    pub cv_folds: Option<usize>,
    /// The persona the marker was coupled to (spec coupling.source_persona) [confab].
    #[arg(long)]
    pub source_persona: Option<String>,
    /// Condition whose shift defines the M2 axis [the condition E0 or E0_*].
    #[arg(long)]
    pub anchor: Option<String>,
    /// False discovery rate level of the families (spec analysis.fdr_alpha) [0.01].
    #[arg(long)]
    pub fdr_alpha: Option<f64>,
    /// Completions behind a bare hit count when the file does not say (the reference: 10).
    #[arg(long, default_value_t = 10)]
    pub completions: u32,
    /// Analyse what is there when inputs are missing (flagged in the report).
    #[arg(long)]
    pub allow_partial: bool,
}

impl StatOptions {
    /// `base` with every flag given on the command line applied.
    fn apply(&self, mut s: Settings) -> anyhow::Result<Settings> {
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(v) = self.permutations {
            s.permutations = v;
        }
        if let Some(v) = self.bootstrap {
            s.bootstrap = v;
        }
        if let Some(v) = self.cv_folds {
            s.cv_folds = v;
        }
        if let Some(v) = &self.source_persona {
            s.source_persona = v.clone();
        }
        if let Some(v) = &self.anchor {
            s.anchor_condition = Some(v.clone());
        }
        if let Some(v) = self.fdr_alpha {
            s.thresholds.fdr_alpha = v;
        }
        if self.allow_partial {
            s.allow_partial = true;
        }
        s.validate()?;
        Ok(s)
    }
}

/// The settings of an analysis of `run`: its own (RUN/analysis/result.json), else the
/// defaults; then the command line's flags. Says which on stdout.
fn run_settings(run: &Path, flags: &StatOptions) -> anyhow::Result<Settings> {
    let own = pipeline::run_settings(run).with_context(|| {
        format!(
            "reading the settings of the run's last analysis in {}",
            run.display()
        )
    })?;
    match &own {
        Some(_) => println!(
            "settings: the run's own ({}), then command-line flags",
            run.join("analysis/result.json").display()
        ),
        None => println!(
            "settings: pre-registered defaults (no settings in {}), then command-line flags",
            run.join("analysis/result.json").display()
        ),
    }
    flags.apply(own.unwrap_or_default())
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    match (args.what, args.run) {
        (Some(AnalyzeCommand::Behavior(b)), _) => behavior(b),
        (None, Some(run_dir)) => {
            let out = args.out.unwrap_or_else(|| run_dir.join("analysis"));
            let settings = run_settings(&run_dir, &args.options)?;
            let personas = args.personas.unwrap_or_else(|| run_dir.join("personas.json"));
            let result =
                pipeline::analyze_run_with(&run_dir, &personas, Some(args.options.completions), &settings)
                    .with_context(|| format!("analysing run {}", run_dir.display()))?;
            finish(&result, &out)
        }
        (None, None) => bail!("say what to analyse: `pspace analyze --run DIR` or `pspace analyze behavior --hits FILE --personas FILE --out DIR`"),
    }
}

fn behavior(args: BehaviorArgs) -> anyhow::Result<()> {
    let settings = args.options.apply(Settings::default())?;
    let inputs = BehaviorInputs {
        hits: args.hits,
        personas: args.personas,
        default_completions: Some(args.options.completions),
    };
    let result = pipeline::analyze_behavior_with(&inputs, &settings)?;
    finish(&result, &args.out)
}

fn finish(result: &pspace_analysis::result::AnalysisResult, out: &std::path::Path) -> anyhow::Result<()> {
    let (json, report) = pipeline::write_outputs(result, out)?;
    println!(
        "wrote {}, {} and {}",
        json.display(),
        report.display(),
        report.with_extension("html").display()
    );
    if result.partial {
        println!("PARTIAL analysis: {}", result.partial_reasons.join("; "));
    }
    if let Some(b) = &result.behavior {
        // The headline numbers, so a reproduction can be compared at a glance.
        let means: Vec<String> = b
            .conditions
            .iter()
            .filter_map(|c| Some(format!("{c} {:.2}", b.mean_bystander.get(c)?)))
            .collect();
        println!("mean bystander leakage (%): {}", means.join(", "));
        if let Some(h2) = &b.h2 {
            println!(
                "H2: range {:.2} pp, p reference {:.4}",
                h2.range_pp, h2.p_reference
            );
        }
        if let Some(h3) = &b.h3 {
            println!(
                "H3: Spearman rho {:.2}, exact p {:.4} over {} orderings",
                h3.rho, h3.p_exact, h3.orderings
            );
        }
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
