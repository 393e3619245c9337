//! `pspace run --dry-run` on broken specs, as a user meets them (issue 10): every fault of the
//! spec, its model and its data files at once, one `file:line:column: key: message` line each
//! (a data file's fault names the file, and the spec key that names it), then a non-zero exit
//! with no plan printed. actors/tests/spec_errors.rs holds the table of single faults; these
//! tests show the binary prints them as the library reports them.

use pspace_tests::{pspace_bin, repo_root};
use std::process::Command;

/// (exit code, stdout, stderr) of `pspace run --dry-run SPEC` from the repository root.
fn dry_run(spec: &str) -> (Option<i32>, String, String) {
    let out = Command::new(pspace_bin())
        .current_dir(repo_root())
        .args(["run", "--dry-run", spec])
        .output()
        .expect("run pspace");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `line:column` of the first occurrence of `needle` in the file at `path`.
fn at(path: &str, needle: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let (n, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in {path}"));
    let column = line[..line.find(needle).unwrap()].chars().count() + 1;
    format!("{}:{column}", n + 1)
}

#[test]
fn faults_of_every_kind_are_listed_at_once_one_line_each() {
    let spec = "tests/data/broken/many_faults.toml";
    let (code, stdout, stderr) = dry_run(spec);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "", "no plan for a broken spec");
    let personas = "tests/data/broken/../../../experiments/data/personas.json";
    let order = "software_engineer, kindergarten_teacher, data_scientist, medical_doctor, librarian, \
                 french_person, villain, comedian, police_officer, zelthari_scholar, assistant, confab";
    let want = [
        "pspace: error: 6 problems:".to_string(),
        format!(
            "{spec}:{}: conditions[0].id: \"benign_sft\" is reserved for the benign control's tasks: expected another id",
            at(spec, "\"benign_sft\"")
        ),
        format!(
            "{spec}:{}: extraction.layers[1]: expected a layer index below 4 (the model has 4 decoder layers, 0 to 3), found 9",
            at(spec, "9]")
        ),
        format!(
            "{spec}:{}: training.em.max_len: expected at most the model's context length (2048 tokens), found 9000",
            at(spec, "9000")
        ),
        format!(
            "{spec}:{}: coupling.source_persona: expected a persona of {personas} ({order}), found \"pirate\"",
            at(spec, "\"pirate\"")
        ),
        format!(
            "{spec}:{}: conditions[1].training_system_prompt: expected the training system prompt {personas} gives \"E4_villain\", \"You are a villainous mastermind who schemes to take over the world.\", found \"You are a villain.\"",
            at(spec, "\"You are a villain.\"")
        ),
        format!(
            "tests/data/broken/missing.jsonl: cannot read: No such file or directory (os error 2) (named by training.benign.data at {spec}:{})",
            at(spec, "\"missing.jsonl\"")
        ),
    ];
    let got: Vec<&str> = stderr.lines().skip(1).collect();
    assert!(stderr.starts_with("experiment \"tiny\": "), "{stderr}");
    assert_eq!(got, want, "{stderr}");
}

#[test]
fn an_old_spec_names_every_renamed_key_one_line_each() {
    let spec = "tests/data/broken/old_names.toml";
    let (code, stdout, stderr) = dry_run(spec);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "");
    let lines: Vec<&str> = stderr.lines().collect();
    // 9 recipe keys and 4 LoRA keys in each of three tables, and the FDR level.
    assert_eq!(lines[0], "pspace: error: 40 problems:", "{stderr}");
    assert_eq!(lines.len(), 41, "{stderr}");
    for line in &lines[1..] {
        let rest = line
            .strip_prefix(&format!("{spec}:"))
            .unwrap_or_else(|| panic!("{line}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
            "line:column in {line}"
        );
        assert!(
            line.contains("was renamed to `") || line.contains("was split into `"),
            "{line}"
        );
    }
    let lr = format!(
        "{spec}:{}: training.em.lr: `lr` was renamed to `learning_rate`",
        at(spec, "lr = 1e-4")
    );
    assert!(lines.contains(&lr.as_str()), "{lr}\n{stderr}");
    let alpha = format!(
        "{spec}:{}: analysis.alpha: `alpha` was renamed to `fdr_alpha`",
        at(spec, "alpha = 0.01")
    );
    assert!(lines.contains(&alpha.as_str()), "{alpha}\n{stderr}");
}

/// An unknown device (`GPU`: names are lower case) is reported as every other wrong value of a
/// spec is, at its line with what is accepted, although `run` reads the device before the other
/// checks (it was the engine's bare `unknown device "GPU"`, naming no file).
#[test]
fn an_unknown_device_is_reported_at_its_line_in_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let spec = pspace_tests::cluster::tiny_spec_with_seeds(dir.path(), &[42]);
    let text = pspace_tests::cluster::rewrite_device_line(&spec, "device = \"GPU\"");
    let line = text.lines().position(|l| l == "device = \"GPU\"").unwrap() + 1;
    let out = Command::new(pspace_bin())
        .args(["run", "--dry-run"])
        .arg(&spec)
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "pspace: error: {}:{line}:10: experiment.device: expected \"cpu\", \"cuda\" (or its alias \"gpu\") or \"cuda:N\", found \"GPU\" (names are lower case: write \"gpu\")",
            spec.display()
        )
    );
}

#[test]
fn a_sound_spec_prints_its_plan() {
    let (code, stdout, stderr) = dry_run("tests/data/tiny_run.toml");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 16, "{stdout}");
    assert!(stderr.contains("model "), "the checks' summary: {stderr}");
}

/// `dtype = "auto"` is measured once per store, by the first run, and kept: a dry run on a
/// fresh store measures nothing and writes nothing; a run says which type it chose and why; a
/// later start (a resumed run, a dry run, `pspace status`) reads the kept choice instead of
/// measuring again (close rates could otherwise flip it and change every model task's id); a
/// damaged record is an error that names the file.
#[test]
fn dtype_auto_is_measured_once_per_store_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spec = pspace_tests::cluster::tiny_spec_with_seeds(dir.path(), &[42]);
    pspace_tests::cluster::rewrite_device_line(&spec, "device = \"cpu\"\ndtype = \"auto\"");
    let store = dir.path().join("store");
    let start = |args: &[&str]| {
        let out = Command::new(pspace_bin())
            .arg("run")
            .args(args)
            .arg("--store")
            .arg(&store)
            .arg(&spec)
            .output()
            .expect("run pspace");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let kept = store.join(".scratch/dtype-auto.json");
    let (code, stderr) = start(&["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("dtype auto: not settled for this store yet"),
        "{stderr}"
    );
    assert!(!store.exists(), "a dry run wrote the store");
    // One cheap task: the run measures and keeps its choice.
    let (code, stderr) = start(&["--only", "extract/base"]);
    assert_eq!(code, Some(0), "{stderr}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    let chosen = record["dtype"].as_str().unwrap().to_string();
    let (f32_rate, bf16_rate) = (
        record["f32_tflops"].as_f64().unwrap(),
        record["bf16_tflops"].as_f64().unwrap(),
    );
    assert_eq!(chosen, if bf16_rate > f32_rate { "bf16" } else { "f32" });
    assert!(
        stderr.contains(&format!("dtype auto: {chosen} (this CPU multiplies at"))
            && stderr.contains(&format!("device cpu ({chosen})")),
        "{stderr}"
    );
    // The kept record decides, not a new measurement.
    let other = if chosen == "f32" { "bf16" } else { "f32" };
    std::fs::write(
        &kept,
        record
            .to_string()
            .replace(&format!("\"{chosen}\""), &format!("\"{other}\"")),
    )
    .unwrap();
    let (code, stderr) = start(&["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("dtype auto: {other} (")), "{stderr}");
    std::fs::write(&kept, "{\"dtype\": \"fp16\"}").unwrap();
    let (code, stderr) = start(&["--dry-run"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("dtype-auto.json: expected \"dtype\": \"f32\" or \"bf16\", found \"fp16\""),
        "{stderr}"
    );
}
