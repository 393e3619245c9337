//! The distributed runtime end to end, with real processes on loopback: a `pspace coordinator`
//! and three `pspace worker` processes finish the tiny spec with two seeds, and every seed's
//! result.json is byte-identical to what `pspace run` (coordinator and worker in one process)
//! writes for the same spec; once on a local folder and once on a real S3 server with
//! create-only writes (SeaweedFS).

use pspace_tests::cluster::{
    coordinator, free_port, manifests, result_paths, run_embedded, tiny_spec_with_seeds, verify_all, worker,
};
use pspace_tests::seaweedfs::SeaweedFs;
use std::path::Path;
use std::time::Duration;

const SEEDS: [u64; 2] = [42, 7];

/// A coordinator and three workers on `store` until the coordinator exits; returns its stdout.
/// With the default lease timing (1 s heartbeats, 10 s leases): this test is about identical
/// results, and the short test leases expire when a loaded 2-core machine starves a heartbeat
/// for 1.5 s (pod_loss.rs tests lost leases on purpose).
fn distributed(spec: &Path, store: &str, env: &[(String, String)]) -> String {
    let mut env = env.to_vec();
    env.push(("PSPACE_HEARTBEAT_MS".into(), "1000".into()));
    env.push(("PSPACE_LEASE_MS".into(), "10000".into()));
    let env = env.as_slice();
    let port = free_port();
    let mut coord = coordinator(spec, store, port, env);
    let mut workers: Vec<_> = (0..3).map(|i| worker(&format!("w{i}"), port, env)).collect();
    let status = coord.wait_for(Duration::from_secs(600));
    let log = || {
        let mut all = format!("coordinator:\n{}\n", coord.stderr());
        for w in &workers {
            all.push_str(&format!("{}:\n{}\n", w.name, w.stderr()));
        }
        all
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the coordinator failed or hung:\n{}",
        log()
    );
    for w in &mut workers {
        let s = w.wait_for(Duration::from_secs(30));
        assert!(
            s.is_some_and(|s| s.success()),
            "{} did not finish cleanly:\n{}",
            w.name,
            w.stderr()
        );
    }
    // Every worker took part (three slots pulling leases from one coordinator).
    coord.stdout()
}

/// The bytes of `s3://bucket/key` on the test server.
fn read_s3(s3: &SeaweedFs, url: &str) -> Vec<u8> {
    use object_store::ObjectStore;
    let key = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .map(|(_, k)| k.to_string())
        .unwrap_or_else(|| panic!("not an s3:// url: {url}"));
    let client = s3.client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let got = client
            .get(&object_store::path::Path::from(key.as_str()))
            .await
            .unwrap();
        got.bytes().await.unwrap().to_vec()
    })
}

#[test]
fn three_workers_match_pspace_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &SEEDS);
    let embedded = dir.path().join("embedded");
    let (stdout, _) = run_embedded(&spec, embedded.to_str().unwrap(), &[]);
    let expected = result_paths(&stdout);
    assert_eq!(expected.len(), SEEDS.len(), "one result per seed:\n{stdout}");

    let cluster = dir.path().join("cluster");
    let stdout = distributed(&spec, cluster.to_str().unwrap(), &[]);
    let got = result_paths(&stdout);
    assert_eq!(got.len(), SEEDS.len(), "one result per seed:\n{stdout}");
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(
            std::fs::read(e).unwrap(),
            std::fs::read(g).unwrap(),
            "{g} differs from {e}"
        );
    }
    // The same tasks with the same ids and output hashes (training logs hold timings).
    let strip = |store: &Path| {
        manifests(store)
            .into_iter()
            .filter(|(k, _)| !k.contains("_coordinator"))
            .map(|(k, m)| {
                let mut outputs = m["outputs"].as_object().unwrap().clone();
                outputs.remove("train_log.json");
                (k, serde_json::Value::Object(outputs))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(strip(&cluster), strip(&embedded));
    // 16 tasks per seed and the analyst's cross-seed summary.
    assert_eq!(strip(&cluster).len(), 16 * SEEDS.len() + 1);
    assert!(verify_all(&cluster) > 0);
    let summary = seeds_path(&stdout);
    let seeds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.replace("seeds.md", "seeds.json")).unwrap()).unwrap();
    assert_eq!(seeds["seeds"], serde_json::json!([7, 42]), "{seeds}");
    assert!(std::fs::read_to_string(&summary).unwrap().contains("42"));
}

/// The `seeds:` line (the cross-seed summary) of a run's stdout.
fn seeds_path(stdout: &str) -> String {
    let found: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("seeds: ")).collect();
    assert_eq!(found.len(), 1, "one cross-seed summary:\n{stdout}");
    found[0].to_string()
}

#[test]
fn three_workers_on_seaweedfs_match_pspace_run() {
    let s3 = SeaweedFs::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &SEEDS);
    let (run_stdout, _) = run_embedded(&spec, &s3.url("embedded"), &env);
    let expected = result_paths(&run_stdout);
    let stdout = distributed(&spec, &s3.url("cluster"), &env);
    let got = result_paths(&stdout);
    assert_eq!(got.len(), SEEDS.len(), "one result per seed:\n{stdout}");
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(read_s3(&s3, e), read_s3(&s3, g), "{g} differs from {e}");
    }
    // The cross-seed summary too: its bytes follow from the results.
    let (e, g) = (seeds_path(&run_stdout), seeds_path(&stdout));
    assert_eq!(read_s3(&s3, &e), read_s3(&s3, &g), "{g} differs from {e}");
}

/// `dtype = "auto"` is settled once, by the coordinator, and every worker computes in that type
/// rather than settling its own: with the coordinator's kept record saying the type this CPU
/// would not choose, the workers' result.json is byte-identical to `pspace run` with that type
/// written in the spec (a worker that settled by itself would compute in the other type).
#[test]
fn workers_compute_in_the_type_the_coordinator_settled() {
    let dir = tempfile::tempdir().unwrap();
    let with_dtype = |sub: &str, value: &str| {
        let folder = dir.path().join(sub);
        std::fs::create_dir_all(&folder).unwrap();
        let spec = tiny_spec_with_seeds(&folder, &[42]);
        let lines = format!("device = \"cpu\"\ndtype = \"{value}\"");
        pspace_tests::cluster::rewrite_device_line(&spec, &lines);
        spec
    };
    let auto = with_dtype("auto", "auto");
    // What this CPU settles to, from the record a one-task run keeps.
    let probe = dir.path().join("probe");
    let out = std::process::Command::new(pspace_tests::pspace_bin())
        .args(["run", "--only", "extract/base", "--store"])
        .arg(&probe)
        .arg(&auto)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record = std::fs::read_to_string(probe.join(".scratch/dtype-auto.json")).unwrap();
    let own: serde_json::Value = serde_json::from_str(&record).unwrap();
    let other = if own["dtype"] == "f32" { "bf16" } else { "f32" };

    let embedded = dir.path().join("embedded");
    let (stdout, _) = run_embedded(&with_dtype("fixed", other), embedded.to_str().unwrap(), &[]);
    let expected = result_paths(&stdout);

    let cluster = dir.path().join("cluster");
    std::fs::create_dir_all(cluster.join(".scratch")).unwrap();
    std::fs::write(
        cluster.join(".scratch/dtype-auto.json"),
        record.replace(
            &format!("\"{}\"", own["dtype"].as_str().unwrap()),
            &format!("\"{other}\""),
        ),
    )
    .unwrap();
    let stdout = distributed(&auto, cluster.to_str().unwrap(), &[]);
    let got = result_paths(&stdout);
    assert_eq!((expected.len(), got.len()), (1, 1), "one result each:\n{stdout}");
    assert_eq!(
        std::fs::read(&expected[0]).unwrap(),
        std::fs::read(&got[0]).unwrap(),
        "the workers did not compute in the coordinator's {other}: {} differs from {}",
        got[0],
        expected[0]
    );
}
