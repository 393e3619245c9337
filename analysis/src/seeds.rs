//! The multi-seed summary: once every seed's analysis has written its `result.json`, the
//! analyst collects them here. Per statistic: the per-seed values, their mean, spread (sample
//! standard deviation, min, max) and, for effects, a combined test with seeds as blocks; per
//! pre-registered row: in how many seeds it fires; and a report section (`render_markdown`).
//!
//! Why blocks: every seed is a complete replicate of the design (its own EM, benign and
//! coupling trainings, generations and extractions). A seed's own p-values resample personas,
//! questions or labels with the trained models held fixed, so they say nothing about how much
//! the result moves when the training is redone; across seeds, the seed is the unit of
//! replication, and what is compared within a seed (a checkpoint against base, a condition
//! against the others) is compared within its block. The tests (`stats::blocks`):
//! - an effect measured within a seed (a geometry cell's after-minus-before delta, H1's
//!   excess, H3's rho): one-sample t test of the per-seed values against 0, two-sided, df =
//!   seeds - 1 (for two treatments in a randomized complete block design this is the block
//!   ANOVA, F = t^2), with the exact sign-flip p over the 2^seeds sign patterns beside it
//!   (distribution-free; with 3 seeds it cannot go below 0.25, which the table shows);
//! - the conditions' mean bystander leakage: Friedman's test (H2 across seeds: are the
//!   conditions equal, each seed ranking its own conditions so that a seed that leaks more
//!   everywhere is not a condition effect) and Page's trend test with the conditions ordered by
//!   cos-to-assistant (H3 across seeds: the ordered alternative, exact p).
//!
//! Levels (mean bystander and source leakage per condition, H2's range) get mean and spread
//! only: they have no null value of 0.

use crate::families::Flavour;
use crate::geometry::paired::sign_flip_test;
use crate::result::{AnalysisResult, ResultError};
use crate::stats::blocks::{friedman, one_sample_t, page_trend, Friedman, PageTrend, TTest};
use crate::stats::rng::seeded_rng;
use crate::verdict::{FlavourVerdicts, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Largest number of seeds whose 2^n sign patterns are enumerated (beyond: Monte Carlo).
const EXACT_SIGN_FLIP_SEEDS: usize = 20;

/// Why a set of results cannot be summarised.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("no result files to summarise")]
    Empty,
    #[error("seed {0} appears in two result files")]
    DuplicateSeed(u64),
    #[error("seed {seed}: {what} differ from seed {first}'s ({found} vs {expected}); results of different designs cannot be summarised together")]
    Design {
        seed: u64,
        first: u64,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Read(#[from] ResultError),
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

/// What a statistic is, which decides its combined test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatisticKind {
    /// A within-seed effect with null value 0 (t test and sign flips across seeds).
    Effect,
    /// A level (mean and spread only).
    Level,
}

/// The combined test of an effect across seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectTest {
    /// One-sample t test of the per-seed values against 0 (two-sided).
    pub t_test: TTest,
    /// Exact sign-flip p (two-sided) over the 2^seeds sign patterns.
    #[serde(with = "crate::json_nan")]
    pub p_sign_flip: f64,
    /// Whether every sign pattern was enumerated.
    pub sign_flip_exact: bool,
}

/// One statistic across seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticSummary {
    /// e.g. `behavior/mean_bystander/E0_assistant`, `geometry_em_pre_post/M1/A/L20/E0_assistant`.
    pub name: String,
    pub kind: StatisticKind,
    /// One per seed, in `SeedSummary::seeds` order; null where the seed lacks the statistic
    /// or it is undefined there.
    #[serde(with = "crate::json_nan::vec")]
    pub values: Vec<f64>,
    /// Seeds with a value.
    pub n: usize,
    #[serde(with = "crate::json_nan")]
    pub mean: f64,
    /// Sample standard deviation (ddof = 1); null with fewer than 2 values.
    #[serde(with = "crate::json_nan")]
    pub sd: f64,
    #[serde(with = "crate::json_nan")]
    pub min: f64,
    #[serde(with = "crate::json_nan")]
    pub max: f64,
    /// Effects with at least 2 values.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub test: Option<EffectTest>,
}

/// The conditions' mean bystander leakage with seeds as blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionTests {
    /// Conditions in the order of the result files.
    pub conditions: Vec<String>,
    /// Conditions in ascending cos-to-assistant, the order of Page's test.
    pub cos_order: Vec<String>,
    /// Seeds that have every condition (the blocks).
    pub seeds: Vec<u64>,
    /// H2 across seeds: are the conditions equal?
    pub friedman: Friedman,
    /// H3 across seeds: does leakage follow cos-to-assistant? (`p_increasing`: it rises with
    /// the cosine.)
    pub page: PageTrend,
}

/// How often a pre-registered row fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RowCount {
    pub fires: usize,
    pub does_not_fire: usize,
    pub not_evaluated: usize,
}

impl RowCount {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Fires => self.fires += 1,
            Outcome::DoesNotFire => self.does_not_fire += 1,
            Outcome::NotEvaluated => self.not_evaluated += 1,
        }
    }
}

/// The summary the analyst writes (`seeds.json`) and renders (`render_markdown`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    pub seeds: Vec<u64>,
    pub statistics: Vec<StatisticSummary>,
    pub conditions: Option<ConditionTests>,
    /// flavour -> row (`G1`, `G2`, `G3`: with the contrast bar as the headline reads them;
    /// `H1`, `H2`, `H3`, `kill`) -> seeds by outcome.
    pub rows: BTreeMap<String, BTreeMap<String, RowCount>>,
    /// flavour -> headline id -> seeds where it matched.
    pub headline: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Reads the result files and summarises them.
pub fn summarize_files(paths: &[PathBuf]) -> Result<SeedSummary, SeedError> {
    let results = paths
        .iter()
        .map(|p| AnalysisResult::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    summarize(&results)
}

/// Checks that the results share one design (behaviour conditions, geometry design).
fn check_design(results: &[AnalysisResult]) -> Result<(), SeedError> {
    let first = &results[0];
    let conditions = |r: &AnalysisResult| r.behavior.as_ref().map(|b| b.conditions.join(", "));
    let design = |r: &AnalysisResult| {
        r.geometry
            .as_ref()
            .and_then(|g| g.design.as_ref())
            .map(|d| format!("{:?} {:?} {:?}", d.methods, d.layers, d.conditions))
    };
    for r in &results[1..] {
        for (what, found, expected) in [
            ("behaviour conditions", conditions(r), conditions(first)),
            ("geometry designs", design(r), design(first)),
        ] {
            if let (Some(found), Some(expected)) = (&found, &expected) {
                if found != expected {
                    return Err(SeedError::Design {
                        seed: r.seed,
                        first: first.seed,
                        what,
                        found: found.clone(),
                        expected: expected.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Every statistic of one result: name -> (kind, value).
fn statistics_of(r: &AnalysisResult) -> BTreeMap<String, (StatisticKind, f64)> {
    let mut out = BTreeMap::new();
    if let Some(b) = &r.behavior {
        for c in &b.conditions {
            out.insert(
                format!("behavior/mean_bystander/{c}"),
                (StatisticKind::Level, b.mean_bystander[c]),
            );
            out.insert(
                format!("behavior/source_rate/{c}"),
                (StatisticKind::Level, b.source_rate[c]),
            );
            if let Some(diff) = b.h1.get(c).and_then(|h| h.diff_pp) {
                out.insert(format!("behavior/H1/{c}/diff_pp"), (StatisticKind::Effect, diff));
            }
        }
        if let Some(h2) = &b.h2 {
            out.insert("behavior/H2/range_pp".into(), (StatisticKind::Level, h2.range_pp));
        }
        if let Some(h3) = &b.h3 {
            out.insert("behavior/H3/rho".into(), (StatisticKind::Effect, h3.rho));
        }
    }
    for (name, family) in &r.families {
        if name == crate::families::BEHAVIOR {
            continue;
        }
        for cell in &family.cells {
            out.insert(
                format!("{name}/{}", cell.test.id),
                (StatisticKind::Effect, cell.test.statistic),
            );
        }
    }
    out
}

fn summary_of(name: String, kind: StatisticKind, values: Vec<f64>, seed: u64) -> StatisticSummary {
    let defined: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let n = defined.len();
    let mean = if n > 0 {
        defined.iter().sum::<f64>() / n as f64
    } else {
        f64::NAN
    };
    let sd = if n > 1 {
        (defined.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        f64::NAN
    };
    let (min, max) = if n > 0 {
        (
            defined.iter().copied().fold(f64::INFINITY, f64::min),
            defined.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    let test = (kind == StatisticKind::Effect && n >= 2).then(|| {
        let flips = sign_flip_test(
            &defined,
            10_000,
            EXACT_SIGN_FLIP_SEEDS,
            &mut seeded_rng(seed, &format!("seeds/{name}")),
        );
        EffectTest {
            t_test: one_sample_t(&defined),
            p_sign_flip: flips.p,
            sign_flip_exact: flips.exact,
        }
    });
    StatisticSummary {
        name,
        kind,
        values,
        n,
        mean,
        sd,
        min,
        max,
        test,
    }
}

/// Friedman's and Page's tests of the conditions' mean bystander leakage, seeds as blocks.
fn condition_tests(results: &[AnalysisResult]) -> Option<ConditionTests> {
    let first = results.iter().find_map(|r| r.behavior.as_ref())?;
    let conditions = first.conditions.clone();
    let mut order: Vec<(f64, String)> = conditions
        .iter()
        .map(|c| {
            (
                first.cos_to_assistant.get(c).copied().unwrap_or(f64::NAN),
                c.clone(),
            )
        })
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cos_order: Vec<String> = order.into_iter().map(|(_, c)| c).collect();
    let mut seeds = Vec::new();
    let (mut blocks, mut ordered) = (Vec::new(), Vec::new());
    for r in results {
        let Some(b) = &r.behavior else { continue };
        let row: Option<Vec<f64>> = conditions
            .iter()
            .map(|c| b.mean_bystander.get(c).copied())
            .collect();
        let by_cos: Option<Vec<f64>> = cos_order
            .iter()
            .map(|c| b.mean_bystander.get(c).copied())
            .collect();
        if let (Some(row), Some(by_cos)) = (row, by_cos) {
            seeds.push(r.seed);
            blocks.push(row);
            ordered.push(by_cos);
        }
    }
    Some(ConditionTests {
        conditions,
        cos_order,
        seeds,
        friedman: friedman(&blocks),
        page: page_trend(&ordered),
    })
}

fn flavour_rows(v: &FlavourVerdicts) -> [(&'static str, Outcome); 7] {
    let g = |r: &Option<crate::verdict::GeometryRow>| {
        r.as_ref()
            .map_or(Outcome::NotEvaluated, |r| r.outcome_with_contrast)
    };
    [
        ("G1", g(&v.g1)),
        ("G2", g(&v.g2)),
        ("G3", g(&v.g3)),
        ("H1", v.h1.outcome),
        ("H2", v.h2.outcome),
        ("H3", v.h3.outcome),
        ("kill", v.kill.outcome),
    ]
}

/// Summarises the results of several seeds of one design (module docs). Errors: no results,
/// a seed twice, different designs.
pub fn summarize(results: &[AnalysisResult]) -> Result<SeedSummary, SeedError> {
    if results.is_empty() {
        return Err(SeedError::Empty);
    }
    let mut seen = BTreeSet::new();
    for r in results {
        if !seen.insert(r.seed) {
            return Err(SeedError::DuplicateSeed(r.seed));
        }
    }
    check_design(results)?;
    let mut ordered: Vec<&AnalysisResult> = results.iter().collect();
    ordered.sort_by_key(|r| r.seed);
    let seeds: Vec<u64> = ordered.iter().map(|r| r.seed).collect();
    let per_seed: Vec<BTreeMap<String, (StatisticKind, f64)>> =
        ordered.iter().map(|r| statistics_of(r)).collect();
    let mut names: BTreeMap<String, StatisticKind> = BTreeMap::new();
    for stats in &per_seed {
        for (name, (kind, _)) in stats {
            names.entry(name.clone()).or_insert(*kind);
        }
    }
    let statistics = names
        .into_iter()
        .map(|(name, kind)| {
            let values = per_seed
                .iter()
                .map(|s| s.get(&name).map_or(f64::NAN, |(_, v)| *v))
                .collect();
            summary_of(name, kind, values, seeds[0])
        })
        .collect();
    let mut rows: BTreeMap<String, BTreeMap<String, RowCount>> = BTreeMap::new();
    let mut headline: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &ordered {
        for flavour in Flavour::BOTH {
            let v = match flavour {
                Flavour::Reference => &r.verdicts.reference,
                Flavour::Principled => &r.verdicts.principled,
            };
            let counts = rows.entry(flavour.name().into()).or_default();
            for (row, outcome) in flavour_rows(v) {
                counts.entry(row.into()).or_default().add(outcome);
            }
            let matched = headline.entry(flavour.name().into()).or_default();
            for id in &v.headline.matched {
                *matched.entry(id.clone()).or_default() += 1;
            }
        }
    }
    let owned: Vec<AnalysisResult> = ordered.into_iter().cloned().collect();
    Ok(SeedSummary {
        seeds,
        statistics,
        conditions: condition_tests(&owned),
        rows,
        headline,
    })
}

fn number(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

fn p_text(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

fn statistic_line(out: &mut String, label: &str, s: &StatisticSummary, digits: usize) {
    let values: Vec<String> = s.values.iter().map(|v| number(*v, digits)).collect();
    let _ = write!(
        out,
        "| {label} | {} | {} | {} |",
        values.join(" / "),
        number(s.mean, digits),
        number(s.sd, digits)
    );
    match &s.test {
        Some(t) => {
            let _ = writeln!(
                out,
                " {} (df {}) | {} | {} |",
                number(t.t_test.t, 2),
                t.t_test.df,
                p_text(t.t_test.p),
                p_text(t.p_sign_flip)
            );
        }
        None => out.push_str(" | | |\n"),
    }
}

/// The report section of the summary (markdown, every number from the summary).
pub fn render_markdown(summary: &SeedSummary) -> String {
    let mut out = String::new();
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        out,
        "## Across seeds ({} seeds: {})\n",
        seeds.len(),
        seeds.join(", ")
    );
    out.push_str("Each seed is a complete replicate (its own trainings, generations and extractions), so seeds are the blocks: an effect measured within a seed is tested against 0 across seeds by a one-sample t test (two-sided; the block-design test for two treatments) with the exact sign-flip p beside it; the conditions' mean bystander leakage by Friedman's test (H2 across seeds) and Page's trend test in cos-to-assistant order (H3 across seeds). Values per seed are listed in seed order.\n\n");
    out.push_str("### Pre-registered rows: seeds where each fires\n\n| row | reference: fires / does not / not evaluated | principled: fires / does not / not evaluated |\n|---|---|---|\n");
    let reference = summary.rows.get("reference");
    let principled = summary.rows.get("principled");
    for row in ["G1", "G2", "G3", "H1", "H2", "H3", "kill"] {
        let text = |m: Option<&BTreeMap<String, RowCount>>| {
            m.and_then(|m| m.get(row)).map_or("n/a".into(), |c| {
                format!("{} / {} / {}", c.fires, c.does_not_fire, c.not_evaluated)
            })
        };
        let _ = writeln!(out, "| {row} | {} | {} |", text(reference), text(principled));
    }
    out.push('\n');
    for (flavour, matched) in &summary.headline {
        let list: Vec<String> = matched.iter().map(|(id, n)| format!("{id} in {n}")).collect();
        let _ = writeln!(
            out,
            "Headline rows matched ({flavour}): {}.\n",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    let by_name: BTreeMap<&str, &StatisticSummary> =
        summary.statistics.iter().map(|s| (s.name.as_str(), s)).collect();
    if let Some(c) = &summary.conditions {
        out.push_str("### Behaviour\n\n| statistic | per seed | mean | sd | t | p (t) | p (sign flips) |\n|---|---|---|---|---|---|---|\n");
        for condition in &c.conditions {
            for (key, label) in [
                ("mean_bystander", "mean bystander (%)"),
                ("source_rate", "source (%)"),
                ("H1", "H1 excess (pp)"),
            ] {
                let name = if key == "H1" {
                    format!("behavior/H1/{condition}/diff_pp")
                } else {
                    format!("behavior/{key}/{condition}")
                };
                if let Some(s) = by_name.get(name.as_str()) {
                    statistic_line(&mut out, &format!("{condition}: {label}"), s, 2);
                }
            }
        }
        for (name, label, digits) in [
            ("behavior/H2/range_pp", "H2 range (pp)", 2),
            ("behavior/H3/rho", "H3 rho", 3),
        ] {
            if let Some(s) = by_name.get(name) {
                statistic_line(&mut out, label, s, digits);
            }
        }
        let _ = writeln!(
            out,
            "\nFriedman (conditions equal, {} seeds as blocks): chi-square {} (df {}), p {}. Page's L in cos-to-assistant order ({}): L {}, p rising with the cosine {}, p falling {}, two-sided {}.\n",
            c.seeds.len(),
            number(c.friedman.statistic, 3),
            c.friedman.df,
            p_text(c.friedman.p),
            c.cos_order.join(" < "),
            number(c.page.l, 1),
            p_text(c.page.p_increasing),
            p_text(c.page.p_decreasing),
            p_text(c.page.p_two_sided)
        );
    }
    let geometry: Vec<&StatisticSummary> = summary
        .statistics
        .iter()
        .filter(|s| s.name.starts_with(crate::families::GEOMETRY_EM_PRE_POST))
        .collect();
    if !geometry.is_empty() {
        out.push_str("### Geometry (EM minus base)\n\n| cell | per seed | mean | sd | t | p (t) | p (sign flips) |\n|---|---|---|---|---|---|---|\n");
        for s in geometry {
            let label = s
                .name
                .trim_start_matches(crate::families::GEOMETRY_EM_PRE_POST)
                .trim_start_matches('/');
            statistic_line(&mut out, label, s, 4);
        }
        out.push_str("\nThe benign and EM-vs-benign cells are in `seeds.json` (`statistics`).\n\n");
    }
    out
}

/// Writes `dir/seeds.json` and `dir/seeds.md` (the section alone); returns their paths.
pub fn write_outputs(summary: &SeedSummary, dir: &Path) -> Result<(PathBuf, PathBuf), SeedError> {
    let json = dir.join("seeds.json");
    let md = dir.join("seeds.md");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SeedError::Write { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text = serde_json::to_string_pretty(summary).map_err(|e| SeedError::Write {
        path: json.clone(),
        error: std::io::Error::other(e),
    })?;
    std::fs::write(&json, text + "\n").map_err(io(&json))?;
    std::fs::write(&md, render_markdown(summary)).map_err(io(&md))?;
    Ok((json, md))
}
