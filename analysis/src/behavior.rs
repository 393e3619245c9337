//! The behavioural half: marker leakage per persona, the mean bystander leakage per condition,
//! and the hypotheses H1 (the induction persona leaks more than the other bystanders), H2 (the
//! conditions' mean bystander leakage is equal) and H3 (it follows the induction persona's
//! cosine to the assistant), each in two flavours:
//!
//! - `reference`: the seed's test as it ran, to replicate its numbers. H1: the induction
//!   persona's excess over the other bystanders ranked among the same excess of each of the 11
//!   non-source personas (exact: p = k/11; the seed sampled this 10,000 times). H2: the
//!   per-persona bystander rates of all conditions pooled and their condition labels permuted,
//!   statistic the range of the condition means. H3: Spearman's rho with the exact two-sided
//!   p over all orderings of the conditions.
//! - `principled`: a null that keeps the design's pairing. H1: sign flips of the per-question
//!   differences (questions are shared by every persona). H2: condition labels permuted within
//!   each persona (a persona's own rates trade places across the conditions where it is a
//!   bystander), so persona heterogeneity is not mistaken for noise. H3: the same exact test
//!   (one value per condition is already the unit), plus a question-level bootstrap.
//!
//! Every statistic also gets a question-level bootstrap interval (questions resampled with
//! replacement, shared across personas and conditions). Rates are percentages (0-100) and
//! differences percentage points.

use crate::input::{MarkerHits, Personas};
use crate::stats::correlation::{spearman, spearman_permutation_test, SpearmanTest};
use crate::stats::permutation::{at_least, exact_p, monte_carlo_p, percentile_interval};
use crate::stats::rng::seeded_rng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest number of paired questions whose 2^n sign patterns are enumerated exactly.
pub const MAX_EXACT_SIGN_FLIPS: usize = 20;

/// Knobs of the behavioural analysis (all recorded in result.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviorConfig {
    /// The persona the marker was trained into (excluded from bystanders).
    pub source_persona: String,
    /// Experiment seed; each test's stream is derived from it and the test's name.
    pub seed: u64,
    /// Monte Carlo permutations per test.
    pub permutations: usize,
    /// Question-level bootstrap replicates per statistic.
    pub bootstrap: usize,
    /// Coverage of the bootstrap intervals.
    pub ci_level: f64,
    /// |rho| a bootstrap replicate must reach to count toward H3's bootstrap share.
    pub h3_rho_threshold: f64,
}

impl Default for BehaviorConfig {
    fn default() -> Self {
        BehaviorConfig {
            source_persona: "confab".to_string(),
            seed: 42,
            permutations: 10_000,
            bootstrap: 10_000,
            ci_level: 0.95,
            h3_rho_threshold: 0.7,
        }
    }
}

/// What went wrong before any behavioural statistic could be computed.
#[derive(Debug, thiserror::Error)]
pub enum BehaviorError {
    #[error("source persona '{0}' is not one of the eval personas ({1})")]
    UnknownSource(String, String),
    #[error("condition '{condition}': its induction persona is the source persona '{source_persona}'")]
    InductionIsSource {
        condition: String,
        source_persona: String,
    },
    #[error("condition '{0}' has no bystander persona")]
    NoBystanders(String),
    #[error("the marker hits hold condition '{0}', which this persona file does not list")]
    UnknownCondition(String),
    #[error(
        "the marker hits were read for personas [{hits}], but this persona file orders them [{personas}]"
    )]
    PersonaOrder { hits: String, personas: String },
}

/// H1 for one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct H1Result {
    pub induction_persona: String,
    /// Whether the induction persona is among the eval personas (otherwise nothing else is set).
    pub testable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Leakage to the induction persona (%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_leakage: Option<f64>,
    /// Mean leakage to the other bystanders (%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_other_bystanders: Option<f64>,
    /// self_leakage - mean_other_bystanders (pp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_pp: Option<f64>,
    /// Reference flavour, exact: the share of the non-source personas whose own excess over
    /// the rest is at least the induction persona's (k / n).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_exact: Option<f64>,
    /// Same number as p_exact (the reference flavour's p).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_reference: Option<f64>,
    /// k of p_exact = k / n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_k: Option<usize>,
    /// n of p_exact = k / n.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_n: Option<usize>,
    /// Principled flavour: one-sided sign-flip p over the per-question differences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_principled: Option<f64>,
    /// Whether p_principled enumerates all 2^n sign patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_principled_exact: Option<bool>,
    /// Question-level bootstrap interval of diff_pp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_diff_pp: Option<[f64; 2]>,
}

/// H2: are the conditions' mean bystander leakages equal?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct H2Result {
    /// Conditions compared, in order.
    pub conditions: Vec<String>,
    /// max - min of the mean bystander leakage (pp).
    pub range_pp: f64,
    /// Reference flavour: pooled per-persona rates, condition labels permuted (Monte Carlo).
    pub p_reference: f64,
    /// Principled flavour: condition labels permuted within each persona (Monte Carlo).
    pub p_principled: f64,
    pub permutations: usize,
    /// Question-level bootstrap interval of range_pp.
    pub ci_range_pp: Option<[f64; 2]>,
}

/// H3: Spearman's rho between cos-to-assistant and mean bystander leakage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct H3Result {
    pub conditions: Vec<String>,
    pub cos_to_assistant: Vec<f64>,
    pub mean_bystander: Vec<f64>,
    /// NaN (`null`) when undefined: see `undefined`.
    #[serde(with = "crate::json_nan")]
    pub rho: f64,
    /// Two-sided exact permutation p over all orderings (both flavours use it); NaN when rho
    /// is undefined.
    #[serde(with = "crate::json_nan")]
    pub p_exact: f64,
    #[serde(with = "crate::json_nan")]
    pub p_reference: f64,
    #[serde(with = "crate::json_nan")]
    pub p_principled: f64,
    /// Why rho is undefined, when it is: `flat_leakage` (the mean bystander leakage is equal in
    /// every condition: no trend, i.e. the null) or `equal_cosines` (the design cannot rank the
    /// conditions: not testable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined: Option<H3Undefined>,
    /// Orderings enumerated (n!) or sampled.
    pub orderings: usize,
    pub exact: bool,
    /// Question-level bootstrap interval of rho.
    pub ci_rho: Option<[f64; 2]>,
    /// Share of bootstrap replicates with |rho| >= the threshold and the observed sign.
    pub bootstrap_share_beyond_threshold: Option<f64>,
}

/// Why H3's rho has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum H3Undefined {
    /// Equal mean bystander leakage in every condition (e.g. none anywhere).
    FlatLeakage,
    /// Equal cos-to-assistant in every condition.
    EqualCosines,
}

/// The behavioural results (the `behavior` block of result.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviorResult {
    pub config: BehaviorConfig,
    /// Conditions analysed, in the persona file's order.
    pub conditions: Vec<String>,
    /// Eval personas in the persona file's order.
    pub personas: Vec<String>,
    pub questions: usize,
    /// Conditions of the persona file without hits (a partial analysis).
    pub missing_conditions: Vec<String>,
    /// condition -> induction persona.
    pub induction_persona: BTreeMap<String, String>,
    /// condition -> cos-to-assistant.
    pub cos_to_assistant: BTreeMap<String, f64>,
    /// condition -> persona -> leakage (% of completions with the marker).
    pub leakage: BTreeMap<String, BTreeMap<String, f64>>,
    /// condition -> leakage to the source persona (%).
    pub source_rate: BTreeMap<String, f64>,
    /// condition -> bystanders (every persona but the source and the induction persona).
    pub bystanders: BTreeMap<String, Vec<String>>,
    /// condition -> mean leakage over the bystanders (%).
    pub mean_bystander: BTreeMap<String, f64>,
    /// condition -> bootstrap interval of mean_bystander.
    pub ci_mean_bystander: BTreeMap<String, [f64; 2]>,
    #[serde(rename = "H1")]
    pub h1: BTreeMap<String, H1Result>,
    #[serde(rename = "H2")]
    pub h2: Option<H2Result>,
    #[serde(rename = "H3")]
    pub h3: Option<H3Result>,
}

/// Hit counts arranged for fast resampling: [condition][persona][question].
struct Table {
    hits: Vec<Vec<Vec<f64>>>,
    completions: Vec<Vec<Vec<f64>>>,
    /// [condition][persona]: is a bystander.
    bystander: Vec<Vec<bool>>,
    /// [condition]: index of the induction persona when it is an eval persona.
    induction: Vec<Option<usize>>,
    source: usize,
    questions: usize,
}

impl Table {
    /// Leakage (%) of every condition and persona over the questions `sample` (with repeats).
    fn rates(&self, sample: &[usize]) -> Vec<Vec<f64>> {
        self.hits
            .iter()
            .zip(&self.completions)
            .map(|(hits, completions)| {
                hits.iter()
                    .zip(completions)
                    .map(|(h, n)| {
                        let (mut hit_sum, mut n_sum) = (0.0, 0.0);
                        for &q in sample {
                            hit_sum += h[q];
                            n_sum += n[q];
                        }
                        100.0 * hit_sum / n_sum
                    })
                    .collect()
            })
            .collect()
    }

    fn mean_bystander(&self, rates: &[Vec<f64>]) -> Vec<f64> {
        rates
            .iter()
            .zip(&self.bystander)
            .map(|(r, mask)| mean(r.iter().zip(mask).filter(|(_, &b)| b).map(|(v, _)| *v)))
            .collect()
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    sum / count as f64
}

fn range(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    max - min
}

/// Runs the behavioural analysis on checked inputs.
pub fn analyze(
    hits: &MarkerHits,
    personas: &Personas,
    config: &BehaviorConfig,
) -> Result<BehaviorResult, BehaviorError> {
    let source = hits
        .personas
        .iter()
        .position(|p| *p == config.source_persona)
        .ok_or_else(|| {
            BehaviorError::UnknownSource(config.source_persona.clone(), hits.personas.join(", "))
        })?;
    let specs = hits
        .conditions
        .iter()
        .map(|c| {
            personas
                .conditions
                .iter()
                .find(|s| s.id == c.condition)
                .ok_or_else(|| BehaviorError::UnknownCondition(c.condition.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if hits.personas != personas.eval_order {
        return Err(BehaviorError::PersonaOrder {
            hits: hits.personas.join(", "),
            personas: personas.eval_order.join(", "),
        });
    }
    let mut table = Table {
        hits: Vec::new(),
        completions: Vec::new(),
        bystander: Vec::new(),
        induction: Vec::new(),
        source,
        questions: hits.questions.len(),
    };
    for (condition, spec) in hits.conditions.iter().zip(&specs) {
        let induction = hits.personas.iter().position(|p| *p == spec.induction_persona);
        if induction == Some(source) {
            return Err(BehaviorError::InductionIsSource {
                condition: spec.id.clone(),
                source_persona: config.source_persona.clone(),
            });
        }
        let mask: Vec<bool> = (0..hits.personas.len())
            .map(|p| p != source && Some(p) != induction)
            .collect();
        if !mask.iter().any(|&b| b) {
            return Err(BehaviorError::NoBystanders(spec.id.clone()));
        }
        table.hits.push(
            condition
                .hits
                .iter()
                .map(|r| r.iter().map(|&h| f64::from(h)).collect())
                .collect(),
        );
        table.completions.push(
            condition
                .completions
                .iter()
                .map(|r| r.iter().map(|&n| f64::from(n)).collect())
                .collect(),
        );
        table.bystander.push(mask);
        table.induction.push(induction);
    }
    let all_questions: Vec<usize> = (0..table.questions).collect();
    let rates = table.rates(&all_questions);
    let means = table.mean_bystander(&rates);
    let names: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let cos: Vec<f64> = specs.iter().map(|s| s.cos_to_assistant).collect();

    // Question-level bootstrap: one shared stream of resampled question sets for every
    // statistic, so their intervals describe the same resamples.
    let mut boot_rng = seeded_rng(config.seed, "behavior/bootstrap");
    let replicates: Vec<Vec<Vec<f64>>> = (0..config.bootstrap)
        .map(|_| {
            let sample: Vec<usize> = (0..table.questions)
                .map(|_| boot_rng.gen_range(0..table.questions))
                .collect();
            table.rates(&sample)
        })
        .collect();
    let replicate_means: Vec<Vec<f64>> = replicates.iter().map(|r| table.mean_bystander(r)).collect();

    let mut result = BehaviorResult {
        config: config.clone(),
        conditions: names.clone(),
        personas: hits.personas.clone(),
        questions: table.questions,
        missing_conditions: hits.missing_conditions.clone(),
        induction_persona: specs
            .iter()
            .map(|s| (s.id.clone(), s.induction_persona.clone()))
            .collect(),
        cos_to_assistant: specs.iter().map(|s| (s.id.clone(), s.cos_to_assistant)).collect(),
        leakage: BTreeMap::new(),
        source_rate: BTreeMap::new(),
        bystanders: BTreeMap::new(),
        mean_bystander: BTreeMap::new(),
        ci_mean_bystander: BTreeMap::new(),
        h1: BTreeMap::new(),
        h2: None,
        h3: None,
    };
    for (c, name) in names.iter().enumerate() {
        result.leakage.insert(
            name.clone(),
            hits.personas
                .iter()
                .cloned()
                .zip(rates[c].iter().copied())
                .collect(),
        );
        result.source_rate.insert(name.clone(), rates[c][source]);
        result.bystanders.insert(
            name.clone(),
            hits.personas
                .iter()
                .zip(&table.bystander[c])
                .filter(|(_, &b)| b)
                .map(|(p, _)| p.clone())
                .collect(),
        );
        result.mean_bystander.insert(name.clone(), means[c]);
        let column: Vec<f64> = replicate_means.iter().map(|m| m[c]).collect();
        if let Some(ci) = percentile_interval(&column, config.ci_level) {
            result.ci_mean_bystander.insert(name.clone(), ci);
        }
        result.h1.insert(
            name.clone(),
            h1(
                &table,
                c,
                &rates,
                &replicates,
                &specs[c].induction_persona,
                name,
                config,
            ),
        );
    }
    if names.len() >= 2 {
        result.h2 = Some(h2(&table, &rates, &means, &replicate_means, &names, config));
    }
    if names.len() >= 3 {
        // Equal means (or equal cosines) leave rho undefined; the result says which, and the
        // verdicts read flat leakage as the null (no trend), not as a missing test.
        result.h3 = Some(h3(&cos, &means, &replicate_means, &names, config));
    }
    Ok(result)
}

fn h1(
    table: &Table,
    c: usize,
    rates: &[Vec<f64>],
    replicates: &[Vec<Vec<f64>>],
    induction_persona: &str,
    name: &str,
    config: &BehaviorConfig,
) -> H1Result {
    let Some(ind) = table.induction[c] else {
        return H1Result {
            induction_persona: induction_persona.to_string(),
            testable: false,
            reason: Some(format!(
                "the induction persona '{induction_persona}' is not an eval persona"
            )),
            self_leakage: None,
            mean_other_bystanders: None,
            diff_pp: None,
            p_exact: None,
            p_reference: None,
            rank_k: None,
            rank_n: None,
            p_principled: None,
            p_principled_exact: None,
            ci_diff_pp: None,
        };
    };
    let excess = |r: &[f64], who: usize, pool: &[usize]| -> f64 {
        r[who] - mean(pool.iter().filter(|&&p| p != who).map(|&p| r[p]))
    };
    // The reference's pool: every non-source persona, each in turn playing the induction role.
    let candidates: Vec<usize> = (0..rates[c].len()).filter(|&p| p != table.source).collect();
    let observed = excess(&rates[c], ind, &candidates);
    let k = candidates
        .iter()
        .filter(|&&j| at_least(excess(&rates[c], j, &candidates), observed))
        .count();
    let p_exact = exact_p(k, candidates.len());

    // Principled: per-question paired differences, sign-flipped.
    let others: Vec<usize> = candidates.iter().copied().filter(|&p| p != ind).collect();
    let per_question: Vec<f64> = (0..table.questions)
        .map(|q| {
            let rate = |p: usize| 100.0 * table.hits[c][p][q] / table.completions[c][p][q];
            rate(ind) - mean(others.iter().map(|&p| rate(p)))
        })
        .collect();
    let (p_principled, exact) = sign_flip_p(&per_question, config, &format!("behavior/H1/{name}/principled"));
    let boot: Vec<f64> = replicates
        .iter()
        .map(|r| excess(&r[c], ind, &candidates))
        .collect();
    H1Result {
        induction_persona: induction_persona.to_string(),
        testable: true,
        reason: None,
        self_leakage: Some(rates[c][ind]),
        mean_other_bystanders: Some(mean(others.iter().map(|&p| rates[c][p]))),
        diff_pp: Some(observed),
        p_exact: Some(p_exact),
        p_reference: Some(p_exact),
        rank_k: Some(k),
        rank_n: Some(candidates.len()),
        p_principled: Some(p_principled),
        p_principled_exact: Some(exact),
        ci_diff_pp: percentile_interval(&boot, config.ci_level),
    }
}

/// One-sided sign-flip p of mean(differences) > 0: exact over 2^n patterns for small n.
/// NaN when there is no difference or a difference is NaN (a question without completions).
fn sign_flip_p(differences: &[f64], config: &BehaviorConfig, stream: &str) -> (f64, bool) {
    let n = differences.len();
    if n == 0 || differences.iter().any(|d| d.is_nan()) {
        return (f64::NAN, true);
    }
    let observed: f64 = differences.iter().sum();
    if n <= MAX_EXACT_SIGN_FLIPS {
        let total = 1usize << n;
        let exceed = (0..total)
            .filter(|pattern| {
                let sum: f64 = differences
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if pattern >> i & 1 == 1 { -d } else { *d })
                    .sum();
                at_least(sum, observed)
            })
            .count();
        return (exact_p(exceed, total), true);
    }
    let mut rng = seeded_rng(config.seed, stream);
    let exceed = (0..config.permutations)
        .filter(|_| {
            let sum: f64 = differences
                .iter()
                .map(|d| if rng.gen::<bool>() { -d } else { *d })
                .sum();
            at_least(sum, observed)
        })
        .count();
    (monte_carlo_p(exceed, config.permutations), false)
}

fn h2(
    table: &Table,
    rates: &[Vec<f64>],
    means: &[f64],
    replicate_means: &[Vec<f64>],
    names: &[String],
    config: &BehaviorConfig,
) -> H2Result {
    let observed = range(means);
    let conditions = rates.len();

    // Reference: the pooled bystander rates with their condition labels.
    let mut pooled = Vec::new();
    let mut labels = Vec::new();
    for (c, r) in rates.iter().enumerate() {
        for (p, &rate) in r.iter().enumerate() {
            if table.bystander[c][p] {
                pooled.push(rate);
                labels.push(c);
            }
        }
    }
    let group_sizes: Vec<f64> = (0..conditions)
        .map(|c| labels.iter().filter(|&&l| l == c).count() as f64)
        .collect();
    let mut rng = seeded_rng(config.seed, "behavior/H2/reference");
    let mut shuffled = labels.clone();
    let mut sums = vec![0.0; conditions];
    let mut exceed = 0;
    for _ in 0..config.permutations {
        shuffled.shuffle(&mut rng);
        sums.iter_mut().for_each(|s| *s = 0.0);
        for (&label, &rate) in shuffled.iter().zip(&pooled) {
            sums[label] += rate;
        }
        let group_means: Vec<f64> = sums.iter().zip(&group_sizes).map(|(s, n)| s / n).collect();
        if at_least(range(&group_means), observed) {
            exceed += 1;
        }
    }
    let p_reference = monte_carlo_p(exceed, config.permutations);

    // Principled: each persona's rates permuted among the conditions where it is a bystander.
    let personas = rates.first().map_or(0, Vec::len);
    let slots: Vec<Vec<usize>> = (0..personas)
        .map(|p| (0..conditions).filter(|&c| table.bystander[c][p]).collect())
        .collect();
    let bystander_counts: Vec<f64> = table
        .bystander
        .iter()
        .map(|mask| mask.iter().filter(|&&b| b).count() as f64)
        .collect();
    let mut rng = seeded_rng(config.seed, "behavior/H2/principled");
    let mut exceed = 0;
    let mut order: Vec<Vec<usize>> = slots.clone();
    for _ in 0..config.permutations {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for (p, persona_slots) in slots.iter().enumerate() {
            let shuffled = &mut order[p];
            shuffled.shuffle(&mut rng);
            for (&to, &from) in persona_slots.iter().zip(shuffled.iter()) {
                sums[to] += rates[from][p];
            }
        }
        let group_means: Vec<f64> = sums.iter().zip(&bystander_counts).map(|(s, n)| s / n).collect();
        if at_least(range(&group_means), observed) {
            exceed += 1;
        }
    }
    let p_principled = monte_carlo_p(exceed, config.permutations);
    let boot: Vec<f64> = replicate_means.iter().map(|m| range(m)).collect();
    H2Result {
        conditions: names.to_vec(),
        range_pp: observed,
        p_reference,
        p_principled,
        permutations: config.permutations,
        ci_range_pp: percentile_interval(&boot, config.ci_level),
    }
}

fn h3(
    cos: &[f64],
    means: &[f64],
    replicate_means: &[Vec<f64>],
    names: &[String],
    config: &BehaviorConfig,
) -> H3Result {
    let mut rng = seeded_rng(config.seed, "behavior/H3");
    // One cosine and one mean per condition: the lengths agree by construction.
    let nan_test = SpearmanTest {
        rho: f64::NAN,
        p: f64::NAN,
        exact: true,
        orderings: 0,
    };
    let test = spearman_permutation_test(cos, means, config.permutations, &mut rng).unwrap_or(nan_test);
    let constant = |v: &[f64]| v.iter().all(|x| *x == v[0]);
    let undefined = if !test.rho.is_nan() {
        None
    } else if constant(cos) {
        Some(H3Undefined::EqualCosines)
    } else {
        Some(H3Undefined::FlatLeakage)
    };
    let boot: Vec<f64> = replicate_means
        .iter()
        .map(|m| spearman(cos, m).unwrap_or(f64::NAN))
        .collect();
    let beyond = boot
        .iter()
        .filter(|r| r.abs() >= config.h3_rho_threshold && r.signum() == test.rho.signum())
        .count();
    H3Result {
        conditions: names.to_vec(),
        cos_to_assistant: cos.to_vec(),
        mean_bystander: means.to_vec(),
        rho: test.rho,
        p_exact: test.p,
        p_reference: test.p,
        p_principled: test.p,
        orderings: test.orderings,
        exact: test.exact,
        ci_rho: percentile_interval(&boot, config.ci_level),
        bootstrap_share_beyond_threshold: (!boot.is_empty()).then(|| beyond as f64 / boot.len() as f64),
        undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    /// Three personas (a, b, src), two questions, three conditions induced on a, b and an
    /// outside persona x.
    fn inputs(hits: [[[u32; 2]; 3]; 3]) -> (MarkerHits, Personas) {
        let personas = Personas::from_value(
            &json!({
                "eval_persona_order": ["a", "b", "c", "src"],
                "em_induction_conditions": [
                    {"id": "Ea", "slug": "a", "cos_to_assistant": 1.0},
                    {"id": "Eb", "slug": "b", "cos_to_assistant": 0.9},
                    {"id": "Ex", "slug": "x", "cos_to_assistant": 0.8}
                ]
            }),
            Path::new("p.json"),
        )
        .unwrap();
        let mut conditions = serde_json::Map::new();
        for (c, name) in ["Ea", "Eb", "Ex"].iter().enumerate() {
            let mut by_persona = serde_json::Map::new();
            for (p, persona) in ["a", "b", "c"].iter().enumerate() {
                by_persona.insert(
                    persona.to_string(),
                    json!({"q1": hits[c][p][0], "q2": hits[c][p][1]}),
                );
            }
            by_persona.insert("src".to_string(), json!({"q1": 9, "q2": 9}));
            conditions.insert(name.to_string(), serde_json::Value::Object(by_persona));
        }
        let file = json!({"completions_per_question": 10, "conditions": conditions});
        let hits = MarkerHits::from_values(&[(PathBuf::from("h.json"), file)], &personas, None).unwrap();
        (hits, personas)
    }

    fn config() -> BehaviorConfig {
        BehaviorConfig {
            source_persona: "src".into(),
            permutations: 999,
            bootstrap: 200,
            ..Default::default()
        }
    }

    #[test]
    fn bystanders_exclude_the_source_and_the_induction_persona() {
        let (hits, personas) = inputs([
            [[1, 1], [4, 4], [6, 6]],
            [[2, 2], [9, 9], [4, 4]],
            [[1, 1], [2, 2], [3, 3]],
        ]);
        let r = analyze(&hits, &personas, &config()).unwrap();
        assert_eq!(r.bystanders["Ea"], vec!["b", "c"]);
        assert_eq!(r.bystanders["Ex"], vec!["a", "b", "c"]);
        assert!((r.mean_bystander["Ea"] - 50.0).abs() < 1e-12);
        assert!((r.mean_bystander["Eb"] - 30.0).abs() < 1e-12);
        assert!((r.mean_bystander["Ex"] - 20.0).abs() < 1e-12);
        assert!((r.source_rate["Ea"] - 90.0).abs() < 1e-12);
        assert!(!r.h1["Ex"].testable);
        let h2 = r.h2.unwrap();
        assert!((h2.range_pp - 30.0).abs() < 1e-12);
    }

    #[test]
    fn h1_ranks_the_induction_persona_among_the_non_source_personas() {
        // In Eb, b leaks most of a, b, c: its excess ranks first, p = 1/3.
        let (hits, personas) = inputs([
            [[1, 1], [4, 4], [6, 6]],
            [[2, 2], [9, 9], [4, 4]],
            [[1, 1], [2, 2], [3, 3]],
        ]);
        let r = analyze(&hits, &personas, &config()).unwrap();
        let eb = &r.h1["Eb"];
        assert_eq!((eb.rank_k, eb.rank_n), (Some(1), Some(3)));
        assert!((eb.diff_pp.unwrap() - 60.0).abs() < 1e-12);
        // a leaks least in Ea: every persona's excess is at least its own.
        assert_eq!(r.h1["Ea"].rank_k, Some(3));
        // Both questions favour b: sign flips give 1 of 4 patterns at least as large.
        assert_eq!(eb.p_principled, Some(0.25));
        assert_eq!(eb.p_principled_exact, Some(true));
    }

    #[test]
    fn equal_conditions_give_large_h2_p_values() {
        let same = [[3, 5], [4, 4], [6, 2]];
        let (hits, personas) = inputs([same, same, same]);
        let r = analyze(&hits, &personas, &config()).unwrap();
        let h2 = r.h2.unwrap();
        assert!(h2.p_reference > 0.2 && h2.p_principled > 0.2, "{h2:?}");
    }

    /// No leakage anywhere: H2's range is 0 with p = 1 (every arrangement ties), and H3 is
    /// kept with an undefined rho and p (scipy's spearmanr gives (nan, nan)) and the reason.
    #[test]
    fn flat_leakage_keeps_h3_with_an_undefined_rho() {
        let zero = [[0, 0], [0, 0], [0, 0]];
        let (hits, personas) = inputs([zero, zero, zero]);
        let r = analyze(&hits, &personas, &config()).unwrap();
        let h2 = r.h2.as_ref().unwrap();
        assert_eq!((h2.range_pp, h2.p_reference, h2.p_principled), (0.0, 1.0, 1.0));
        let h3 = r.h3.as_ref().expect("H3 is reported, not dropped");
        assert!(h3.rho.is_nan() && h3.p_exact.is_nan(), "{h3:?}");
        assert_eq!(h3.undefined, Some(H3Undefined::FlatLeakage));
        assert_eq!(h3.ci_rho, None);
        let text = serde_json::to_string(&r).unwrap();
        let back: BehaviorResult = serde_json::from_str(&text).unwrap();
        assert!(back.h3.unwrap().rho.is_nan());
    }

    #[test]
    fn results_are_reproducible_from_the_seed() {
        let (hits, personas) = inputs([
            [[1, 1], [4, 4], [6, 6]],
            [[2, 2], [9, 9], [4, 4]],
            [[1, 1], [2, 2], [3, 3]],
        ]);
        let first = analyze(&hits, &personas, &config()).unwrap();
        let second = analyze(&hits, &personas, &config()).unwrap();
        assert_eq!(first, second);
        let other = analyze(&hits, &personas, &BehaviorConfig { seed: 7, ..config() }).unwrap();
        let draws = |r: &BehaviorResult| r.h2.as_ref().map(|h| (h.p_reference, h.p_principled));
        assert_ne!(
            draws(&first),
            draws(&other),
            "another seed must draw other permutations"
        );
    }

    #[test]
    fn an_unknown_source_persona_is_an_error() {
        let (hits, personas) = inputs([
            [[1, 1], [4, 4], [6, 6]],
            [[2, 2], [9, 9], [4, 4]],
            [[1, 1], [2, 2], [3, 3]],
        ]);
        let err = analyze(
            &hits,
            &personas,
            &BehaviorConfig {
                source_persona: "nobody".into(),
                ..config()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("'nobody'"), "{err}");
    }
}
