//! `result.json`: the one file every number of the report comes from. Its schema is versioned
//! (`schema_version`) and documented in docs/result-schema.md; keys the reference's result
//! file also had (`mean_bystander`, `range_pp`, `rho`, `p_exact`, `geometry_em_pre_post`) keep
//! their names.

use crate::behavior::BehaviorResult;
use crate::families::Family;
use crate::verdict::{GeometryDesign, Verdicts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the result.json schema; bump on any change a reader could notice.
/// 2: `settings`, NaN as `null`, verdict routes and readings, the multi-seed summary's inputs.
/// 3: a family's FDR level is `fdr_alpha` (was `alpha`, beside LoRA's alpha).
pub const SCHEMA_VERSION: u32 = 3;

/// One input file, named and fingerprinted so a result can be traced to its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: String,
    pub sha256: String,
}

impl InputRecord {
    /// Fingerprints a file.
    pub fn of(path: &Path) -> std::io::Result<InputRecord> {
        let bytes = std::fs::read(path)?;
        let digest = Sha256::digest(&bytes);
        Ok(InputRecord {
            path: path.display().to_string(),
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// Geometry numbers the report and figures draw beyond the family cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GeometrySummary {
    pub design: Option<GeometryDesign>,
    /// Checkpoints in display order (base, the EM conditions, benign).
    pub checkpoints: Vec<String>,
    /// Personas the vectors were extracted for (M3's chance level is 1 / this).
    #[serde(default)]
    pub personas: Vec<String>,
    /// method -> layer -> checkpoint -> mean off-diagonal cosine (M1).
    pub m1_mean_offdiag: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// method -> layer -> checkpoint -> held-out LDA accuracy (M3, fraction).
    pub m3_accuracy: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// method -> layer -> checkpoint -> how far training moved the persona centroids: the mean
    /// over personas of 1 - cos(centroid, the same persona's base centroid); base is 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub centroid_shift: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// method -> layer -> checkpoint -> question-level bootstrap percentile interval of M1's
    /// mean off-diagonal cosine (level `method.ci_level`): the hero figure's whiskers. Absent
    /// in results written before it existed and where an interval is undefined.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub m1_ci: BTreeMap<String, BTreeMap<String, BTreeMap<String, [f64; 2]>>>,
    /// The same interval of M3's held-out accuracy (fraction).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub m3_ci: BTreeMap<String, BTreeMap<String, BTreeMap<String, [f64; 2]>>>,
    /// metric -> method -> layer -> condition -> the share of the EM shift that benign SFT
    /// also produces: (benign - base) / (EM - base). Null where the EM shift is zero or not in
    /// the pre-registered direction (M1, M2 up; M3 down).
    #[serde(default)]
    pub benign_share: crate::families::BenignShare,
    /// How the geometry was computed (the report describes M1, M2 and M3 from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GeometryMethod>,
    /// The geometry module's own per-cell output, kept whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells: Option<serde_json::Value>,
}

/// The settings the geometry was computed with, recorded for the report's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeometryMethod {
    pub permutations: usize,
    pub bootstrap: usize,
    pub ci_level: f64,
    /// Largest n whose 2^n sign vectors are enumerated (principled M1, M2).
    pub exact_max_n: usize,
    /// M2: the anchor condition and the persona whose shift (anchor minus base) is the axis.
    pub anchor_condition: String,
    pub axis_persona: String,
    /// M3: GroupKFold folds by question (fold = question index mod folds).
    pub cv_folds: usize,
    /// M3: LDA shrinkage toward trace / d * I (scikit-learn lsqr estimator).
    pub lda_shrinkage: f64,
    /// M3: principal components the LDA works in, fitted per checkpoint and training fold.
    pub pca_components: usize,
    pub pca_power_iterations: usize,
}

/// The whole result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisResult {
    pub schema_version: u32,
    /// The program that wrote it.
    pub generator: String,
    pub seed: u64,
    /// Every number the analysis was computed with (a re-analysis of the run starts from it).
    #[serde(default)]
    pub settings: Option<crate::pipeline::Settings>,
    /// Whether inputs were missing and the analysis went on (`--allow-partial`).
    pub partial: bool,
    /// What was missing.
    pub partial_reasons: Vec<String>,
    /// Input name -> file and sha256.
    pub inputs: BTreeMap<String, InputRecord>,
    pub behavior: Option<BehaviorResult>,
    pub geometry: Option<GeometrySummary>,
    /// Family name -> cells with BH and Holm adjusted p-values in both flavours.
    pub families: BTreeMap<String, Family>,
    pub verdicts: Verdicts,
    /// The run's LoRA trainings (EM, benign, coupling): loss per step and the coupling sets'
    /// counts; absent when the run folder holds no training logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Vec<crate::training::TrainingCurve>>,
}

/// Errors reading or writing result files.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a result file of schema {SCHEMA_VERSION}: {error}")]
    Parse { path: PathBuf, error: serde_json::Error },
    #[error("{path} has schema_version {found}, this program reads {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: u64 },
}

impl AnalysisResult {
    /// Writes `dir/result.json` (pretty, stable key order) and returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ResultError> {
        let path = dir.join("result.json");
        let io = |error| ResultError::Write {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        text.push('\n');
        let tmp = dir.join("result.json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Reads a result file, checking its schema version first.
    pub fn read(path: &Path) -> Result<AnalysisResult, ResultError> {
        let text = std::fs::read_to_string(path).map_err(|error| ResultError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| ResultError::Parse {
            path: path.to_path_buf(),
            error,
        })?;
        let found = value
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(SCHEMA_VERSION) {
            return Err(ResultError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        serde_json::from_value(value).map_err(|error| ResultError::Parse {
            path: path.to_path_buf(),
            error,
        })
    }
}
