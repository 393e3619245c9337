//! M3 recovers a planted drop in separability. Each checkpoint's personas sit on a simplex of
//! known spacing s in 12 dimensions with unit Gaussian noise, so the best possible accuracy is
//! known in closed form (scipy below); every checkpoint also carries its own large,
//! label-free nuisance variance in 3 dimensions no other checkpoint uses, and its own offset,
//! the way fine-tuning moves the whole activation cloud. M3 (PCA fitted per checkpoint and per
//! training fold, then shrinkage LDA, GroupKFold by question) must come close to that optimum
//! in every checkpoint, and so recover each drop against base. A PCA pooled over the 7
//! checkpoints (the estimator before issue 11) spends its components on the 21 nuisance and 6
//! offset directions and sees no persona structure at all (accuracy near 1/12 everywhere).

use pspace_analysis::geometry::activations::Activations;
use pspace_analysis::geometry::{compute, GeometryConfig, GeometryInput, MethodActivations};
use pspace_analysis::stats::rng::seeded_rng;
use rand::Rng;

const PERSONAS: usize = 12;
const QUESTIONS: usize = 120;
const HIDDEN: usize = 64;
const CHECKPOINTS: [&str; 7] = ["base", "E0", "E1", "E2", "E3", "E4", "benign_sft"];
/// Simplex spacing of each checkpoint (base first).
const SPACING: [f64; 7] = [3.0, 2.0, 2.25, 1.75, 2.5, 1.5, 2.75];
/// The Bayes accuracy of each spacing: P(s + z_0 > max_{k=1..11} z_k) for iid standard normal
/// z, i.e. scipy.integrate.quad(lambda z: norm.pdf(z) * norm.cdf(z + s)**11, -inf, inf)
/// (scipy 1.17.1).
const OPTIMUM: [f64; 7] = [
    0.8890588735440046,
    0.6430073916695933,
    0.719606718313867,
    0.5598043817412363,
    0.7869626734448045,
    0.4735319030940171,
    0.843567398079113,
];

fn normal(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One checkpoint's vectors: dims 0..12 persona simplex + unit noise; dims 12 + 3c .. 15 + 3c
/// the checkpoint's own nuisance (sd 6); dim 33 + c its offset (+20); elsewhere sd 0.3.
fn checkpoint(c: usize) -> Activations {
    let mut rng = seeded_rng(5, &format!("planted-m3/{c}"));
    let mut values = vec![0.0f32; PERSONAS * QUESTIONS * HIDDEN];
    for p in 0..PERSONAS {
        for q in 0..QUESTIONS {
            let v = &mut values[(p * QUESTIONS + q) * HIDDEN..(p * QUESTIONS + q + 1) * HIDDEN];
            for (j, x) in v.iter_mut().enumerate() {
                let own_nuisance = (12 + 3 * c..15 + 3 * c).contains(&j);
                let sd = if j < 12 {
                    1.0
                } else if own_nuisance {
                    6.0
                } else {
                    0.3
                };
                let mean = if j == p {
                    SPACING[c]
                } else if j == 33 + c {
                    20.0
                } else {
                    0.0
                };
                *x = (mean + sd * normal(&mut rng)) as f32;
            }
        }
    }
    Activations {
        checkpoint: CHECKPOINTS[c].into(),
        method: "A".into(),
        model: "planted".into(),
        personas: (0..PERSONAS).map(|p| format!("p{p}")).collect(),
        layers: vec![20],
        n_questions: QUESTIONS,
        hidden: HIDDEN,
        values: vec![values],
        mask: vec![true; PERSONAS * QUESTIONS],
    }
}

#[test]
fn m3_recovers_a_planted_drop_in_separability() {
    let input = GeometryInput {
        base: "base".into(),
        conditions: CHECKPOINTS[1..6].iter().map(|c| c.to_string()).collect(),
        cos_to_assistant: vec![1.0, 0.9, 0.8, 0.7, 0.6],
        benign: Some("benign_sft".into()),
        anchor_condition: "E0".into(),
        axis_persona: "p0".into(),
        methods: vec![MethodActivations {
            method: "A".into(),
            checkpoints: (0..CHECKPOINTS.len()).map(checkpoint).collect(),
        }],
    };
    let config = GeometryConfig {
        permutations: 20,
        bootstrap: 10,
        ..GeometryConfig::default()
    };
    let out = compute(&input, &config).unwrap();
    let accuracy = &out.summary.m3_accuracy["A"]["20"];
    eprintln!("M3 held-out accuracy by checkpoint: {accuracy:?}; best possible {OPTIMUM:?}");
    let base = accuracy["base"];
    for (c, name) in CHECKPOINTS.iter().enumerate() {
        let found = accuracy[*name];
        assert!(
            (found - OPTIMUM[c]).abs() < 0.05,
            "{name}: held-out accuracy {found:.3}, best possible {:.3}",
            OPTIMUM[c]
        );
        let drop = found - base;
        let planted = OPTIMUM[c] - OPTIMUM[0];
        assert!(
            (drop - planted).abs() < 0.05,
            "{name}: drop {drop:.3} vs planted {planted:.3}"
        );
    }
    // The cells carry the same deltas.
    let e4 = out.em_pre_post.iter().find(|c| c.id == "M3/A/L20/E4").unwrap();
    assert!((e4.statistic - (accuracy["E4"] - base)).abs() < 1e-12);
    assert!(e4.statistic < -0.35, "{}", e4.statistic);
}
