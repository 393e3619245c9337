//! Known answers: the crate's BH, Holm, Spearman (with its exact permutation p) and percentile
//! intervals against scipy / statsmodels / numpy values committed by
//! scripts/fixtures/make_stats_fixtures.py.

use pspace_analysis::stats::correlation::{spearman, spearman_permutation_test};
use pspace_analysis::stats::multiple::{benjamini_hochberg, holm};
use pspace_analysis::stats::permutation::percentile_interval;
use pspace_analysis::stats::rng::seeded_rng;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats_known_answers.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read the fixture"))
        .expect("parse the fixture")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn close(found: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}");
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        assert!((f - e).abs() <= tolerance, "{what}[{i}]: {f} vs {e}");
    }
}

#[test]
fn bh_and_holm_match_statsmodels() {
    let data = fixture();
    let cases = data["multiple"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (i, case) in cases.iter().enumerate() {
        let p = floats(&case["p"]);
        close(
            &benjamini_hochberg(&p).unwrap(),
            &floats(&case["bh"]),
            1e-12,
            &format!("bh case {i}"),
        );
        close(
            &holm(&p).unwrap(),
            &floats(&case["holm"]),
            1e-12,
            &format!("holm case {i}"),
        );
    }
}

#[test]
fn spearman_matches_scipy_with_exact_p() {
    let data = fixture();
    for (i, case) in data["spearman"].as_array().unwrap().iter().enumerate() {
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        let rho = case["rho"].as_f64().unwrap();
        assert!((spearman(&x, &y).unwrap() - rho).abs() < 1e-12, "case {i}");
        let test = spearman_permutation_test(&x, &y, 0, &mut seeded_rng(0, "unused")).unwrap();
        assert!((test.rho - rho).abs() < 1e-12, "case {i}");
        assert!(test.exact, "case {i}");
        assert_eq!(
            test.orderings as u64,
            case["orderings"].as_u64().unwrap(),
            "case {i}"
        );
        let p = case["p_exact_two_sided"].as_f64().unwrap();
        assert!(
            (test.p - p).abs() < 1e-12,
            "case {i}: p {} vs scipy-enumerated {p}",
            test.p
        );
    }
}

#[test]
fn percentile_intervals_match_numpy() {
    let data = fixture();
    for (i, case) in data["percentile"].as_array().unwrap().iter().enumerate() {
        let values = floats(&case["values"]);
        let level = case["level"].as_f64().unwrap();
        let found = percentile_interval(&values, level).unwrap();
        close(
            &found,
            &floats(&case["interval"]),
            1e-12,
            &format!("percentile case {i}"),
        );
    }
}
