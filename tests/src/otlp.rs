//! Receiving traces in tests: an OTLP/HTTP collector inside the test process (a plain HTTP
//! server decoding protobuf export requests, as Jaeger's OTLP receiver on port 4318 does), and
//! `rotel-agent` (a real OpenTelemetry collector from PyPI, `make setup` puts it in the venv)
//! started in front of it, so pspace's exporters talk to a real receiver and the test reads
//! what that receiver forwards.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A span as received, with the resource attributes of the process that sent it.
#[derive(Clone, Debug)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

/// The collector's spans, shared with its threads.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<Received>>>);

impl Spans {
    pub fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// Accepts OTLP/HTTP export requests on `ip` (port 0: a free one); returns the port and the
/// spans received so far (the collector runs until the test process ends).
pub fn start_collector_on(ip: &str, port: u16) -> (u16, Spans) {
    let listener = TcpListener::bind((ip, port)).expect("a port for the collector");
    let port = listener.local_addr().expect("bound").port();
    let spans = Spans::default();
    let sink = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || serve(stream, sink));
        }
    });
    (port, spans)
}

/// [`start_collector_on`] 127.0.0.1, a free port.
pub fn start_collector() -> (u16, Spans) {
    start_collector_on("127.0.0.1", 0)
}

fn serve(stream: std::net::TcpStream, sink: Spans) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    // One request after another on a kept-alive connection.
    loop {
        let mut length = 0usize;
        let mut gzip = false;
        let mut line = String::new();
        let mut first = true;
        let mut path = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if first {
                path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                first = false;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if name.eq_ignore_ascii_case("content-encoding") {
                    gzip = value.trim().eq_ignore_ascii_case("gzip");
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if gzip {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(body.as_slice())
                .read_to_end(&mut plain)
                .is_err()
            {
                return;
            }
            body = plain;
        }
        // Every POST is a trace export here (pspace sends to /v1/traces; a forwarding
        // collector may use its own path).
        if !path.contains("metrics") && !path.contains("logs") {
            if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
                let mut spans = sink.0.lock().unwrap();
                for resource in request.resource_spans {
                    let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans.into_iter().map(|span| Received {
                            span,
                            resource: attributes.clone(),
                        }));
                    }
                }
            }
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// An attribute's value as text.
pub fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    value.and_then(|v| v.value.as_ref()).map(|v| match v {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// A span attribute's value as text.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| value_text(a.value.as_ref()))
}

/// A resource attribute's value as text.
pub fn resource_attribute(received: &Received, key: &str) -> Option<String> {
    received
        .resource
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| value_text(a.value.as_ref()))
}

/// Every piece of text a span carries: its name, attribute keys and values, its events' names
/// and attributes, its status message and its resource's attributes (for secret greps).
pub fn all_text(received: &Received) -> Vec<String> {
    let span = &received.span;
    let mut out = vec![span.name.clone()];
    let mut kvs: Vec<&KeyValue> = span.attributes.iter().collect();
    for event in &span.events {
        out.push(event.name.clone());
        kvs.extend(event.attributes.iter());
    }
    kvs.extend(received.resource.iter());
    for kv in kvs {
        out.push(kv.key.clone());
        out.extend(value_text(kv.value.as_ref()));
    }
    if let Some(status) = &span.status {
        out.push(status.message.clone());
    }
    out
}

/// The `rotel-agent` binary of the `rotel` wheel in the venv (`make setup`), if present.
pub fn rotel_bin() -> Option<PathBuf> {
    let path = crate::repo_root().join(".venv/lib/python3.11/site-packages/rotel/rotel-agent");
    path.exists().then_some(path)
}

/// A running `rotel-agent` receiving OTLP/HTTP on loopback and forwarding every trace over
/// OTLP/HTTP to a collector; killed on drop.
pub struct Rotel {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Starts rotel on a free port, forwarding to `http://127.0.0.1:{forward_to}`; Err (with
    /// its log) when it cannot start or does not answer within 30 s.
    pub fn start(forward_to: u16) -> Result<Rotel, String> {
        let bin = rotel_bin().ok_or("rotel is not installed in .venv (make setup)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let grpc = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let log = dir.path().join("rotel.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("start")
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
            .args([
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{forward_to}"),
            ])
            .args(["--debug-log", "traces", "--batch-timeout", "100ms"])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start rotel-agent: {e}"))?;
        let mut rotel = Rotel {
            child,
            port,
            log,
            _dir: dir,
        };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = rotel.child.try_wait() {
                return Err(format!("rotel-agent exited ({status}):\n{}", rotel.log_text()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(rotel);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "rotel-agent did not listen within 30 s:\n{}",
            rotel.log_text()
        ))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
