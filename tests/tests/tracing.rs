//! `pspace run` with OTEL_EXPORTER_OTLP_ENDPOINT set exports its trace over OTLP/HTTP: a
//! collector in this test process (a plain HTTP server decoding the protobuf export requests, as
//! Jaeger's OTLP receiver on port 4318 does) receives one trace with a `run` span and one child
//! span per task, named by the task's key.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use pspace_tests::{pspace_bin, summary_counts, tiny_spec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Accepts OTLP/HTTP export requests on 127.0.0.1; every span received lands in the vector.
fn start_collector() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
                let mut stream = stream;
                // One request after another on a kept-alive connection.
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            assert!(line.starts_with("POST /v1/traces"), "unexpected request: {line}");
                            first = false;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP export");
                    let mut spans = sink.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans);
                        }
                    }
                    drop(spans);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, spans)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::BoolValue(b) => b.to_string(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[test]
fn a_run_is_one_trace_with_a_span_per_task() {
    let (port, spans) = start_collector();
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

    let spans = spans.lock().unwrap().clone();
    let runs: Vec<&Span> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(
        runs.len(),
        1,
        "one run span; got {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let run = runs[0];
    assert_eq!(attribute(run, "experiment").as_deref(), Some("tiny"));
    let tasks: Vec<&Span> = spans.iter().filter(|s| s.name != "run").collect();
    assert_eq!(tasks.len(), 16, "one span per task");
    for task in &tasks {
        assert_eq!(task.trace_id, run.trace_id, "{} is in the run's trace", task.name);
        assert_eq!(
            task.parent_span_id, run.span_id,
            "{} is a child of the run",
            task.name
        );
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
}
