//! `pspace run --store s3://...` against a real S3-compatible server: s3s-fs (the S3 protocol
//! over HTTP, objects kept as files) listens on a local port in this test process, and the
//! `pspace` process talks to it through object_store's S3 client with signed requests. The run
//! commits every task there, resumes from there, re-runs a task whose object was damaged, and a
//! wrong secret key is a clear error.

use pspace_tests::{pspace_bin, summary_counts, tiny_spec};
use std::path::Path;
use std::process::{Command, Output};

const ACCESS_KEY: &str = "pspace-test";
const SECRET_KEY: &str = "pspace-test-secret";
const BUCKET: &str = "lab";

/// Serves the S3 API for the buckets (folders) under `root` on 127.0.0.1; returns the port.
fn start_s3_server(root: &Path) -> u16 {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the S3 server");
        runtime.block_on(async move {
            let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs over the temporary folder");
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            let service = builder.build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port");
            port_tx
                .send(listener.local_addr().expect("bound").port())
                .expect("the test waits");
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let connection = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
    });
    port_rx.recv().expect("the S3 server started")
}

fn run(port: u16, secret: &str, scratch: &Path) -> Output {
    Command::new(pspace_bin())
        .arg("run")
        .arg(tiny_spec())
        .args(["--store", &format!("s3://{BUCKET}/pspace/runs")])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("PSPACE_SCRATCH", scratch)
        .output()
        .expect("run pspace")
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    stderr
}

#[test]
fn a_run_commits_to_s3_resumes_from_it_and_names_a_bad_key() {
    let server_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(server_root.path().join(BUCKET)).unwrap();
    let port = start_s3_server(server_root.path());
    let scratch = tempfile::tempdir().unwrap();

    let stderr = succeeded(&run(port, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (16, 0), "{stderr}");
    // The objects are on the server, under the prefix.
    let runs = server_root.path().join(BUCKET).join("pspace/runs/tiny/42");
    let extracts: Vec<_> = std::fs::read_dir(runs.join("extract")).unwrap().collect();
    assert_eq!(extracts.len(), 4, "base, two EM conditions, benign");
    let analyse = std::fs::read_dir(runs.join("analyse"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for object in ["manifest.json", "result.json", "report.md"] {
        assert!(analyse.join(object).exists(), "{object} not in the bucket");
    }

    // Resume from the bucket; a damaged object makes its task (alone) run again.
    let stderr = succeeded(&run(port, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (0, 16), "{stderr}");
    let marker_eval = std::fs::read_dir(runs.join("marker_eval"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    std::fs::write(marker_eval.join("marker_hits.json"), b"{}").unwrap();
    let stderr = succeeded(&run(port, SECRET_KEY, scratch.path()));
    assert_eq!(summary_counts(&stderr), (1, 15), "{stderr}");

    // A wrong secret: the server refuses the signature and the error names the store.
    let out = run(port, "not-the-secret", scratch.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad key must fail:\n{stderr}");
    assert!(
        stderr.contains("store") && stderr.to_lowercase().contains("signature"),
        "the error should say the store refused the signature:\n{stderr}"
    );
}
