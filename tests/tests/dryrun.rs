//! The dry-run tools end to end through the binary, on the CPU: `pspace dryrun-data` writes the
//! same bytes for the same seed; `pspace run tests/data/tiny_dryrun.toml` (random:tiny weights,
//! generated training sets, completions ended at drawn lengths) commits every task, and
//! `--only` runs a task with its dependencies alone; `pspace probe` and `pspace train` take
//! `--model random:tiny`; `dry_run_lengths` on a real model is refused before any compute.

use pspace_tests::{pspace_bin, repo_root, summary_counts};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pspace(args: &[&str]) -> Output {
    Command::new(pspace_bin())
        .args(args)
        .output()
        .expect("run pspace")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace failed:\n{stderr}");
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// Writes the dry run's data (24 rows a set) and the tiny dry-run spec into `dir`; the spec.
fn tiny_dryrun(dir: &Path) -> PathBuf {
    let data = dir.join("dryrun");
    let out = pspace(&[
        "dryrun-data",
        "--out",
        path(&data),
        "--em-rows",
        "24",
        "--benign-rows",
        "24",
        "--model",
        "random:tiny",
    ]);
    ok(&out);
    let text = std::fs::read_to_string(repo_root().join("tests/data/tiny_dryrun.toml")).unwrap();
    let spec = dir.join("tiny_dryrun.toml");
    std::fs::write(
        &spec,
        text.replace("\"../../", &format!("\"{}/", repo_root().display())),
    )
    .unwrap();
    spec
}

fn jsonl_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

/// The attempt folder of the one committed task whose folder name starts with `label` under
/// `store/<experiment>/42/<kind>`.
fn outputs(store: &Path, experiment: &str, kind: &str, label: &str) -> PathBuf {
    let parent = store.join(experiment).join("42").join(kind);
    let task = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(label))
        .unwrap_or_else(|| panic!("no {kind}/{label} under {}", parent.display()));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(task.join("manifest.json")).unwrap()).unwrap();
    task.join(m["attempt"].as_str().unwrap())
}

#[test]
fn generated_sets_are_deterministic_and_sized() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut summaries = Vec::new();
    for dir in [a.path(), b.path()] {
        let out = pspace(&[
            "dryrun-data",
            "--out",
            path(dir),
            "--em-rows",
            "40",
            "--benign-rows",
            "200",
        ]);
        ok(&out);
        summaries.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    for set in ["em.jsonl", "benign.jsonl"] {
        assert_eq!(
            std::fs::read(a.path().join(set)).unwrap(),
            std::fs::read(b.path().join(set)).unwrap(),
            "{set}"
        );
    }
    assert_eq!(
        (
            jsonl_rows(&a.path().join("em.jsonl")),
            jsonl_rows(&a.path().join("benign.jsonl"))
        ),
        (40, 200)
    );
    let summary: serde_json::Value = serde_json::from_str(summaries[0].trim()).unwrap();
    assert_eq!(summary["tokenizer"], "random:qwen2.5-7b@0");
    assert_eq!(summary["em"]["lengths"]["rows"], 40);
    let em_mean = summary["em"]["lengths"]["mean_tokens"].as_f64().unwrap();
    let benign_mean = summary["benign"]["lengths"]["mean_tokens"].as_f64().unwrap();
    assert!(em_mean > 150.0 && benign_mean > 2.0 * em_mean, "{summary}");
}

#[test]
fn a_tiny_dry_run_commits_every_task_with_drawn_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_dryrun(dir.path());
    let store = dir.path().join("store");

    // --only: a marker eval and what it needs, nothing else.
    let plan = pspace(&[
        "run",
        path(&spec),
        "--dry-run",
        "--only",
        "marker_eval/E4_villain",
    ]);
    ok(&plan);
    let planned = String::from_utf8_lossy(&plan.stdout).to_string();
    assert_eq!(planned.lines().count(), 5, "{planned}");
    let stderr = ok(&pspace(&[
        "run",
        path(&spec),
        "--store",
        path(&store),
        "--only",
        "marker_eval/E4_villain",
    ]));
    assert_eq!(summary_counts(&stderr), (5, 0), "{stderr}");
    assert!(stderr.contains("random:tiny@1: qwen2, 4 layers"), "{stderr}");

    // The whole run finds those five committed (same ids) and runs the other eleven.
    let stderr = ok(&pspace(&["run", path(&spec), "--store", path(&store)]));
    assert_eq!(summary_counts(&stderr), (11, 5), "{stderr}");
    let analyse = outputs(&store, "tiny-dryrun", "analyse", "all");
    assert!(analyse.join("report.md").exists());

    // 12 personas x 4 questions x 2 completions, each ended at its drawn length (mean 10 of a
    // budget of 32): their lengths vary as the drawn lengths do.
    let eval = outputs(&store, "tiny-dryrun", "marker_eval", "E0_assistant");
    let completions: Vec<serde_json::Value> = std::fs::read_to_string(eval.join("completions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(completions.len(), 96);
    let chars: Vec<usize> = completions
        .iter()
        .map(|c| c["completion"].as_str().unwrap().chars().count())
        .collect();
    let (short, long) = (chars.iter().min().unwrap(), chars.iter().max().unwrap());
    assert!(long > &(2 * short), "completion lengths {chars:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval.parent().unwrap().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["spec"]["params"]["stage"]["dry_run_lengths"],
        serde_json::json!({"mean": 10.0, "sigma": 0.5})
    );
    // The model enters the id by its digest (issue 11 item 1); random weights have no files, so
    // theirs is the sha256 of their canonical name.
    use sha2::{Digest, Sha256};
    assert_eq!(
        manifest["spec"]["params"]["files"]["model"],
        format!("{:x}", Sha256::digest(b"random:tiny@1"))
    );
}

#[test]
fn probe_and_train_take_a_random_model() {
    let out = pspace(&[
        "probe",
        "--model",
        "random:tiny",
        "--user",
        "Hi",
        "--layers",
        "0,3",
        "--generate",
        "6",
    ]);
    ok(&out);
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probe["model"], "random:tiny@0");
    assert_eq!(probe["hidden"]["3"].as_array().unwrap().len(), 64);
    assert!(probe["prompt_text"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>assistant"));
    let bad = pspace(&["probe", "--model", "random:tiny", "--user", "Hi", "--layers", "4"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("random:tiny@0 has 4 layers"));
    let bad = pspace(&[
        "probe",
        "--model",
        "random:gpt-5",
        "--user",
        "Hi",
        "--layers",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("unknown preset \"gpt-5\""),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    let data = repo_root().join("experiments/data/demo_em.jsonl");
    let out = pspace(&[
        "train",
        "--model",
        "random:tiny@2",
        "--recipe",
        "em",
        "--max-steps",
        "1",
        "--data",
        path(&data),
        "--out",
        path(&adapter),
    ]);
    ok(&out);
    assert!(adapter.join("adapter_model.safetensors").exists());
}

#[test]
fn dry_run_lengths_on_a_real_model_are_refused_before_any_compute() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_dryrun(dir.path());
    let fixture = repo_root().join("engine/tests/fixtures/tiny-qwen2");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "model = \"random:tiny@1\"",
        &format!("model = \"{}\"", fixture.display()),
    );
    std::fs::write(&spec, text).unwrap();
    let out = pspace(&["run", path(&spec), "--store", path(&dir.path().join("store"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("only a dry run on random weights may do").count(),
        3,
        "{stderr}"
    );
    assert!(!dir.path().join("store").join("tiny-dryrun").exists());
}
