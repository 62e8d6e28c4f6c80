//! The W3C trace context of the CloudEvents distributed-tracing extension
//! (`traceparent`, `tracestate`), continued into the ingest and delivery
//! spans and onto emitted events.
//!
//! Without an OpenTelemetry layer in the `tracing` subscriber the spans are
//! log spans only: they carry `traceparent` as a field, and an emitted
//! event inherits the handled event's trace context unchanged. With the
//! layer (the `plugbus` binary installs it when export is configured), each
//! span becomes an OpenTelemetry span whose parent is the event's
//! `traceparent`, and an emitted event's `traceparent` names the delivery
//! span that emitted it, so a trace shows producer → ingest → delivery →
//! emitted event → its deliveries.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C trace context as a propagator reads it.
struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` a child of the remote span `traceparent` names, when spans
/// are exported to OpenTelemetry. Call it before the span is entered. An
/// invalid `traceparent` is ignored: the span then starts a trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let parent = TraceContextPropagator::new().extract(&Carrier {
        traceparent,
        tracestate,
    });
    if parent.span().span_context().is_valid() {
        // Without the OpenTelemetry layer, or for a disabled span, there
        // is nothing to parent.
        let _ = span.set_parent(parent);
    }
}

/// The trace context an event emitted now carries: the current span's —
/// the delivery that emits it — when spans are exported, so that its own
/// deliveries are children of that delivery; else `inherited`, the handled
/// event's.
pub fn for_emitted(inherited: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return inherited.to_vec();
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut fields);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            fields
                .remove(name)
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporting_layer_emitted_events_inherit_the_trace() {
        let inherited = vec![(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )];
        assert_eq!(for_emitted(&inherited), inherited);
    }
}
