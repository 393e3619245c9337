//! Security of the coordinator's port, with real processes and certificates made here (rcgen):
//! a TLS + token coordinator refuses a worker without the token, one with a wrong token, a
//! plaintext client and a client that does not trust its certificate, each with a message that
//! says which; the right worker then runs the tiny spec to the end over TLS. A mutual-TLS
//! coordinator listening on 0.0.0.0 refuses a client without a certificate and answers one with
//! it (status and health); SIGTERM makes it exit 143 within its grace. A non-loopback listen
//! address without TLS and a token is refused unless --insecure, which warns. The token never
//! appears in anything any process printed.

use pspace_tests::cluster::{
    coordinator_with, free_port, result_paths, tiny_spec_with_seeds, worker_at, Proc,
};
use pspace_tests::pki::Pki;
use pspace_tests::pspace_bin;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A refused worker exits 1 quickly; returns its stderr.
fn refused(mut w: Proc, why: &str) -> String {
    let status = w.wait_for(Duration::from_secs(60));
    let err = w.stderr();
    assert!(
        status.is_some_and(|s| s.code() == Some(1)),
        "{} should exit 1 ({why}); it did not:\n{err}",
        w.name
    );
    eprintln!("auth: {why}: {}", err.lines().last().unwrap_or_default());
    err
}

/// One `pspace <args>` to the end: (exit code, stdout, stderr).
fn pspace(args: &[String], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(pspace_bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PSPACE_TOKEN")
        .output()
        .expect("run pspace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn tls_and_token_admit_only_the_right_clients() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(&dir.path().join("pki"), &["localhost", "127.0.0.1"]);
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let mut printed: Vec<String> = Vec::new();

    // A non-loopback address without TLS and a token is refused at start...
    let (code, out, err) = pspace(
        &[
            strings(&["coordinator", &s(&spec), "--store"]),
            vec![s(&dir.path().join("open")), "--listen".into(), "0.0.0.0:0".into()],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 1, "an open non-loopback port must be refused:\n{err}");
    assert!(
        err.contains("refusing to listen on 0.0.0.0")
            && err.contains("without TLS")
            && err.contains("a token"),
        "{err}"
    );
    printed.extend([out, err]);
    // ... and --insecure starts it with a warning that names what is open.
    let mut open = coordinator_with(
        &spec,
        &s(&dir.path().join("open")),
        "0.0.0.0:0",
        &strings(&["--insecure"]),
        &[],
    );
    let err = open.stderr();
    assert!(
        err.contains("WARNING: --insecure") && err.contains("no TLS") && err.contains("no token"),
        "{err}"
    );
    open.kill();
    printed.push(open.stderr());

    // Coordinator A: TLS and a token (from the environment) on loopback.
    let port = free_port();
    let store = dir.path().join("store");
    let tls_args = vec![
        "--tls-cert".to_string(),
        s(&pki.server_cert),
        "--tls-key".into(),
        s(&pki.server_key),
    ];
    let token_env = vec![("PSPACE_TOKEN".to_string(), pki.token.clone())];
    let mut coord = coordinator_with(
        &spec,
        &s(&store),
        &format!("127.0.0.1:{port}"),
        &tls_args,
        &token_env,
    );
    assert!(coord.stderr().contains(", TLS (epoch"), "{}", coord.stderr());
    let https = format!("https://localhost:{port}");
    let trust = vec!["--ca".to_string(), s(&pki.ca)];

    let no_token = refused(worker_at("no-token", &https, &trust, &[]), "no token");
    assert!(
        no_token.contains("refused register") && no_token.contains("no bearer token"),
        "{no_token}"
    );
    let wrong = refused(
        worker_at(
            "wrong-token",
            &https,
            &trust,
            &[("PSPACE_TOKEN".into(), "not-the-token".into())],
        ),
        "wrong token",
    );
    assert!(wrong.contains("wrong bearer token"), "{wrong}");
    let plaintext = refused(
        worker_at("plaintext", &format!("http://127.0.0.1:{port}"), &[], &token_env),
        "plaintext against TLS",
    );
    assert!(plaintext.contains("serves TLS only"), "{plaintext}");
    let untrusting = refused(
        worker_at(
            "untrusting",
            &https,
            &["--ca".to_string(), s(&pki.rogue_ca)],
            &token_env,
        ),
        "untrusted certificate",
    );
    assert!(
        untrusting.contains("TLS failed") && untrusting.contains("not signed by a CA this client trusts"),
        "{untrusting}"
    );
    // The coordinator says what it refused, too.
    let log = coord.stderr();
    assert!(
        log.contains("carried no bearer token") && log.contains("wrong bearer token"),
        "{log}"
    );
    assert!(log.contains("a plaintext client"), "{log}");
    printed.extend([no_token, wrong, plaintext, untrusting]);

    // The right worker (token from a file) runs the tiny spec to the end over TLS.
    let mut right = worker_at(
        "right",
        &https,
        &[trust.clone(), vec!["--token-file".into(), s(&pki.token_file)]].concat(),
        &[],
    );
    let status = coord.wait_for(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "the TLS run failed:\ncoordinator:\n{}\nworker:\n{}",
        coord.stderr(),
        right.stderr()
    );
    assert!(right
        .wait_for(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    assert_eq!(result_paths(&coord.stdout()).len(), 1, "{}", coord.stdout());
    printed.extend([coord.stdout(), coord.stderr(), right.stdout(), right.stderr()]);
    let tls_run = started.elapsed();

    // Coordinator B: mutual TLS and a token, on 0.0.0.0 (allowed: both are set).
    let port_b = free_port();
    let mtls_args = [
        tls_args.clone(),
        vec![
            "--client-ca".to_string(),
            s(&pki.ca),
            "--shutdown-grace-s".into(),
            "5".into(),
        ],
    ]
    .concat();
    let mut mtls = coordinator_with(
        &spec,
        &s(&dir.path().join("store-b")),
        &format!("0.0.0.0:{port_b}"),
        &mtls_args,
        &token_env,
    );
    assert!(!mtls.stderr().contains("WARNING"), "{}", mtls.stderr());
    let https_b = format!("https://localhost:{port_b}");
    let token_file = ["--token-file".to_string(), s(&pki.token_file)];
    let status_args = |extra: &[String]| {
        [
            strings(&["status", "--coordinator", &https_b, "--ca", &s(&pki.ca)]),
            token_file.to_vec(),
            extra.to_vec(),
        ]
        .concat()
    };
    let (code, out, err) = pspace(&status_args(&[]), &[]);
    assert_eq!(
        code, 1,
        "a client without a certificate must be refused:\n{out}\n{err}"
    );
    // Whether the server's alert arrived or the connection was reset first (TLS 1.3 refuses
    // after the client's side of the handshake), the client must name the cause.
    assert!(err.contains("requires a client certificate"), "{err}");
    eprintln!(
        "auth: no client certificate: {}",
        err.lines().last().unwrap_or_default()
    );
    printed.extend([out, err]);
    let identity = [
        "--tls-cert".to_string(),
        s(&pki.client_cert),
        "--tls-key".into(),
        s(&pki.client_key),
    ];
    let (code, out, err) = pspace(&status_args(&identity), &[]);
    assert_eq!(code, 0, "status with a client certificate:\n{out}\n{err}");
    assert!(out.contains("tiny"), "{out}");
    printed.extend([out, err]);
    let (code, out, err) = pspace(
        &[
            strings(&["health", "--coordinator", &https_b, "--ca", &s(&pki.ca)]),
            identity.to_vec(),
        ]
        .concat(),
        &[],
    );
    assert_eq!((code, out.trim()), (0, "SERVING"), "{err}");
    printed.push(err);

    // SIGTERM: NOT_SERVING, then exit 143 within the grace.
    let t0 = Instant::now();
    mtls.signal(libc::SIGTERM);
    let exited = mtls.wait_for(Duration::from_secs(20));
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(143),
        "SIGTERM should end the coordinator with 143:\n{}",
        mtls.stderr()
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(mtls.stderr().contains("stopped by SIGTERM"), "{}", mtls.stderr());
    printed.extend([mtls.stdout(), mtls.stderr()]);

    // No process printed the token, anywhere.
    for text in &printed {
        assert!(!text.contains(&pki.token), "the token leaked into:\n{text}");
    }
    eprintln!(
        "auth: TLS run {:.1}s, whole test {:.1}s, SIGTERM exit in {:.2}s",
        tls_run.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
