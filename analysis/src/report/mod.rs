//! `report.md` and `report.html`: tables, figures and verdicts rendered from a result file. It
//! reads nothing but the `AnalysisResult` (as read back from result.json), so every number in
//! the report is a number of the result file. Figures sit beside the section they illustrate,
//! numbered in reading order (the hero first, after the verdicts); `report.html` is the same
//! markdown rendered as one self-contained page (`html.rs`).

pub mod figures;
pub mod html;

use crate::families::{
    Family, Flavour, GEOMETRY_BENIGN_PRE_POST, GEOMETRY_EM_PRE_POST, GEOMETRY_EM_VS_BENIGN,
};
use crate::result::{AnalysisResult, GeometryMethod, GeometrySummary};
use crate::verdict::{BehaviorRow, FlavourVerdicts, GeometryRow, Outcome, Thresholds};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The figures drawn for a report, placed into the text one by one, numbered in reading order.
struct Figures {
    /// (file stem, caption, PNG file name), not placed yet.
    pending: Vec<(String, String, String)>,
    placed: usize,
}

impl Figures {
    fn new(drawn: Vec<(String, String)>) -> Figures {
        let pending = drawn
            .into_iter()
            .map(|(caption, file)| {
                let stem = file.trim_end_matches(".png").to_string();
                (stem, caption, file)
            })
            .collect();
        Figures { pending, placed: 0 }
    }

    /// Writes figure `stem` (image, then its caption paragraph with the file links) if it was
    /// drawn and not placed yet.
    fn place(&mut self, out: &mut String, stem: &str) {
        let Some(at) = self.pending.iter().position(|(s, ..)| s == stem) else {
            return;
        };
        let (stem, caption, file) = self.pending.remove(at);
        self.placed += 1;
        let n = self.placed;
        let _ = writeln!(
            out,
            "![Figure {n}: {stem}]({file})\n\n**Figure {n}.** {caption} (files: [SVG]({stem}.svg), [PNG]({file}), 300 dpi)\n"
        );
    }

    /// Every figure not placed yet, in drawing order.
    fn place_rest(&mut self, out: &mut String) {
        while let Some(stem) = self.pending.first().map(|f| f.0.clone()) {
            self.place(out, &stem);
        }
    }
}

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Figure(#[from] figures::FigureError),
    #[error("cannot inline the figures into report.html: {0}")]
    Html(std::io::Error),
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

fn p(value: f64) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value < 0.001 {
        format!("{value:.2e}")
    } else {
        format!("{value:.4}")
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn ci(value: Option<[f64; 2]>, digits: usize) -> String {
    value.map_or("n/a".into(), |[a, b]| format!("[{a:.digits$}, {b:.digits$}]"))
}

fn geometry_outcome(row: &Option<GeometryRow>) -> (Outcome, String) {
    match row {
        Some(r) => {
            let mut reason = r.reason.clone();
            if r.outcome_with_contrast_row_veto != r.outcome_with_contrast {
                reason.push_str(&format!(
                    "; row-veto reading of the contrast bar: {}",
                    r.outcome_with_contrast_row_veto.label()
                ));
            }
            (r.outcome_with_contrast, reason)
        }
        None => (Outcome::NotEvaluated, "no geometry in this analysis".into()),
    }
}

fn row_line(
    out: &mut String,
    id: &str,
    criterion: &str,
    reference: (Outcome, String),
    principled: (Outcome, String),
) {
    let _ = writeln!(
        out,
        "| {id} | {criterion} | **{}** | **{}** | {} |",
        reference.0.label(),
        principled.0.label(),
        reference.1.replace('|', "\\|")
    );
}

fn behavior_outcome(row: &BehaviorRow) -> (Outcome, String) {
    (row.outcome, row.reason.clone())
}

/// The pre-registered criterion of every row, with the numbers of `result.json`.
fn criteria(t: &Thresholds, layers: Option<usize>) -> [(&'static str, String); 7] {
    let of_layers = layers.map_or(String::new(), |n| format!("/{n}"));
    [
        ("G1", format!(
            "M1 delta > 0, BH q < {}, every method, >= {}{of_layers} layers; all conditions or cos-monotone (\\|rho\\| >= {}, exact p < {}); per condition, EM-vs-benign BH q < {} at a majority of layers",
            t.fdr_alpha, t.min_layers, t.monotone_abs_rho, t.monotone_alpha, t.contrast_alpha
        )),
        ("G2", "M2 delta > 0, the same layer, pattern and contrast rules".to_string()),
        ("G3", format!(
            "M3 accuracy drop >= {} pp, the same layer, pattern and contrast rules",
            t.acc_drop * 100.0
        )),
        ("H1", format!(
            "induction persona - other bystanders >= {} pp with raw p < {}, in >= {} % of the testable conditions",
            t.h1_min_diff_pp, t.h1_alpha, t.h1_min_share * 100.0
        )),
        ("H2", format!(
            "range of mean bystander <= {} pp and raw p > {} (not FDR-adjusted: its 'fires' direction is a large p)",
            t.h2_max_range_pp, t.h2_min_p
        )),
        ("H3", format!(
            "\\|Spearman rho\\| >= {} and exact p < {}",
            t.h3_min_abs_rho, t.h3_alpha
        )),
        ("kill", format!(
            "every geometry_em_pre_post BH q > {}; range <= {} pp and every mean <= {} %; H3 null (\\|rho\\| < {}, p > {}; rho undefined on flat leakage counts)",
            t.kill_min_q, t.kill_max_range_pp, t.kill_max_mean_pct, t.kill_max_abs_rho, t.kill_min_p
        )),
    ]
}

fn verdict_table(out: &mut String, result: &AnalysisResult) {
    let (r, s) = (&result.verdicts.reference, &result.verdicts.principled);
    let layers = result
        .geometry
        .as_ref()
        .and_then(|g| g.design.as_ref())
        .map(|d| d.layers.len());
    let [g1, g2, g3, h1, h2, h3, kill] = criteria(&result.verdicts.thresholds, layers);
    out.push_str("| row | pre-registered criterion | reference | principled | numbers (reference flavour) |\n|---|---|---|---|---|\n");
    for ((row, criterion), reference, principled) in
        [(g1, &r.g1, &s.g1), (g2, &r.g2, &s.g2), (g3, &r.g3, &s.g3)]
    {
        row_line(
            out,
            row,
            &criterion,
            geometry_outcome(reference),
            geometry_outcome(principled),
        );
    }
    for ((row, criterion), reference, principled) in [
        (h1, &r.h1, &s.h1),
        (h2, &r.h2, &s.h2),
        (h3, &r.h3, &s.h3),
        (kill, &r.kill, &s.kill),
    ] {
        row_line(
            out,
            row,
            &criterion,
            behavior_outcome(reference),
            behavior_outcome(principled),
        );
    }
}

/// The smallest p-value a test of this design can reach, against the threshold it must pass:
/// one line per row whose design caps it, so a row that cannot fire is told apart from one
/// that did not. Every number comes from the result (conditions, personas, questions, draws).
fn design_limits(out: &mut String, result: &AnalysisResult) {
    let t = &result.verdicts.thresholds;
    let mut lines: Vec<String> = Vec::new();
    let verdict = |p: f64, alpha: f64| {
        if p < alpha {
            format!("below {alpha}: it can fire")
        } else {
            format!("not below {alpha}: it cannot fire in this design")
        }
    };
    if let Some(b) = &result.behavior {
        let n = b.conditions.len();
        if n >= 2 {
            let orderings: f64 = (1..=n).map(|i| i as f64).product();
            let p_min = 2.0 / orderings;
            lines.push(format!(
                "H3: {n} conditions give {orderings:.0} orderings; the smallest exact two-sided p (a perfect rank order) is 2/{orderings:.0} = {}, {}.",
                p(p_min),
                verdict(p_min, t.h3_alpha)
            ));
        }
        if let Some(n) = b.h1.values().find_map(|h| h.rank_n) {
            let p_min = 1.0 / n as f64;
            lines.push(format!(
                "H1 (reference): the exact p ranks the induction persona among {n} personas, so it is at least 1/{n} = {}, {}.",
                p(p_min),
                verdict(p_min, t.h1_alpha)
            ));
        }
        if b.h1.values().any(|h| h.testable) {
            let q = b.questions;
            let (p_min, how) = if q <= crate::behavior::MAX_EXACT_SIGN_FLIPS {
                (0.5f64.powi(q as i32), format!("1/2^{q}"))
            } else {
                let m = b.config.permutations;
                (1.0 / (m as f64 + 1.0), format!("1/({m} + 1)"))
            };
            lines.push(format!(
                "H1 (principled): sign flips over {q} eval questions reach p = {how} = {} at the smallest, {}.",
                p(p_min),
                verdict(p_min, t.h1_alpha)
            ));
        }
    }
    let m3_questions = result
        .geometry
        .as_ref()
        .and_then(|g| g.cells.as_ref())
        .and_then(|cells| cells.as_object())
        .and_then(|cells| {
            cells
                .iter()
                .filter(|(id, _)| id.contains("/M3/"))
                .filter_map(|(_, c)| Some((c["questions"].as_u64()?, c["principled_exact"].as_bool()?)))
                .min()
        });
    if let Some((q, exact)) = m3_questions {
        let (p_min, how) = if exact {
            (2.0 * 0.5f64.powi(q as i32), format!("2/2^{q}"))
        } else {
            let m = result.settings.as_ref().map_or(0, |s| s.permutations);
            (1.0 / (m as f64 + 1.0), format!("1/({m} + 1)"))
        };
        lines.push(format!(
            "G3 (principled): M3's sign flips over {q} extraction questions reach p = {how} = {} at the smallest; a cell needs BH q < {}: {}.",
            p(p_min),
            t.fdr_alpha,
            verdict(p_min, t.fdr_alpha)
        ));
    }
    if lines.is_empty() {
        return;
    }
    out.push_str("\n### What this design can decide\n\nThe smallest p-value each capped test can reach with this run's conditions, personas and questions, against its threshold (a row that cannot fire here says nothing either way):\n\n");
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
}

fn headline(out: &mut String, name: &str, v: &FlavourVerdicts) {
    let _ = writeln!(
        out,
        "**{name}:** matched rows: {}.",
        if v.headline.matched.is_empty() {
            "none".to_string()
        } else {
            v.headline.matched.join(", ")
        }
    );
    for statement in &v.headline.statements {
        let _ = writeln!(out, "- {statement}");
    }
    if !v.headline.undecided.is_empty() {
        let _ = writeln!(
            out,
            "- undecided for lack of inputs: {}",
            v.headline.undecided.join(", ")
        );
    }
    for note in &v.headline.notes {
        let _ = writeln!(out, "- Note: {note}");
    }
    out.push('\n');
}

fn behavior_section(out: &mut String, result: &AnalysisResult, figures: &mut Figures) {
    let Some(b) = &result.behavior else { return };
    out.push_str("## Behaviour\n\n");
    let _ = writeln!(
        out,
        "{} eval personas x {} questions; source persona `{}`; {} permutations and {} question-level bootstrap replicates per test ({:.0} % intervals). Rates in %, differences in pp.\n",
        b.personas.len(),
        b.questions,
        b.config.source_persona,
        b.config.permutations,
        b.config.bootstrap,
        b.config.ci_level * 100.0
    );
    let _ = writeln!(
        out,
        "| condition | induction persona | cos to assistant | source | mean bystander | {:.0} % CI | H1 self | H1 excess (pp) | H1 p exact (reference) | H1 p sign-flip (principled) |\n|---|---|---|---|---|---|---|---|---|---|",
        b.config.ci_level * 100.0
    );
    for c in &b.conditions {
        let h1 = &b.h1[c];
        let exact = match (h1.rank_k, h1.rank_n, h1.p_exact) {
            (Some(k), Some(n), Some(pe)) => format!("{k}/{n} = {}", p(pe)),
            _ => "not testable".into(),
        };
        let _ = writeln!(
            out,
            "| {c} | {} | {:.4} | {:.2} | {:.2} | {} | {} | {} | {exact} | {} |",
            b.induction_persona[c],
            b.cos_to_assistant[c],
            b.source_rate[c],
            b.mean_bystander[c],
            ci(b.ci_mean_bystander.get(c).copied(), 2),
            opt(h1.self_leakage, 2),
            opt(h1.diff_pp, 2),
            h1.p_principled.map_or("n/a".into(), p),
        );
    }
    out.push('\n');
    if let Some(h2) = &b.h2 {
        let _ = writeln!(
            out,
            "**H2** range {:.2} pp (bootstrap CI {}); p reference (pooled persona rates, labels permuted) {}; p principled (labels permuted within persona) {}.\n",
            h2.range_pp,
            ci(h2.ci_range_pp, 2),
            p(h2.p_reference),
            p(h2.p_principled)
        );
    }
    if let Some(h3) = &b.h3 {
        let _ = writeln!(
            out,
            "**H3** Spearman rho {:.3} (bootstrap CI {}), exact two-sided p {} over {} orderings; share of bootstrap replicates with |rho| >= {} and the same sign: {}.\n",
            h3.rho,
            ci(h3.ci_rho, 3),
            p(h3.p_exact),
            h3.orderings,
            b.config.h3_rho_threshold,
            opt(h3.bootstrap_share_beyond_threshold, 3)
        );
    }
    out.push_str("### Leakage by persona (%)\n\n| persona |");
    for c in &b.conditions {
        let _ = write!(out, " {c} |");
    }
    out.push_str("\n|---|");
    for _ in &b.conditions {
        out.push_str("---|");
    }
    out.push('\n');
    for persona in &b.personas {
        let _ = write!(out, "| {persona} |");
        for c in &b.conditions {
            let mark = if b.induction_persona[c] == *persona {
                " *"
            } else {
                ""
            };
            let _ = write!(out, " {:.2}{mark} |", b.leakage[c][persona]);
        }
        out.push('\n');
    }
    out.push_str("\n(* induction persona of the condition)\n\n");
    figures.place(out, "leakage_heatmap");
}

/// What the LoRA trainings did: each one's loss at its start and end, the coupling sets, the
/// loss curves, and how far each checkpoint moved the persona centroids from base.
fn training_section(out: &mut String, result: &AnalysisResult, figures: &mut Figures) {
    let curves = result.training.as_deref().unwrap_or_default();
    let shift = result.geometry.as_ref().filter(|g| !g.centroid_shift.is_empty());
    if curves.is_empty() && shift.is_none() {
        return;
    }
    out.push_str(
        "## Training

",
    );
    if !curves.is_empty() {
        const EDGE: usize = 3;
        let _ = writeln!(
            out,
            "Loss: mean cross-entropy over each optimizer step's label tokens (EM and benign SFT: the last assistant turn; coupling: the marker and the final end of turn), averaged over the first and the last {EDGE} steps (half the steps each for a training of fewer than {}; no change for a single step).\n\n| training | condition | steps | rows | loss, first steps | loss, last steps | change | coupling set |\n|---|---|---|---|---|---|---|---|",
            2 * EDGE
        );
        for c in curves {
            let (first, last, change) = match c.start_end(EDGE) {
                Some((start, end)) => (
                    format!("{start:.3}"),
                    format!("{end:.3}"),
                    format!("{:+.1} %", 100.0 * (end - start) / start),
                ),
                None => ("n/a".into(), "n/a".into(), "n/a".into()),
            };
            let set = c.coupling_set.as_ref().map_or("".to_string(), |s| {
                let mut text = format!("{} positives, {} negatives", s.positives, s.negatives);
                if s.skipped_cut > 0 {
                    text.push_str(&format!("; {} cut completions skipped", s.skipped_cut));
                }
                if s.skipped_empty > 0 {
                    text.push_str(&format!("; {} empty completions skipped", s.skipped_empty));
                }
                text
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {first} | {last} | {change} | {set} |",
                match c.kind.as_str() {
                    "em" => "EM SFT",
                    "benign" => "benign SFT",
                    "coupling" => "marker coupling",
                    other => other,
                },
                c.label,
                c.loss.len(),
                c.examples.map_or("n/a".into(), |n| n.to_string()),
            );
        }
        out.push('\n');
        figures.place(out, "training_loss");
    }
    if let Some(g) = shift {
        out.push_str("### How far training moved the persona vectors\n\nMean over personas of 1 - cos(centroid, the same persona's centroid in base): 0 when no persona's direction moved.\n\n| method | layer |");
        let shown: Vec<&String> = g.checkpoints.iter().filter(|c| c.as_str() != "base").collect();
        for c in &shown {
            let _ = write!(out, " {c} |");
        }
        out.push_str("\n|---|---|");
        for _ in &shown {
            out.push_str("---|");
        }
        out.push('\n');
        for (method, layers) in &g.centroid_shift {
            let mut by_layer: Vec<(&String, _)> = layers.iter().collect();
            by_layer.sort_by_key(|(l, _)| l.parse::<usize>().unwrap_or(usize::MAX));
            for (layer, values) in by_layer {
                let _ = write!(out, "| {method} | {layer} |");
                for c in &shown {
                    let _ = write!(
                        out,
                        " {} |",
                        values.get(*c).map_or("n/a".into(), |v| format!("{v:.2e}"))
                    );
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }
}

fn families_section(out: &mut String, result: &AnalysisResult) {
    if result.families.is_empty() {
        return;
    }
    out.push_str("## Families (BH-FDR and Holm within each family)\n\n| family | cells | fdr_alpha | BH reference | BH principled | Holm reference | Holm principled |\n|---|---|---|---|---|---|---|\n");
    for f in result.families.values() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            f.n_cells,
            f.fdr_alpha,
            f.significant_bh_reference,
            f.significant_bh_principled,
            f.significant_holm_reference,
            f.significant_holm_principled
        );
    }
    out.push('\n');
    if let Some(f) = result.families.get(crate::families::BEHAVIOR) {
        out.push_str("| behaviour test | statistic | p reference | q BH | q Holm | p principled | q BH | q Holm |\n|---|---|---|---|---|---|---|---|\n");
        for c in &f.cells {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {} | {} | {} | {} | {} | {} |",
                c.test.id,
                c.test.statistic,
                p(c.p(Flavour::Reference)),
                p(c.q_bh(Flavour::Reference)),
                p(c.q_holm(Flavour::Reference)),
                p(c.p(Flavour::Principled)),
                p(c.q_bh(Flavour::Principled)),
                p(c.q_holm(Flavour::Principled))
            );
        }
        out.push('\n');
    }
}

/// "+0.0123 (q 4.5e-3)" of a family cell, or "missing".
fn cell_text(family: Option<&Family>, metric: &str, method: &str, layer: usize, condition: &str) -> String {
    match family.and_then(|f| f.cell(metric, method, layer, Some(condition))) {
        Some(c) if c.test.statistic.is_finite() => {
            format!("{:+.4} (q {})", c.test.statistic, p(c.q_bh(Flavour::Reference)))
        }
        Some(_) => "undefined".into(),
        None => "missing".into(),
    }
}

/// How M1, M2 and M3 were computed, from the recorded settings.
fn geometry_method_text(out: &mut String, g: &GeometrySummary, m: &GeometryMethod) {
    let personas = g.personas.len();
    let pairs = personas * personas.saturating_sub(1) / 2;
    let _ = writeln!(
        out,
        "- **M1**: mean off-diagonal cosine of the {personas} persona centroids ({pairs} pairs) of a checkpoint; a cell is after minus before. p reference: {} Monte Carlo sign flips of the per-pair differences; principled: the same null, enumerated exactly up to 2^{} sign vectors.",
        m.permutations, m.exact_max_n
    );
    let _ = writeln!(
        out,
        "- **M2**: mean over the {} personas other than `{}` of |cos(centroid, axis)|, axis = `{}`'s centroid under `{}` (the anchor condition) minus under base, the same axis for every condition; tested like M1 over those personas.",
        personas.saturating_sub(1), m.axis_persona, m.axis_persona, m.anchor_condition
    );
    let _ = writeln!(
        out,
        "- **M3**: held-out accuracy of a shrinkage LDA (scikit-learn's lsqr estimator, shrinkage {} toward trace/d x I) over the {personas} persona labels of the per-question vectors, GroupKFold by question ({} folds, question index mod {}). The LDA works in the first {} principal components of the vectors of ONE checkpoint, the PCA refitted inside every training fold on that fold's training vectors only (randomized PCA, {} power iteration(s)); held-out vectors are projected into their fold's basis. Fitted separately on each of the {} checkpoints ({}); chance = 1/{personas}. p reference: joint-shuffle null, {} permutations of the persona labels within each question, the same permutation for every checkpoint; principled: sign flips of the per-question differences in held-out correct counts.",
        m.lda_shrinkage,
        m.cv_folds,
        m.cv_folds,
        m.pca_components,
        m.pca_power_iterations,
        g.checkpoints.len(),
        g.checkpoints.join(", "),
        m.permutations
    );
    let _ = writeln!(
        out,
        "- Intervals: {} question-level bootstrap replicates ({:.0} % percentile intervals, in `geometry.cells`).\n",
        m.bootstrap,
        m.ci_level * 100.0
    );
}

fn geometry_section(out: &mut String, result: &AnalysisResult, figures: &mut Figures) {
    let (Some(g), Some(em)) = (&result.geometry, result.families.get(GEOMETRY_EM_PRE_POST)) else {
        return;
    };
    let Some(design) = &g.design else { return };
    let benign_family = result.families.get(GEOMETRY_BENIGN_PRE_POST);
    let contrast = result.families.get(GEOMETRY_EM_VS_BENIGN);
    let benign = g.checkpoints.last().filter(|_| benign_family.is_some());
    out.push_str("## Geometry\n\n");
    if let Some(m) = &g.method {
        geometry_method_text(out, g, m);
    }
    figures.place(out, "m1_grid");
    figures.place(out, "geometry_by_layer");
    figures.place(out, "m3_accuracy");
    out.push_str("Each cell: EM minus base, then EM minus benign SFT (the EM shift minus the benign shift), then the share of the EM shift that benign SFT also produces ((benign - base) / (EM - base)); BH q of the reference flavour in brackets. The benign column is benign SFT minus base.\n\n");
    for metric in ["M1", "M2", "M3"] {
        let _ = write!(out, "### {metric}\n\n| method | layer |");
        if benign.is_some() {
            out.push_str(" benign - base |");
        }
        for c in &design.conditions {
            let _ = write!(out, " {c} |");
        }
        out.push_str("\n|---|---|");
        if benign.is_some() {
            out.push_str("---|");
        }
        for _ in &design.conditions {
            out.push_str("---|");
        }
        out.push('\n');
        let mut shares = Vec::new();
        for method in &design.methods {
            for &layer in &design.layers {
                let _ = write!(out, "| {method} | L{layer} |");
                if let Some(b) = benign {
                    let _ = write!(out, " {} |", cell_text(benign_family, metric, method, layer, b));
                }
                for condition in &design.conditions {
                    let share = g
                        .benign_share
                        .get(metric)
                        .and_then(|m| m.get(method))
                        .and_then(|l| l.get(&layer.to_string()))
                        .and_then(|c| c.get(condition))
                        .copied()
                        .flatten();
                    shares.extend(share);
                    let _ = write!(out, " {}", cell_text(Some(em), metric, method, layer, condition));
                    if contrast.is_some() {
                        let _ = write!(
                            out,
                            "; vs benign {}",
                            cell_text(contrast, metric, method, layer, condition)
                        );
                    }
                    if benign.is_some() {
                        let _ = write!(
                            out,
                            "; benign share {}",
                            share.map_or("n/a".into(), |v| format!("{:.0} %", v * 100.0 + 0.0))
                        );
                    }
                    out.push_str(" |");
                }
                out.push('\n');
            }
        }
        out.push('\n');
        if !shares.is_empty() {
            shares.sort_by(f64::total_cmp);
            let _ = writeln!(
                out,
                "Benign SFT produces {:.0} % to {:.0} % (median {:.0} %) of the EM shift in the {} {metric} cells where EM moved the pre-registered way.\n",
                shares[0] * 100.0 + 0.0,
                shares[shares.len() - 1] * 100.0 + 0.0,
                shares[shares.len() / 2] * 100.0 + 0.0,
                shares.len()
            );
        }
    }
}

/// How each test was computed and how the plan's open points were read (text only: every
/// number comes from the result's thresholds and settings).
fn methods_section(out: &mut String, result: &AnalysisResult) {
    let t = &result.verdicts.thresholds;
    out.push_str("## How the tests were computed\n\n| test | reference flavour (the seed's test) | principled flavour (keeps the pairing) |\n|---|---|---|\n");
    out.push_str("| H1 | the induction persona's excess over the other bystanders, ranked among the same excess of every non-source persona: exact p = k/n (the seed sampled it) | one-sided sign flips of the per-question differences (exact over 2^n patterns up to 20 questions, else Monte Carlo) |\n");
    out.push_str("| H2 | per-persona bystander rates of all conditions pooled, condition labels permuted; statistic: range of the condition means | condition labels permuted within each persona (its rates trade places among the conditions where it is a bystander) |\n");
    out.push_str("| H3 | Spearman rho (average ranks), two-sided exact p over all orderings of the conditions | the same exact test; a question-level bootstrap gives its interval |\n");
    out.push_str("| geometry | see the Geometry section | see the Geometry section |\n\n");
    out.push_str("Monte Carlo p-values are (b+1)/(m+1); every random stream is ChaCha20 seeded from the experiment seed and the test's name through SHA-256. Intervals resample questions with replacement, shared by every persona and condition. An undefined statistic or p-value is `null` in result.json and n/a here.\n\n");
    let _ = writeln!(
        out,
        "Readings of the plan fixed in code (analysis/src/verdict.rs): a condition fires a G metric when every method's cell passes at >= {} layers; the cos-monotone pattern uses the condition's statistic averaged over methods and layers; the contrast bar is read per condition as the plan words it (a condition whose EM-vs-benign cells do not reach BH q < {} under every method at a majority of layers drops out, and the row is decided on the rest; the row-veto reading is shown where it differs); H1 fires when >= {} % of the testable conditions do; H2 is not FDR-adjusted; significance is one comparison everywhere, adjusted (or raw, where the plan says so) p < the row's level (fdr_alpha = {} for the families' cells); the kill criterion's 'within +-{} pp of each other' is a range of at most {} pp, and an H3 rho left undefined by flat leakage counts as its null.\n",
        t.min_layers,
        t.contrast_alpha,
        t.h1_min_share * 100.0,
        t.fdr_alpha,
        t.kill_max_range_pp,
        t.kill_max_range_pp
    );
}

/// Renders report.md and report.html from a result (and draws its figures into the same
/// folder); returns report.md's path.
pub fn write_report(result: &AnalysisResult, dir: &Path) -> Result<PathBuf, ReportError> {
    let mut figures = Figures::new(figures::draw_all(result, dir)?);
    let mut out = String::new();
    out.push_str("# pspace analysis report\n\n");
    let _ = writeln!(
        out,
        "Generated by {} from `result.json` (schema {}), seed {}.\n",
        result.generator, result.schema_version, result.seed
    );
    if result.partial {
        out.push_str("> **PARTIAL ANALYSIS** (`--allow-partial`): some inputs were missing; rows that need them are `not evaluated`.\n");
        for reason in &result.partial_reasons {
            let _ = writeln!(out, "> - {reason}");
        }
        out.push('\n');
    }
    out.push_str("## Verdicts (pre-registered success table)\n\n");
    out.push_str("`reference` applies each test as the seed ran it; `principled` uses a null that keeps the design's pairing. A G row counts as firing only when the EM-vs-benign contrast bar also holds.\n\n");
    verdict_table(&mut out, result);
    design_limits(&mut out, result);
    out.push_str("\n## Headline mapping\n\n");
    headline(&mut out, "reference", &result.verdicts.reference);
    headline(&mut out, "principled", &result.verdicts.principled);
    let _ = writeln!(
        out,
        "Confidence ceiling: {}.\n",
        result.verdicts.reference.headline.confidence_ceiling
    );
    figures.place(&mut out, "hero");
    behavior_section(&mut out, result, &mut figures);
    geometry_section(&mut out, result, &mut figures);
    training_section(&mut out, result, &mut figures);
    families_section(&mut out, result);
    methods_section(&mut out, result);
    if !figures.pending.is_empty() {
        out.push_str("## More figures\n\n");
        figures.place_rest(&mut out);
    }
    out.push_str("## Inputs\n\n");
    for (name, input) in &result.inputs {
        let _ = writeln!(out, "- {name}: `{}` (sha256 `{}`)", input.path, input.sha256);
    }
    let page = html::render(&out, dir).map_err(ReportError::Html)?;
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, page).map_err(|error| ReportError::Write {
        path: html_path,
        error,
    })?;
    let path = dir.join("report.md");
    std::fs::write(&path, out).map_err(|error| ReportError::Write {
        path: path.clone(),
        error,
    })?;
    Ok(path)
}
