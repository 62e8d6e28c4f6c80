//! Distributed tracing: the OpenTelemetry export over OTLP/HTTP, when
//! configured, of the ingest and delivery spans that continue the events'
//! W3C trace context ([`plugbus_core::trace`]).
//!
//! Without an OpenTelemetry layer in the `tracing` subscriber the spans are
//! log spans only: they carry `traceparent` as a field, and an emitted
//! event inherits the handled event's trace context unchanged. With the
//! layer ([`OtlpExport::layer`]), each span becomes an OpenTelemetry span
//! whose parent is the event's `traceparent`, and an emitted event's
//! `traceparent` names the delivery span that emitted it, so a trace shows
//! producer → ingest → delivery → emitted event → its deliveries. A
//! delivery of an event without a `traceparent` starts a trace of its own:
//! the deliveries of one batch are never each other's parents.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// The path OTLP/HTTP collectors take spans on, under their base URL.
pub const TRACES_PATH: &str = "/v1/traces";

/// The standard variable naming a collector's base URL.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard variable naming the full URL spans are posted to.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An endpoint is not a plain-HTTP URL with a host.
    #[error("{origin}: {value:?} is not an OTLP/HTTP endpoint: {reason}")]
    Endpoint {
        /// Where the value came from: a configuration key, a flag or a
        /// variable.
        origin: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The sample ratio is not in 0..=1.
    #[error("the sample ratio {value} is not between 0 and 1")]
    SampleRatio {
        /// The value.
        value: f64,
    },
    /// The exporter could not be built.
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The last spans could not be sent at shutdown (the exporter timed
    /// out, failed, or was already shut down).
    #[error("cannot send the last spans to the collector: {0}")]
    Shutdown(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// Checks `url`, the full URL spans are posted to: `http://`, with a host.
///
/// TLS to the collector is not built in; the usual deployment sends to a
/// collector agent next to the host, which forwards over TLS.
pub fn check_traces_url(origin: &str, url: &str) -> Result<(), TelemetryError> {
    let invalid = |reason: &str| TelemetryError::Endpoint {
        origin: origin.to_owned(),
        value: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: axum::http::Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) if s.eq_ignore_ascii_case("https") => {
            return Err(invalid(
                "TLS to the collector is not built in: send to a collector agent on this machine or network over http://",
            ));
        }
        _ => return Err(invalid("it must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if uri.query().is_some() {
        return Err(invalid("it has a query"));
    }
    Ok(())
}

/// The URL spans are posted to, from a collector's base URL
/// (`http://127.0.0.1:4318` gives `http://127.0.0.1:4318/v1/traces`), as
/// `otlp.endpoint`, `--otlp-endpoint` and [`ENDPOINT_VAR`] name it.
pub fn traces_url(origin: &str, base: &str) -> Result<String, TelemetryError> {
    check_traces_url(origin, base)?;
    Ok(format!("{}{TRACES_PATH}", base.trim_end_matches('/')))
}

/// Where spans go: the configured base URL (flag or file, named by
/// `origin`), else [`TRACES_ENDPOINT_VAR`] as it is, else [`ENDPOINT_VAR`]
/// with [`TRACES_PATH`]; `None` when nothing asks for export. `var` reads
/// the environment.
pub fn resolve_traces_url(
    configured: Option<(&str, &str)>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, TelemetryError> {
    if let Some((origin, base)) = configured {
        return traces_url(origin, base).map(Some);
    }
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(url) = set(TRACES_ENDPOINT_VAR) {
        check_traces_url(TRACES_ENDPOINT_VAR, &url)?;
        return Ok(Some(url));
    }
    set(ENDPOINT_VAR)
        .map(|base| traces_url(ENDPOINT_VAR, &base))
        .transpose()
}

/// What the exporter needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The full URL spans are posted to (see [`traces_url`]).
    pub traces_url: String,
    /// The `service.name` of the exported spans.
    pub service_name: String,
    /// The share of traces started here that are exported, 0..=1; a trace
    /// continued from an event's `traceparent` follows its sampled flag.
    pub sample_ratio: f64,
}

/// The OpenTelemetry export of spans: a tracer provider whose batch
/// processor posts OTLP protobuf to the collector from its own thread.
///
/// Build it outside the async runtime and [shut it
/// down](OtlpExport::shutdown) outside it too: the HTTP client is blocking.
pub struct OtlpExport {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport").finish_non_exhaustive()
    }
}

impl OtlpExport {
    /// Starts the exporter. Nothing is sent until spans end; a collector
    /// that is down costs dropped spans and a logged error, never a
    /// delivery.
    pub fn start(settings: &OtlpSettings) -> Result<Self, TelemetryError> {
        check_traces_url("the traces URL", &settings.traces_url)?;
        if !(0.0..=1.0).contains(&settings.sample_ratio) {
            return Err(TelemetryError::SampleRatio {
                value: settings.sample_ratio,
            });
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(TelemetryError::Exporter)?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("plugbus");
        Ok(Self { provider, tracer })
    }

    /// The `tracing` layer that turns spans into exported OpenTelemetry
    /// spans.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.clone())
    }

    /// Sends the spans still queued and stops the exporter.
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown_with_timeout(Duration::from_secs(10))
            .map_err(TelemetryError::Shutdown)
    }
}

/// Why [`init_logging`] could not set up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter is not a level or a tracing filter.
    #[error("invalid --log filter {filter:?}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already set.
    #[error("cannot set up logging")]
    Init(#[source] tracing_subscriber::util::TryInitError),
}

/// Sets up the process's logging: lines to stderr (one JSON object each
/// with `json`), filtered by `filter` (a level or a tracing filter; else
/// `RUST_LOG`; else `default_level`), and the ingest and delivery spans to
/// OpenTelemetry when `export` is given, whatever the log level.
pub fn init_logging(
    json: bool,
    filter: Option<&str>,
    default_level: &str,
    export: Option<&OtlpExport>,
) -> Result<(), LoggingError> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|source| LoggingError::Filter {
            filter: f.to_owned(),
            source,
        })?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    // wasmtime-wasi and wasmtime-wasi-http trace every host call with its
    // arguments, a guest's strings included (a URL path or header value
    // holding a secret): never below info, whatever the filter says.
    let filter = [
        "wasmtime_wasi=info",
        "wasmtime_wasi_http=info",
        "wasmtime_wasi_io=info",
    ]
    .into_iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, EnvFilter::add_directive);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines = if json {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    // Spans are exported by their own filter, whatever the log level: the
    // ingest and delivery spans (targets `plugbus*`, every layer's crate),
    // with the plugins' log lines as events.
    let spans = export.map(|export| {
        export.layer().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("plugbus", tracing::Level::INFO),
        )
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(LoggingError::Init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_shutdown_says_why_as_a_matchable_cause() -> Result<(), TelemetryError> {
        let export = OtlpExport::start(&OtlpSettings {
            traces_url: "http://127.0.0.1:9/v1/traces".to_owned(),
            service_name: "plugbus-test".to_owned(),
            sample_ratio: 1.0,
        })?;
        export
            .provider
            .shutdown()
            .map_err(TelemetryError::Shutdown)?;
        let error = export.shutdown().expect_err("already shut down");
        assert!(
            matches!(
                error,
                TelemetryError::Shutdown(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown)
            ),
            "{error:?}"
        );
        assert!(std::error::Error::source(&error).is_some());
        Ok(())
    }

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("otlp.endpoint", "http://127.0.0.1:4318").ok(),
            Some("http://127.0.0.1:4318/v1/traces".to_owned())
        );
        assert_eq!(
            traces_url("otlp.endpoint", "http://collector:4318/").ok(),
            Some("http://collector:4318/v1/traces".to_owned())
        );
    }

    #[test]
    fn endpoints_without_plain_http_are_refused_by_name() {
        for (value, reason) in [
            (
                "https://collector:4318",
                "TLS to the collector is not built in",
            ),
            ("collector:4318", "http://"),
            ("grpc://collector:4317", "http://"),
            ("http://", ""),
            ("http://collector:4318/?x=1", "query"),
        ] {
            let err = traces_url("otlp.endpoint", value)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("otlp.endpoint: "), "{value}: {err}");
            assert!(err.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn the_configured_endpoint_wins_then_the_standard_variables() {
        let env = |name: &str| match name {
            TRACES_ENDPOINT_VAR => Some("http://traces:4318/custom".to_owned()),
            ENDPOINT_VAR => Some("http://base:4318".to_owned()),
            _ => None,
        };
        let configured = resolve_traces_url(Some(("--otlp-endpoint", "http://flag:4318")), env);
        assert_eq!(
            configured.ok().flatten().as_deref(),
            Some("http://flag:4318/v1/traces")
        );
        let traces = resolve_traces_url(None, env);
        assert_eq!(
            traces.ok().flatten().as_deref(),
            Some("http://traces:4318/custom")
        );
        let base = resolve_traces_url(None, |name: &str| {
            (name == ENDPOINT_VAR).then(|| "http://base:4318".to_owned())
        });
        assert_eq!(
            base.ok().flatten().as_deref(),
            Some("http://base:4318/v1/traces")
        );
        assert!(matches!(resolve_traces_url(None, |_: &str| None), Ok(None)));
        let bad = resolve_traces_url(None, |name: &str| {
            (name == ENDPOINT_VAR).then(|| "https://base:4318".to_owned())
        });
        assert!(
            matches!(&bad, Err(TelemetryError::Endpoint { origin, .. }) if origin == ENDPOINT_VAR),
            "{bad:?}"
        );
    }
}
