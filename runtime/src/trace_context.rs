//! One span per hop, joined to the trace the work arrived with.
//!
//! Every hop (the webhook request, the normalizer, a saga transition, a participant) opens a
//! span whose parent is the `traceparent` it received, and writes that span's own
//! `traceparent` on the records it produces. When spans are exported (OTLP configured), the
//! ids in the headers are the ids of exported spans, so a tracing backend shows one delivery
//! and everything it causes as a single tree. Without an exporter there is no span context,
//! and callers fall back to deriving a child id themselves.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header name, in HTTP and in Kafka record headers alike.
pub const HEADER: &str = "traceparent";

/// Makes `span` a child of the remote span named by `traceparent`. Call it right after the
/// span is created: a span's parent is fixed once the span has started. Invalid or absent
/// values leave the span a root of a new trace.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    let carrier = HashMap::from([(HEADER.to_string(), value.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed, where there is nothing to join.
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` naming `span`, for the records this hop writes; `None` when spans are
/// not being recorded (no exporter configured, or the span is disabled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(HEADER)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Opens a `normalize` span following `parent` under an OpenTelemetry layer that
    /// exports to memory; returns what the hop would write downstream.
    fn hop(parent: &str) -> (String, SdkTracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let written = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("normalize");
            follow(&span, Some(parent));
            traceparent(&span).expect("a recorded span has a context")
        });
        (written, provider, exporter)
    }

    #[test]
    fn a_hop_span_continues_the_incoming_trace_and_names_itself_downstream() {
        let (written, provider, exporter) = hop(PARENT);
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            written,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                span.span_context.span_id()
            ),
            "the header written downstream names the exported span"
        );
    }

    #[test]
    fn without_an_exporter_there_is_no_span_context() {
        let span = tracing::info_span!("normalize");
        follow(&span, Some(PARENT));
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn an_invalid_parent_starts_a_new_trace() {
        let (written, _, _) = hop("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert!(!written.contains("00000000000000000000000000000000"));
    }
}
