//! Where pspace finds its own files: the project root (for `.cache/models` and `experiments/`)
//! and the demo model that `--model demo` names; and what a `--model` argument names.

use anyhow::{bail, Result};
use pspace_engine::model::{ModelSource, Preset};
use std::path::{Path, PathBuf};

pub const DEMO_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The project root: `PSPACE_HOME` if set, else the first folder above the binary or the current
/// directory that holds `experiments/demo.toml` or `.cache/models`.
pub fn project_root() -> Option<PathBuf> {
    if let Ok(home) = std::env::var("PSPACE_HOME") {
        return Some(PathBuf::from(home));
    }
    let looks_like_root =
        |p: &Path| p.join("experiments/demo.toml").exists() || p.join(".cache/models").exists();
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts.into_iter().find_map(|start| {
        start
            .ancestors()
            .find(|p| looks_like_root(p))
            .map(Path::to_path_buf)
    })
}

/// Resolves a `--model` argument: `demo` is the bundled SmolLM2 GGUF, `random:<preset>[@seed]`
/// random weights of a preset architecture (benchmarks and dry runs), anything else a path.
pub fn resolve_model(arg: &str) -> Result<ModelSource> {
    if arg == "demo" {
        let root = project_root().unwrap_or_else(|| PathBuf::from("."));
        let path = root.join(".cache/models").join(DEMO_MODEL_FILE);
        if !path.exists() {
            bail!("the demo model {} is missing: run 'make setup'", path.display());
        }
        return Ok(ModelSource::Files(path));
    }
    let source = ModelSource::parse(arg)?;
    if let ModelSource::Files(path) = &source {
        if !path.exists() {
            bail!(
                "model {arg:?} not found: expected `demo`, random:<preset>[@seed] ({}), an HF model folder or a .gguf file",
                random_presets()
            );
        }
    }
    Ok(source)
}

/// The presets `random:` knows, for messages and help.
pub fn random_presets() -> String {
    Preset::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}
