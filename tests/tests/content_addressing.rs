//! Content addressing through the binary (issue 11 item 1): `pspace run` on a copy of
//! `tests/data/tiny_run.toml` whose personas file and model are copies in a temporary folder.
//! An edited personas file re-runs extraction, on-policy generation, the coupling, marker eval
//! and the analysis, and nothing upstream (the EM and benign trainings stay committed); a changed
//! base model re-runs every task. Before, task ids held the model's name and no file's content,
//! so both edits re-ran nothing and the old outputs were reused. A worker process whose model
//! differs from the one the coordinator fingerprinted refuses the tasks that read it.

use pspace_actors::fingerprint::DigestCache;
use pspace_tests::cluster::{coordinator, free_port, manifests, worker};
use pspace_tests::{pspace_bin, repo_root, summary_counts};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The tiny spec with every path absolute, its personas file and model the copies in `dir`.
fn spec_in(dir: &Path) -> std::path::PathBuf {
    let repo = repo_root();
    let text = std::fs::read_to_string(repo.join("tests/data/tiny_run.toml")).unwrap();
    let data = repo.join("experiments/data");
    let text = text
        .replace(
            "\"../../engine/tests/fixtures/tiny-qwen2\"",
            &format!("{:?}", dir.join("model").display().to_string()),
        )
        .replace(
            "\"../../experiments/data/personas.json\"",
            &format!("{:?}", dir.join("personas.json").display().to_string()),
        )
        .replace("\"../../experiments/data/", &format!("\"{}/", data.display()));
    assert!(!text.contains("\"../"), "every path is absolute:\n{text}");
    let spec = dir.join("tiny_run.toml");
    std::fs::write(&spec, text).unwrap();
    std::fs::copy(data.join("personas.json"), dir.join("personas.json")).unwrap();
    let fixture = repo.join("engine/tests/fixtures/tiny-qwen2");
    std::fs::create_dir_all(dir.join("model")).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("model").join(path.file_name().unwrap())).unwrap();
    }
    spec
}

fn run(spec: &Path, store: &Path) -> String {
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(spec)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    stderr
}

/// Committed task folders per kind (`train_em` -> 2, ...): each id a task ever had.
fn folders(store: &Path) -> BTreeMap<String, usize> {
    let seed = store.join("tiny/42");
    std::fs::read_dir(&seed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|kind| {
            let committed = std::fs::read_dir(&kind)
                .unwrap()
                .filter(|t| t.as_ref().unwrap().path().join("manifest.json").exists())
                .count();
            (
                kind.file_name().unwrap().to_string_lossy().into_owned(),
                committed,
            )
        })
        .collect()
}

#[test]
fn an_edited_personas_file_reruns_what_reads_it_and_a_new_model_reruns_everything() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let store = dir.path().join("store");
    assert_eq!(summary_counts(&run(&spec, &store)), (16, 0));
    let first = folders(&store);
    let once: BTreeMap<String, usize> = [
        ("analyse", 1),
        ("build_coupling", 2),
        ("extract", 4),
        ("generate_onpolicy", 2),
        ("marker_eval", 2),
        ("train_benign", 1),
        ("train_coupling", 2),
        ("train_em", 2),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(first, once);
    // Unchanged files: nothing runs, and the digests come from the cache.
    let again = run(&spec, &store);
    assert_eq!(summary_counts(&again), (0, 16), "{again}");
    assert!(!again.contains("hashed "), "nothing is hashed again: {again}");

    // Another prompt for one eval persona.
    let personas = dir.path().join("personas.json");
    let text = std::fs::read_to_string(&personas).unwrap();
    let edited = text.replace(
        "\"You are a librarian who helps people find information and manages a public library.\"",
        "\"You are a librarian.\"",
    );
    assert_ne!(edited, text);
    std::fs::write(&personas, edited).unwrap();
    let stderr = run(&spec, &store);
    // 16 tasks less the two EM trainings and the benign training.
    assert_eq!(summary_counts(&stderr), (13, 3), "{stderr}");
    let second = folders(&store);
    for (kind, n) in &second {
        let upstream = kind == "train_em" || kind == "train_benign";
        let want = if upstream { once[kind] } else { 2 * once[kind] };
        assert_eq!(*n, want, "{kind}: {second:?}");
    }

    // A changed base model (one more file in its folder): every task reads it, directly or
    // through its inputs.
    std::fs::write(dir.path().join("model/README.md"), "a note\n").unwrap();
    let stderr = run(&spec, &store);
    assert_eq!(summary_counts(&stderr), (16, 0), "{stderr}");
}

/// The coordinator fingerprints the model when it starts; the model then changes (one more file
/// in its folder) before a worker on the same path starts. The worker must not run a task under
/// an id that describes other weights: the first task it leases fails with a deterministic error
/// naming the model's folder, the digest the task was planned with and the one found, the run
/// stops, and nothing is committed. Before, a worker checked only the persona and question files
/// and ran every task on whatever model it found.
#[test]
fn a_worker_whose_model_differs_from_the_coordinators_refuses_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let store = dir.path().join("store");
    let model = dir.path().join("model");
    let planned = DigestCache::in_memory().model(&model).unwrap();
    let port = free_port();
    let mut coord = coordinator(&spec, store.to_str().unwrap(), port, &[]);
    std::fs::write(model.join("README.md"), "a note\n").unwrap();
    let found = DigestCache::in_memory().model(&model).unwrap();
    assert_ne!(planned, found);
    let scratch = dir.path().join("worker-scratch").display().to_string();
    let mut w = worker("other-model", port, &[("PSPACE_SCRATCH".into(), scratch)]);
    let status = coord.wait_for(Duration::from_secs(300));
    let stderr = coord.stderr();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the run should fail:\n{stderr}"
    );
    let refusal = format!(
        "{}: this worker's copy of the base model (sha256 over its files' names and digests) is not the one task ",
        model.display()
    );
    let digests = format!("expected sha256 {planned} (the coordinator's), found {found} here");
    assert!(
        stderr.contains("failed with a deterministic error (not retried)")
            && stderr.contains(&refusal)
            && stderr.contains(&digests),
        "{stderr}"
    );
    assert!(w.wait_for(Duration::from_secs(60)).is_some(), "{}", w.stderr());
    assert!(manifests(&store).is_empty(), "nothing commits");
}
