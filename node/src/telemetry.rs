//! Tracing export: every run is one trace (a `run` span with one `task` span per task of the
//! DAG, a `lease` span per attempt under it, and under each lease the worker's `execute` span
//! with its stages: load_model, train and train_steps, generate, extract, download, upload,
//! and the coordinator's `commit`), sent over OTLP/HTTP (protobuf) when
//! OTEL_EXPORTER_OTLP_ENDPOINT is set, e.g. `http://jaeger:4318` (the exporter adds
//! `/v1/traces`; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is taken as the full URL). The processes of
//! a distributed run join one trace through W3C trace context in their gRPC metadata (see
//! pspace_actors::transport::trace); each exports as service `pspace-<role>` (run, coordinator,
//! worker). Without an endpoint nothing is recorded or sent.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;

/// The exporter, while it runs; `shutdown` sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the OTLP exporter when an endpoint is configured (before any async runtime starts:
/// the exporter sends from a thread of its own with a blocking HTTP client).
pub fn init(role: &str) -> Result<Telemetry> {
    if !configured() {
        return Ok(Telemetry { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .context("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter could not be built")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(format!("pspace-{role}"))
        .with_attribute(opentelemetry::KeyValue::new(
            "process.pid",
            i64::from(std::process::id()),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    // Only pspace's own crates (pspace_core, pspace_actors, pspace_engine, ...: a target matches
    // by prefix): ractor opens an `Actor` span per actor and tonic/hyper their own, which would
    // bury the run's task spans in a trace viewer.
    let only_pspace = tracing_subscriber::filter::Targets::new().with_target("pspace", tracing::Level::TRACE);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("pspace"))
        .with_filter(only_pspace);
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// Flushes and stops the exporter (called on every exit path: a process that exits without
    /// it loses the spans still buffered, which are the last ones, the failing task's included).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("pspace: warning: exporting the trace failed: {e}");
            }
        }
    }
}
