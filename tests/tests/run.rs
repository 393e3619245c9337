//! `pspace run` end to end on `tests/data/tiny_run.toml` (the demo's shape on the 1 MB random
//! Qwen2 fixture): every task of the DAG runs and commits, a second run is a no-op, a second store
//! gets the same task ids and the same bytes (determinism), and a damaged output or a task that
//! died before its manifest is run again alone, restoring the same bytes.

use pspace_tests::{pspace_bin, summary_counts, tiny_spec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the tiny spec into `store`; returns stderr (task lines and the summary).
fn run(store: &Path) -> String {
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(tiny_spec())
        .arg("--store")
        .arg(store)
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    stderr
}

/// Every committed task (path relative to the store) -> its outputs' sha256 (training logs,
/// which hold timings, left out).
fn manifests(store: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![store.join("tiny")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "manifest.json") {
                let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let outputs = m["outputs"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(name, _)| name.as_str() != "train_log.json")
                    .map(|(name, hash)| (name.clone(), hash.as_str().unwrap().to_string()))
                    .collect();
                let task = path.parent().unwrap().strip_prefix(store).unwrap();
                found.insert(task.display().to_string(), outputs);
            }
        }
    }
    found
}

/// Where a committed task's outputs are: its folder's attempt subfolder named by its manifest.
fn outputs_of(task: &Path) -> PathBuf {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(task.join("manifest.json")).unwrap()).unwrap();
    task.join(m["attempt"].as_str().unwrap_or_default())
}

fn task_dir(store: &Path, prefix: &str) -> PathBuf {
    let parent = store.join("tiny/42").join(prefix.split('/').next().unwrap());
    let label = prefix.split('/').nth(1).unwrap();
    std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(label))
        .unwrap_or_else(|| panic!("no task {prefix} under {}", parent.display()))
}

#[test]
fn a_run_commits_every_task_resumes_and_is_reproducible() {
    let first = tempfile::tempdir().unwrap();
    let stderr = run(first.path());
    let (ran, cached) = summary_counts(&stderr);
    assert_eq!((ran, cached), (16, 0), "{stderr}");
    let analyse = outputs_of(&task_dir(first.path(), "analyse/all"));
    for file in ["report.md", "result.json"] {
        assert!(
            analyse.join(file).exists(),
            "{file} missing in {}",
            analyse.display()
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(analyse.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["schema_version"], 3); // analysis schema 3 (fdr_alpha, issue 10)
                                             // Every number of the spec's [analysis] and its source persona reach the analysis (issue 11
                                             // item 3: the runner passed permutations, bootstrap and the FDR level, and cv_folds stayed
                                             // at the default 5).
    let settings = &result["settings"];
    assert_eq!(
        (
            &settings["permutations"],
            &settings["bootstrap"],
            &settings["cv_folds"],
            &settings["source_persona"],
            &settings["thresholds"]["fdr_alpha"],
        ),
        (
            &serde_json::json!(2000),
            &serde_json::json!(200),
            &serde_json::json!(3),
            &serde_json::json!("confab"),
            &serde_json::json!(0.01)
        ),
        "{settings}"
    );
    let committed = manifests(first.path());
    assert_eq!(committed.len(), 16);

    // A finished run is a no-op.
    assert_eq!(summary_counts(&run(first.path())), (0, 16));

    // Another store, the same ids and the same bytes.
    let second = tempfile::tempdir().unwrap();
    run(second.path());
    assert_eq!(manifests(second.path()), committed);

    // A damaged output and a task that died before writing its manifest: those two run again,
    // and only they; their outputs come back byte for byte.
    let extract = task_dir(first.path(), "extract/E0_assistant");
    let original = std::fs::read(outputs_of(&extract).join("A.safetensors")).unwrap();
    std::fs::write(outputs_of(&extract).join("A.safetensors"), b"not activations").unwrap();
    let marker_eval = task_dir(first.path(), "marker_eval/E4_villain");
    std::fs::remove_file(marker_eval.join("manifest.json")).unwrap();
    let stderr = run(first.path());
    assert_eq!(summary_counts(&stderr), (2, 14), "{stderr}");
    assert_eq!(
        std::fs::read(outputs_of(&extract).join("A.safetensors")).unwrap(),
        original
    );
    assert_eq!(manifests(first.path()), committed);
}

/// A run that fails printed `done: N tasks` before its error, the error twice (the worker's
/// line and the command's), and advised allow_shortfall for rows max_len cut to nothing,
/// which only drops them (fresh-user probe). Now the summary says the run failed and which
/// task stopped it, the error comes once, and it says to raise max_len, to at least what.
#[test]
fn a_failed_run_says_it_failed_and_its_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = pspace_tests::cluster::tiny_spec_with_seeds(dir.path(), &[42]);
    // The coupling's max_len (the last of the three): 256 cuts the confab positives to nothing.
    pspace_tests::cluster::edit_spec(&spec, "max_len = 1024\n", "max_len = 256\n", true);
    let store = dir.path().join("store");
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(&spec)
        .arg("--store")
        .arg(&store)
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("done: "), "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("failed: "))
        .unwrap_or_else(|| panic!("no failed summary in:\n{stderr}"));
    assert!(
        summary.contains(" of 16 tasks committed (") && summary.ends_with(" stopped the run"),
        "{summary}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("pspace: error: "))
        .unwrap_or_else(|| panic!("no error in:\n{stderr}"));
    let cause = "rows cannot be trained on (nothing left to learn after truncation";
    assert!(error.contains(cause), "{error}");
    assert_eq!(
        stderr.matches(cause).count(),
        1,
        "the error is said more than once:\n{stderr}"
    );
    assert!(
        error.contains("max_len = 256 cut ") && error.contains("raise max_len in [coupling] to at least "),
        "{error}"
    );
    assert!(!error.contains("allow_shortfall"), "{error}");
    assert!(
        stderr.find(summary) < stderr.find(error),
        "the error ends the output:\n{stderr}"
    );
}
