//! Families of tests and their multiple-comparison control.
//!
//! A family is a named set of cells, each with an observed statistic and a p-value in both
//! flavours (`reference`, `principled`). Within a family, Benjamini-Hochberg and Holm adjust
//! each flavour separately. The pre-registered families are the 150-cell
//! `geometry_em_pre_post` (3 metrics x 2 methods x 5 layers x 5 conditions), the 30-cell
//! `geometry_benign_pre_post`, the 150-cell `geometry_em_vs_benign` and `behavior` (H1 per
//! testable condition, H2, H3).

use crate::behavior::BehaviorResult;
use crate::stats::multiple::{benjamini_hochberg, holm};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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
    /// The observed effect (a delta for geometry; see the metric's documentation for its sign).
    pub statistic: f64,
    pub p_reference: f64,
    pub p_principled: f64,
}

/// A cell with its adjusted p-values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyCell {
    #[serde(flatten)]
    pub test: CellTest,
    pub q_bh_reference: f64,
    pub q_holm_reference: f64,
    pub q_bh_principled: f64,
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

/// A family with its adjusted p-values and how many cells pass alpha.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub name: String,
    pub alpha: f64,
    pub n_cells: usize,
    /// Cells with BH q <= alpha, per flavour.
    pub significant_bh_reference: usize,
    pub significant_bh_principled: usize,
    /// Cells with Holm q <= alpha, per flavour.
    pub significant_holm_reference: usize,
    pub significant_holm_principled: usize,
    pub cells: Vec<FamilyCell>,
}

/// What makes a set of cells unusable as a family.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error("family {family}: cell {cell}: {which} p-value is {value}, expected a number in [0, 1]")]
    BadP {
        family: String,
        cell: String,
        which: &'static str,
        value: f64,
    },
    #[error("family {family}: cell id {cell} appears twice")]
    Duplicate { family: String, cell: String },
    #[error("family {family}: cell {cell}: statistic is not finite ({value})")]
    BadStatistic {
        family: String,
        cell: String,
        value: f64,
    },
}

impl Family {
    /// Adjusts a set of cells as one family at level `alpha`.
    pub fn new(name: &str, alpha: f64, tests: Vec<CellTest>) -> Result<Family, FamilyError> {
        let mut ids = BTreeSet::new();
        for t in &tests {
            if !ids.insert(t.id.as_str()) {
                return Err(FamilyError::Duplicate {
                    family: name.into(),
                    cell: t.id.clone(),
                });
            }
            for (which, p) in [("reference", t.p_reference), ("principled", t.p_principled)] {
                if !(0.0..=1.0).contains(&p) {
                    return Err(FamilyError::BadP {
                        family: name.into(),
                        cell: t.id.clone(),
                        which,
                        value: p,
                    });
                }
            }
            if !t.statistic.is_finite() {
                return Err(FamilyError::BadStatistic {
                    family: name.into(),
                    cell: t.id.clone(),
                    value: t.statistic,
                });
            }
        }
        let reference: Vec<f64> = tests.iter().map(|t| t.p_reference).collect();
        let principled: Vec<f64> = tests.iter().map(|t| t.p_principled).collect();
        let (bh_r, holm_r) = (benjamini_hochberg(&reference), holm(&reference));
        let (bh_p, holm_p) = (benjamini_hochberg(&principled), holm(&principled));
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
        let count = |f: &dyn Fn(&FamilyCell) -> f64| cells.iter().filter(|c| f(c) <= alpha).count();
        Ok(Family {
            name: name.to_string(),
            alpha,
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

/// The behavioural family: H1 of every testable condition, H2 and H3. H1's statistic is its
/// excess (pp), H2's the range (pp), H3's rho.
pub fn behavior_family(behavior: &BehaviorResult, alpha: f64) -> Result<Family, FamilyError> {
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
    if let Some(h2) = &behavior.h2 {
        tests.push(CellTest {
            id: "H2".into(),
            metric: Some("H2".into()),
            method: None,
            layer: None,
            condition: None,
            statistic: h2.range_pp,
            p_reference: h2.p_reference,
            p_principled: h2.p_principled,
        });
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
    Family::new(BEHAVIOR, alpha, tests)
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
        assert_eq!(q, benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]));
        let q: Vec<f64> = f.cells.iter().map(|c| c.q_holm_principled).collect();
        assert_eq!(q, holm(&[0.005, 0.02, 0.015, 0.0025]));
        assert_eq!(f.significant_bh_reference, 0);
        assert_eq!(f.significant_bh_principled, 2);
        assert!(f.cell("M1", "A", 20, Some("b")).is_some());
    }

    #[test]
    fn bad_cells_are_rejected() {
        assert!(Family::new("f", 0.01, vec![cell("a", 1.5)]).is_err());
        assert!(Family::new("f", 0.01, vec![cell("a", f64::NAN)]).is_err());
        let err = Family::new("f", 0.01, vec![cell("a", 0.1), cell("a", 0.2)]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
