//! The multi-seed summary on three seeds' result files: the reference run's behaviour with
//! each seed's numbers set to known values, and one geometry cell. Per-seed values, mean and
//! spread (numpy), the block tests (scipy), rows fired per seed, the report section, and the
//! errors for a repeated seed or a different design.

use pspace_analysis::behavior::{analyze, BehaviorConfig};
use pspace_analysis::families::{CellTest, Family, GEOMETRY_EM_PRE_POST};
use pspace_analysis::input::{MarkerHits, Personas};
use pspace_analysis::pipeline::{assemble, Settings};
use pspace_analysis::result::AnalysisResult;
use pspace_analysis::seeds::{render_markdown, summarize, summarize_files, write_outputs, SeedError};
use pspace_analysis::verdict::Outcome;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Mean bystander leakage of the three seeds (rows), conditions E0..E4 (columns).
const LEAKAGE: [[f64; 5]; 3] = [
    [45.7, 48.6, 50.1, 53.7, 52.0],
    [44.1, 47.0, 51.2, 52.5, 53.3],
    [46.0, 46.5, 49.9, 54.1, 51.0],
];
const SEEDS: [u64; 3] = [42, 43, 44];

fn results() -> Vec<AnalysisResult> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../experiments/data");
    let personas = Personas::load(&dir.join("personas.json")).unwrap();
    let hits = MarkerHits::load(&[dir.join("reference_marker_hits.json")], &personas, Some(10)).unwrap();
    let config = BehaviorConfig {
        permutations: 200,
        bootstrap: 20,
        ..BehaviorConfig::default()
    };
    let behavior = analyze(&hits, &personas, &config).unwrap();
    let conditions = behavior.conditions.clone();
    let h1 = [2.5, 4.0, 3.1];
    let m1 = [0.051, 0.062, 0.047];
    (0..3)
        .map(|s| {
            let mut b = behavior.clone();
            for (c, v) in conditions.iter().zip(LEAKAGE[s]) {
                b.mean_bystander.insert(c.clone(), v);
            }
            b.h1.get_mut("E4_villain").unwrap().diff_pp = Some(h1[s]);
            let cell = CellTest {
                id: "M1/A/L20/E0_assistant".into(),
                metric: Some("M1".into()),
                method: Some("A".into()),
                layer: Some(20),
                condition: Some("E0_assistant".into()),
                statistic: m1[s],
                p_reference: 0.001,
                p_principled: 0.001,
            };
            let family = Family::new(GEOMETRY_EM_PRE_POST, 0.01, vec![cell]).unwrap();
            let settings = Settings {
                seed: SEEDS[s],
                ..Settings::default()
            };
            let mut r = assemble(
                Some(b),
                None,
                vec![family],
                BTreeMap::new(),
                Vec::new(),
                &settings,
            )
            .unwrap();
            if s == 1 {
                r.verdicts.reference.h2.outcome = Outcome::Fires;
            }
            r
        })
        .collect()
}

#[test]
fn three_seeds_are_summarised_with_seeds_as_blocks() {
    let summary = summarize(&results()).unwrap();
    assert_eq!(summary.seeds, SEEDS);
    let stat = |name: &str| summary.statistics.iter().find(|s| s.name == name).unwrap();

    // numpy: mean / std(ddof=1) of [2.5, 4.0, 3.1] = 3.2 / 0.754983443527075; scipy 1.17.1
    // ttest_1samp([2.5, 4.0, 3.1], 0) = (7.341303483857975, 0.01805374090845508); the exact
    // sign-flip p of 3 values is 2/8 = 0.25 (permutation_test(..., n_resamples=inf)).
    let h1 = stat("behavior/H1/E4_villain/diff_pp");
    assert_eq!(h1.values, vec![2.5, 4.0, 3.1]);
    assert!((h1.mean - 3.2).abs() < 1e-12 && (h1.sd - 0.754983443527075).abs() < 1e-12);
    let test = h1.test.as_ref().unwrap();
    assert!((test.t_test.t - 7.341303483857975).abs() < 1e-9);
    assert!((test.t_test.p - 0.01805374090845508).abs() < 1e-10);
    assert_eq!((test.p_sign_flip, test.sign_flip_exact), (0.25, true));

    // ttest_1samp([0.051, 0.062, 0.047], 0) = (11.892706339954659, 0.006996201326522964)
    let m1 = stat("geometry_em_pre_post/M1/A/L20/E0_assistant");
    let test = m1.test.as_ref().unwrap();
    assert!((test.t_test.t - 11.892706339954659).abs() < 1e-9);
    assert!((test.t_test.p - 0.006996201326522964).abs() < 1e-10);

    // Levels get no test.
    let level = stat("behavior/mean_bystander/E3_french_person");
    assert_eq!(level.values, vec![53.7, 52.5, 54.1]);
    assert!(level.test.is_none());

    // friedmanchisquare(*LEAKAGE.T) = (11.466666666666669, 0.02179089585829388);
    // page_trend_test in ascending cos order (E4 .. E0) = the reversed columns:
    // (107.0, p increasing 0.9999924768518519), so leakage falls with the cosine:
    // p decreasing = 4.0509259259259265e-05.
    let c = summary.conditions.as_ref().unwrap();
    assert!((c.friedman.statistic - 11.466666666666669).abs() < 1e-9);
    assert!((c.friedman.p - 0.02179089585829388).abs() < 1e-10);
    assert_eq!(c.cos_order.first().map(String::as_str), Some("E4_villain"));
    assert_eq!(c.page.l, 107.0);
    assert!((c.page.p_decreasing - 4.0509259259259265e-05).abs() < 1e-12);

    let h2 = summary.rows["reference"]["H2"];
    assert_eq!((h2.fires, h2.does_not_fire), (1, 2));

    let text = render_markdown(&summary);
    assert!(text.contains("## Across seeds (3 seeds: 42, 43, 44)"), "{text}");
    assert!(text.contains("| H2 | 1 / 2 / 0 |"), "{text}");
    assert!(text.contains("| E4_villain: H1 excess (pp) | 2.50 / 4.00 / 3.10 | 3.20 | 0.75 | 7.34 (df 2) | 0.0181 | 0.2500 |"), "{text}");
    assert!(
        text.contains("Friedman (conditions equal, 3 seeds as blocks): chi-square 11.467 (df 4), p 0.0218"),
        "{text}"
    );
}

#[test]
fn result_files_are_read_and_a_seed_twice_or_another_design_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, r) in results().into_iter().enumerate() {
        let sub = dir.path().join(format!("seed{i}"));
        paths.push(r.write(&sub).unwrap());
    }
    let summary = summarize_files(&paths).unwrap();
    let (json, md) = write_outputs(&summary, dir.path()).unwrap();
    let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(back["seeds"], serde_json::json!([42, 43, 44]));
    assert!(std::fs::read_to_string(md).unwrap().contains("Across seeds"));

    let mut twice = results();
    twice[2].seed = 42;
    assert!(matches!(summarize(&twice), Err(SeedError::DuplicateSeed(42))));
    let mut other = results();
    other[1].behavior.as_mut().unwrap().conditions.pop();
    let err = summarize(&other).unwrap_err().to_string();
    assert!(
        err.contains("seed 43") && err.contains("behaviour conditions"),
        "{err}"
    );
    assert!(matches!(summarize(&[]), Err(SeedError::Empty)));
}
