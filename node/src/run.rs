//! `pspace run`: expands an experiment spec into tasks and runs them in this process.

use crate::cli::RunArgs;
use anyhow::{Context, Result};
use pspace_actors::spec::Spec;

pub fn run(args: RunArgs) -> Result<()> {
    let spec = match &args.spec {
        Some(path) => Spec::from_file(path)?,
        None => {
            let root = crate::paths::project_root()
                .context("cannot find the project root (experiments/demo.toml): set PSPACE_HOME")?;
            Spec::demo(root.join("experiments"))?
        }
    };
    let device = args
        .device
        .clone()
        .unwrap_or_else(|| spec.experiment.device.clone());
    println!(
        "experiment {:?} on {device}, seeds {:?}",
        spec.experiment.name, spec.experiment.seeds
    );
    for &seed in &spec.experiment.seeds {
        for task in spec.expand(seed) {
            println!(
                "  seed {seed}  {:<18} {:<24} {}",
                task.kind.as_str(),
                task.label,
                task.id()
            );
        }
    }
    if args.dry_run {
        return Ok(());
    }
    Ok(())
}
