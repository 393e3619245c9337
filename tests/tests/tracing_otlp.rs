//! One trace per distributed run, through a real OTLP receiver: `rotel-agent` (an OpenTelemetry
//! collector from PyPI, in the venv after `make setup`) receives what a coordinator and two
//! workers export while they run the tiny spec over TLS with a token, and forwards it to a
//! collector in this test (when rotel cannot start, the processes export to that collector
//! directly and the test says so). The first attempt of extract/base is made to fail
//! (PSPACE_FAULT_PANIC), so the task is retried.
//!
//! Checked: every span of the three processes has one trace id; the run span is the root; each
//! worker `execute` span is the child of the coordinator's `lease` span of the same task and
//! attempt, and the worker's stage spans (load_model, train, generate, extract, upload, ...)
//! sit under an execution; the retried task shows both attempts, the failed one with its error
//! on the lease and on the execution; no attribute, event or span name carries the token or
//! the TLS key, and no process printed the token.
//!
//! A second test restarts the coordinator mid-run (SIGTERM, as a pod restart, then a new
//! process on the same store): the run stays one trace, the new coordinator's run span a child
//! of the first one's (the run's trace context is kept in the store's journal).

use opentelemetry_proto::tonic::trace::v1::Span;
use pspace_tests::cluster::{
    committed_count, coordinator, coordinator_with, free_port, status_json, tiny_spec_with_seeds, worker,
    worker_at, Proc,
};
use pspace_tests::otlp::{all_text, attribute, resource_attribute, start_collector, Received, Rotel};
use pspace_tests::pki::Pki;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ERROR: i32 = 2; // opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

#[test]
fn a_distributed_run_is_one_trace() {
    let started = Instant::now();
    let (collector, received) = start_collector();
    let rotel = match Rotel::start(collector) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("tracing_otlp: rotel cannot start ({e}); exporting to the in-test receiver directly");
            None
        }
    };
    let endpoint = format!(
        "http://127.0.0.1:{}",
        rotel.as_ref().map_or(collector, |r| r.port)
    );
    eprintln!(
        "tracing_otlp: exporting to {endpoint} ({})",
        if rotel.is_some() {
            "rotel-agent, forwarding to the test"
        } else {
            "the test's receiver"
        }
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(&dir.path().join("pki"), &["localhost"]);
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let port = free_port();
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint.clone());
    let mut coord = coordinator_with(
        &spec,
        dir.path().join("store").to_str().unwrap(),
        &format!("127.0.0.1:{port}"),
        &[
            "--tls-cert".into(),
            pki.server_cert.display().to_string(),
            "--tls-key".into(),
            pki.server_key.display().to_string(),
            "--token-file".into(),
            pki.token_file.display().to_string(),
        ],
        std::slice::from_ref(&otel),
    );
    let worker_args = [
        "--ca".to_string(),
        pki.ca.display().to_string(),
        "--token-file".into(),
        pki.token_file.display().to_string(),
    ];
    let worker_env = [
        otel,
        ("PSPACE_FAULT_PANIC".to_string(), "extract/base:1".to_string()),
    ];
    let https = format!("https://localhost:{port}");
    let mut workers: Vec<_> = (0..2)
        .map(|i| worker_at(&format!("w{i}"), &https, &worker_args, &worker_env))
        .collect();
    let status = coord.wait_for(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "the run failed:\n{}",
        coord.stderr()
    );
    for w in &mut workers {
        assert!(
            w.wait_for(Duration::from_secs(60)).is_some_and(|s| s.success()),
            "{}:\n{}",
            w.name,
            w.stderr()
        );
    }
    let run_took = started.elapsed();

    // Every process flushed at exit; the receiver forwards within its batch timeout.
    let spans = settle(|| received.all());
    let by_id: BTreeMap<Vec<u8>, &Received> = spans.iter().map(|r| (r.span.span_id.clone(), r)).collect();
    let service = |r: &Received| resource_attribute(r, "service.name").unwrap_or_default();

    let runs: Vec<&Received> = spans.iter().filter(|r| r.span.name == "run").collect();
    assert_eq!(runs.len(), 1, "one run span");
    let run = &runs[0].span;
    assert!(run.parent_span_id.is_empty(), "the run span is the root");
    let traces: BTreeSet<&Vec<u8>> = spans.iter().map(|r| &r.span.trace_id).collect();
    assert_eq!(
        traces.len(),
        1,
        "{} spans in {} traces",
        spans.len(),
        traces.len()
    );

    // Three processes: one coordinator, two workers.
    let pids = |name: &str| -> BTreeSet<String> {
        spans
            .iter()
            .filter(|r| service(r) == name)
            .filter_map(|r| resource_attribute(r, "process.pid"))
            .collect()
    };
    assert_eq!(pids("pspace-coordinator").len(), 1);
    assert_eq!(pids("pspace-worker").len(), 2, "spans from both workers");

    // Each worker execution hangs under the coordinator's lease of the same task and attempt.
    let executions: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.name.starts_with("execute "))
        .collect();
    assert!(
        executions.len() >= 17,
        "16 tasks + 1 retry: {} executions",
        executions.len()
    );
    for e in &executions {
        assert_eq!(service(e), "pspace-worker");
        let lease = by_id
            .get(&e.span.parent_span_id)
            .unwrap_or_else(|| panic!("{}: its parent was not received", e.span.name));
        assert_eq!(service(lease), "pspace-coordinator");
        assert!(
            lease.span.name.starts_with("lease a"),
            "{} under {}",
            e.span.name,
            lease.span.name
        );
        for key in ["task.key", "attempt"] {
            assert_eq!(
                attribute(&e.span, key),
                attribute(&lease.span, key),
                "{key} of {}",
                e.span.name
            );
        }
    }
    // Every stage span of a worker has an execution above it.
    let under_execution = |r: &Received| -> bool {
        let mut at = r;
        while let Some(parent) = by_id.get(&at.span.parent_span_id) {
            if parent.span.name.starts_with("execute ") {
                return true;
            }
            at = parent;
        }
        false
    };
    let stages: BTreeSet<&str> = spans
        .iter()
        .filter(|r| service(r) == "pspace-worker" && !r.span.name.starts_with("execute "))
        .inspect(|r| assert!(under_execution(r), "{} is not under an execution", r.span.name))
        .map(|r| r.span.name.as_str())
        .collect();
    for stage in [
        "load_model",
        "train",
        "train_steps",
        "generate",
        "extract",
        "upload",
        "download",
    ] {
        assert!(stages.contains(stage), "no {stage} span; stages: {stages:?}");
    }
    // The coordinator's commits are children of the executions that reported them.
    let commits: Vec<&Received> = spans.iter().filter(|r| r.span.name == "commit").collect();
    assert!(commits.len() >= 17, "{} commits", commits.len());
    for c in &commits {
        let parent = by_id.get(&c.span.parent_span_id).expect("a commit's parent");
        assert!(
            parent.span.name.starts_with("execute "),
            "commit under {}",
            parent.span.name
        );
    }

    // The retried task: attempt 1 failed (its error on the lease and the execution), 2 committed.
    let attempts = |name: &str| -> Vec<&Span> {
        let mut v: Vec<&Span> = spans
            .iter()
            .filter(|r| {
                r.span.name.starts_with(name)
                    && attribute(&r.span, "task.key")
                        .is_some_and(|k| k.ends_with("/extract/base") || k == "extract/base")
            })
            .map(|r| &r.span)
            .collect();
        v.sort_by_key(|s| attribute(s, "attempt"));
        v
    };
    let leases = attempts("lease a");
    assert_eq!(leases.len(), 2, "extract/base has two leases");
    let failed = leases[0];
    assert_eq!(attribute(failed, "attempt").as_deref(), Some("1"));
    assert_eq!(failed.status.as_ref().map(|s| s.code), Some(ERROR));
    let error = attribute(failed, "error").unwrap_or_default();
    assert!(error.contains("injected fault"), "lease a1 error: {error}");
    assert_eq!(attribute(failed, "outcome").as_deref(), Some("failed"));
    assert_eq!(attribute(leases[1], "outcome").as_deref(), Some("committed"));
    let execs = attempts("execute ");
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[0].status.as_ref().map(|s| s.code), Some(ERROR));
    assert!(attribute(execs[0], "error")
        .unwrap_or_default()
        .contains("injected fault"));
    assert_eq!(attribute(execs[1], "outcome").as_deref(), Some("committed"));

    // No secret in any span, and none in any output.
    let key_pem = std::fs::read_to_string(&pki.server_key).unwrap();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    for r in &spans {
        for text in all_text(r) {
            assert!(!text.contains(&pki.token), "the token is in span {}", r.span.name);
            for line in &key_body {
                assert!(!text.contains(line), "the TLS key is in span {}", r.span.name);
            }
        }
    }
    let mut printed = vec![coord.stdout(), coord.stderr()];
    for w in &workers {
        printed.extend([w.stdout(), w.stderr()]);
    }
    if let Some(r) = &rotel {
        printed.push(r.log_text());
    }
    for text in &printed {
        assert!(!text.contains(&pki.token), "the token was printed:\n{text}");
    }
    eprintln!(
        "tracing_otlp: {} spans, 1 trace, {} executions, {} commits, stages {:?}; run {:.1}s, test {:.1}s",
        spans.len(),
        executions.len(),
        commits.len(),
        stages,
        run_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_restarted_coordinator_continues_the_run_s_trace() {
    let started = Instant::now();
    let (collector, received) = start_collector();
    let otel = [(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        format!("http://127.0.0.1:{collector}"),
    )];
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_spec_with_seeds(dir.path(), &[42]);
    let store = dir.path().join("store").display().to_string();
    let port = free_port();
    let mut coord = coordinator(&spec, &store, port, &otel);
    let mut named = 0;
    let mut spawn = || {
        named += 1;
        worker(&format!("w{named}"), port, &otel)
    };
    let mut workers: Vec<Proc> = vec![spawn(), spawn()];

    // Mid-run: once three tasks are committed, SIGTERM (the coordinator flushes its spans and
    // exits 143) and start it again on the same store and port.
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "three tasks were not committed in 5 minutes:\n{}",
            coord.stderr()
        );
        assert!(
            coord.try_wait().is_none(),
            "the coordinator ended early:\n{}",
            coord.stderr()
        );
        if status_json(port).is_some_and(|s| committed_count(&s) >= 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    coord.signal(libc::SIGTERM);
    let stopped = coord.wait_for(Duration::from_secs(60));
    assert_eq!(
        stopped.and_then(|s| s.code()),
        Some(143),
        "the coordinator did not stop on SIGTERM:\n{}",
        coord.stderr()
    );
    let first = std::mem::replace(&mut coord, coordinator(&spec, &store, port, &otel));
    let restarted = started.elapsed();

    // To the end, replacing workers that failed (a lease lost at the restart ends a worker with
    // status 3, for its orchestrator to start it again).
    let mut ended = Vec::new();
    let finished = loop {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run did not finish after the restart:\n{}",
            coord.stderr()
        );
        if let Some(s) = coord.try_wait() {
            break s;
        }
        for w in workers.iter_mut() {
            if w.try_wait().is_some_and(|s| !s.success()) {
                ended.push(std::mem::replace(w, spawn()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "tracing_otlp: restarted at {:.1}s, the run finished at {:.1}s",
        restarted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(finished.success(), "the run failed:\n{}", coord.stderr());
    for w in &mut workers {
        let _ = w.wait_for(Duration::from_secs(60));
    }

    let spans = settle(|| received.all());
    let runs: Vec<&Span> = spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name == "run")
        .collect();
    assert_eq!(runs.len(), 2, "a run span per coordinator process");
    let (roots, resumed): (Vec<&Span>, Vec<&Span>) = runs.iter().partition(|s| s.parent_span_id.is_empty());
    assert_eq!(roots.len(), 1, "one root");
    assert_eq!(
        resumed[0].parent_span_id, roots[0].span_id,
        "the restarted coordinator's run span is a child of the first one's"
    );
    assert_eq!(attribute(roots[0], "epoch").as_deref(), Some("1"));
    assert_eq!(attribute(resumed[0], "epoch").as_deref(), Some("2"));
    let traces: BTreeSet<&Vec<u8>> = spans.iter().map(|r| &r.span.trace_id).collect();
    assert_eq!(
        traces.len(),
        1,
        "{} spans in {} traces",
        spans.len(),
        traces.len()
    );
    let coordinators: BTreeSet<String> = spans
        .iter()
        .filter(|r| resource_attribute(r, "service.name").as_deref() == Some("pspace-coordinator"))
        .filter_map(|r| resource_attribute(r, "process.pid"))
        .collect();
    assert_eq!(coordinators.len(), 2, "spans from both coordinator processes");
    let tasks_after = spans
        .iter()
        .filter(|r| r.span.parent_span_id == resumed[0].span_id)
        .count();
    assert!(tasks_after > 0, "no task span under the resumed run span");
    eprintln!(
        "tracing_otlp: restart at epoch 2 kept one trace: {} spans, {} task spans under the resumed run, {} workers replaced; test {:.1}s",
        spans.len(),
        tasks_after,
        ended.len(),
        started.elapsed().as_secs_f64()
    );
    for w in &ended {
        let text = w.stderr();
        eprintln!(
            "tracing_otlp: {} ended: {}",
            w.name,
            text.lines().last().unwrap_or_default()
        );
    }
    drop(first);
}

/// The spans once no new one has arrived for a second (at most 30 s).
fn settle(read: impl Fn() -> Vec<Received>) -> Vec<Received> {
    let began = Instant::now();
    let mut last = usize::MAX;
    loop {
        let now = read();
        if now.len() == last && !now.is_empty() || began.elapsed() > Duration::from_secs(30) {
            return now;
        }
        last = now.len();
        std::thread::sleep(Duration::from_secs(1));
    }
}
