//! Families of tests and their multiple-comparison control.
//!
//! A family is a named set of cells, each with an observed statistic and a p-value in both
//! flavours (`reference`, `principled`). Within a family, Benjamini-Hochberg and Holm adjust
//! each flavour separately. The pre-registered families are the 150-cell
//! `geometry_em_pre_post` (3 metrics x 2 methods x 5 layers x 5 conditions), the 30-cell
//! `geometry_benign_pre_post`, the 150-cell `geometry_em_vs_benign` and `behavior` (H1 per
//! testable condition and H3). H2 is not in a family: its "fires" direction is a large p
//! (p > 0.10, equal means), and adjusting it upward would make it fire more easily.

use crate::behavior::BehaviorResult;
use crate::stats::multiple::{benjamini_hochberg, holm};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the EM-vs-base geometry family (the reference's key).
pub const GEOMETRY_EM_PRE_POST: &str = "geometry_em_pre_post";
/// Name of the benign-vs-base geometry family.
pub const GEOMETRY_BENIGN_PRE_POST: &str = "geometry_benign_pre_post";
/// Name of the EM-vs-benign geometry family.
pub const GEOMETRY_EM_VS_BENIGN: &str = "geometry_em_vs_benign";
/// Name of the behavioural family.
pub const BEHAVIOR: &str = "behavior";

/// One test of a family, before adjustment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellTest {
    /// Unique within the family, e.g. `M1/A/L20/E0_assistant` or `H1/E4_villain`.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The observed effect (a delta for geometry; see the metric's documentation for its sign);
    /// NaN (`null`) when undefined.
    #[serde(with = "crate::json_nan")]
    pub statistic: f64,
    /// NaN (`null`) for a test without a result (its adjusted values are NaN too).
    #[serde(with = "crate::json_nan")]
    pub p_reference: f64,
    #[serde(with = "crate::json_nan")]
    pub p_principled: f64,
}

/// A cell with its adjusted p-values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyCell {
    #[serde(flatten)]
    pub test: CellTest,
    #[serde(with = "crate::json_nan")]
    pub q_bh_reference: f64,
    #[serde(with = "crate::json_nan")]
    pub q_holm_reference: f64,
    #[serde(with = "crate::json_nan")]
    pub q_bh_principled: f64,
    #[serde(with = "crate::json_nan")]
    pub q_holm_principled: f64,
}

/// Which flavour of p-value a decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Reference,
    Principled,
}

impl Flavour {
    pub const BOTH: [Flavour; 2] = [Flavour::Reference, Flavour::Principled];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Reference => "reference",
            Flavour::Principled => "principled",
        }
    }
}

impl FamilyCell {
    pub fn p(&self, flavour: Flavour) -> f64 {
        match flavour {
            Flavour::Reference => self.test.p_reference,
            Flavour::Principled => self.test.p_principled,
        }
    }

    pub fn q_bh(&self, flavour: Flavour) -> f64 {
        match flavour {
            Flavour::Reference => self.q_bh_reference,
            Flavour::Principled => self.q_bh_principled,
        }
    }

    pub fn q_holm(&self, flavour: Flavour) -> f64 {
        match flavour {
            Flavour::Reference => self.q_holm_reference,
            Flavour::Principled => self.q_holm_principled,
        }
    }
}

/// A family with its adjusted p-values and how many cells pass its FDR level (`fdr_alpha`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub name: String,
    /// The level an adjusted p-value must fall below (the spec's `analysis.fdr_alpha`; named
    /// so that it is not mistaken for LoRA's alpha).
    pub fdr_alpha: f64,
    pub n_cells: usize,
    /// Cells with BH q < fdr_alpha, per flavour (NaN cells never count).
    pub significant_bh_reference: usize,
    pub significant_bh_principled: usize,
    /// Cells with Holm q < fdr_alpha, per flavour.
    pub significant_holm_reference: usize,
    pub significant_holm_principled: usize,
    pub cells: Vec<FamilyCell>,
}

/// What makes a set of cells unusable as a family.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error("family {family}: cell {cell}: {which} p-value is {value}, expected a number in [0, 1] or NaN (no result)")]
    BadP {
        family: String,
        cell: String,
        which: &'static str,
        value: f64,
    },
    #[error("family {family}: cell id {cell} appears twice")]
    Duplicate { family: String, cell: String },
    #[error("family {family}: cell {cell}: statistic is infinite ({value}); expected a number, or NaN when undefined")]
    BadStatistic {
        family: String,
        cell: String,
        value: f64,
    },
}

impl Family {
    /// Adjusts a set of cells as one family at FDR level `fdr_alpha`. A cell with a NaN p-value (a test
    /// without a result) keeps NaN adjusted values and still counts in the family size
    /// (`stats::multiple`); a cell is significant when its adjusted p < fdr_alpha.
    pub fn new(name: &str, fdr_alpha: f64, tests: Vec<CellTest>) -> Result<Family, FamilyError> {
        let mut ids = BTreeSet::new();
        for t in &tests {
            if !ids.insert(t.id.as_str()) {
                return Err(FamilyError::Duplicate {
                    family: name.into(),
                    cell: t.id.clone(),
                });
            }
            for (which, p) in [("reference", t.p_reference), ("principled", t.p_principled)] {
                if !p.is_nan() && !(0.0..=1.0).contains(&p) {
                    return Err(FamilyError::BadP {
                        family: name.into(),
                        cell: t.id.clone(),
                        which,
                        value: p,
                    });
                }
            }
            if t.statistic.is_infinite() {
                return Err(FamilyError::BadStatistic {
                    family: name.into(),
                    cell: t.id.clone(),
                    value: t.statistic,
                });
            }
        }
        let reference: Vec<f64> = tests.iter().map(|t| t.p_reference).collect();
        let principled: Vec<f64> = tests.iter().map(|t| t.p_principled).collect();
        // The ranges were checked above, so the adjustments cannot fail.
        type Adjust = fn(&[f64]) -> Result<Vec<f64>, crate::stats::multiple::PValueError>;
        let adjust = |p: &[f64], f: Adjust| f(p).unwrap_or_else(|_| vec![f64::NAN; p.len()]);
        let (bh_r, holm_r) = (adjust(&reference, benjamini_hochberg), adjust(&reference, holm));
        let (bh_p, holm_p) = (adjust(&principled, benjamini_hochberg), adjust(&principled, holm));
        let cells: Vec<FamilyCell> = tests
            .into_iter()
            .enumerate()
            .map(|(i, test)| FamilyCell {
                test,
                q_bh_reference: bh_r[i],
                q_holm_reference: holm_r[i],
                q_bh_principled: bh_p[i],
                q_holm_principled: holm_p[i],
            })
            .collect();
        let count = |f: &dyn Fn(&FamilyCell) -> f64| cells.iter().filter(|c| f(c) < fdr_alpha).count();
        Ok(Family {
            name: name.to_string(),
            fdr_alpha,
            n_cells: cells.len(),
            significant_bh_reference: count(&|c| c.q_bh_reference),
            significant_bh_principled: count(&|c| c.q_bh_principled),
            significant_holm_reference: count(&|c| c.q_holm_reference),
            significant_holm_principled: count(&|c| c.q_holm_principled),
            cells,
        })
    }

    /// The cell of a metric, method, layer and condition (geometry families).
    pub fn cell(
        &self,
        metric: &str,
        method: &str,
        layer: usize,
        condition: Option<&str>,
    ) -> Option<&FamilyCell> {
        self.cells.iter().find(|c| {
            c.test.metric.as_deref() == Some(metric)
                && c.test.method.as_deref() == Some(method)
                && c.test.layer == Some(layer)
                && c.test.condition.as_deref() == condition
        })
    }

    /// The cell with this id.
    pub fn by_id(&self, id: &str) -> Option<&FamilyCell> {
        self.cells.iter().find(|c| c.test.id == id)
    }
}

/// metric -> method -> layer -> condition -> the share of a condition's EM shift (EM minus
/// base) that the benign control's shift (benign minus base) reaches, from the EM and benign
/// pre/post families. None where the EM shift is zero, undefined or against the
/// pre-registered direction (M1, M2 up; M3 down), where a share means nothing.
pub type BenignShare = BTreeMap<String, BTreeMap<String, BTreeMap<String, BTreeMap<String, Option<f64>>>>>;

/// The share of every EM cell's shift that benign SFT also produces (see `BenignShare`).
pub fn benign_share(em_pre_post: &Family, benign_pre_post: &Family) -> BenignShare {
    let mut out = BenignShare::new();
    for cell in &em_pre_post.cells {
        let t = &cell.test;
        let (Some(metric), Some(method), Some(layer), Some(condition)) =
            (&t.metric, &t.method, t.layer, &t.condition)
        else {
            continue;
        };
        let benign = benign_pre_post
            .cells
            .iter()
            .find(|b| {
                b.test.metric.as_deref() == Some(metric)
                    && b.test.method.as_deref() == Some(method)
                    && b.test.layer == Some(layer)
            })
            .map(|b| b.test.statistic);
        let towards = if metric == "M3" { -t.statistic } else { t.statistic };
        let share = benign
            .filter(|b| b.is_finite() && towards > 0.0)
            .map(|b| b / t.statistic);
        out.entry(metric.clone())
            .or_default()
            .entry(method.clone())
            .or_default()
            .entry(layer.to_string())
            .or_default()
            .insert(condition.clone(), share);
    }
    out
}

/// The behavioural family: H1 of every testable condition and H3 (H1's statistic is its excess
/// in pp, H3's rho). H2 stays out (module docs); the verdicts read every behavioural p raw, as
/// the plan says (no FDR for H1, single tests H2 and H3), and the family's adjusted values are
/// reported alongside.
pub fn behavior_family(behavior: &BehaviorResult, fdr_alpha: f64) -> Result<Family, FamilyError> {
    let mut tests = Vec::new();
    for condition in &behavior.conditions {
        let h1 = &behavior.h1[condition];
        if let (Some(diff), Some(p_ref), Some(p_pri)) = (h1.diff_pp, h1.p_exact, h1.p_principled) {
            tests.push(CellTest {
                id: format!("H1/{condition}"),
                metric: Some("H1".into()),
                method: None,
                layer: None,
                condition: Some(condition.clone()),
                statistic: diff,
                p_reference: p_ref,
                p_principled: p_pri,
            });
        }
    }
    if let Some(h3) = &behavior.h3 {
        tests.push(CellTest {
            id: "H3".into(),
            metric: Some("H3".into()),
            method: None,
            layer: None,
            condition: None,
            statistic: h3.rho,
            p_reference: h3.p_reference,
            p_principled: h3.p_principled,
        });
    }
    Family::new(BEHAVIOR, fdr_alpha, tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: &str, p: f64) -> CellTest {
        CellTest {
            id: id.into(),
            metric: Some("M1".into()),
            method: Some("A".into()),
            layer: Some(20),
            condition: Some(id.into()),
            statistic: 0.1,
            p_reference: p,
            p_principled: p / 2.0,
        }
    }

    #[test]
    fn each_flavour_is_adjusted_on_its_own() {
        let f = Family::new(
            "f",
            0.01,
            vec![
                cell("a", 0.01),
                cell("b", 0.04),
                cell("c", 0.03),
                cell("d", 0.005),
            ],
        )
        .unwrap();
        let q: Vec<f64> = f.cells.iter().map(|c| c.q_bh_reference).collect();
        assert_eq!(q, benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]).unwrap());
        let q: Vec<f64> = f.cells.iter().map(|c| c.q_holm_principled).collect();
        assert_eq!(q, holm(&[0.005, 0.02, 0.015, 0.0025]).unwrap());
        assert_eq!(f.significant_bh_reference, 0);
        // Principled BH q = [0.01, 0.02, 0.02, 0.01]: two cells sit exactly at fdr_alpha = 0.01,
        // which is not below it.
        assert_eq!(f.significant_bh_principled, 0);
        assert_eq!(f.significant_holm_principled, 0);
        assert!(f.cell("M1", "A", 20, Some("b")).is_some());
    }

    /// A test without a result stays without one: NaN in, NaN out, never significant, and the
    /// family still has its size (Holm: statsmodels' multipletests([0.004, nan], "holm") =
    /// [0.008, nan]), and the family's result file reads back.
    #[test]
    fn a_cell_without_a_result_is_nan_and_never_significant() {
        let mut undefined = cell("b", f64::NAN);
        undefined.statistic = f64::NAN;
        let f = Family::new("f", 0.01, vec![cell("a", 0.004), undefined]).unwrap();
        let b = f.by_id("b").unwrap();
        assert!(b.q_bh_reference.is_nan() && b.q_holm_principled.is_nan());
        assert!((f.by_id("a").unwrap().q_holm_reference - 0.008).abs() < 1e-15);
        assert_eq!(f.significant_holm_reference, 1);
        let text = serde_json::to_string(&f).unwrap();
        let back: Family = serde_json::from_str(&text).unwrap();
        assert!(back.by_id("b").unwrap().test.statistic.is_nan());
    }

    /// The reviewer's number: benign SFT's M1 shift as a share of each EM shift (the
    /// reference: 0.073 / 0.094 = 77 %); none where EM moved the wrong way.
    #[test]
    fn the_benign_share_divides_the_benign_shift_by_the_em_shift() {
        let em = Family::new(
            GEOMETRY_EM_PRE_POST,
            0.01,
            vec![
                CellTest {
                    statistic: 0.094,
                    ..cell("E0", 0.001)
                },
                CellTest {
                    statistic: -0.01,
                    ..cell("E1", 0.001)
                },
            ],
        )
        .unwrap();
        let benign = Family::new(
            GEOMETRY_BENIGN_PRE_POST,
            0.01,
            vec![CellTest {
                statistic: 0.073,
                ..cell("benign_sft", 0.001)
            }],
        )
        .unwrap();
        let share = &benign_share(&em, &benign)["M1"]["A"]["20"];
        assert!((share["E0"].unwrap() - 0.073 / 0.094).abs() < 1e-12);
        assert_eq!(share["E1"], None);
    }

    /// One comparison everywhere: a cell at exactly fdr_alpha is not significant.
    #[test]
    fn a_cell_at_fdr_alpha_is_not_significant() {
        let f = Family::new("f", 0.01, vec![cell("a", 0.01)]).unwrap();
        assert_eq!(f.significant_bh_reference, 0);
        assert_eq!(f.significant_bh_principled, 1);
    }

    #[test]
    fn bad_cells_are_rejected() {
        assert!(Family::new("f", 0.01, vec![cell("a", 1.5)]).is_err());
        let mut infinite = cell("a", 0.1);
        infinite.statistic = f64::INFINITY;
        assert!(Family::new("f", 0.01, vec![infinite]).is_err());
        let err = Family::new("f", 0.01, vec![cell("a", 0.1), cell("a", 0.2)]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
