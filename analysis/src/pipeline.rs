//! The analysis as the command line and the runner run it: read and check every input,
//! compute, write `result.json`, read it back, and render the report and figures from what was
//! read back.
//!
//! Every number the analysis is computed with comes in through `Settings` (recorded whole in
//! result.json as `settings`): the experiment spec's `analysis.*` numbers, the coupling's
//! source persona and the M2 anchor condition are never assumed. `Options` is the older,
//! smaller form the runner fills today; `Settings::from(&Options)` maps it.

use crate::behavior::{self, BehaviorConfig, BehaviorError};
use crate::families::{behavior_family, Family, FamilyError};
use crate::geometry::GeometryConfig;
use crate::input::{InductionCondition, InputError, MarkerHits, Personas};
use crate::report::{self, ReportError};
use crate::result::{AnalysisResult, GeometrySummary, InputRecord, ResultError, SCHEMA_VERSION};
use crate::verdict::{self, GeometryFamilies, Thresholds};
use serde::{Deserialize, Serialize};
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
    #[error("cannot fingerprint {path}: {error}")]
    Fingerprint { path: PathBuf, error: std::io::Error },
    #[error("missing inputs (pass --allow-partial to analyse what is there): {0}")]
    Missing(String),
    #[error("{0}")]
    Geometry(String),
    #[error("analysis settings: {0}")]
    Settings(String),
}

/// The older settings form (the runner's `stages::analyse` fills it); see `Settings`, which it
/// maps to: `behavior.seed`, `behavior.permutations`, `behavior.bootstrap` (now for the
/// geometry's intervals too), `behavior.source_persona`, `behavior.ci_level`, `thresholds`
/// and `allow_partial` carry over; `cv_folds` and the anchor take their defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub behavior: BehaviorConfig,
    pub thresholds: Thresholds,
    pub allow_partial: bool,
}

/// The condition id prefix of the default M2 anchor: the condition `E0` or `E0_<persona>`.
pub const DEFAULT_ANCHOR: &str = "E0";

/// Every number an analysis is computed with. The experiment spec's numbers map one to one:
/// `analysis.permutations`, `analysis.bootstrap`, `analysis.cv_folds`,
/// `analysis.fdr_alpha` (`thresholds.fdr_alpha`), `coupling.source_persona`, the anchor condition and the run's
/// seed. Defaults are the pre-registered values of experiments/issue205.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Experiment seed; every random stream derives from it and the test's name.
    pub seed: u64,
    /// Monte Carlo draws per test (permutations, sign flips, M3 joint shuffles).
    pub permutations: usize,
    /// Question-level bootstrap replicates, for the behaviour and the geometry intervals.
    pub bootstrap: usize,
    /// Coverage of the bootstrap intervals.
    pub ci_level: f64,
    /// GroupKFold folds of M3 (fold = question index mod folds).
    pub cv_folds: usize,
    /// The persona the marker was coupled to (excluded from the bystanders).
    pub source_persona: String,
    /// The condition whose induction persona's shift (anchor minus base) is the M2 axis; None:
    /// the condition `E0` or `E0_*` (an error when there is none or several).
    pub anchor_condition: Option<String>,
    /// M3: LDA shrinkage toward trace / d * I (scikit-learn's `shrinkage=` float).
    pub lda_shrinkage: f64,
    /// M3: principal components of each checkpoint's training fold the LDA works in.
    pub pca_components: usize,
    /// M3: power iterations of the randomized PCA.
    pub pca_power_iterations: usize,
    /// Largest n whose 2^n sign vectors are enumerated exactly (principled flavour).
    pub exact_max_n: usize,
    /// The pre-registered thresholds (the FDR level is `thresholds.fdr_alpha`).
    pub thresholds: Thresholds,
    /// Analyse what is there when inputs are missing (flagged in the result and report).
    pub allow_partial: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let geometry = GeometryConfig::default();
        Settings {
            seed: 42,
            permutations: 10_000,
            bootstrap: 2_000,
            ci_level: 0.95,
            cv_folds: 5,
            source_persona: "confab".into(),
            anchor_condition: None,
            lda_shrinkage: geometry.shrinkage,
            pca_components: geometry.components,
            pca_power_iterations: geometry.power_iterations,
            exact_max_n: geometry.exact_max_n,
            thresholds: Thresholds::default(),
            allow_partial: false,
        }
    }
}

impl From<&Options> for Settings {
    fn from(options: &Options) -> Settings {
        Settings {
            seed: options.behavior.seed,
            permutations: options.behavior.permutations,
            bootstrap: options.behavior.bootstrap,
            ci_level: options.behavior.ci_level,
            source_persona: options.behavior.source_persona.clone(),
            thresholds: options.thresholds.clone(),
            allow_partial: options.allow_partial,
            ..Settings::default()
        }
    }
}

impl Settings {
    /// Checks the values a computation cannot run with (before any input is read).
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |what: String| Err(PipelineError::Settings(what));
        if self.permutations == 0 {
            return bad("permutations must be at least 1, found 0".into());
        }
        if self.cv_folds < 2 {
            return bad(format!("cv_folds must be at least 2, found {}", self.cv_folds));
        }
        let alpha = self.thresholds.fdr_alpha;
        if !(alpha > 0.0 && alpha < 1.0) {
            return bad(format!(
                "the FDR level (fdr_alpha) must lie in (0, 1), found {alpha}"
            ));
        }
        if !(self.ci_level > 0.0 && self.ci_level < 1.0) {
            return bad(format!("ci_level must lie in (0, 1), found {}", self.ci_level));
        }
        if !(self.lda_shrinkage > 0.0 && self.lda_shrinkage <= 1.0) {
            return bad(format!(
                "lda_shrinkage must lie in (0, 1], found {}",
                self.lda_shrinkage
            ));
        }
        if self.pca_components == 0 {
            return bad("pca_components must be at least 1, found 0".into());
        }
        if self.source_persona.is_empty() {
            return bad("source_persona is empty".into());
        }
        Ok(())
    }

    /// The behavioural analysis' knobs.
    pub fn behavior_config(&self) -> BehaviorConfig {
        BehaviorConfig {
            source_persona: self.source_persona.clone(),
            seed: self.seed,
            permutations: self.permutations,
            bootstrap: self.bootstrap,
            ci_level: self.ci_level,
            h3_rho_threshold: self.thresholds.h3_min_abs_rho,
        }
    }

    /// The geometry analysis' knobs.
    pub fn geometry_config(&self) -> GeometryConfig {
        GeometryConfig {
            seed: self.seed,
            permutations: self.permutations,
            bootstrap: self.bootstrap,
            ci_level: self.ci_level,
            cv_folds: self.cv_folds,
            shrinkage: self.lda_shrinkage,
            components: self.pca_components,
            power_iterations: self.pca_power_iterations,
            exact_max_n: self.exact_max_n,
        }
    }

    /// The M2 anchor among the persona file's conditions: the one named by
    /// `anchor_condition`, else the condition `E0` / `E0_*`. Never "the first in the list".
    pub fn anchor<'a>(&self, personas: &'a Personas) -> Result<&'a InductionCondition, PipelineError> {
        let ids = || {
            personas
                .conditions
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.anchor_condition {
            Some(name) => personas.conditions.iter().find(|c| &c.id == name).ok_or_else(|| {
                PipelineError::Settings(format!(
                    "anchor condition '{name}' is not a condition of the persona file ({})",
                    ids()
                ))
            }),
            None => {
                let prefix = format!("{DEFAULT_ANCHOR}_");
                let found: Vec<_> = personas
                    .conditions
                    .iter()
                    .filter(|c| c.id == DEFAULT_ANCHOR || c.id.starts_with(&prefix))
                    .collect();
                match found.as_slice() {
                    [one] => Ok(one),
                    [] => Err(PipelineError::Settings(format!(
                        "no anchor condition named: no condition is {DEFAULT_ANCHOR} or {DEFAULT_ANCHOR}_* ({}); name one (anchor_condition / --anchor)",
                        ids()
                    ))),
                    _ => Err(PipelineError::Settings(format!(
                        "several conditions could be the default anchor {DEFAULT_ANCHOR} ({}); name one (anchor_condition / --anchor)",
                        found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }
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
    let record = InputRecord::of(path).map_err(|error| PipelineError::Fingerprint {
        path: path.to_path_buf(),
        error,
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

/// The behavioural analysis alone with the older settings form (see `analyze_behavior_with`).
pub fn analyze_behavior(inputs: &BehaviorInputs, options: &Options) -> Result<AnalysisResult, PipelineError> {
    analyze_behavior_with(inputs, &Settings::from(options))
}

/// The behavioural analysis alone (`pspace analyze behavior`).
pub fn analyze_behavior_with(
    inputs: &BehaviorInputs,
    options: &Settings,
) -> Result<AnalysisResult, PipelineError> {
    options.validate()?;
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
    let behavior = behavior::analyze(&hits, &personas, &options.behavior_config())?;
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
    options: &Settings,
) -> Result<AnalysisResult, PipelineError> {
    let mut families: BTreeMap<String, Family> = geometry_families
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    if let Some(b) = &behavior {
        let family = behavior_family(b, options.thresholds.fdr_alpha)?;
        families.insert(family.name.clone(), family);
    }
    let mut geometry = geometry;
    if let (Some(g), Some(em), Some(benign)) = (
        geometry.as_mut(),
        families.get(crate::families::GEOMETRY_EM_PRE_POST),
        families.get(crate::families::GEOMETRY_BENIGN_PRE_POST),
    ) {
        g.benign_share = crate::families::benign_share(em, benign);
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
        options.seed,
    );
    Ok(AnalysisResult {
        schema_version: SCHEMA_VERSION,
        generator: format!("pspace-analysis {}", env!("CARGO_PKG_VERSION")),
        seed: options.seed,
        settings: Some(options.clone()),
        partial: !partial_reasons.is_empty(),
        partial_reasons,
        inputs,
        behavior,
        geometry,
        families,
        verdicts,
        training: None,
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
        Err(error) => return Err(PipelineError::Input(InputError::Read { path: dir, error })),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| {
            PipelineError::Input(InputError::Read {
                path: dir.clone(),
                error,
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

/// The whole analysis of a run directory with the older settings form (the runner's call
/// today; see `analyze_run_with`).
pub fn analyze_run(
    run: &Path,
    personas_path: &Path,
    default_completions: Option<u32>,
    options: &Options,
) -> Result<AnalysisResult, PipelineError> {
    analyze_run_with(run, personas_path, default_completions, &Settings::from(options))
}

/// The settings a run was last analysed with: `settings` of `RUN/analysis/result.json`, the
/// file the runner's analysis task writes. None when there is no such file or it predates
/// recorded settings; an unreadable file is an error (a re-analysis must not silently fall
/// back to defaults).
pub fn run_settings(run: &Path) -> Result<Option<Settings>, PipelineError> {
    let path = run.join("analysis").join("result.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|error| ResultError::Read {
        path: path.clone(),
        error,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| ResultError::Parse {
        path: path.clone(),
        error,
    })?;
    match value.get("settings") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(settings) => serde_json::from_value(settings.clone())
            .map(Some)
            .map_err(|error| ResultError::Parse { path, error }.into()),
    }
}

/// The whole analysis of a run directory (`pspace analyze --run DIR`): every input is found and
/// checked first; anything missing is an error unless `allow_partial`.
pub fn analyze_run_with(
    run: &Path,
    personas_path: &Path,
    default_completions: Option<u32>,
    options: &Settings,
) -> Result<AnalysisResult, PipelineError> {
    options.validate()?;
    let personas = Personas::load(personas_path)?;
    options.anchor(&personas)?;
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
        Some(hits) => Some(behavior::analyze(hits, &personas, &options.behavior_config())?),
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
    let mut result = assemble(behavior, summary, families, records, missing, options)?;
    result.training = crate::training::load(run)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn personas(ids: &[&str]) -> Personas {
        let conditions: Vec<_> = ids
            .iter()
            .map(|id| json!({"id": id, "slug": "a", "cos_to_assistant": 1.0}))
            .collect();
        Personas::from_value(
            &json!({"eval_persona_order": ["a", "src"], "em_induction_conditions": conditions}),
            Path::new("p.json"),
        )
        .unwrap()
    }

    /// The M2 anchor is E0 by default wherever it stands, or the named condition; never the
    /// first in the list.
    #[test]
    fn the_anchor_is_e0_or_the_named_condition() {
        let p = personas(&["E1_x", "E0_assistant", "E2_y"]);
        assert_eq!(Settings::default().anchor(&p).unwrap().id, "E0_assistant");
        let named = Settings {
            anchor_condition: Some("E2_y".into()),
            ..Settings::default()
        };
        assert_eq!(named.anchor(&p).unwrap().id, "E2_y");
        let err = Settings::default()
            .anchor(&personas(&["E1_x", "E2_y"]))
            .unwrap_err();
        assert!(err.to_string().contains("no anchor condition"), "{err}");
        let wrong = Settings {
            anchor_condition: Some("E9".into()),
            ..Settings::default()
        };
        assert!(wrong.anchor(&p).is_err());
    }

    #[test]
    fn the_older_options_carry_over_and_settings_round_trip() {
        let options = Options {
            behavior: BehaviorConfig {
                source_persona: "poet".into(),
                seed: 7,
                permutations: 123,
                bootstrap: 2000,
                ..BehaviorConfig::default()
            },
            thresholds: Thresholds {
                fdr_alpha: 0.05,
                ..Thresholds::default()
            },
            allow_partial: true,
        };
        let s = Settings::from(&options);
        assert_eq!((s.seed, s.permutations, s.bootstrap), (7, 123, 2000));
        assert_eq!(s.source_persona, "poet");
        assert_eq!(s.geometry_config().bootstrap, 2000);
        assert_eq!(s.thresholds.fdr_alpha, 0.05);
        assert!(s.allow_partial);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&text).unwrap(), s);
        let partial: Settings = serde_json::from_str(r#"{"cv_folds": 3}"#).unwrap();
        assert_eq!(partial.cv_folds, 3);
        assert_eq!(partial.bootstrap, 2000);
        assert!(serde_json::from_str::<Settings>(r#"{"cv_fold": 3}"#).is_err());
        assert!(Settings {
            cv_folds: 1,
            ..Settings::default()
        }
        .validate()
        .is_err());
    }
}
