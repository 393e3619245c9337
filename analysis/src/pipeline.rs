//! The analysis as the command line runs it: read and check every input, compute, write
//! `result.json`, read it back, and render the report and figures from what was read back.

use crate::behavior::{self, BehaviorConfig, BehaviorError};
use crate::families::{behavior_family, Family, FamilyError};
use crate::input::{InputError, MarkerHits, Personas};
use crate::report::{self, ReportError};
use crate::result::{AnalysisResult, GeometrySummary, InputRecord, ResultError, SCHEMA_VERSION};
use crate::verdict::{self, GeometryFamilies, Thresholds};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything that can stop an analysis.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Behavior(#[from] BehaviorError),
    #[error(transparent)]
    Family(#[from] FamilyError),
    #[error(transparent)]
    Result(#[from] ResultError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("cannot fingerprint {path}: {source}")]
    Fingerprint { path: PathBuf, source: std::io::Error },
    #[error("missing inputs (pass --allow-partial to analyse what is there): {0}")]
    Missing(String),
    #[error("{0}")]
    Geometry(String),
}

/// Settings shared by every analysis.
#[derive(Debug, Clone)]
pub struct Options {
    pub behavior: BehaviorConfig,
    pub thresholds: Thresholds,
    pub allow_partial: bool,
}

/// The behavioural inputs.
#[derive(Debug, Clone)]
pub struct BehaviorInputs {
    pub hits: Vec<PathBuf>,
    pub personas: PathBuf,
    /// Completions behind a bare hit count (the reference's files have 10).
    pub default_completions: Option<u32>,
}

fn fingerprint(
    inputs: &mut BTreeMap<String, InputRecord>,
    name: String,
    path: &Path,
) -> Result<(), PipelineError> {
    let record = InputRecord::of(path).map_err(|source| PipelineError::Fingerprint {
        path: path.to_path_buf(),
        source,
    })?;
    inputs.insert(name, record);
    Ok(())
}

/// Reads and checks the behavioural inputs (nothing is computed before this succeeds).
pub fn load_behavior(inputs: &BehaviorInputs) -> Result<(MarkerHits, Personas), PipelineError> {
    let personas = Personas::load(&inputs.personas)?;
    let hits = MarkerHits::load(&inputs.hits, &personas, inputs.default_completions)?;
    Ok((hits, personas))
}

/// The behavioural analysis alone (`pspace analyze behavior`).
pub fn analyze_behavior(inputs: &BehaviorInputs, options: &Options) -> Result<AnalysisResult, PipelineError> {
    let (hits, personas) = load_behavior(inputs)?;
    let mut partial_reasons = Vec::new();
    if !hits.missing_conditions.is_empty() {
        let reason = format!(
            "marker hits missing for conditions: {}",
            hits.missing_conditions.join(", ")
        );
        if !options.allow_partial {
            return Err(PipelineError::Missing(reason));
        }
        partial_reasons.push(reason);
    }
    let mut records = BTreeMap::new();
    fingerprint(&mut records, "personas".into(), &inputs.personas)?;
    for (i, path) in inputs.hits.iter().enumerate() {
        fingerprint(&mut records, format!("marker_hits[{i}]"), path)?;
    }
    let behavior = behavior::analyze(&hits, &personas, &options.behavior)?;
    assemble(
        Some(behavior),
        None,
        Vec::new(),
        records,
        partial_reasons,
        options,
    )
}

/// Puts a result together from the computed parts: families, verdicts.
pub fn assemble(
    behavior: Option<behavior::BehaviorResult>,
    geometry: Option<GeometrySummary>,
    geometry_families: Vec<Family>,
    inputs: BTreeMap<String, InputRecord>,
    partial_reasons: Vec<String>,
    options: &Options,
) -> Result<AnalysisResult, PipelineError> {
    let mut families: BTreeMap<String, Family> = geometry_families
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    if let Some(b) = &behavior {
        let family = behavior_family(b, options.thresholds.fdr_alpha)?;
        families.insert(family.name.clone(), family);
    }
    let design = geometry.as_ref().and_then(|g| g.design.clone());
    let em = families.get(crate::families::GEOMETRY_EM_PRE_POST);
    let geometry_inputs = match (&design, em) {
        (Some(design), Some(em_pre_post)) => Some(GeometryFamilies {
            design,
            em_pre_post,
            em_vs_benign: families.get(crate::families::GEOMETRY_EM_VS_BENIGN),
        }),
        _ => None,
    };
    let verdicts = verdict::decide(
        geometry_inputs.as_ref(),
        behavior.as_ref(),
        &options.thresholds,
        options.behavior.seed,
    );
    Ok(AnalysisResult {
        schema_version: SCHEMA_VERSION,
        generator: format!("pspace-analysis {}", env!("CARGO_PKG_VERSION")),
        seed: options.behavior.seed,
        partial: !partial_reasons.is_empty(),
        partial_reasons,
        inputs,
        behavior,
        geometry,
        families,
        verdicts,
    })
}

/// Writes result.json, then renders report.md and the figures from the file as read back.
pub fn write_outputs(result: &AnalysisResult, out: &Path) -> Result<(PathBuf, PathBuf), PipelineError> {
    let json = result.write(out)?;
    let read_back = AnalysisResult::read(&json)?;
    let report = report::write_report(&read_back, out)?;
    Ok((json, report))
}

/// Checkpoint folder names of a run: the base model, one per EM condition, the benign control.
pub fn run_checkpoints(personas: &Personas) -> Vec<String> {
    let mut checkpoints = vec!["base".to_string()];
    checkpoints.extend(personas.conditions.iter().map(|c| c.id.clone()));
    checkpoints.push("benign_sft".to_string());
    checkpoints
}

/// The marker-hit files of a run directory (`RUN/marker_hits/*.json`, sorted by name).
pub fn run_hit_files(run: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let dir = run.join("marker_hits");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PipelineError::Input(InputError::Read { path: dir, source })),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| {
            PipelineError::Input(InputError::Read {
                path: dir.clone(),
                source,
            })
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The whole analysis of a run directory (`pspace analyze --run DIR`): every input is found and
/// checked first; anything missing is an error unless `allow_partial`.
pub fn analyze_run(
    run: &Path,
    personas_path: &Path,
    default_completions: Option<u32>,
    options: &Options,
) -> Result<AnalysisResult, PipelineError> {
    let personas = Personas::load(personas_path)?;
    let mut records = BTreeMap::new();
    fingerprint(&mut records, "personas".into(), personas_path)?;
    let mut missing = Vec::new();

    let hit_files = run_hit_files(run)?;
    let hits = if hit_files.is_empty() {
        missing.push(format!("no marker hits in {}", run.join("marker_hits").display()));
        None
    } else {
        let hits = MarkerHits::load(&hit_files, &personas, default_completions)?;
        if !hits.missing_conditions.is_empty() {
            missing.push(format!(
                "marker hits missing for conditions: {}",
                hits.missing_conditions.join(", ")
            ));
        }
        for (i, path) in hit_files.iter().enumerate() {
            fingerprint(&mut records, format!("marker_hits[{i}]"), path)?;
        }
        Some(hits)
    };

    let geometry_run = crate::run_geometry::check(run, &run_checkpoints(&personas), &personas)?;
    missing.extend(geometry_run.missing.iter().cloned());
    if !missing.is_empty() && !options.allow_partial {
        return Err(PipelineError::Missing(missing.join("; ")));
    }
    for (name, path) in &geometry_run.files {
        fingerprint(&mut records, name.clone(), path)?;
    }
    let activations = crate::run_geometry::load(&geometry_run, &personas)?;

    let behavior = match &hits {
        Some(hits) => Some(behavior::analyze(hits, &personas, &options.behavior)?),
        None => None,
    };
    let (summary, families) = crate::run_geometry::compute(activations, &personas, options)?;
    // Files inside the run directory are recorded relative to it: the result then reads the
    // same wherever the run was analysed (the runner analyses a scratch copy of the store).
    for record in records.values_mut() {
        if let Ok(inside) = Path::new(&record.path).strip_prefix(run) {
            record.path = inside.display().to_string();
        }
    }
    assemble(behavior, summary, families, records, missing, options)
}
