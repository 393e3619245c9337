//! A worker asked to stop, as Kubernetes asks a pod it deletes (SIGTERM, then a grace period),
//! finishes and reports the task in hand, takes no new lease, and exits 143, with real processes
//! on loopback. Nothing is thrown away: once another worker finishes the run, every task has
//! exactly one attempt (a worker killed at once leaves its task to run a second time, as
//! `supervision.rs` shows).

use pspace_tests::cluster::{
    coordinator, free_port, lease_of, status_json, store_status_rows, tiny_long_eval_spec_with_seeds, worker,
};
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_the_worker_after_the_task_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    // Marker eval tasks of several seconds: the signal lands inside one.
    let spec = tiny_long_eval_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store");
    let port = free_port();
    let mut coord = coordinator(&spec, store.to_str().unwrap(), port, &[]);
    let mut w = worker("w1", port, &[]);
    let began = Instant::now();
    let task = loop {
        assert!(
            began.elapsed() < Duration::from_secs(300) && w.try_wait().is_none(),
            "w1 never held a marker eval task:\n{}\n{}",
            coord.stderr(),
            w.stderr()
        );
        if let Some((task, _)) = status_json(port).and_then(|s| lease_of(&s, "w1")) {
            if task.contains("/marker_eval/") {
                break task;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    w.signal(libc::SIGTERM);
    let exit = w.wait_for(Duration::from_secs(180));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(143),
        "w1 did not drain and exit 143 after SIGTERM while holding {task}:\n{}",
        w.stderr()
    );
    assert!(
        w.stderr().contains("finishing the task in hand") && w.stderr().contains("drained after SIGTERM"),
        "{}",
        w.stderr()
    );
    let status = status_json(port).expect("the coordinator answers after w1 left");
    assert!(
        lease_of(&status, "w1").is_none(),
        "w1 still holds a lease: {status}"
    );
    let row = status["snapshot"]["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["task"] == task.as_str()).cloned())
        .unwrap_or_default();
    assert_eq!(row["state"], "committed", "the task in hand at SIGTERM: {row}");
    // Another worker finishes the run; no task ran twice.
    let mut w2 = worker("w2", port, &[]);
    assert!(
        coord
            .wait_for(Duration::from_secs(600))
            .is_some_and(|s| s.success()),
        "{}",
        coord.stderr()
    );
    let _ = w2.wait_for(Duration::from_secs(30));
    let rows = store_status_rows(&spec, &store);
    let rerun: Vec<&serde_json::Value> = rows.iter().filter(|r| r["attempts"] != 1).collect();
    assert!(
        rerun.is_empty(),
        "tasks with other than one attempt after the drain of {task}: {rerun:?}"
    );
}
