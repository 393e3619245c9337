//! `pspace status` read from a store (no `--coordinator`), as a user meets it: a run's store
//! after one task, then the table and `--json`. The states carry the coordinator's words (a
//! task that can start now is `ready` in both forms, as `TaskPhase` serialises it).

use pspace_actors::scheduler::TaskPhase;
use pspace_tests::cluster::tiny_spec_with_seeds;
use pspace_tests::pspace_bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A folder with the tiny spec (`tiny.toml`) and its store (`store`) after `extract/base` ran:
/// that task committed, the trainings ready, the rest waiting on them.
fn store_after_one_task() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store");
    let out = Command::new(pspace_bin())
        .args(["run", "--only", "extract/base", "--store"])
        .arg(&store)
        .arg(&spec)
        .output()
        .expect("run pspace");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, spec, store)
}

/// (exit code, stdout, stderr) of `pspace status SPEC --store STORE` with `args`.
fn status(spec: &Path, store: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(pspace_bin())
        .arg("status")
        .args(args)
        .arg(spec)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run pspace status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A task that can start now is `ready` (it was `to run` here and `ready` from a coordinator):
/// every state the store form writes is one the coordinator's `TaskPhase` reads, and the table
/// prints each task's JSON word.
#[test]
fn status_from_the_store_uses_the_coordinator_s_words() {
    let (_dir, spec, store) = store_after_one_task();
    let (code, stdout, stderr) = status(&spec, &store, &["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for row in &rows {
        let phase: TaskPhase = serde_json::from_value(row["state"].clone())
            .unwrap_or_else(|e| panic!("{row}: not a coordinator state: {e}"));
        seen.insert(phase.as_str());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["committed", "ready", "waiting"],
        "{stdout}"
    );
    let base = rows.iter().find(|r| r["task"] == "42/extract/base").unwrap();
    assert_eq!(base["state"], "committed", "{base}");

    let (code, table, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!table.contains("to run"), "{table}");
    for row in &rows {
        let task = row["task"].as_str().unwrap();
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(task))
            .unwrap_or_else(|| panic!("no line for {task} in:\n{table}"));
        assert_eq!(line.split_whitespace().nth(1), row["state"].as_str(), "{line}");
    }
}

/// Every file and folder under `root` with its size and modification time.
fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, (bool, u64, std::time::SystemTime)> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            found.insert(path, (meta.is_dir(), meta.len(), meta.modified().unwrap()));
        }
    }
    found
}

/// `pspace status` only reads: it creates, changes and removes nothing in the store or its
/// scratch folder (it wrote `.scratch/file-digests.json`, the run's digest cache), both where a
/// run left a cache and where there is none (a store copied without its scratch folder), and
/// `--json` alike.
#[test]
fn status_from_the_store_writes_nothing() {
    let (_dir, spec, store) = store_after_one_task();
    let scratch = store.join(".scratch");
    let cache = scratch.join("file-digests.json");
    assert!(
        cache.is_file(),
        "the run keeps its digests in {}",
        cache.display()
    );
    for without_cache in [false, true] {
        if without_cache {
            std::fs::remove_dir_all(&scratch).unwrap();
        }
        for args in [&[][..], &["--json"][..]] {
            let before = tree(&store);
            let (code, _, stderr) = status(&spec, &store, args);
            assert_eq!(code, Some(0), "{stderr}");
            let after = tree(&store);
            let changed: Vec<_> = before
                .keys()
                .chain(after.keys())
                .filter(|p| before.get(*p) != after.get(*p))
                .collect();
            assert!(
                changed.is_empty(),
                "status {args:?} changed {changed:?} (scratch removed first: {without_cache})"
            );
        }
    }
}

/// With `dtype = "auto"` not yet settled for a store (no run with it kept a choice there),
/// status plans the ids a run here would compute in, measured now and not kept: a store written
/// by the same spec without `dtype` holds none of them. (It reported that store's tasks as
/// committed, and a run then computed every one of them again.)
#[test]
fn status_of_an_unsettled_auto_spec_counts_what_a_run_would_reuse() {
    let (dir, spec, store) = store_after_one_task();
    let (code, out, _) = status(&spec, &store, &["--json"]);
    assert_eq!(code, Some(0));
    let committed = |json: &str| {
        let rows: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        rows.iter().filter(|r| r["state"] == "committed").count()
    };
    assert_eq!(committed(&out), 1, "{out}");
    let text = std::fs::read_to_string(&spec).unwrap();
    let auto = dir.path().join("auto.toml");
    std::fs::write(
        &auto,
        text.replacen("[experiment]", "[experiment]\ndtype = \"auto\"", 1),
    )
    .unwrap();
    let (code, out, err) = status(&auto, &store, &["--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        committed(&out),
        0,
        "a run with dtype auto reuses none of these: {out}\n{err}"
    );
    assert!(err.contains("measured now and not kept"), "{err}");
    assert!(
        !store.join(".scratch/dtype-auto.json").exists(),
        "status kept a dtype choice"
    );
}

/// A folder that is not this spec's store was read as a store with nothing done: every task
/// `ready` or `waiting`, exit 0, whatever the folder held (a fresh-user probe pointed it at an
/// unrelated folder and at another spec's store). Now: another spec's store, an unrelated
/// folder and one experiment's folder given as the store each exit 1 saying what was expected
/// and what is there; an empty folder still reads as nothing committed yet, and says so.
#[test]
fn status_of_a_folder_that_is_not_this_spec_s_store_says_so() {
    let (dir, spec, store) = store_after_one_task();
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(
        text.contains("name = \"tiny\"\n"),
        "the tiny spec's name line moved"
    );
    let other = dir.path().join("other.toml");
    std::fs::write(&other, text.replace("name = \"tiny\"\n", "name = \"other\"\n")).unwrap();

    let (code, stdout, stderr) = status(&other, &store, &[]);
    assert_eq!(code, Some(1), "another spec's store:\n{stdout}{stderr}");
    let root = store.display();
    assert!(
        stderr.contains(&format!(
            "{root} holds no store of experiment \"other\": a run of this spec writes under {root}/other/, which is not there; found tiny/ (the store of experiment \"tiny\")"
        )),
        "{stderr}"
    );
    assert_eq!(stdout, "", "no table for a store of another spec");
    // --json too: the error as JSON on stdout, no rows (stdout was empty, which a script
    // reading it could not parse).
    let (code, stdout, _) = status(&other, &store, &["--json"]);
    assert_eq!(code, Some(1), "{stdout}");
    let error: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json failed without JSON ({e}):\n{stdout}"));
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("holds no store of experiment \"other\"")),
        "{error}"
    );
    assert_eq!(error.as_object().map(|o| o.len()), Some(1), "{error}");

    let unrelated = dir.path().join("unrelated");
    std::fs::create_dir_all(unrelated.join("src")).unwrap();
    std::fs::write(unrelated.join("README"), "x").unwrap();
    let (code, _, stderr) = status(&spec, &unrelated, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("holds no store of experiment \"tiny\""),
        "{stderr}"
    );
    assert!(stderr.contains("found src/, README."), "{stderr}");

    let (code, _, stderr) = status(&spec, &store.join("tiny"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the store is the folder above it"), "{stderr}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, stdout, stderr) = status(&spec, &empty, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "nothing committed yet: {} holds no run of experiment \"tiny\"",
            empty.display()
        )),
        "{stdout}"
    );
    let (code, stdout, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("nothing committed yet"), "{stdout}");
}

/// `pspace status` counts a task's attempts and failures by its task id, not by its key
/// (`seed/kind/label`): after a spec change gives `extract/base` a new id, the new task that ran
/// once showed the old task's two attempts and its crash (fresh-user probe). The JSON names the
/// id each row's attempts belong to.
#[test]
fn attempts_and_failures_belong_to_the_task_id_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store");
    let run = |fault: Option<&str>| {
        let mut cmd = Command::new(pspace_bin());
        cmd.args(["run", "--only", "extract/base", "--store"])
            .arg(&store)
            .arg(&spec);
        if let Some(fault) = fault {
            cmd.env("PSPACE_FAULT_PANIC", fault);
        }
        let out = cmd.output().expect("run pspace");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let base = || {
        let (code, stdout, stderr) = status(&spec, &store, &["--json"]);
        assert_eq!(code, Some(0), "{stderr}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
        rows.into_iter().find(|r| r["task"] == "42/extract/base").unwrap()
    };
    // One crash, then the second attempt commits.
    run(Some("extract/base:1"));
    let before = base();
    assert_eq!(
        (&before["state"], &before["attempts"]),
        (&"committed".into(), &2.into()),
        "{before}"
    );
    assert_eq!(before["failures"].as_array().unwrap().len(), 1, "{before}");
    // Another extraction length: another task under the same key, run once.
    pspace_tests::cluster::edit_spec(&spec, "max_new_tokens = 24\n", "max_new_tokens = 20\n", false);
    run(None);
    let after = base();
    assert_eq!(after["state"], "committed", "{after}");
    assert_eq!(after["attempts"], 1, "the new task ran once: {after}");
    assert_eq!(after["failures"], serde_json::json!([]), "{after}");
    assert_ne!(
        after["id"], before["id"],
        "the spec change gives extract/base a new id"
    );
    assert!(after["id"].as_str().is_some_and(|id| !id.is_empty()), "{after}");
}

/// A store folder that does not exist yet was an error ("no store at ..."), while an empty
/// folder listed the plan under `nothing committed yet` (fresh-user probe). Both are a store no
/// run wrote to yet: the plan is listed, the line says the folder does not exist yet, and
/// status does not create it. A file in the folder's place is still an error.
#[test]
fn status_of_a_store_folder_that_does_not_exist_yet_lists_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let missing = dir.path().join("not-yet");
    let (code, stdout, stderr) = status(&spec, &missing, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "nothing committed yet: the store folder {} does not exist yet",
            missing.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["42/extract/base", "ready"])),
        "{stdout}"
    );
    assert!(stdout.contains("tasks: 0 of "), "{stdout}");
    assert!(!missing.exists(), "status created the store folder");
    let (code, stdout, stderr) = status(&spec, &missing, &["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert!(rows.iter().all(|r| r["state"] != "committed"), "{stdout}");
    assert!(!missing.exists(), "status --json created the store folder");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, _, stderr) = status(&spec, &file, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is a file, not a store folder"), "{stderr}");
}

/// The tiny spec in `dir` with `from` replaced by `to` (once), for a spec a run refuses.
fn tiny_spec_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let spec = tiny_spec_with_seeds(dir, &[42]);
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains(from), "the tiny spec has no {from:?}");
    std::fs::write(&spec, text.replacen(from, to, 1)).unwrap();
    spec
}

/// The `pspace: error:` part of a failed command's stderr (from that line to the end).
fn error_part(stderr: &str) -> &str {
    &stderr[stderr
        .find("pspace: error:")
        .unwrap_or_else(|| panic!("no error in:\n{stderr}"))..]
}

/// A spec whose data file is missing: status failed on it without naming the file's key or
/// the spec's line (fresh-user probe); now it says what `run` says, the missing path and the
/// key that names it at its line in the spec.
#[test]
fn status_of_a_spec_whose_data_file_is_missing_names_the_path_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with(dir.path(), "demo_em.jsonl\"", "no_such_em.jsonl\"");
    let store = dir.path().join("store");
    let (code, stdout, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("no_such_em.jsonl: cannot read"))
        .unwrap_or_else(|| panic!("no line names the missing file:\n{stderr}"));
    assert!(
        line.contains(&format!("(named by training.em.data at {}:", spec.display())),
        "{line}"
    );
    assert_eq!(stdout, "", "no table for a spec a run refuses");
}

/// A spec `run` refuses (cv_folds = 1) was listed by status as if it could run (fresh-user
/// probe): status checks the spec as a run does and ends with the same error and exit code.
#[test]
fn status_refuses_a_spec_that_run_refuses_with_the_same_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with(dir.path(), "cv_folds = 3\n", "cv_folds = 1\n");
    let store = dir.path().join("store");
    let (code, stdout, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("analysis.cv_folds: expected at least 2 folds, found 1"),
        "{stderr}"
    );
    let run = Command::new(pspace_bin())
        .args(["run", "--dry-run", "--store"])
        .arg(&store)
        .arg(&spec)
        .output()
        .expect("run pspace");
    let run_err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), code, "{run_err}");
    assert_eq!(error_part(&stderr), error_part(&run_err));
}

/// A task `ready` again after it failed, or after the spec changed since it committed, showed
/// as plain `ready` (fresh-user probe). Its line now says why, from what the store knows: its
/// failures under its id (`ready (failed 1x: ...)`), and its key's earlier commit under
/// another id, compared value by value (`ready (spec changed: max_new_tokens 24 -> 20)`).
#[test]
fn a_ready_task_that_failed_or_whose_spec_changed_says_why() {
    let (_dir, spec, store) = store_after_one_task();
    pspace_tests::cluster::edit_spec(&spec, "max_new_tokens = 24\n", "max_new_tokens = 20\n", false);
    let (code, stdout, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("42/extract/base "))
        .unwrap_or_else(|| panic!("no extract/base line:\n{stdout}"));
    assert!(
        line.contains("ready (spec changed: max_new_tokens 24 -> 20)"),
        "{line}"
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&status(&spec, &store, &["--json"]).1).unwrap();
    let base = rows.iter().find(|r| r["task"] == "42/extract/base").unwrap();
    assert_eq!(base["reason"], "spec changed: max_new_tokens 24 -> 20", "{base}");
    let never = rows
        .iter()
        .find(|r| r["task"] == "42/train_em/E0_assistant")
        .unwrap();
    assert_eq!(never["reason"], serde_json::Value::Null, "{never}");

    // A deterministic failure: max_len 256 cuts the coupling's positives to nothing.
    pspace_tests::cluster::edit_spec(&spec, "max_len = 1024\n", "max_len = 256\n", true);
    let out = Command::new(pspace_bin())
        .args(["run", "--only", "train_coupling/E0_assistant", "--store"])
        .arg(&store)
        .arg(&spec)
        .output()
        .expect("run pspace");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, stdout, stderr) = status(&spec, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("42/train_coupling/E0_assistant "))
        .unwrap_or_else(|| panic!("no train_coupling line:\n{stdout}"));
    assert!(line.contains("ready (failed 1x: coupling: "), "{line}");
}

/// A read-only status printed `hashed 1.2 MB of model and data files ...` where no run had kept
/// the digests (fresh-user probe): it hashes what it must and says nothing of it.
#[test]
fn status_keeps_quiet_about_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let (code, stdout, stderr) = status(&spec, &dir.path().join("store"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("hashed"), "{stderr}");
    assert!(!stdout.contains("hashed"), "{stdout}");
}
