//! `pspace run` with OTEL_EXPORTER_OTLP_ENDPOINT set exports its trace over OTLP/HTTP: a
//! collector in this test process (pspace_tests::otlp) receives one trace with a `run` span, one
//! child span per task named by the task's key, a `lease` span per attempt under each task and,
//! under each lease, the in-process worker's `execute` span with its stage spans: the same
//! shape a distributed run has (tracing_otlp.rs), without a network in between.

use opentelemetry_proto::tonic::trace::v1::Span;
use pspace_tests::otlp::{attribute, start_collector};
use pspace_tests::{pspace_bin, summary_counts, tiny_spec};
use std::process::Command;

#[test]
fn a_run_is_one_trace_with_a_span_per_task() {
    let (port, received) = start_collector();
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(tiny_spec())
        .arg("--store")
        .arg(store.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    assert_eq!(summary_counts(&stderr), (16, 0));

    let spans: Vec<Span> = received.all().into_iter().map(|r| r.span).collect();
    let runs: Vec<&Span> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(
        runs.len(),
        1,
        "one run span; got {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let run = runs[0];
    assert_eq!(attribute(run, "experiment").as_deref(), Some("tiny"));
    for span in &spans {
        assert_eq!(span.trace_id, run.trace_id, "{} is in the run's trace", span.name);
    }
    let tasks: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == run.span_id && s.name != "commit")
        .collect();
    assert_eq!(
        tasks.len(),
        16,
        "one span per task under the run; got {:?}",
        tasks.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    for task in &tasks {
        assert_eq!(
            attribute(task, "cached").as_deref(),
            Some("false"),
            "{}",
            task.name
        );
        assert!(task.end_time_unix_nano >= task.start_time_unix_nano);
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    for expected in [
        "extract/base",
        "train_em/E4_villain",
        "marker_eval/E0_assistant",
        "analyse/all",
    ] {
        assert!(names.contains(&expected), "no span {expected} in {names:?}");
    }
    let extract = tasks.iter().find(|t| t.name == "extract/base").unwrap();
    assert_eq!(attribute(extract, "task.kind").as_deref(), Some("extract"));

    // Each task: a lease under it, the worker's execution under the lease, stages under that.
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect()
    };
    for task in &tasks {
        let leases: Vec<&Span> = children(task)
            .into_iter()
            .filter(|s| s.name == "lease a1")
            .collect();
        assert_eq!(leases.len(), 1, "one lease of {}", task.name);
        let executions = children(leases[0]);
        assert_eq!(executions.len(), 1, "one execution of {}", task.name);
        // `execute <seed>/<kind>/<label>`.
        assert_eq!(executions[0].name, format!("execute 42/{}", task.name));
        assert!(
            children(executions[0]).iter().any(|s| s.name == "upload"),
            "{} uploads under its execution",
            task.name
        );
    }
    let train = tasks.iter().find(|t| t.name == "train_em/E4_villain").unwrap();
    let lease = children(train)
        .into_iter()
        .find(|s| s.name == "lease a1")
        .unwrap();
    let execute = children(lease)[0];
    let stages: Vec<&str> = children(execute).iter().map(|s| s.name.as_str()).collect();
    assert!(
        stages.contains(&"train") && stages.contains(&"commit"),
        "{stages:?}"
    );
}
