//! `GET /readyz` and `GET /metrics`, with the gauges read off the bus
//! when scraped, and [`METRICS`], every metric the host exports.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Scraper;
use crate::error::ApiError;
use crate::scrape;
use crate::state::Api;

pub(crate) async fn ready(State(api): State<Arc<Api>>) -> Response {
    if !api.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let health = api.bus.log_health();
    if !health.writable {
        // Ingest would answer 503 too; it recovers by itself once the log
        // can be written again.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the event log cannot be written: {}\n",
                health.error.as_deref().unwrap_or("unknown error")
            ),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

pub(crate) async fn render_metrics(State(api): State<Arc<Api>>, _: Scraper) -> Response {
    let Some(handle) = &api.metrics else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics are off")
            .into_response();
    };
    let live = record_gauges(&api).await;
    // Only the series of the plugins and tenants that exist now, in order.
    let text = scrape::tidy(&handle.render(), &live);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The gauges that are read off the bus and the log when scraped:
/// quarantine, reloads, dead-letter depth and lag per plugin; returns the
/// plugins and tenants whose series are shown. A plugin's gauge is shown
/// from the first scrape that finds it other than zero (then on, zero
/// included, so that it can be seen to fall back): a plugin that never
/// lagged, dead-lettered, reloaded or was quarantined has none of them.
///
/// The dead-letter depth is counted here by reading each plugin's dead
/// letters; where the bus keeps a count of them, read that instead (the
/// `dead` of each plugin below).
async fn record_gauges(api: &Arc<Api>) -> scrape::Live {
    let statuses = api.bus.statuses();
    // Kept by the bus as things happen: a scrape reads no dead letter and
    // counts no event of the log.
    let dead_letters = api.bus.dead_letter_depths();
    let lags: HashMap<(String, String), u64> = api
        .bus
        .backlogs()
        .into_iter()
        .map(|b| ((b.tenant, b.plugin), b.lag))
        .collect();
    let depths = statuses.iter().map(|s| {
        let key = (s.tenant.clone(), s.name.clone());
        (
            dead_letters.get(&key).copied().unwrap_or(0),
            lags.get(&key).copied().unwrap_or(0),
        )
    });
    for (status, (dead, lag)) in statuses.iter().zip(depths) {
        let quarantined = u64::from(status.quarantine.is_some());
        for (name, value) in [
            ("plugbus_quarantined", quarantined),
            ("plugbus_reloads", status.reloads),
            ("plugbus_failed_reloads", status.failed_reloads),
            ("plugbus_dead_letters", dead),
            ("plugbus_lag_events", lag),
        ] {
            api.scraped.set(name, &status.tenant, &status.name, value);
        }
    }
    let mut live = scrape::Live::default();
    live.tenants
        .extend(api.config.tenant_tokens.keys().cloned());
    for status in statuses {
        live.tenants.insert(status.tenant.clone());
        live.plugins.insert((status.tenant, status.name));
    }
    live
}

/// The per-plugin gauges set when scraped, by (name, tenant, plugin):
/// those that were once other than zero, and so are shown.
#[derive(Debug, Default)]
pub(crate) struct ScrapedGauges {
    shown: Mutex<HashSet<(&'static str, String, String)>>,
}

impl ScrapedGauges {
    /// Sets the gauge `name` of a plugin to `value`, unless it has only
    /// ever been zero.
    fn set(&self, name: &'static str, tenant: &str, plugin: &str, value: u64) {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (name, tenant.to_owned(), plugin.to_owned());
        if value == 0 && !shown.contains(&key) {
            return;
        }
        metrics::gauge!(name, "tenant" => key.1.clone(), "plugin" => key.2.clone())
            .set(value as f64);
        shown.insert(key);
    }
}

/// What a metric is, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (until the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution, in buckets.
    Histogram,
}

impl MetricKind {
    /// The Prometheus `# TYPE` of the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric the host exports: the row of README's metrics table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name, as in `/metrics`.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its labels, in the order they are written.
    pub labels: &'static [&'static str],
    /// What it counts: its `# HELP`.
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// Every metric the host can export (the crates below record them; this
/// is the one list of them, described to the recorder by
/// [`describe_metrics`] and documented in README.md's metrics table).
pub const METRICS: &[Metric] = &[
    metric(
        "plugbus_consumer_restarts_total",
        Counter,
        &["tenant", "plugin"],
        "Times a plugin's consumer stopped unexpectedly and was restarted from its cursor.",
    ),
    metric(
        "plugbus_dead_lettered_total",
        Counter,
        &["tenant", "plugin"],
        "Events dead-lettered after their last failed attempt.",
    ),
    metric(
        "plugbus_dead_letters",
        Gauge,
        &["tenant", "plugin"],
        "Dead letters held for the plugin now (read when scraped).",
    ),
    metric(
        "plugbus_dead_letters_refused_total",
        Counter,
        &["tenant", "plugin"],
        "Events given up without a dead letter because the tenant's dead-letter quota was full.",
    ),
    metric(
        "plugbus_deliveries_total",
        Counter,
        &["tenant", "plugin", "outcome", "kind"],
        "Deliveries made, by outcome (handled, failed) and failure kind (empty when handled).",
    ),
    metric(
        "plugbus_duplicate_events_total",
        Counter,
        &["tenant"],
        "Ingested events not stored again: the same source and id came within the duplicate window.",
    ),
    metric(
        "plugbus_emits_refused_total",
        Counter,
        &["tenant", "plugin", "reason"],
        "Events a handler tried to emit and was refused, by reason.",
    ),
    metric(
        "plugbus_failed_reloads",
        Gauge,
        &["tenant", "plugin"],
        "Reloads of the plugin that failed, the older version serving on (read when scraped).",
    ),
    metric(
        "plugbus_fuel_consumed",
        Histogram,
        &["tenant", "plugin"],
        "Fuel one delivery consumed.",
    ),
    metric(
        "plugbus_handle_seconds",
        Histogram,
        &["tenant", "plugin"],
        "Time one delivery took, in seconds.",
    ),
    metric(
        "plugbus_http_connections_closed_total",
        Counter,
        &["reason"],
        "HTTP connections the server closed: header_timeout, write_timeout, drain_deadline.",
    ),
    metric(
        "plugbus_http_connections_open",
        Gauge,
        &[],
        "HTTP connections open now.",
    ),
    metric(
        "plugbus_http_connections_refused_total",
        Counter,
        &[],
        "HTTP connections turned away over the connection limit.",
    ),
    metric(
        "plugbus_ingested_events_total",
        Counter,
        &["tenant"],
        "Events taken over HTTP and stored in the log (duplicates not included).",
    ),
    metric(
        "plugbus_instances_recycled_total",
        Counter,
        &["tenant", "plugin", "reason"],
        "Reused instances of a plugin replaced by fresh ones, by reason (events, memory).",
    ),
    metric(
        "plugbus_lag_events",
        Gauge,
        &["tenant", "plugin"],
        "Events in the log the plugin has not yet finished with (read when scraped).",
    ),
    metric(
        "plugbus_leases_held",
        Gauge,
        &[],
        "Plugins this host holds the lease of and delivers, when several hosts share a NATS log.",
    ),
    metric(
        "plugbus_log_append_seconds",
        Histogram,
        &[],
        "Time to make one ingest request's events durable in the log, in seconds.",
    ),
    metric(
        "plugbus_log_tail_reads_total",
        Counter,
        &["result"],
        "Reads of events by the consumers, by result: hit (answered by the tail cache of events just committed) or miss (read from the embedded log's file).",
    ),
    metric(
        "plugbus_log_writable",
        Gauge,
        &[],
        "1 while the event log can be written, 0 while it cannot.",
    ),
    metric(
        "plugbus_log_write_errors_total",
        Counter,
        &[],
        "Writes to the event log that failed.",
    ),
    metric(
        "plugbus_outbound_request_seconds",
        Histogram,
        &["tenant", "plugin"],
        "Time from a plugin's outbound HTTP request to its response's headers, or to its failure.",
    ),
    metric(
        "plugbus_outbound_requests_total",
        Counter,
        &["tenant", "plugin", "result"],
        "Outbound HTTP requests of plugins, by result: ok, denied (not in the manifest's [http] allow), private_address, limit, timeout or error.",
    ),
    metric(
        "plugbus_plugins_refused_total",
        Counter,
        &["tenant", "reason"],
        "Plugin files refused at a load or reload, by reason (tenant is - outside any tenant folder).",
    ),
    metric(
        "plugbus_quarantined",
        Gauge,
        &["tenant", "plugin"],
        "1 while the plugin is quarantined, else 0 (read when scraped).",
    ),
    metric(
        "plugbus_rejected_requests_total",
        Counter,
        &["tenant", "status", "reason"],
        "HTTP requests refused, by status and reason: the limit crossed or the error kind (tenant is empty before a token is recognised).",
    ),
    metric(
        "plugbus_reloads",
        Gauge,
        &["tenant", "plugin"],
        "Times the plugin was reloaded with a new version (read when scraped).",
    ),
    metric(
        "plugbus_retries_total",
        Counter,
        &["tenant", "plugin"],
        "Failed deliveries scheduled to be tried again.",
    ),
    metric(
        "plugbus_state_writes_refused_total",
        Counter,
        &["tenant", "plugin", "reason"],
        "State writes a handler made that were refused, by reason.",
    ),
    metric(
        "plugbus_task_restarts_total",
        Counter,
        &["task"],
        "Times a task of the durable bus stopped unexpectedly and was restarted.",
    ),
];

/// The label-less counters registered at zero: a counter that is born at 1
/// gives `increase()` and `rate()` nothing to compare its first count with,
/// so an alert on the first log write error or refused connection would
/// miss it. Every labelled series appears only when it first counts.
const REGISTERED_AT_ZERO: &[&str] = &[
    "plugbus_http_connections_refused_total",
    "plugbus_log_write_errors_total",
];

/// Describes every metric of [`METRICS`] to the process's recorder, for
/// the `# HELP` lines of `/metrics`, and registers the counters that are
/// shown at zero. Call it once the recorder is installed; again is
/// harmless.
pub fn describe_metrics() {
    for metric in METRICS {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    for name in REGISTERED_AT_ZERO {
        metrics::counter!(*name).increment(0);
    }
}
