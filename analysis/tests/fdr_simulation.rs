//! Simulation: BH at alpha = 0.01 over a 150-cell family keeps the false discovery rate at or
//! below alpha, both when every cell is null and when some carry a real effect; Holm keeps the
//! family-wise error rate. Seeded, a few thousand families, well under a second in release.

use pspace_analysis::stats::multiple::{benjamini_hochberg, holm};
use pspace_analysis::stats::rng::seeded_rng;
use rand::Rng;

const CELLS: usize = 150;
const ALPHA: f64 = 0.01;
const FAMILIES: usize = 20_000;

/// Upper slack for a Monte Carlo estimate of a rate near alpha (about 4 standard errors).
fn slack(rate: f64) -> f64 {
    4.0 * (rate * (1.0 - rate) / FAMILIES as f64).sqrt()
}

#[test]
fn under_the_global_null_bh_and_holm_stay_at_alpha() {
    let mut rng = seeded_rng(42, "test/fdr/global-null");
    let (mut any_bh, mut any_holm) = (0usize, 0usize);
    for _ in 0..FAMILIES {
        let p: Vec<f64> = (0..CELLS).map(|_| rng.gen::<f64>()).collect();
        any_bh += usize::from(benjamini_hochberg(&p).unwrap().iter().any(|&q| q < ALPHA));
        any_holm += usize::from(holm(&p).unwrap().iter().any(|&q| q < ALPHA));
    }
    // With every cell null, FDR = P(any rejection).
    let fdr = any_bh as f64 / FAMILIES as f64;
    let fwer = any_holm as f64 / FAMILIES as f64;
    assert!(fdr <= ALPHA + slack(ALPHA), "BH FDR {fdr}");
    assert!(fwer <= ALPHA + slack(ALPHA), "Holm FWER {fwer}");
    // And the procedure is not vacuous: under the null it rejects at about alpha.
    assert!(fdr > ALPHA / 3.0, "BH never rejects: {fdr}");
}

#[test]
fn with_real_effects_bh_controls_the_false_discovery_proportion() {
    let mut rng = seeded_rng(42, "test/fdr/mixed");
    let effects = 30;
    let mut fdp_sum = 0.0;
    let mut discoveries = 0usize;
    for _ in 0..FAMILIES {
        // Effects: p concentrated near 0 (u^8); nulls: uniform.
        let p: Vec<f64> = (0..CELLS)
            .map(|i| {
                let u: f64 = rng.gen();
                if i < effects {
                    u.powi(8)
                } else {
                    u
                }
            })
            .collect();
        let q = benjamini_hochberg(&p).unwrap();
        let rejected: Vec<usize> = (0..CELLS).filter(|&i| q[i] < ALPHA).collect();
        discoveries += rejected.len();
        if !rejected.is_empty() {
            let false_ones = rejected.iter().filter(|&&i| i >= effects).count();
            fdp_sum += false_ones as f64 / rejected.len() as f64;
        }
    }
    let fdr = fdp_sum / FAMILIES as f64;
    // BH guarantees FDR <= (m0/m) alpha for independent cells.
    let bound = ALPHA * (CELLS - effects) as f64 / CELLS as f64;
    assert!(fdr <= bound + slack(bound), "FDR {fdr} above {bound}");
    assert!(
        discoveries > FAMILIES,
        "the planted effects should be found: {discoveries}"
    );
}
