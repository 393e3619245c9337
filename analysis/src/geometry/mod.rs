//! Geometry of persona vectors: M1 (cosine collapse of persona centroids), M2 (projection on
//! the E0-anchored EM axis) and M3 (held-out shrinkage-LDA separability), each as a delta
//! after minus before with a `reference` and a `principled` p-value and a question-level
//! bootstrap interval, for the three geometry families (EM vs base, benign vs base, EM vs
//! benign). Reads the activations format of `activations.rs`.
//!
//! Paired filter: per persona, only questions whose vector is valid in every checkpoint enter
//! anything (Method B drops empty responses; Method A keeps all).
//!
//! Flavours (all Monte Carlo p-values (b+1)/(m+1), all two-sided; the verdicts check the
//! direction):
//! - M1: `reference` = the seed's paired permutation test over the 66 persona pairs, i.e.
//!   Monte Carlo sign flips of the per-pair cosine differences (`permutations` draws);
//!   `principled` = the same sign-flip null enumerated exactly where 2^n is small enough
//!   (`exact_max_n`), else Monte Carlo from its own stream. The 66 pairs share personas, so
//!   neither is exact about that dependence; the question-level bootstrap interval is the
//!   principled statement of uncertainty.
//! - M2: the same two over the 11 non-axis personas (principled: exact over 2^11).
//! - M3: held-out shrinkage-LDA accuracy, GroupKFold by question, the LDA in principal
//!   components fitted per checkpoint and per training fold (`m3.rs`). `reference` = the plan's
//!   joint-shuffle null (persona labels permuted within each question, jointly for every
//!   checkpoint, accuracies recomputed; the seed's own M3 was a degenerate nearest-centroid and
//!   has no test worth replicating); `principled` = sign flips of the per-question differences
//!   of held-out correct counts (pairing by question, the unit of the cross-validation).
//!
//! The M2 axis is the anchor condition's (`GeometryInput::anchor_condition`, E0 in the plan),
//! whatever its position among the conditions.
//!
//! EM-vs-benign cells hold the EM shift minus the benign shift, i.e. EM minus benign.

pub mod activations;
pub mod centroids;
pub mod lda;
pub mod m3;
mod m3_kernels;
pub mod paired;
pub mod pca;
mod replicate_gram;
pub mod synthetic;
pub mod timing;

use crate::families::CellTest;
use crate::result::GeometrySummary;
use crate::stats::permutation::{at_least, monte_carlo_p, percentile_interval};
use crate::stats::rng::seeded_rng;
use crate::verdict::GeometryDesign;
use activations::{Activations, ActivationsError};
use centroids::LayerRows;
use ndarray::ArrayView2;
use rayon::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why the geometry could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    #[error(transparent)]
    Activations(#[from] ActivationsError),
    #[error("geometry input: {0}")]
    Input(String),
    #[error("M3 at method {method}, layer {layer}, checkpoint set: {error}")]
    Lda {
        method: String,
        layer: usize,
        error: lda::LdaError,
    },
}

/// Settings of the geometry analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct GeometryConfig {
    /// Experiment seed; each test's stream is derived from it and the test's name.
    pub seed: u64,
    /// Monte Carlo draws per test (sign flips, M3 joint shuffles).
    pub permutations: usize,
    /// Question-level bootstrap replicates.
    pub bootstrap: usize,
    pub ci_level: f64,
    /// GroupKFold folds of M3 (fold = question index mod folds).
    pub cv_folds: usize,
    /// LDA shrinkage toward trace / d * I (scikit-learn's `shrinkage=` float).
    pub shrinkage: f64,
    /// Principal components M3's LDA works in (fitted per checkpoint and training fold).
    pub components: usize,
    /// Power iterations of the randomized PCA.
    pub power_iterations: usize,
    /// Largest n whose 2^n sign vectors are enumerated exactly.
    pub exact_max_n: usize,
}

impl Default for GeometryConfig {
    fn default() -> Self {
        GeometryConfig {
            seed: 42,
            permutations: 10_000,
            // The spec's analysis.bootstrap (experiments/issue205.toml).
            bootstrap: 2_000,
            ci_level: 0.95,
            cv_folds: 5,
            shrinkage: 0.1,
            // 12 personas need at most 11 discriminant directions; 16 leaves room while
            // 10,000 joint-shuffle refits of 7 checkpoints x 10 layers stay affordable.
            components: 16,
            power_iterations: 1,
            exact_max_n: 16,
        }
    }
}

/// The activations of one method, one entry per checkpoint in `GeometryInput::checkpoints`
/// order.
#[derive(Debug, Clone)]
pub struct MethodActivations {
    pub method: String,
    pub checkpoints: Vec<Activations>,
}

/// What the geometry is computed on.
pub struct GeometryInput {
    /// Checkpoints: base first, then the EM conditions, then the benign control if any.
    pub base: String,
    pub conditions: Vec<String>,
    /// One per condition (design information carried into the summary).
    pub cos_to_assistant: Vec<f64>,
    pub benign: Option<String>,
    /// The condition whose checkpoint defines the M2 axis (E0 in the plan), one of
    /// `conditions`.
    pub anchor_condition: String,
    /// The persona whose shift (anchor minus base) is the M2 axis (the anchor's induction
    /// persona, the assistant for E0).
    pub axis_persona: String,
    pub methods: Vec<MethodActivations>,
}

impl GeometryInput {
    /// Checkpoint names in data order.
    pub fn checkpoints(&self) -> Vec<String> {
        let mut all = vec![self.base.clone()];
        all.extend(self.conditions.iter().cloned());
        all.extend(self.benign.iter().cloned());
        all
    }
}

/// The cells of the three geometry families and the summary for result.json.
pub struct GeometryOutput {
    pub summary: GeometrySummary,
    pub em_pre_post: Vec<CellTest>,
    pub benign_pre_post: Vec<CellTest>,
    pub em_vs_benign: Vec<CellTest>,
    /// CPU seconds of each phase of each (method, layer) job (for the speed benchmark).
    pub timings: Vec<timing::LayerTiming>,
    /// CPU seconds of the cells' sign-flip tests, run after the jobs on the calling thread.
    pub cells_cpu_seconds: Option<f64>,
}

/// Reads and cross-checks activation files: (checkpoint, method, path) each. Every file must
/// name the checkpoint and method it is filed under and share the persona order, layers,
/// question count and hidden size of the first file of its method.
pub fn load(
    files: &[(String, String, PathBuf)],
    checkpoints: &[String],
) -> Result<Vec<MethodActivations>, GeometryError> {
    let mut by_method: BTreeMap<String, Vec<(String, PathBuf, Activations)>> = BTreeMap::new();
    let mut first: Option<(PathBuf, Activations)> = None;
    for (checkpoint, method, path) in files {
        let a = activations::read(path)?;
        if &a.checkpoint != checkpoint || &a.method != method {
            return Err(GeometryError::Input(format!(
                "{}: metadata says checkpoint {} method {}, the file is filed as checkpoint {checkpoint} method {method}",
                path.display(),
                a.checkpoint,
                a.method
            )));
        }
        if let Some((first_path, f)) = &first {
            if f.personas != a.personas {
                return Err(ActivationsError::Mismatch {
                    path: path.clone(),
                    reference: first_path.clone(),
                    what: format!("persona order {:?} differs from {:?}", a.personas, f.personas),
                }
                .into());
            }
        } else {
            first = Some((path.clone(), a.clone()));
        }
        let entry = by_method.entry(method.clone()).or_default();
        if let Some((_, p0, a0)) = entry.first() {
            activations::check_compatible((p0, a0), (path, &a))?;
        }
        entry.push((checkpoint.clone(), path.clone(), a));
    }
    let mut out = Vec::new();
    for (method, mut entries) in by_method {
        let mut ordered = Vec::new();
        for checkpoint in checkpoints {
            let position = entries
                .iter()
                .position(|(c, _, _)| c == checkpoint)
                .ok_or_else(|| {
                    GeometryError::Input(format!(
                        "method {method}: no activations for checkpoint {checkpoint}"
                    ))
                })?;
            ordered.push(entries.swap_remove(position).2);
        }
        out.push(MethodActivations {
            method,
            checkpoints: ordered,
        });
    }
    Ok(out)
}

/// Everything measured at one method and layer.
struct LayerOutcome {
    method: String,
    layer: usize,
    personas: usize,
    /// [checkpoint][pair]
    pair_cosines: Vec<Vec<f64>>,
    /// [checkpoint]: `centroids::mean_shift` from base.
    shift_from_base: Vec<f64>,
    /// [checkpoint][non-axis persona]; empty without an axis checkpoint.
    axis_abs_cos: Vec<Vec<f64>>,
    bootstrap: centroids::BootstrapReplicates,
    m3: m3::M3Result,
    m3_bootstrap: Vec<Vec<f64>>,
    timing: timing::PhaseSeconds,
}

fn analyze_layer(
    input: &GeometryInput,
    config: &GeometryConfig,
    method: &MethodActivations,
    layer_index: usize,
) -> Result<LayerOutcome, GeometryError> {
    let mut phases = timing::PhaseSeconds::default();
    let mut clock = timing::thread_cpu_seconds();
    let first = &method.checkpoints[0];
    let (personas, questions, hidden) = (first.personas.len(), first.n_questions, first.hidden);
    let layer = first.layers[layer_index];
    fn rows_of(
        a: &Activations,
        layer_index: usize,
        shape: (usize, usize),
    ) -> Result<ArrayView2<'_, f32>, GeometryError> {
        ArrayView2::from_shape(shape, &a.values[layer_index][..]).map_err(|e| {
            GeometryError::Input(format!(
                "checkpoint {} method {} layer index {layer_index}: expected {} x {} values: {e}",
                a.checkpoint, a.method, shape.0, shape.1
            ))
        })
    }
    let views: Vec<ArrayView2<f32>> = method
        .checkpoints
        .iter()
        .map(|a| rows_of(a, layer_index, (personas * questions, hidden)))
        .collect::<Result<_, _>>()?;
    // Paired filter: valid in every checkpoint.
    let keep: Vec<bool> = (0..personas * questions)
        .map(|row| method.checkpoints.iter().all(|a| a.mask[row]))
        .collect();
    // Masked vectors may hold anything (even NaN); zero them so no product sees them.
    let cleaned: Vec<Option<Vec<f32>>> = method
        .checkpoints
        .iter()
        .map(|a| {
            let values = &a.values[layer_index];
            let dirty = (0..personas * questions).any(|row| {
                !keep[row]
                    && values[row * hidden..(row + 1) * hidden]
                        .iter()
                        .any(|v| !v.is_finite())
            });
            dirty.then(|| {
                let mut v = values.clone();
                for row in (0..personas * questions).filter(|&r| !keep[r]) {
                    v[row * hidden..(row + 1) * hidden].fill(0.0);
                }
                v
            })
        })
        .collect();
    let views: Vec<ArrayView2<f32>> = views
        .into_iter()
        .zip(&cleaned)
        .map(|(view, clean)| match clean {
            Some(v) => ArrayView2::from_shape((personas * questions, hidden), &v[..]).unwrap_or(view),
            None => view,
        })
        .collect();
    let rows: Vec<LayerRows> = views.iter().map(|v| LayerRows { rows: *v }).collect();
    let names = input.checkpoints();
    let axis_persona = first
        .personas
        .iter()
        .position(|p| *p == input.axis_persona)
        .ok_or_else(|| {
            GeometryError::Input(format!(
                "M2 axis persona {} is not among the personas of the activations {:?}",
                input.axis_persona, first.personas
            ))
        })?;
    // M1, M2 observed.
    let centroid_sets: Vec<_> = rows
        .iter()
        .map(|r| centroids::centroids(r, personas, questions, &keep))
        .collect();
    let pair_cosines: Vec<Vec<f64>> = centroid_sets.iter().map(centroids::pair_cosines).collect();
    let shift_from_base: Vec<f64> = centroid_sets
        .iter()
        .map(|c| centroids::mean_shift(c, &centroid_sets[0]))
        .collect();
    // Checkpoint index of the anchor: base is 0, conditions follow (checked in `compute`).
    let axis_checkpoint = input
        .conditions
        .iter()
        .position(|c| *c == input.anchor_condition)
        .map(|k| 1 + k);
    let axis_abs_cos = match axis_checkpoint {
        Some(a) => {
            let axis = centroids::axis(&centroid_sets[a], &centroid_sets[0], axis_persona);
            centroid_sets
                .iter()
                .map(|c| centroids::axis_abs_cosines(c, axis.view(), axis_persona))
                .collect()
        }
        None => Vec::new(),
    };
    phases.observed = timing::since(clock);
    clock = timing::thread_cpu_seconds();
    let stream = format!("geometry/{}/L{layer}", method.method);
    let weights = centroids::bootstrap_weights(
        config.bootstrap,
        questions,
        &mut seeded_rng(config.seed, &format!("{stream}/bootstrap")),
    );
    let bootstrap = centroids::bootstrap(
        &rows,
        personas,
        questions,
        &keep,
        &weights,
        axis_checkpoint.map(|a| (a, 0, axis_persona)),
    );
    phases.bootstrap = timing::since(clock);
    clock = timing::thread_cpu_seconds();
    // M3: each checkpoint's folds in PCA bases fitted on its own training rows.
    let setup = m3::M3Setup::new(personas, questions, config.cv_folds, keep.clone());
    let fold_pca = m3::FoldPca {
        components: config.components,
        power_iterations: config.power_iterations,
    };
    let projected: Vec<m3::M3Checkpoint> = views
        .iter()
        .zip(&names)
        .map(|(v, name)| {
            let mut rng = seeded_rng(config.seed, &format!("{stream}/pca/{name}"));
            m3::M3Checkpoint::new(&setup, *v, fold_pca, &mut rng)
        })
        .collect();
    phases.pca = timing::since(clock);
    let m3_result = m3::run(
        &setup,
        &projected,
        config.shrinkage,
        config.permutations,
        config.seed,
        &format!("geometry/M3/{}/L{layer}/joint_shuffle", method.method),
    )
    .map_err(|error| GeometryError::Lda {
        method: method.method.clone(),
        layer,
        error,
    })?;
    phases.m3_observed = m3_result.observed_cpu_seconds;
    phases.m3_null = m3_result.null_cpu_seconds;
    clock = timing::thread_cpu_seconds();
    let m3_bootstrap = m3_result
        .correct_per_question
        .iter()
        .map(|correct| {
            weights
                .rows()
                .into_iter()
                .map(|w| {
                    let hits: f64 = w
                        .iter()
                        .zip(correct)
                        .map(|(w, c)| f64::from(*w) * f64::from(*c))
                        .sum();
                    let total: f64 = w
                        .iter()
                        .zip(&m3_result.valid_per_question)
                        .map(|(w, v)| f64::from(*w) * f64::from(*v))
                        .sum();
                    hits / total
                })
                .collect()
        })
        .collect();
    phases.m3_bootstrap = timing::since(clock);
    debug_assert_eq!(names.len(), method.checkpoints.len());
    Ok(LayerOutcome {
        method: method.method.clone(),
        layer,
        personas,
        pair_cosines,
        shift_from_base,
        axis_abs_cos,
        bootstrap,
        m3: m3_result,
        m3_bootstrap,
        timing: phases,
    })
}

/// A comparison's cells with their result.json details.
type CellsWithDetails = Vec<(CellTest, serde_json::Value)>;

/// The geometry family a comparison's cells go to.
enum Family {
    EmPrePost,
    EmVsBenign,
    BenignPrePost,
}

/// A paired comparison of checkpoint `after` against `before` in one layer outcome.
struct Comparison<'a> {
    outcome: &'a LayerOutcome,
    after: usize,
    before: usize,
    condition: &'a str,
}

fn interval(after: &[f64], before: &[f64], level: f64) -> Option<[f64; 2]> {
    let deltas: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    percentile_interval(&deltas, level)
}

fn cells_of(c: &Comparison, config: &GeometryConfig) -> Vec<(CellTest, serde_json::Value)> {
    let o = c.outcome;
    let id = |metric: &str| format!("{metric}/{}/L{}/{}", o.method, o.layer, c.condition);
    let cell = |metric: &str, statistic: f64, p_reference: f64, p_principled: f64| CellTest {
        id: id(metric),
        metric: Some(metric.into()),
        method: Some(o.method.clone()),
        layer: Some(o.layer),
        condition: Some(c.condition.into()),
        statistic,
        p_reference,
        p_principled,
    };
    let flip = |metric: &str, diffs: &[f64]| {
        let name = id(metric);
        let reference = paired::sign_flip_test(
            diffs,
            config.permutations,
            0,
            &mut seeded_rng(config.seed, &format!("geometry/{name}/reference")),
        );
        let principled = paired::sign_flip_test(
            diffs,
            config.permutations,
            config.exact_max_n,
            &mut seeded_rng(config.seed, &format!("geometry/{name}/principled")),
        );
        (reference, principled)
    };
    let mut out = Vec::new();
    // M1
    let diffs: Vec<f64> = o.pair_cosines[c.after]
        .iter()
        .zip(&o.pair_cosines[c.before])
        .map(|(a, b)| a - b)
        .collect();
    let (reference, principled) = flip("M1", &diffs);
    let statistic = centroids::mean(&diffs);
    out.push((
        cell("M1", statistic, reference.p, principled.p),
        json!({
            "after": centroids::mean(&o.pair_cosines[c.after]),
            "before": centroids::mean(&o.pair_cosines[c.before]),
            "pairs": diffs.len(),
            "ci": interval(&o.bootstrap.m1[c.after], &o.bootstrap.m1[c.before], config.ci_level),
            "reference_test": "Monte Carlo sign flips over persona pairs",
            "principled_exact": principled.exact,
            "draws": principled.draws,
        }),
    ));
    // M2
    if !o.axis_abs_cos.is_empty() {
        let diffs: Vec<f64> = o.axis_abs_cos[c.after]
            .iter()
            .zip(&o.axis_abs_cos[c.before])
            .map(|(a, b)| a - b)
            .collect();
        let (reference, principled) = flip("M2", &diffs);
        out.push((
            cell("M2", centroids::mean(&diffs), reference.p, principled.p),
            json!({
                "after": centroids::mean(&o.axis_abs_cos[c.after]),
                "before": centroids::mean(&o.axis_abs_cos[c.before]),
                "personas": diffs.len(),
                "ci": interval(&o.bootstrap.m2[c.after], &o.bootstrap.m2[c.before], config.ci_level),
                "principled_exact": principled.exact,
                "draws": principled.draws,
            }),
        ));
    }
    // M3
    let m = &o.m3;
    let statistic = m.accuracy[c.after] - m.accuracy[c.before];
    let exceed = m
        .null_accuracy
        .iter()
        .filter(|null| at_least((null[c.after] - null[c.before]).abs(), statistic.abs()))
        .count();
    let p_reference = monte_carlo_p(exceed, m.null_accuracy.len());
    let question_diffs: Vec<f64> = m.correct_per_question[c.after]
        .iter()
        .zip(&m.correct_per_question[c.before])
        .zip(&m.valid_per_question)
        .filter(|(_, &v)| v > 0)
        .map(|((a, b), _)| f64::from(*a) - f64::from(*b))
        .collect();
    let principled = paired::sign_flip_test(
        &question_diffs,
        config.permutations,
        config.exact_max_n,
        &mut seeded_rng(config.seed, &format!("geometry/{}/principled", id("M3"))),
    );
    out.push((
        cell("M3", statistic, p_reference, principled.p),
        json!({
            "after": m.accuracy[c.after],
            "before": m.accuracy[c.before],
            "chance": 1.0 / o.personas as f64,
            "ci": interval(&o.m3_bootstrap[c.after], &o.m3_bootstrap[c.before], config.ci_level),
            "joint_shuffle_draws": m.null_accuracy.len(),
            "questions": question_diffs.len(),
            "principled_exact": principled.exact,
        }),
    ));
    out
}

/// Computes the three geometry families and the summary.
pub fn compute(input: &GeometryInput, config: &GeometryConfig) -> Result<GeometryOutput, GeometryError> {
    let names = input.checkpoints();
    if input.methods.is_empty() {
        return Err(GeometryError::Input("no activations".into()));
    }
    if !input.conditions.contains(&input.anchor_condition) {
        return Err(GeometryError::Input(format!(
            "the M2 anchor condition {} is not among the conditions {:?}",
            input.anchor_condition, input.conditions
        )));
    }
    for m in &input.methods {
        if m.checkpoints.len() != names.len() {
            return Err(GeometryError::Input(format!(
                "method {}: {} checkpoints of activations, expected {} ({names:?})",
                m.method,
                m.checkpoints.len(),
                names.len()
            )));
        }
        for (a, name) in m.checkpoints.iter().zip(&names) {
            if &a.checkpoint != name {
                return Err(GeometryError::Input(format!(
                    "method {}: activations of checkpoint {} where {name} was expected",
                    m.method, a.checkpoint
                )));
            }
        }
    }
    let jobs: Vec<(usize, usize)> = input
        .methods
        .iter()
        .enumerate()
        .flat_map(|(mi, m)| (0..m.checkpoints[0].layers.len()).map(move |li| (mi, li)))
        .collect();
    let outcomes: Vec<LayerOutcome> = jobs
        .par_iter()
        .map(|&(mi, li)| analyze_layer(input, config, &input.methods[mi], li))
        .collect::<Result<_, _>>()?;
    let cells_clock = timing::thread_cpu_seconds();
    let benign_index = input.benign.as_ref().map(|_| names.len() - 1);
    let mut pending: Vec<(Family, Comparison)> = Vec::new();
    let mut em_pre_post = Vec::new();
    let mut benign_pre_post = Vec::new();
    let mut em_vs_benign = Vec::new();
    let mut cell_details = serde_json::Map::new();
    let mut m1_mean_offdiag: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut m3_accuracy: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut centroid_shift: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut m1_ci: BTreeMap<String, BTreeMap<String, BTreeMap<String, [f64; 2]>>> = BTreeMap::new();
    let mut m3_ci: BTreeMap<String, BTreeMap<String, BTreeMap<String, [f64; 2]>>> = BTreeMap::new();
    for o in &outcomes {
        for (ci, name) in names.iter().enumerate() {
            let levels = [
                (&mut m1_ci, o.bootstrap.m1.get(ci)),
                (&mut m3_ci, o.m3_bootstrap.get(ci)),
            ];
            for (map, replicates) in levels {
                if let Some(interval) = replicates.and_then(|r| percentile_interval(r, config.ci_level)) {
                    map.entry(o.method.clone())
                        .or_default()
                        .entry(o.layer.to_string())
                        .or_default()
                        .insert(name.clone(), interval);
                }
            }
            m1_mean_offdiag
                .entry(o.method.clone())
                .or_default()
                .entry(o.layer.to_string())
                .or_default()
                .insert(name.clone(), centroids::mean(&o.pair_cosines[ci]));
            m3_accuracy
                .entry(o.method.clone())
                .or_default()
                .entry(o.layer.to_string())
                .or_default()
                .insert(name.clone(), o.m3.accuracy[ci]);
            centroid_shift
                .entry(o.method.clone())
                .or_default()
                .entry(o.layer.to_string())
                .or_default()
                .insert(name.clone(), o.shift_from_base[ci]);
        }
        for (k, condition) in input.conditions.iter().enumerate() {
            pending.push((
                Family::EmPrePost,
                Comparison {
                    outcome: o,
                    after: 1 + k,
                    before: 0,
                    condition,
                },
            ));
            if let Some(b) = benign_index {
                pending.push((
                    Family::EmVsBenign,
                    Comparison {
                        outcome: o,
                        after: 1 + k,
                        before: b,
                        condition,
                    },
                ));
            }
        }
        if let (Some(b), Some(benign)) = (benign_index, &input.benign) {
            pending.push((
                Family::BenignPrePost,
                Comparison {
                    outcome: o,
                    after: b,
                    before: 0,
                    condition: benign,
                },
            ));
        }
    }
    // Every cell's tests draw from their own named streams, so they run in parallel and are
    // put in their families in the order above.
    let computed: Vec<(CellsWithDetails, Option<f64>)> = pending
        .par_iter()
        .map(|(_, comparison)| {
            let clock = timing::thread_cpu_seconds();
            let cells = cells_of(comparison, config);
            (cells, timing::since(clock))
        })
        .collect();
    let mut cells_cpu_seconds = timing::since(cells_clock);
    for ((family, _), (cells, seconds)) in pending.iter().zip(computed) {
        cells_cpu_seconds = cells_cpu_seconds.zip(seconds).map(|(a, b)| a + b);
        let (list, name) = match family {
            Family::EmPrePost => (&mut em_pre_post, crate::families::GEOMETRY_EM_PRE_POST),
            Family::EmVsBenign => (&mut em_vs_benign, crate::families::GEOMETRY_EM_VS_BENIGN),
            Family::BenignPrePost => (&mut benign_pre_post, crate::families::GEOMETRY_BENIGN_PRE_POST),
        };
        for (cell, details) in cells {
            cell_details.insert(format!("{name}/{}", cell.id), details);
            list.push(cell);
        }
    }
    let first = &input.methods[0].checkpoints[0];
    let summary = GeometrySummary {
        design: Some(GeometryDesign {
            methods: input.methods.iter().map(|m| m.method.clone()).collect(),
            layers: first.layers.clone(),
            conditions: input.conditions.clone(),
            cos_to_assistant: input.cos_to_assistant.clone(),
        }),
        checkpoints: names,
        personas: first.personas.clone(),
        m1_mean_offdiag,
        m3_accuracy,
        centroid_shift,
        m1_ci,
        m3_ci,
        benign_share: BTreeMap::new(),
        method: Some(crate::result::GeometryMethod {
            permutations: config.permutations,
            bootstrap: config.bootstrap,
            ci_level: config.ci_level,
            exact_max_n: config.exact_max_n,
            anchor_condition: input.anchor_condition.clone(),
            axis_persona: input.axis_persona.clone(),
            cv_folds: config.cv_folds,
            lda_shrinkage: config.shrinkage,
            pca_components: config.components,
            pca_power_iterations: config.power_iterations,
        }),
        cells: Some(json!({
            "config": {
                "seed": config.seed,
                "permutations": config.permutations,
                "bootstrap": config.bootstrap,
                "ci_level": config.ci_level,
                "cv_folds": config.cv_folds,
                "lda_shrinkage": config.shrinkage,
                "pca_components": config.components,
                "pca_power_iterations": config.power_iterations,
                "exact_max_n": config.exact_max_n,
                "anchor_condition": input.anchor_condition,
                "axis_persona": input.axis_persona,
            },
            "cells": cell_details,
        })),
    };
    Ok(GeometryOutput {
        summary,
        em_pre_post,
        benign_pre_post,
        em_vs_benign,
        timings: outcomes
            .iter()
            .map(|o| timing::LayerTiming {
                method: o.method.clone(),
                layer: o.layer,
                cpu_seconds: o.timing.clone(),
            })
            .collect(),
        cells_cpu_seconds,
    })
}
