//! Simulation tests of the geometry module at a reduced size: a planted collapse makes every
//! M1 cell fire in both flavours after BH within the family; without an effect the M1 cells
//! stay quiet; M3 is near perfect on separable personas and near chance (1/12) when the
//! persona directions carry no signal; Method B's paired filter drops invalid vectors.

use pspace_analysis::families::{Family, GEOMETRY_EM_PRE_POST};
use pspace_analysis::geometry::synthetic::{generate, SyntheticDesign};
use pspace_analysis::geometry::{
    activations, compute, load, GeometryConfig, GeometryInput, MethodActivations,
};

fn design(collapse: f32, persona_scale: f32) -> SyntheticDesign {
    SyntheticDesign {
        seed: 11,
        personas: 12,
        questions: 40,
        hidden: 48,
        layers: vec![7, 20],
        methods: vec!["A".into(), "B".into()],
        checkpoints: ["base", "E0_assistant", "E1", "E2", "E3", "E4", "benign_sft"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        collapse,
        benign_fraction: 0.5,
        persona_scale,
        method_b_missing: 0.1,
        axis_persona: 0,
    }
}

fn input(d: &SyntheticDesign) -> GeometryInput {
    GeometryInput {
        base: "base".into(),
        conditions: d.checkpoints[1..6].to_vec(),
        cos_to_assistant: vec![1.0, 0.9, 0.8, 0.7, 0.6],
        benign: Some("benign_sft".into()),
        anchor_condition: "E0_assistant".into(),
        axis_persona: "persona_0".into(),
        methods: generate(d)
            .into_iter()
            .map(|(method, checkpoints)| MethodActivations { method, checkpoints })
            .collect(),
    }
}

fn config() -> GeometryConfig {
    GeometryConfig {
        permutations: 999,
        bootstrap: 100,
        components: 16,
        ..GeometryConfig::default()
    }
}

#[test]
fn a_planted_collapse_makes_every_m1_cell_fire() {
    let d = design(0.6, 1.0);
    let out = compute(&input(&d), &config()).unwrap();
    assert_eq!(out.em_pre_post.len(), 3 * 2 * 2 * 5);
    assert_eq!(out.benign_pre_post.len(), 3 * 2 * 2);
    assert_eq!(out.em_vs_benign.len(), 3 * 2 * 2 * 5);
    let family = Family::new(GEOMETRY_EM_PRE_POST, 0.01, out.em_pre_post.clone()).unwrap();
    let m1: Vec<_> = family
        .cells
        .iter()
        .filter(|c| c.test.metric.as_deref() == Some("M1"))
        .collect();
    assert_eq!(m1.len(), 20);
    for c in &m1 {
        assert!(c.test.statistic > 0.0, "{}: {}", c.test.id, c.test.statistic);
        assert!(c.q_bh_reference <= 0.01 && c.q_bh_principled <= 0.01, "{c:?}");
    }
    for c in family
        .cells
        .iter()
        .filter(|c| c.test.metric.as_deref() == Some("M2"))
    {
        assert!(c.test.statistic > 0.0 && c.q_bh_principled <= 0.01, "{c:?}");
    }
    // Shrinking the persona directions lowers separability.
    for c in family
        .cells
        .iter()
        .filter(|c| c.test.metric.as_deref() == Some("M3"))
    {
        assert!(c.test.statistic < 0.0, "{c:?}");
    }
    let m1_a20 = &out.summary.m1_mean_offdiag["A"]["20"];
    assert!(m1_a20["E0_assistant"] > m1_a20["benign_sft"] && m1_a20["benign_sft"] > m1_a20["base"]);
    let cells = out.summary.cells.as_ref().unwrap();
    let ci = &cells["cells"]["geometry_em_pre_post/M1/A/L20/E0_assistant"]["ci"];
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo > 0.0 && lo < hi, "bootstrap interval {lo}..{hi}");
}

#[test]
fn without_an_effect_m1_stays_quiet() {
    let d = design(0.0, 1.0);
    let out = compute(&input(&d), &config()).unwrap();
    let family = Family::new(GEOMETRY_EM_PRE_POST, 0.01, out.em_pre_post).unwrap();
    assert!(
        family.significant_bh_principled <= 3,
        "{} cells fire under the null",
        family.significant_bh_principled
    );
}

#[test]
fn m3_is_near_perfect_when_separable_and_near_chance_without_signal() {
    let separable = compute(
        &input(&design(0.0, 3.0)),
        &GeometryConfig {
            permutations: 20,
            ..config()
        },
    )
    .unwrap();
    let no_signal = compute(
        &input(&design(0.0, 0.0)),
        &GeometryConfig {
            permutations: 20,
            ..config()
        },
    )
    .unwrap();
    for method in ["A", "B"] {
        for layer in ["7", "20"] {
            for (checkpoint, acc) in &separable.summary.m3_accuracy[method][layer] {
                assert!(*acc > 0.95, "separable {method} {layer} {checkpoint}: {acc}");
            }
            for (checkpoint, acc) in &no_signal.summary.m3_accuracy[method][layer] {
                assert!(
                    (acc - 1.0 / 12.0).abs() < 0.05,
                    "no signal {method} {layer} {checkpoint}: {acc}"
                );
            }
        }
    }
}

#[test]
fn files_round_trip_through_load_and_a_broken_persona_order_is_refused() {
    let d = SyntheticDesign {
        questions: 6,
        hidden: 8,
        ..design(0.3, 1.0)
    };
    let run = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (method, checkpoints) in generate(&d) {
        for a in checkpoints {
            let path = activations::path_in_run(run.path(), &a.checkpoint, &method);
            activations::write(&path, &a).unwrap();
            files.push((a.checkpoint.clone(), method.clone(), path));
        }
    }
    let loaded = load(&files, &d.checkpoints).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[1].checkpoints[6].checkpoint, "benign_sft");
    let mut swapped = loaded[0].checkpoints[3].clone();
    swapped.personas.swap(0, 1);
    activations::write(&files[3].2, &swapped).unwrap();
    let err = load(&files, &d.checkpoints).unwrap_err().to_string();
    assert!(err.contains("persona order") && err.contains("E2"), "{err}");
}
