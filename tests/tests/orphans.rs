//! Outputs that no manifest will name are removed from the store: an attempt that uploaded and
//! then lost its lease, was cut off or was killed before its commit leaves a folder of its own in
//! the task folder (`<task>/<attempt>/...`). When the task commits, the coordinator deletes every
//! other attempt's folder; a late report of a task another attempt committed has its folder
//! deleted too. Real processes on loopback, a local store.

use pspace_tests::cluster::{coordinator, free_port, manifests, tiny_spec_with_seeds, verify_all, worker};
use std::path::Path;
use std::time::Duration;

/// A coordinator and one worker on `store` until the run ends.
fn run_cluster(spec: &Path, store: &Path) {
    let env = [
        ("PSPACE_HEARTBEAT_MS".to_string(), "1000".to_string()),
        ("PSPACE_LEASE_MS".to_string(), "10000".to_string()),
    ];
    let port = free_port();
    let mut coord = coordinator(spec, store.to_str().unwrap(), port, &env);
    let mut w = worker("w0", port, &env);
    let status = coord.wait_for(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "the coordinator failed or hung:\n{}\n{}",
        coord.stderr(),
        w.stderr()
    );
    let _ = w.wait_for(Duration::from_secs(30));
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn a_commit_removes_the_outputs_other_attempts_left() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store");
    run_cluster(&spec, &store);
    let found = manifests(&store);
    let (task, first) = found
        .iter()
        .find(|(_, m)| m["kind"] == "analyse")
        .unwrap_or_else(|| panic!("no analysis committed: {:?}", found.keys()));
    let task_dir = store.join(task);
    let first_attempt = first["attempt"].as_str().unwrap().to_string();
    assert!(
        !first_attempt.is_empty(),
        "a distributed commit names its attempt: {first}"
    );
    // What a worker killed after uploading would leave, and a folder that is not an attempt's.
    let orphan = task_dir.join("a9-0badc0de").join("result.json");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"{\"partial\": true}").unwrap();
    let notes = task_dir.join("notes").join("readme.txt");
    std::fs::create_dir_all(notes.parent().unwrap()).unwrap();
    std::fs::write(&notes, b"kept").unwrap();
    // The task runs again (its manifest gone), and its first attempt's outputs are then
    // another attempt's too.
    std::fs::remove_file(task_dir.join("manifest.json")).unwrap();
    run_cluster(&spec, &store);
    let again = &manifests(&store)[task];
    let second_attempt = again["attempt"].as_str().unwrap().to_string();
    assert_ne!(second_attempt, first_attempt);
    let left = files(&task_dir);
    assert!(
        !orphan.exists(),
        "the planted attempt's output is still there: {left:?}"
    );
    assert!(
        left.iter().all(|f| !f.starts_with(&format!("{first_attempt}/"))),
        "the first attempt's outputs are still there: {left:?}"
    );
    assert!(
        left.iter().any(|f| f.starts_with(&format!("{second_attempt}/"))),
        "{left:?}"
    );
    assert!(
        notes.exists(),
        "a folder not named as an attempt was removed: {left:?}"
    );
    assert!(verify_all(&store) > 0);
}
