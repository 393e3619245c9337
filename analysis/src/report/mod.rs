//! `report.md`: tables, figures and verdicts rendered from a result file. It reads nothing but
//! the `AnalysisResult` (as read back from result.json), so every number in the report is a
//! number of the result file.

pub mod figures;

use crate::families::{Flavour, GEOMETRY_EM_PRE_POST};
use crate::result::AnalysisResult;
use crate::verdict::{BehaviorRow, FlavourVerdicts, GeometryRow, Outcome};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Errors writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Figure(#[from] figures::FigureError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
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
        Some(r) => (r.outcome_with_contrast, r.reason.clone()),
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

fn verdict_table(out: &mut String, r: &FlavourVerdicts, s: &FlavourVerdicts) {
    out.push_str("| row | pre-registered criterion | reference | principled | numbers (reference flavour) |\n|---|---|---|---|---|\n");
    let geometry = [
        ("G1", "M1 delta > 0, BH q < 0.01, both methods, >= 3/5 layers; all 5 conditions or cos-monotone; EM-vs-benign contrast", &r.g1, &s.g1),
        ("G2", "M2 delta > 0, same layer and pattern rules", &r.g2, &s.g2),
        ("G3", "M3 accuracy drop >= 5 pp, same layer and pattern rules", &r.g3, &s.g3),
    ];
    for (row, criterion, reference, principled) in geometry {
        row_line(
            out,
            row,
            criterion,
            geometry_outcome(reference),
            geometry_outcome(principled),
        );
    }
    let behaviour = [
        (
            "H1",
            "induction persona - other bystanders >= 5 pp, raw p < 0.05, in >= 3/4 testable conditions",
            &r.h1,
            &s.h1,
        ),
        (
            "H2",
            "range of mean bystander <= 15 pp and p > 0.10",
            &r.h2,
            &s.h2,
        ),
        ("H3", "\\|Spearman rho\\| >= 0.7 and exact p < 0.05", &r.h3, &s.h3),
        (
            "kill",
            "all geometry q > 0.5, behaviour flat and <= 5 %, H3 null",
            &r.kill,
            &s.kill,
        ),
    ];
    for (row, criterion, reference, principled) in behaviour {
        row_line(
            out,
            row,
            criterion,
            behavior_outcome(reference),
            behavior_outcome(principled),
        );
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
    out.push('\n');
}

fn behavior_section(out: &mut String, result: &AnalysisResult) {
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
    out.push_str("| condition | induction persona | cos to assistant | source | mean bystander | 95 % CI | H1 self | H1 excess (pp) | H1 p exact (reference) | H1 p sign-flip (principled) |\n|---|---|---|---|---|---|---|---|---|---|\n");
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
}

fn families_section(out: &mut String, result: &AnalysisResult) {
    if result.families.is_empty() {
        return;
    }
    out.push_str("## Families (BH-FDR and Holm within each family)\n\n| family | cells | alpha | BH reference | BH principled | Holm reference | Holm principled |\n|---|---|---|---|---|---|---|\n");
    for f in result.families.values() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            f.n_cells,
            f.alpha,
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

fn geometry_section(out: &mut String, result: &AnalysisResult) {
    let (Some(g), Some(family)) = (&result.geometry, result.families.get(GEOMETRY_EM_PRE_POST)) else {
        return;
    };
    let Some(design) = &g.design else { return };
    out.push_str("## Geometry (EM minus base; BH q of the reference flavour in brackets)\n\n");
    for metric in ["M1", "M2", "M3"] {
        let _ = write!(out, "### {metric}\n\n| condition | method |");
        for l in &design.layers {
            let _ = write!(out, " L{l} |");
        }
        out.push_str("\n|---|---|");
        for _ in &design.layers {
            out.push_str("---|");
        }
        out.push('\n');
        for condition in &design.conditions {
            for method in &design.methods {
                let _ = write!(out, "| {condition} | {method} |");
                for &layer in &design.layers {
                    match family.cell(metric, method, layer, Some(condition)) {
                        Some(c) => {
                            let _ = write!(
                                out,
                                " {:+.4} ({}) |",
                                c.test.statistic,
                                p(c.q_bh(Flavour::Reference))
                            );
                        }
                        None => out.push_str(" missing |"),
                    }
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }
}

/// How each test was computed and how the plan's open points were read (text only: every
/// number is in the tables above).
const METHODS: &str = "## How the tests were computed

| test | reference flavour (the seed's test) | principled flavour (keeps the pairing) |
|---|---|---|
| H1 | the induction persona's excess over the other bystanders, ranked among the same excess of every non-source persona: exact p = k/n (the seed sampled it) | one-sided sign flips of the per-question differences (exact over 2^n patterns up to 20 questions, else Monte Carlo) |
| H2 | per-persona bystander rates of all conditions pooled, condition labels permuted; statistic: range of the condition means | condition labels permuted within each persona (its rates trade places among the conditions where it is a bystander) |
| H3 | Spearman rho (average ranks), two-sided exact p over all orderings of the conditions | the same exact test; a question-level bootstrap gives its interval |
| geometry | as documented by the geometry module | as documented by the geometry module |

Monte Carlo p-values are (b+1)/(m+1); every random stream is ChaCha20 seeded from the
experiment seed and the test's name through SHA-256. Intervals resample questions with
replacement, shared by every persona and condition.

Readings of the plan fixed in code (analysis/src/verdict.rs): a condition fires a G metric when
every method's cell passes at >= 3 of 5 layers; the cos-monotone pattern uses the condition's
statistic averaged over methods and layers; the contrast bar needs every method's EM-vs-benign
cell at BH q < 0.05 at a majority of layers, and a G row counts for the headline only when the
bar holds; H1 fires when >= 3/4 of the testable conditions do; the kill criterion's 'within
+-5 pp of each other' is a range of at most 5 pp.

";

/// Renders report.md from a result (and draws its figures into the same folder).
pub fn write_report(result: &AnalysisResult, dir: &Path) -> Result<PathBuf, ReportError> {
    let figures = figures::draw_all(result, dir)?;
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
    verdict_table(&mut out, &result.verdicts.reference, &result.verdicts.principled);
    out.push_str("\n## Headline mapping\n\n");
    headline(&mut out, "reference", &result.verdicts.reference);
    headline(&mut out, "principled", &result.verdicts.principled);
    let _ = writeln!(
        out,
        "Confidence ceiling: {}.\n",
        result.verdicts.reference.headline.confidence_ceiling
    );
    behavior_section(&mut out, result);
    geometry_section(&mut out, result);
    families_section(&mut out, result);
    out.push_str(METHODS);
    out.push_str("## Figures\n\n");
    for (caption, file) in &figures {
        let svg = file.replace(".png", ".svg");
        let _ = writeln!(out, "![{caption}]({file})\n\n{caption} ([SVG]({svg}))\n");
    }
    out.push_str("## Inputs\n\n");
    for (name, input) in &result.inputs {
        let _ = writeln!(out, "- {name}: `{}` (sha256 `{}`)", input.path, input.sha256);
    }
    let path = dir.join("report.md");
    std::fs::write(&path, out).map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
