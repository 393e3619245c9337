//! Pod loss, with real processes on loopback: during one run of the tiny spec, at least ten
//! worker SIGKILLs at seeded random moments (each lost worker replaced, as Kubernetes would),
//! one worker SIGSTOPped past its lease and then SIGCONTed (its late completion is refused and
//! nothing of it is committed), and one coordinator SIGKILL and restart. The run still ends with
//! a result.json byte-identical to an undisturbed `pspace run`, every manifest verifies, no task
//! is committed twice, and `pspace status` shows the attempts.
//!
//! The chaos is drawn from a seed printed at the start (`PSPACE_CHAOS_SEED` replays one).

use pspace_tests::cluster::{
    coordinator, free_port, lease_of, manifests, result_paths, run_embedded, status_json,
    tiny_long_eval_spec_with_seeds, verify_all, worker, Proc,
};
use pspace_tests::pspace_bin;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// SplitMix64: a seeded stream of chaos decisions, the same on every machine.
struct Chaos(u64);

impl Chaos {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn a_run_survives_killed_stalled_and_restarted_processes() {
    let seed: u64 = std::env::var("PSPACE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("pod_loss: chaos seed {seed} (PSPACE_CHAOS_SEED={seed} replays it)");
    let mut chaos = Chaos(seed);
    let dir = tempfile::tempdir().unwrap();
    // The spec whose marker_eval tasks take seconds: ten kills, a stall and a coordinator
    // restart must all land before the run ends (the tiny spec's ~10 s of tasks often ended
    // first once the machine was not loaded).
    let spec = tiny_long_eval_spec_with_seeds(dir.path(), &[42]);
    let calm = dir.path().join("calm");
    let (stdout, _) = run_embedded(&spec, calm.to_str().unwrap(), &[]);
    let expected = result_paths(&stdout);

    let store = dir.path().join("chaos");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    let mut coord = coordinator(&spec, &store_s, port, &[]);
    let mut next_name = 0;
    let spawn = |next: &mut usize| {
        *next += 1;
        worker(&format!("w{next}"), port, &[])
    };
    let mut workers: Vec<Proc> = (0..3).map(|_| spawn(&mut next_name)).collect();
    let mut exited: Vec<Proc> = Vec::new();
    let (mut kills, mut stalled, mut coordinator_restarted) = (0, false, false);
    let mut stalled_lease: Option<(String, String, String)> = None;
    let began = Instant::now();
    let finished = loop {
        assert!(
            began.elapsed() < Duration::from_secs(900),
            "the run did not finish in 15 minutes"
        );
        if let Some(s) = coord.try_wait() {
            if s.success() {
                break true;
            }
            panic!("the coordinator failed:\n{}", coord.stderr());
        }
        std::thread::sleep(Duration::from_millis(300 + chaos.below(900)));
        // Replace workers that ended (a lost lease ends the process with status 3).
        for w in workers.iter_mut() {
            if w.try_wait().is_some() {
                let old = std::mem::replace(w, spawn(&mut next_name));
                exited.push(old);
            }
        }
        if kills < 10 {
            let victim = chaos.below(workers.len() as u64) as usize;
            workers[victim].signal(libc::SIGKILL);
            kills += 1;
            let _ = workers[victim].wait_for(Duration::from_secs(5));
            continue;
        }
        if !stalled {
            let Some(status) = status_json(port) else { continue };
            let Some(i) = (0..workers.len()).find(|&i| lease_of(&status, &workers[i].name).is_some()) else {
                continue;
            };
            let (task, lease) = lease_of(&status, &workers[i].name).unwrap();
            workers[i].signal(libc::SIGSTOP);
            // The status is a moment old: a worker that was already reporting its task when it
            // stopped commits it all the same. Only a stop whose lease is still out counts.
            std::thread::sleep(Duration::from_millis(300));
            let still_out = status_json(port)
                .and_then(|s| lease_of(&s, &workers[i].name))
                .is_some_and(|(_, l)| l == lease);
            if !still_out {
                workers[i].signal(libc::SIGCONT);
                continue;
            }
            std::thread::sleep(Duration::from_millis(3_700)); // past its 1.5 s lease
            workers[i].signal(libc::SIGCONT);
            stalled_lease = Some((workers[i].name.clone(), task, lease));
            stalled = true;
            continue;
        }
        if !coordinator_restarted {
            coord.signal(libc::SIGKILL);
            let _ = coord.wait_for(Duration::from_secs(5));
            exited.push(std::mem::replace(
                &mut coord,
                coordinator(&spec, &store_s, port, &[]),
            ));
            coordinator_restarted = true;
        }
    };
    assert!(finished);
    assert!(
        kills >= 10 && stalled && coordinator_restarted,
        "chaos not done: {kills} kills"
    );

    // The result is the undisturbed run's, byte for byte.
    let got = result_paths(&coord.stdout());
    assert_eq!(got.len(), 1, "{}", coord.stdout());
    assert_eq!(
        std::fs::read(&expected[0]).unwrap(),
        std::fs::read(&got[0]).unwrap()
    );

    // Every manifest verifies; one manifest per task folder, 16 task folders.
    let committed: Vec<String> = manifests(&store)
        .into_keys()
        .filter(|k| !k.contains("_coordinator"))
        .collect();
    assert_eq!(committed.len(), 16, "{committed:?}");
    assert!(verify_all(&store) >= 16);

    // The stalled worker's attempt committed nothing.
    let (name, task, lease) = stalled_lease.unwrap();
    let attempt: Vec<&str> = lease.rsplitn(3, ':').collect();
    let prefix = format!("a{}-{}", attempt[1], &attempt[0][8..]);
    let stalled_dir_manifests: Vec<serde_json::Value> = manifests(&store)
        .into_iter()
        .filter(|(_, m)| m["attempt"] == prefix.as_str())
        .map(|(_, m)| m)
        .collect();
    assert!(
        stalled_dir_manifests.is_empty(),
        "{name}'s attempt {prefix} of {task} was committed"
    );

    // Status from the store shows the attempts the chaos cost.
    let out = Command::new(pspace_bin())
        .args(["status", "--json"])
        .arg(&spec)
        .args(["--store", &store_s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let retried = rows
        .iter()
        .filter(|r| r["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    assert!(rows.iter().all(|r| r["state"] == "committed"), "{rows:?}");
    assert!(retried >= 1, "no task shows a retry: {rows:?}");
    eprintln!(
        "pod_loss: {kills} kills, {retried} tasks retried, {} workers replaced",
        exited.len()
    );
    let _ = Path::new(&store_s);
}
