//! `pspace analyze behavior` end to end on the reference run's hit counts: the result file has
//! the documented keys and the reference's numbers, the report and figures are written, and
//! bad inputs stop it with one clear error before anything is written.

use pspace_tests::{pspace_bin, repo_root};
use std::process::Command;

fn reference(name: &str) -> std::path::PathBuf {
    repo_root().join("../shared/reference").join(name)
}

#[test]
fn behavior_analysis_of_the_reference_hits() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(pspace_bin())
        .args(["analyze", "behavior", "--hits"])
        .arg(reference("reference_marker_hits.json"))
        .arg("--personas")
        .arg(reference("personas.json"))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run pspace");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(out.path().join("result.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 1);
    let b = &v["behavior"];
    let expected = [
        ("E0_assistant", 45.68),
        ("E1_paramedic", 48.57),
        ("E2_kindergarten_teacher", 50.07),
        ("E3_french_person", 53.71),
        ("E4_villain", 52.00),
    ];
    for (condition, value) in expected {
        let found = b["mean_bystander"][condition].as_f64().unwrap();
        assert!((found - value).abs() < 0.005, "{condition}: {found}");
    }
    for (condition, k) in [
        ("E0_assistant", 9.0),
        ("E2_kindergarten_teacher", 10.0),
        ("E3_french_person", 3.0),
        ("E4_villain", 1.0),
    ] {
        let p = b["H1"][condition]["p_exact"].as_f64().unwrap();
        assert!((p - k / 11.0).abs() < 1e-12, "{condition}: {p}");
    }
    assert!((b["H2"]["range_pp"].as_f64().unwrap() - 8.04).abs() < 0.005);
    let p_ref = b["H2"]["p_reference"].as_f64().unwrap();
    assert!((p_ref - 0.0028).abs() < 0.0016, "H2 p_reference {p_ref}");
    assert!((b["H3"]["rho"].as_f64().unwrap() + 0.9).abs() < 1e-12);
    assert!((b["H3"]["p_exact"].as_f64().unwrap() - 0.0833).abs() < 1e-4);
    // The pre-registered verdicts of the reference: none of H1, H2, H3 fires.
    for row in ["H1", "H2", "H3"] {
        assert_eq!(
            v["verdicts"]["reference"][row]["outcome"], "does_not_fire",
            "{row}"
        );
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("8.04 pp"), "report lacks the H2 range");
    for figure in [
        "hero.png",
        "hero.svg",
        "leakage_heatmap.png",
        "leakage_heatmap.svg",
    ] {
        let meta = std::fs::metadata(out.path().join(figure)).unwrap();
        assert!(meta.len() > 1000, "{figure} is nearly empty");
        assert!(
            report.contains(figure.trim_end_matches(".svg").trim_end_matches(".png")),
            "{figure}"
        );
    }
}

#[test]
fn a_missing_condition_is_an_error_unless_partial_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(reference("reference_marker_hits.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["conditions"].as_object_mut().unwrap().remove("E4_villain");
    let hits = dir.path().join("hits.json");
    std::fs::write(&hits, v.to_string()).unwrap();
    let run = |extra: &[&str]| {
        Command::new(pspace_bin())
            .args(["analyze", "behavior", "--hits"])
            .arg(&hits)
            .arg("--personas")
            .arg(reference("personas.json"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(extra)
            .output()
            .expect("run pspace")
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("E4_villain") && err.contains("--allow-partial"),
        "{err}"
    );
    assert!(
        !dir.path().join("out/result.json").exists(),
        "nothing may be written before the checks pass"
    );
    let partial = run(&["--allow-partial"]);
    assert!(
        partial.status.success(),
        "{}",
        String::from_utf8_lossy(&partial.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/result.json")).unwrap()).unwrap();
    assert_eq!(v["partial"], true);
    let report = std::fs::read_to_string(dir.path().join("out/report.md")).unwrap();
    assert!(report.contains("PARTIAL ANALYSIS"));
}

#[test]
fn a_persona_mismatch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(reference("reference_marker_hits.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["conditions"]["E2_kindergarten_teacher"]
        .as_object_mut()
        .unwrap()
        .remove("librarian");
    let hits = dir.path().join("hits.json");
    std::fs::write(&hits, v.to_string()).unwrap();
    let out = Command::new(pspace_bin())
        .args(["analyze", "behavior", "--hits"])
        .arg(&hits)
        .arg("--personas")
        .arg(reference("personas.json"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("run pspace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("E2_kindergarten_teacher") && err.contains("librarian"),
        "{err}"
    );
}

/// A run directory with marker hits split per condition and no activations yet.
fn run_dir_without_activations() -> tempfile::TempDir {
    let run = tempfile::tempdir().unwrap();
    std::fs::copy(reference("personas.json"), run.path().join("personas.json")).unwrap();
    let text = std::fs::read_to_string(reference("reference_marker_hits.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    std::fs::create_dir_all(run.path().join("marker_hits")).unwrap();
    for (condition, data) in v["conditions"].as_object().unwrap() {
        let file = serde_json::json!({"completions_per_question": 10, "conditions": {condition: data}});
        std::fs::write(
            run.path().join(format!("marker_hits/{condition}.json")),
            file.to_string(),
        )
        .unwrap();
    }
    run
}

#[test]
fn a_run_without_activations_needs_allow_partial() {
    let run = run_dir_without_activations();
    let refused = Command::new(pspace_bin())
        .args(["analyze", "--run"])
        .arg(run.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("no activations") && err.contains("--allow-partial"),
        "{err}"
    );
    assert!(!run.path().join("analysis/result.json").exists());

    let partial = Command::new(pspace_bin())
        .args([
            "analyze",
            "--allow-partial",
            "--permutations",
            "2000",
            "--bootstrap",
            "200",
            "--run",
        ])
        .arg(run.path())
        .output()
        .unwrap();
    assert!(
        partial.status.success(),
        "{}",
        String::from_utf8_lossy(&partial.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path().join("analysis/result.json")).unwrap())
            .unwrap();
    assert_eq!(v["partial"], true);
    assert!(
        (v["behavior"]["mean_bystander"]["E3_french_person"]
            .as_f64()
            .unwrap()
            - 53.71)
            .abs()
            < 0.005
    );
    assert_eq!(
        v["inputs"].as_object().unwrap().len(),
        6,
        "personas + 5 hit files"
    );
    assert_eq!(v["verdicts"]["reference"]["G1"], serde_json::Value::Null);
}
