//! Acceptance: the behavioural analysis reproduces the reference run's published numbers from
//! its per-question hit counts, bundled in `experiments/data/` (README there: source, sha256).

use pspace_analysis::behavior::{analyze, BehaviorConfig};
use pspace_analysis::input::{MarkerHits, Personas};
use std::path::PathBuf;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../experiments/data")
}

fn reference_result() -> pspace_analysis::behavior::BehaviorResult {
    let dir = reference_dir();
    let personas = Personas::load(&dir.join("personas.json")).expect("read the reference personas.json");
    let hits = MarkerHits::load(&[dir.join("reference_marker_hits.json")], &personas, Some(10))
        .expect("read the reference marker hits");
    analyze(&hits, &personas, &BehaviorConfig::default()).expect("analyse the reference hits")
}

#[test]
fn mean_bystander_leakage_matches_the_reference() {
    let r = reference_result();
    let expected = [
        ("E0_assistant", 45.68),
        ("E1_paramedic", 48.57),
        ("E2_kindergarten_teacher", 50.07),
        ("E3_french_person", 53.71),
        ("E4_villain", 52.00),
    ];
    for (condition, value) in expected {
        let found = r.mean_bystander[condition];
        assert!((found - value).abs() < 0.005, "{condition}: {found} vs {value}");
    }
    assert_eq!(r.bystanders["E0_assistant"].len(), 10);
    assert_eq!(r.bystanders["E1_paramedic"].len(), 11);
    // Confab source rates published alongside: 75.4 .. 89.6 %.
    assert!((r.source_rate["E0_assistant"] - 75.36).abs() < 0.01);
    assert!((r.source_rate["E1_paramedic"] - 89.64).abs() < 0.01);
}

#[test]
fn h1_exact_p_values_match_the_reference() {
    let r = reference_result();
    for (condition, k) in [
        ("E0_assistant", 9),
        ("E2_kindergarten_teacher", 10),
        ("E3_french_person", 3),
        ("E4_villain", 1),
    ] {
        let h1 = &r.h1[condition];
        assert!(h1.testable, "{condition}");
        assert_eq!(h1.rank_k, Some(k), "{condition}");
        assert_eq!(h1.rank_n, Some(11), "{condition}");
        assert!(
            (h1.p_exact.unwrap() - k as f64 / 11.0).abs() < 1e-12,
            "{condition}"
        );
    }
    assert!(!r.h1["E1_paramedic"].testable);
    // The villain's published self-leakage excess: +8.0 pp.
    assert!((r.h1["E4_villain"].diff_pp.unwrap() - 8.0).abs() < 0.05);
}

#[test]
fn h2_matches_the_reference() {
    let r = reference_result();
    let h2 = r.h2.expect("H2 with 5 conditions");
    assert!((h2.range_pp - 8.04).abs() < 0.005, "{}", h2.range_pp);
    // The reference drew 10,000 permutations and got 0.0028; with 10,000 of ours the Monte
    // Carlo standard error is about 0.0005, so allow 3 of them.
    assert_eq!(h2.permutations, 10_000);
    let tolerance = 3.0 * (0.0028f64 * (1.0 - 0.0028) / 10_000.0).sqrt();
    assert!(
        (h2.p_reference - 0.0028).abs() <= tolerance,
        "p_reference {}",
        h2.p_reference
    );
    assert!(h2.p_principled > 0.0 && h2.p_principled <= 1.0);
}

#[test]
fn h3_matches_the_reference() {
    let r = reference_result();
    let h3 = r.h3.expect("H3 with 5 conditions");
    assert!((h3.rho + 0.9).abs() < 1e-12, "{}", h3.rho);
    assert!((h3.p_exact - 10.0 / 120.0).abs() < 1e-12, "{}", h3.p_exact);
    assert_eq!(h3.orderings, 120);
    let ci = h3.ci_rho.expect("bootstrap interval");
    assert!(ci[0] <= h3.rho && h3.rho <= ci[1], "{ci:?}");
}

/// The bundled files are the original run's, byte for byte (experiments/data/README.md): a
/// changed file would change the published numbers this suite reproduces.
#[test]
fn the_bundled_reference_files_are_the_original_bytes() {
    use pspace_analysis::result::InputRecord;
    let dir = reference_dir();
    for (file, sha256) in [
        (
            "reference_marker_hits.json",
            "a81db0802c4610a1be303213546fee25f2598995477f516a610847906e2c56f7",
        ),
        (
            "personas.json",
            "de7baa551a9e4720cef2cbcb20c8cbec5d819b2a7c7b9957a18d0ad78c838dca",
        ),
        (
            "questions.json",
            "3f0486c2574d69c474c5812b1caa578d1ec7c145b09e0a312849838aee77fcb8",
        ),
    ] {
        let record = InputRecord::of(&dir.join(file)).expect("read a bundled file");
        assert_eq!(record.sha256, sha256, "{file}");
    }
}

/// The published numbers in the written report (what `make reproduce` shows a reader), with the
/// default settings of `pspace analyze behavior`. `PSPACE_KEEP_REPORT=DIR` keeps the folder.
#[test]
fn the_report_of_the_reference_states_the_published_numbers() {
    use pspace_analysis::pipeline::{analyze_behavior_with, write_outputs, BehaviorInputs, Settings};
    let dir = reference_dir();
    let inputs = BehaviorInputs {
        hits: vec![dir.join("reference_marker_hits.json")],
        personas: dir.join("personas.json"),
        default_completions: Some(10),
    };
    let result = analyze_behavior_with(&inputs, &Settings::default()).unwrap();
    let out = match std::env::var_os("PSPACE_KEEP_REPORT") {
        Some(d) => PathBuf::from(d),
        None => tempfile::tempdir().unwrap().keep(),
    };
    let (_, report) = write_outputs(&result, &out).unwrap();
    let text = std::fs::read_to_string(report).unwrap();
    for row in [
        "| E0_assistant | assistant | ",
        "| 45.68 |",
        "| 48.57 |",
        "| 50.07 |",
        "| 53.71 |",
        "| 52.00 |",
    ] {
        assert!(text.contains(row), "report lacks {row:?}");
    }
    assert!(
        text.contains("**H3** Spearman rho -0.900") && text.contains("exact two-sided p 0.0833"),
        "report lacks H3 -0.90 / 0.0833"
    );
}
