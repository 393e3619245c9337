//! `pspace analyze behavior` end to end on the reference run's hit counts (bundled in
//! experiments/data): `make reproduce`'s own command line gives the published numbers in
//! result.json, on stdout, in report.md and in report.html, with the figures written; bad
//! inputs stop it with one clear error before anything is written.

use pspace_tests::{pspace_bin, repo_root};
use std::process::Command;

fn reference(name: &str) -> std::path::PathBuf {
    repo_root().join("experiments/data").join(name)
}

/// The arguments of the Makefile's `reproduce` recipe (after `target/release/pspace`), with
/// `$(REPRODUCE_OUT)` replaced by `out`: the test runs what `make reproduce` runs.
fn reproduce_arguments(out: &std::path::Path) -> Vec<String> {
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let recipe = makefile
        .split("\nreproduce:")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .expect("a `reproduce:` target with a one-line recipe in the Makefile");
    let mut words = recipe.split_whitespace();
    assert_eq!(words.next(), Some("target/release/pspace"), "{recipe}");
    words
        .map(|w| w.replace("$(REPRODUCE_OUT)", &out.display().to_string()))
        .collect()
}

#[test]
fn behavior_analysis_of_the_reference_hits() {
    let out = tempfile::tempdir().unwrap();
    let args = reproduce_arguments(out.path());
    assert_eq!(
        &args[..2],
        ["analyze", "behavior"],
        "make reproduce runs `pspace analyze behavior`"
    );
    let status = Command::new(pspace_bin())
        .args(&args)
        .current_dir(repo_root())
        .output()
        .expect("run pspace");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("E0_assistant 45.68, E1_paramedic 48.57, E2_kindergarten_teacher 50.07, E3_french_person 53.71, E4_villain 52.00")
            && stdout.contains("H3: Spearman rho -0.90, exact p 0.0833"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(out.path().join("result.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 3);
    // The FDR level is named so that it is not LoRA's alpha (issue 10 item 1; schema 3).
    let family = &v["families"]["behavior"];
    assert_eq!(family["fdr_alpha"], 0.01, "{family}");
    assert!(family.get("alpha").is_none(), "{family}");
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
    // The published numbers in the report a reader opens, markdown and HTML alike.
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    for text in [&report, &html] {
        for number in ["| 45.68 |", "| 48.57 |", "| 50.07 |", "| 53.71 |", "| 52.00 |"] {
            let cell = number.trim_matches(['|', ' ']);
            assert!(
                text.contains(number) || text.contains(&format!(">{cell}</td>")),
                "report lacks {cell}"
            );
        }
        assert!(
            text.contains("Spearman rho -0.900") && text.contains("exact two-sided p 0.0833"),
            "report lacks H3"
        );
    }
    assert!(html.contains("<svg") && !html.contains("<img"), "figures inline");
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

fn result_of(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("analysis/result.json")).unwrap()).unwrap()
}

/// `pspace analyze --run DIR` re-analysing a run uses the run's own settings (those of its
/// last analysis, as the runner recorded them from the spec: source persona, bootstrap,
/// cv_folds, anchor, fdr_alpha), not the defaults; a flag overrides one setting.
#[test]
fn a_re_analysis_uses_the_run_s_own_settings() {
    let run = run_dir_without_activations();
    let first = Command::new(pspace_bin())
        .args([
            "analyze",
            "--allow-partial",
            "--permutations",
            "300",
            "--bootstrap",
            "50",
            "--cv-folds",
            "3",
            "--source-persona",
            "zelthari_scholar",
            "--anchor",
            "E4_villain",
            "--fdr-alpha",
            "0.05",
            "--run",
        ])
        .arg(run.path())
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let recorded = result_of(run.path())["settings"].clone();
    assert_eq!(recorded["source_persona"], "zelthari_scholar");
    assert_eq!(recorded["cv_folds"], 3);

    let again = Command::new(pspace_bin())
        .args(["analyze", "--seed", "7", "--run"])
        .arg(run.path())
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("the run's own"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let v = result_of(run.path());
    let s = &v["settings"];
    for key in [
        "permutations",
        "bootstrap",
        "cv_folds",
        "source_persona",
        "anchor_condition",
        "allow_partial",
    ] {
        assert_eq!(s[key], recorded[key], "{key}");
    }
    assert_eq!(s["thresholds"]["fdr_alpha"], 0.05);
    assert_eq!(s["seed"], 7, "a flag overrides the run's setting");
    assert_eq!(v["behavior"]["config"]["source_persona"], "zelthari_scholar");
    assert_eq!(v["behavior"]["config"]["bootstrap"], 50);
    assert_eq!(v["behavior"]["H2"]["permutations"], 300);
}
