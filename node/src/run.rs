//! `pspace run`: expands an experiment spec into its task DAG and runs it in this process, with
//! progress bars, against the spec's store; finished tasks are skipped (resume).

use crate::cli::RunArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pspace_actors::local::{LocalRunner, RunObserver, TaskOutcome};
use pspace_actors::spec::Spec;
use pspace_actors::stages::Engine;
use pspace_actors::store::{sha256_hex, Location, Store};
use std::path::PathBuf;
use std::time::Duration;
use tracing::Instrument;

pub fn run(args: RunArgs) -> Result<()> {
    let spec = match &args.spec {
        Some(path) => Spec::from_file(path)?,
        None => {
            let root = crate::paths::project_root()
                .context("cannot find the project root (experiments/demo.toml): set PSPACE_HOME")?;
            Spec::demo(root.join("experiments"))?
        }
    };
    let device_name = args
        .device
        .clone()
        .unwrap_or_else(|| spec.experiment.device.clone());
    let device: pspace_engine::Device = device_name.parse()?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| spec.experiment.store.clone());
    eprintln!(
        "experiment {:?}: model {}, device {device}, seeds {:?}, store {location}",
        spec.experiment.name, spec.experiment.model, spec.experiment.seeds
    );
    if args.dry_run {
        for &seed in &spec.experiment.seeds {
            for planned in spec.plan(seed) {
                println!(
                    "seed {seed}  {:<18} {:<24} needs [{}]",
                    planned.task.kind.as_str(),
                    planned.task.label,
                    planned.depends_on.join(", ")
                );
            }
        }
        return Ok(());
    }
    let model_path = resolve_spec_model(&spec)?;
    let store = Store::open(&location)?;
    // Local work files (the analysis reads files): beside a local store, else a temporary folder
    // named after the store (PSPACE_SCRATCH overrides).
    let scratch = match (std::env::var_os("PSPACE_SCRATCH"), Location::parse(&location)?) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Location::Local(root)) => root.join(".scratch"),
        (None, Location::S3 { .. }) => std::env::temp_dir().join(format!(
            "pspace-scratch-{}",
            &sha256_hex(location.as_bytes())[..12]
        )),
    };
    let engine = Engine::new(model_path, spec.experiment.model.clone(), device);
    let mut runner = LocalRunner {
        spec: &spec,
        store,
        engine,
        scratch,
    };
    let mut observer = Bars::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let trace_root = tracing::info_span!(
        "run",
        experiment = %spec.experiment.name,
        model = %spec.experiment.model,
        device = %device,
        store = %location,
    );
    let outcomes = runtime.block_on(runner.run(&mut observer).instrument(trace_root))?;
    observer.finish();
    let ran = outcomes.iter().filter(|o| !o.cached).count();
    eprintln!(
        "done: {} tasks ({ran} ran, {} already committed) in {location}",
        outcomes.len(),
        outcomes.len() - ran,
    );
    if let Some(analyse) = outcomes.iter().rev().find(|o| o.key.starts_with("analyse/")) {
        let dir = format!("{}/{}", location.trim_end_matches('/'), analyse.dir);
        println!("report: {dir}/report.md");
        println!("result: {dir}/result.json");
    }
    Ok(())
}

fn resolve_spec_model(spec: &Spec) -> Result<PathBuf> {
    if spec.experiment.model == "demo" {
        return crate::paths::resolve_model("demo");
    }
    let p = PathBuf::from(&spec.experiment.model);
    let p = if p.is_absolute() { p } else { spec.root.join(p) };
    crate::paths::resolve_model(&p.display().to_string())
}

/// Progress bars: one line per task, a bar for the stage inside it.
struct Bars {
    task: ProgressBar,
    stage: Option<ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let task = ProgressBar::new(0);
        task.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} tasks  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        task.set_prefix("pspace");
        task.enable_steady_tick(Duration::from_millis(250));
        Bars { task, stage: None }
    }
    fn finish(&mut self) {
        if let Some(s) = self.stage.take() {
            s.finish_and_clear();
        }
        self.task.finish();
    }
}

impl RunObserver for Bars {
    fn task_started(&mut self, index: usize, total: usize, key: &str, task_id: &str) {
        self.task.set_length(total as u64);
        self.task.set_position(index as u64);
        self.task.set_message(format!("{key} ({task_id})"));
    }
    fn task_finished(&mut self, outcome: &TaskOutcome) {
        if let Some(s) = self.stage.take() {
            s.finish_and_clear();
        }
        let how = if outcome.cached {
            "cached".to_string()
        } else {
            format!("{:.1}s", outcome.seconds)
        };
        let line = format!("  {:<34} {how}", outcome.key);
        // Bars are hidden when stderr is not a terminal (CI, logs); the task lines still show.
        if self.task.is_hidden() {
            eprintln!("{line}");
        } else {
            self.task.println(line);
        }
        self.task.inc(1);
    }
    fn stage_progress(&mut self, message: &str, done: usize, total: usize) {
        let bar = self.stage.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len}  {msg} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix("stage");
            b
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(message.to_string());
    }
}
