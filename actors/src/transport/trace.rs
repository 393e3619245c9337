//! One trace per run across processes: W3C trace context (`traceparent`, `tracestate`, through
//! opentelemetry's `TraceContextPropagator`) carried by the transport.
//!
//! Two directions, both through gRPC metadata (and the same carrier in-process):
//! - coordinator -> worker: the AcquireLease reply carries the context of the lease span the
//!   coordinator opened for that grant; the worker's execution span takes it as its parent, so
//!   the worker's spans (execution, then load model, train, generate, extract, upload) sit under
//!   their lease in the coordinator's trace.
//! - worker -> coordinator: every call carries the caller's current span (the client
//!   interceptor injects it); the coordinator parents its commit of a task's result under the
//!   worker's execution span.
//!
//! Without a tracing exporter (no OTEL_EXPORTER_OTLP_ENDPOINT) the carriers are empty and
//! nothing is sent. A carrier holds only ids and sampling flags, never a secret.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// W3C trace context as header name -> value (`traceparent`, `tracestate`).
pub type TraceCarrier = HashMap<String, String>;

/// The context of `span`, ready to send (empty when tracing is off).
pub fn carrier_of(span: &tracing::Span) -> TraceCarrier {
    let mut carrier = TraceCarrier::new();
    if span.is_disabled() {
        return carrier;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// The context of the span the caller is in.
pub fn current() -> TraceCarrier {
    carrier_of(&tracing::Span::current())
}

/// Makes the context in `carrier` the parent of `span` (which must not have been entered or
/// asked for its context yet). An empty carrier leaves `span` where it is.
pub fn set_parent(span: &tracing::Span, carrier: &TraceCarrier) {
    if carrier.is_empty() || span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!("cannot parent a span on the remote context: {e}");
    }
}

/// Writes a carrier into gRPC metadata.
pub fn to_metadata(carrier: &TraceCarrier, metadata: &mut MetadataMap) {
    for (key, value) in carrier {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(k, v);
        }
    }
}

/// Reads the W3C headers out of gRPC metadata.
pub fn from_metadata(metadata: &MetadataMap) -> TraceCarrier {
    let mut carrier = TraceCarrier::new();
    for key in TraceContextPropagator::new().fields() {
        if let Some(value) = metadata.get(key).and_then(|v| v.to_str().ok()) {
            carrier.insert(key.to_string(), value.to_string());
        }
    }
    carrier
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriers_round_trip_through_metadata() {
        let mut carrier = TraceCarrier::new();
        carrier.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let mut metadata = MetadataMap::new();
        to_metadata(&carrier, &mut metadata);
        assert_eq!(from_metadata(&metadata), carrier);
    }

    #[test]
    fn tracing_off_sends_nothing() {
        assert!(current().is_empty());
    }
}
