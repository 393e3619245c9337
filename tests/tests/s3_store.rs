//! `pspace run --store s3://...` against a real S3-compatible server with create-only writes:
//! SeaweedFS's `weed mini` on loopback, reached through object_store's S3 client with signed
//! requests from the environment. The run commits every task there, resumes from there, re-runs
//! a task whose object was damaged (the HEAD-only check sees the new entity tag), and a wrong
//! secret key is a clear error. (s3s-fs, which served this test before, is now refused at start:
//! it checks and then writes; see store_conformance.rs.)

use object_store::{path::Path as StorePath, ObjectStore};
use pspace_tests::seaweedfs::{SeaweedFs, SECRET_KEY};
use pspace_tests::{pspace_bin, summary_counts, tiny_spec};
use std::path::Path;
use std::process::{Command, Output};

const PREFIX: &str = "pspace/runs";

fn run(s3: &SeaweedFs, secret: &str, scratch: &Path) -> Output {
    Command::new(pspace_bin())
        .arg("run")
        .arg(tiny_spec())
        .args(["--store", &s3.url(PREFIX)])
        .envs(s3.env())
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("PSPACE_SCRATCH", scratch)
        .output()
        .expect("run pspace")
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    stderr
}

/// Every key in the bucket under `prefix`, sorted.
fn keys(s3: &SeaweedFs, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let client = s3.client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut keys: Vec<String> = runtime.block_on(async {
        client
            .list(Some(&StorePath::from(prefix)))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap()
    });
    keys.sort();
    keys
}

/// The task folders (`.../<kind>/<task id>`) of one kind, from the keys under the seed's folder.
fn task_dirs(keys: &[String], seed_dir: &str, kind: &str) -> Vec<String> {
    let mut dirs: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&format!("{seed_dir}/{kind}/")))
        .filter_map(|rest| rest.split('/').next())
        .map(|id| format!("{seed_dir}/{kind}/{id}"))
        .collect();
    dirs.dedup();
    dirs
}

#[test]
fn a_run_commits_to_s3_resumes_from_it_and_names_a_bad_key() {
    let s3 = SeaweedFs::start();
    let scratch = tempfile::tempdir().unwrap();

    let stderr = succeeded(&run(&s3, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (16, 0), "{stderr}");
    // The objects are on the server, under the prefix; the start-up probe left nothing.
    let seed_dir = format!("{PREFIX}/tiny/42");
    let all = keys(&s3, PREFIX);
    assert_eq!(
        task_dirs(&all, &seed_dir, "extract").len(),
        4,
        "base, two EM conditions, benign"
    );
    let analyse = &task_dirs(&all, &seed_dir, "analyse")[0];
    for object in ["manifest.json", "result.json", "report.md"] {
        assert!(
            all.iter()
                .any(|k| k.starts_with(analyse.as_str()) && k.ends_with(object)),
            "{object} not in the bucket under {analyse}: {all:?}"
        );
    }
    assert_eq!(
        keys(&s3, &format!("{PREFIX}/_pspace/probe")),
        Vec::<String>::new()
    );

    // Resume from the bucket; a damaged object makes its task (alone) run again.
    let stderr = succeeded(&run(&s3, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (0, 16), "{stderr}");
    let hits = all
        .iter()
        .find(|k| k.contains("/marker_eval/") && k.ends_with("marker_hits.json"))
        .unwrap_or_else(|| panic!("no marker_hits.json in {all:?}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(s3.client().put(&StorePath::from(hits.as_str()), "{}".into()))
        .unwrap();
    let stderr = succeeded(&run(&s3, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (1, 15), "{stderr}");

    // A wrong secret: the server refuses the signature and the error names the store.
    let out = run(&s3, "not-the-secret", scratch.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad key must fail:\n{stderr}");
    assert!(
        stderr.contains(&s3.url(PREFIX)) && stderr.to_lowercase().contains("signature"),
        "the error should name the store and say it refused the signature:\n{stderr}"
    );
}
