//! Supervision: a stage that panics fails its role actor, the slot restarts the actor and the
//! task is retried; past the crash budget the run stops with a message naming the task, the
//! class and the last error; and a worker process killed while holding a lease costs only that
//! lease (that one task runs a second attempt, nothing else does).
//!
//! Panics are injected with `PSPACE_FAULT_PANIC=<kind>/<label>:<n>` (the first n attempts of
//! that task panic inside the stage's thread).

use pspace_tests::cluster::{
    coordinator, free_port, store_status_rows, tiny_long_eval_spec_with_seeds, tiny_spec_with_seeds, worker,
    TEST_TIMING,
};
use pspace_tests::pspace_bin;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_with_fault(fault: &str) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(&spec)
        .args(["--store", dir.path().join("store").to_str().unwrap()])
        .env("PSPACE_FAULT_PANIC", fault)
        .envs(TEST_TIMING)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        dir,
    )
}

fn status_rows(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    store_status_rows(&dir.path().join("tiny.toml"), &dir.path().join("store"))
}

fn row<'a>(rows: &'a [serde_json::Value], task: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["task"] == task)
        .unwrap_or_else(|| panic!("no {task} in {rows:?}"))
}

#[test]
fn a_panicking_stage_restarts_its_actor_and_the_task_retries() {
    let (ok, stderr, dir) = run_with_fault("extract/base:2");
    assert!(ok, "the run should survive two panics:\n{stderr}");
    assert_eq!(
        stderr.matches("the extractor actor failed").count(),
        2,
        "two restarts of the extractor:\n{stderr}"
    );
    // The crashed attempts and the backoff after them (1 s, then 2 s) are not extract's time:
    // they counted into it (a task's time ran from its first grant); now they are named apart.
    let times = stderr
        .lines()
        .find(|l| l.starts_with("time by stage: "))
        .unwrap_or_else(|| panic!("no time by stage:\n{stderr}"));
    let lost: f64 = times
        .split_once("not counted above, attempts that did not commit: ")
        .and_then(|(_, rest)| rest.strip_suffix(" s (42/extract/base)"))
        .unwrap_or_else(|| panic!("the lost attempts are not named apart: {times}"))
        .parse()
        .unwrap();
    assert!(lost >= 2.9, "{times}");
    let rows = status_rows(&dir);
    let base = row(&rows, "42/extract/base");
    assert_eq!(base["state"], "committed");
    assert_eq!(base["attempts"], 3, "{base}");
    let failures = base["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{base}");
    assert!(
        failures
            .iter()
            .all(|f| f.as_str().unwrap().starts_with("crash: extractor panicked")),
        "{base}"
    );
}

#[test]
fn past_the_crash_budget_the_run_stops_with_a_clear_message() {
    let (ok, stderr, _dir) = run_with_fault("extract/base:99");
    assert!(!ok, "the run should fail:\n{stderr}");
    assert!(
        stderr.contains(
            "task 42/extract/base failed 4 times (crash), last error: extractor panicked: injected fault"
        ),
        "{stderr}"
    );
}

#[test]
fn a_worker_killed_while_holding_a_lease_costs_only_that_lease() {
    let dir = tempfile::tempdir().unwrap();
    // Its marker_eval tasks take seconds: the kill lands inside one (a sub-second task often
    // committed between the status that showed its lease and the kill).
    let spec = tiny_long_eval_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store");
    let port = free_port();
    let mut coord = coordinator(&spec, store.to_str().unwrap(), port, &[]);
    let victim = worker("victim", port, &[]);
    let began = Instant::now();
    // Wait until the victim holds a lease, then kill it before a survivor exists.
    let task = loop {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the victim never got a lease"
        );
        let out = Command::new(pspace_bin())
            .args([
                "status",
                "--json",
                "--coordinator",
                &format!("http://127.0.0.1:{port}"),
            ])
            .output()
            .unwrap();
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let leased = status["snapshot"]["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|t| {
                    let task = t["task"].as_str().unwrap();
                    (t["state"] == "leased" && task.contains("/marker_eval/")).then(|| task.to_string())
                });
            if let Some(task) = leased {
                break task;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    victim.signal(libc::SIGKILL);
    let mut survivor = worker("survivor", port, &[]);
    let s = coord.wait_for(Duration::from_secs(600));
    assert!(s.is_some_and(|s| s.success()), "{}", coord.stderr());
    assert!(survivor
        .wait_for(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let rows = status_rows(&dir);
    for r in &rows {
        let want = if r["task"] == task.as_str() { 2 } else { 1 };
        assert_eq!(r["attempts"], want, "{r} (the killed lease was on {task})");
    }
    let lost = row(&rows, &task);
    assert!(
        lost["failures"][0]
            .as_str()
            .unwrap()
            .starts_with("preempted: lease expired"),
        "{lost}"
    );
}
