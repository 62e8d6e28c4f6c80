//! The HTTP surface of `plugbus serve` (axum):
//!
//! - `POST /v1/events`: CloudEvents ingest in the HTTP binding's three
//!   modes — binary (`ce-` headers, percent-decoded; the body is the data),
//!   structured (`application/cloudevents+json`) and batch
//!   (`application/cloudevents-batch+json`, all or nothing). The tenant is
//!   the bearer token's, never the event's. An event is acknowledged (202)
//!   only once it is durable in the log.
//! - `GET /v1/tenants/{tenant}/plugins` and `.../dead-letters...`: a
//!   tenant's own plugins and dead letters, with the tenant's token (or the
//!   admin token).
//! - `GET /v1/admin/...`: every tenant's, with the admin token.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text; with
//!   [`ApiLimits::metrics_token`] set, only with that bearer token or the
//!   admin's).
//!
//! Every body is one of [`types`], the serde types the CLI client reads
//! too; who may call a route is said by its auth extractor (`auth`: a
//! tenant's token, the path's tenant or the admin, the admin, the scrape
//! token).
//!
//! Every refusal is a JSON body `{"error": kind, "message": …}`, with
//! `"attribute"` naming the CloudEvents attribute at fault when there is
//! one, `"index"` the event of a batch, and `"limit"` the bound that was
//! crossed; each is counted in
//! `plugbus_rejected_requests_total{tenant,status,reason}`.
//!
//! Bounds (every one with a default, see [`ApiLimits`] and
//! [`ServerLimits`]): the request head and body must arrive in time (408),
//! a request must be answered in time (503), a client that does not read
//! its answer is cut off, the server holds a bounded number of
//! connections (503 and closed beyond it), each tenant a bounded number of
//! requests in flight (429) and a bounded ingest rate in events and bytes
//! per second (429 with `Retry-After`, nothing stored), and at shutdown the
//! requests under way get a bounded drain. [`serve`] runs it all.
//!
//! Metrics of the HTTP surface: `plugbus_rejected_requests_total{tenant,
//! status,reason}` (every refused request; `reason` is the limit crossed,
//! or the error kind; `tenant` is empty before a token is recognised),
//! `plugbus_http_connections_refused_total` (connections over
//! [`ServerLimits::max_connections`]),
//! `plugbus_http_connections_closed_total{reason}` (`header_timeout`,
//! `write_timeout`, `drain_deadline`) and the gauge
//! `plugbus_http_connections_open`.

mod auth;
mod limits;
mod scrape;
mod server;
pub mod types;

pub use limits::{ApiLimits, RateLimit};
pub use server::{ServerLimits, serve};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::auth::{Admin, Caller, Publisher, Scraper, TenantAccess};
use self::limits::Admission;
use self::types::{
    Accepted, DeadLetterView, DeadLettersAnswer, ErrorBody, FailuresAnswer, IngestAnswer,
    PluginLimits, PluginState, PluginView, PluginsAnswer, RecentFailure, RedriveAnswer,
    ReloadAnswer, ReplayAnswer, ReplayFrom, ResumeAnswer, TenantView, TenantsAnswer,
};
use plugbus_bus::{DurableBus, DurablePublishError};
use plugbus_core::event::{BatchError, Event, EventError, JsonBatch};
use plugbus_log::Seq;

/// What the HTTP surface needs to know besides the bus. Its bounds are
/// [`ApiLimits`], given to [`Api::with_limits`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body, in bytes (default 1 MiB); a larger one is
    /// refused (413) before it is read whole.
    pub max_body_bytes: usize,
    /// The most events in one batch request (default 1000).
    pub max_batch_events: usize,
    /// Each tenant's token, as the hex SHA-256 of the token.
    pub tenant_tokens: HashMap<String, String>,
    /// The admin token, as the hex SHA-256 of the token.
    pub admin_token: Option<String>,
    /// The plugins directory, for `POST /v1/admin/reload`.
    pub plugins_dir: Option<std::path::PathBuf>,
}

impl Default for ApiConfig {
    /// The limits of `plugbus.toml`'s defaults, no tokens, no plugins
    /// directory.
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1000,
            tenant_tokens: HashMap::new(),
            admin_token: None,
            plugins_dir: None,
        }
    }
}

/// The state behind the routes.
pub struct Api {
    bus: Arc<DurableBus>,
    config: ApiConfig,
    /// Token hash → tenant.
    tenants_by_token: HashMap<String, String>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Requests in flight and ingest rates, per tenant.
    admission: Admission,
    ready: AtomicBool,
}

impl Api {
    /// The HTTP surface over `bus`, with the default [`ApiLimits`]; see
    /// [`Api::with_limits`].
    pub fn new(
        bus: Arc<DurableBus>,
        config: ApiConfig,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Self> {
        Self::with_limits(bus, config, ApiLimits::default(), metrics)
    }

    /// The HTTP surface over `bus`, within `limits`; `/metrics` renders
    /// `metrics` (the process's Prometheus recorder), or answers 404
    /// without one.
    pub fn with_limits(
        bus: Arc<DurableBus>,
        config: ApiConfig,
        limits: ApiLimits,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Self> {
        let tenants_by_token = config
            .tenant_tokens
            .iter()
            .map(|(tenant, hash)| (hash.to_ascii_lowercase(), tenant.clone()))
            .collect();
        Arc::new(Self {
            bus,
            config,
            tenants_by_token,
            metrics,
            admission: Admission::new(limits),
            ready: AtomicBool::new(true),
        })
    }

    /// Says whether `/readyz` answers 200; false while shutting down.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The routes, ready to serve (by [`serve`], which adds the
/// connection-level bounds), each request within
/// [`ApiLimits::request_timeout`].
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/v1/admin/plugins", get(admin_plugins))
        .route("/v1/admin/tenants", get(admin_tenants))
        .route("/v1/tenants/{tenant}/plugins", get(tenant_plugins))
        .route(
            "/v1/tenants/{tenant}/plugins/{plugin}/dead-letters",
            get(dead_letters),
        )
        .route(
            "/v1/tenants/{tenant}/plugins/{plugin}/dead-letters/{seq}/redrive",
            post(redrive),
        )
        .route(
            "/v1/tenants/{tenant}/plugins/{plugin}/dead-letters/{seq}",
            get(dead_letter).delete(discard),
        )
        .route("/v1/tenants/{tenant}/plugins/{plugin}/replay", post(replay))
        .route("/v1/tenants/{tenant}/plugins/{plugin}/resume", post(resume))
        .route("/v1/tenants/{tenant}/failures", get(failures))
        .route("/v1/admin/reload", post(reload))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            within_request_timeout,
        ))
        .with_state(api)
}

/// Answers 503 (and closes the connection) when a request is not answered
/// within [`ApiLimits::request_timeout`].
async fn within_request_timeout(
    State(api): State<Arc<Api>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let timeout = api.admission.limits().request_timeout;
    let mut credentials = HeaderMap::new();
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        credentials.insert(header::AUTHORIZATION, value.clone());
    }
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => rejected(
            &match api.caller(&credentials) {
                Ok(Caller::Tenant(tenant)) => tenant,
                _ => String::new(),
            },
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request was not answered within the limit of {} ms; if it was an ingest, its events may have been stored (a retry is recognised as a duplicate)",
                    timeout.as_millis()
                ),
            )
            .limit("request_timeout")
            .closing(),
        )
        .into_response(),
    }
}

/// A refusal: a status and a JSON body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    attribute: Option<String>,
    index: Option<usize>,
    /// The bound that was crossed.
    limit: Option<&'static str>,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
    /// Whether the connection closes after the answer.
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            attribute: None,
            index: None,
            limit: None,
            retry_after: None,
            close: false,
        }
    }

    /// Names the bound that was crossed.
    fn limit(mut self, limit: &'static str) -> Self {
        self.limit = Some(limit);
        self
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Closes the connection after the answer.
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// What `plugbus_rejected_requests_total` counts it as.
    fn reason(&self) -> &'static str {
        self.limit.unwrap_or(self.kind)
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn invalid(error: &EventError, index: Option<usize>) -> Self {
        let attribute = match error {
            EventError::Missing(name) => Some((*name).to_owned()),
            EventError::SpecVersion(_) => Some("specversion".to_owned()),
            EventError::Invalid { name, .. } => Some(name.clone()),
            EventError::Json(_) | EventError::NotAnObject => None,
        };
        let message = match index {
            Some(i) => format!("event {i}: {error}"),
            None => error.to_string(),
        };
        Self {
            attribute,
            index,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_event", message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind.to_owned(),
            message: self.message,
            attribute: self.attribute,
            index: self.index,
            limit: self.limit.map(str::to_owned),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.close {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer"
                    .parse()
                    .unwrap_or_else(|_| header::HeaderValue::from_static("Bearer")),
            );
        }
        response
    }
}

/// A place among a tenant's requests in flight (`None` for the admin, or
/// without a limit).
type InFlight = Option<tokio::sync::OwnedSemaphorePermit>;

/// Counts a refusal in `plugbus_rejected_requests_total`.
fn rejected(tenant: &str, error: ApiError) -> ApiError {
    metrics::counter!(
        "plugbus_rejected_requests_total",
        "tenant" => tenant.to_owned(),
        "status" => error.status.as_u16().to_string(),
        "reason" => error.reason()
    )
    .increment(1);
    error
}

async fn ingest(
    State(api): State<Arc<Api>>,
    publisher: Publisher,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use tracing::Instrument as _;
    let tenant = publisher.tenant.clone();
    let (events, bytes) = read_events(&api, &headers, body, &tenant).await?;
    // An empty batch is valid, and stores nothing.
    if events.is_empty() {
        return Ok((StatusCode::ACCEPTED, Json(IngestAnswer::default())).into_response());
    }
    charge(&api, &tenant, events.len(), bytes)?;
    // A span per ingest request, with the tenant and the (first) event.
    // Its parent is the request's W3C trace context, else the event's.
    let first = events.first();
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let extension = |name| first.and_then(|e| e.extensions().get(name).map(String::as_str));
    let (traceparent, tracestate) = match header("traceparent") {
        Some(parent) => (Some(parent), header("tracestate")),
        None => (extension("traceparent"), extension("tracestate")),
    };
    let span = tracing::info_span!(
        "ingest",
        tenant = %tenant,
        events = events.len(),
        event_id = first.map(|e| e.id()),
        traceparent = traceparent,
    );
    plugbus_core::trace::continue_trace(&span, traceparent, tracestate);
    store(api, tenant, events).instrument(span).await
}

/// Charges an ingest request to its tenant's rate: 429 naming the limit,
/// with `Retry-After`, when it is over.
fn charge(api: &Api, tenant: &str, events: usize, bytes: usize) -> Result<(), ApiError> {
    let (events, bytes) = (events as u64, bytes as u64);
    let now = std::time::Instant::now();
    api.admission
        .charge(tenant, events, bytes, now)
        .map_err(|over| {
            let unit = match over.limit {
                "events_per_second" => "events",
                _ => "bytes",
            };
            rejected(
                tenant,
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "tenant {tenant} is over its ingest rate of {} {unit}/s ({}); nothing was stored; retry after {} s",
                        over.per_second, over.limit, over.retry_after
                    ),
                )
                .limit(over.limit)
                .retry_after(over.retry_after),
            )
        })
}

/// Reads the body of an ingest request, within the size limit and
/// [`ApiLimits::body_read_timeout`], into its events; with the body's size.
async fn read_events(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
    tenant: &str,
) -> Result<(Vec<Event>, usize), ApiError> {
    let limit = api.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
        .limit("max_body_bytes")
    };
    // Refused by its declared length before a byte of it is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(rejected(tenant, too_large()));
    }
    // Read no further than the limit, whatever it declared, and for no
    // longer than the body read timeout.
    let timeout = api.admission.limits().body_read_timeout;
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| rejected(tenant, too_large()))?,
        Err(_) => {
            return Err(rejected(
                tenant,
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within the limit of {} ms; nothing was stored",
                        timeout.as_millis()
                    ),
                )
                .limit("body_read_timeout")
                .closing(),
            ));
        }
    };
    let size = bytes.len();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents-batch+json" => batch(api, tenant, &bytes),
        "application/cloudevents+json" => structured(tenant, &bytes).map(|e| vec![e]),
        _ => binary(tenant, headers, &content_type, bytes).map(|e| vec![e]),
    }
    .map(|events| (events, size))
    .map_err(|e| rejected(tenant, e))
}

/// Appends the events of one ingest request to the log, and answers once
/// they are durable.
async fn store(api: Arc<Api>, tenant: String, events: Vec<Event>) -> Result<Response, ApiError> {
    let count = events.len();
    let started = std::time::Instant::now();
    let appended = match api.bus.publish(events.clone()).await {
        Ok(appended) => appended,
        Err(DurablePublishError::Log(e)) => {
            tracing::error!(tenant = %tenant, "the log refused {count} events: {e}");
            return Err(rejected(
                &tenant,
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event log cannot take events now; nothing was stored, retry later",
                ),
            ));
        }
    };
    metrics::histogram!("plugbus_log_append_seconds").record(started.elapsed().as_secs_f64());
    let duplicates = appended.iter().filter(|a| a.duplicate).count() as u64;
    metrics::counter!("plugbus_ingested_events_total", "tenant" => tenant.clone())
        .increment(count as u64 - duplicates);
    if duplicates > 0 {
        metrics::counter!("plugbus_duplicate_events_total", "tenant" => tenant.clone())
            .increment(duplicates);
    }
    let accepted = events
        .iter()
        .zip(&appended)
        .map(|(event, a)| Accepted {
            id: event.id().to_owned(),
            seq: a.seq,
            duplicate: a.duplicate,
        })
        .collect();
    tracing::debug!(tenant = %tenant, events = count, duplicates, "ingested");
    Ok((StatusCode::ACCEPTED, Json(IngestAnswer { accepted })).into_response())
}

/// Structured mode: one event in JSON format; its tenant is the token's.
fn structured(tenant: &str, body: &[u8]) -> Result<Event, ApiError> {
    Event::from_structured(body, tenant).map_err(|e| ApiError::invalid(&e, None))
}

fn batch(api: &Api, tenant: &str, body: &[u8]) -> Result<Vec<Event>, ApiError> {
    let batch = JsonBatch::split(body).map_err(|e| match e {
        BatchError::NotAnArray => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_batch", e.to_string())
        }
        BatchError::Json(e) => ApiError::invalid(&EventError::Json(e), None),
    })?;
    let max = api.config.max_batch_events;
    if batch.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the batch has {} events; the limit is {max}", batch.len()),
        )
        .limit("max_batch_events"));
    }
    batch
        .events(tenant)
        .enumerate()
        .map(|(i, event)| event.map_err(|e| ApiError::invalid(&e, Some(i))))
        .collect()
}

/// Binary mode: the attributes in `ce-` headers (percent-encoded), the
/// data in the body, its media type in `Content-Type`.
fn binary(
    tenant: &str,
    headers: &HeaderMap,
    content_type: &str,
    body: Bytes,
) -> Result<Event, ApiError> {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    Event::from_binary(tenant, headers, content_type, body.into()).map_err(|e| match e {
        EventError::Missing("specversion") => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            "no ce-specversion header: send a binary-mode event (ce- headers), or set Content-Type to application/cloudevents+json (structured) or application/cloudevents-batch+json (batch)",
        ),
        e => ApiError::invalid(&e, None),
    })
}

async fn ready(State(api): State<Arc<Api>>) -> Response {
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

async fn render_metrics(State(api): State<Arc<Api>>, _: Scraper) -> Response {
    let Some(handle) = &api.metrics else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "metrics are off")
            .into_response();
    };
    let live = record_gauges(&api).await;
    // Only the series of the plugins and tenants that exist now.
    let text = scrape::retain_live(&handle.render(), &live);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The gauges that are read off the bus and the log when scraped:
/// quarantine, reloads, dead-letter depth and lag per plugin; returns the
/// plugins and tenants whose series are shown.
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
        let labels = [
            ("tenant", status.tenant.clone()),
            ("plugin", status.name.clone()),
        ];
        metrics::gauge!("plugbus_quarantined", &labels).set(if status.quarantine.is_some() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("plugbus_reloads", &labels).set(status.reloads as f64);
        metrics::gauge!("plugbus_failed_reloads", &labels).set(status.failed_reloads as f64);
        metrics::gauge!("plugbus_dead_letters", &labels).set(dead as f64);
        metrics::gauge!("plugbus_lag_events", &labels).set(lag as f64);
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

/// The plugins' views (of `tenant` only, when given), as the plugin
/// listings show them.
async fn plugin_views(api: &Api, tenant: Option<&str>) -> Vec<PluginView> {
    api.bus
        .plugin_reports(tenant)
        .await
        .into_iter()
        .map(|report| {
            let s = report.status;
            let limits = report.limits.map(|l| PluginLimits {
                fuel: l.fuel,
                memory_bytes: l.memory_bytes,
                timeout_ms: u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX),
            });
            let status = if s.quarantine.is_some() {
                PluginState::Quarantined
            } else {
                match s.health {
                    plugbus_runtime::Health::Active => PluginState::Active,
                    plugbus_runtime::Health::Degraded => PluginState::Degraded,
                    plugbus_runtime::Health::FailedToLoad => PluginState::FailedToLoad,
                }
            };
            PluginView {
                tenant: s.tenant,
                plugin: s.name,
                version: s.version,
                status,
                last_error: s.last_error,
                reloads: s.reloads,
                failed_reloads: s.failed_reloads,
                quarantine: s.quarantine,
                limits,
                cursor: report.cursor,
                lag: report.lag,
            }
        })
        .collect()
}

async fn admin_plugins(
    State(api): State<Arc<Api>>,
    _: Admin,
) -> Result<Json<PluginsAnswer>, ApiError> {
    let plugins = plugin_views(&api, None).await;
    Ok(Json(PluginsAnswer { plugins }))
}

async fn admin_tenants(
    State(api): State<Arc<Api>>,
    _: Admin,
) -> Result<Json<TenantsAnswer>, ApiError> {
    let mut tenants: Vec<String> = api.config.tenant_tokens.keys().cloned().collect();
    let plugins = api.bus.plugins();
    for plugin in &plugins {
        tenants.push(plugin.tenant.clone());
    }
    tenants.sort();
    tenants.dedup();
    let tenants = tenants
        .into_iter()
        .map(|t| TenantView {
            has_token: api.config.tenant_tokens.contains_key(&t),
            plugins: plugins.iter().filter(|p| p.tenant == t).count(),
            tenant: t,
        })
        .collect();
    Ok(Json(TenantsAnswer { tenants }))
}

async fn tenant_plugins(
    State(api): State<Arc<Api>>,
    Path(tenant): Path<String>,
    _access: TenantAccess,
) -> Result<Json<PluginsAnswer>, ApiError> {
    let plugins = plugin_views(&api, Some(&tenant)).await;
    Ok(Json(PluginsAnswer { plugins }))
}

fn log_error(e: plugbus_log::LogError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

async fn dead_letters(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin)): Path<(String, String)>,
    _access: TenantAccess,
) -> Result<Json<DeadLettersAnswer>, ApiError> {
    let letters = api
        .bus
        .dead_letters(&tenant, &plugin)
        .await
        .map_err(log_error)?;
    let dead_letters = letters.into_iter().map(DeadLetterView::from).collect();
    Ok(Json(DeadLettersAnswer { dead_letters }))
}

async fn dead_letter(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin, seq)): Path<(String, String, Seq)>,
    _access: TenantAccess,
) -> Result<Json<DeadLetterView>, ApiError> {
    let found = api
        .bus
        .dead_letter(&tenant, &plugin, seq)
        .await
        .map_err(log_error)?;
    let Some(dead) = found else {
        return Err(no_dead_letter(&tenant, &plugin, seq));
    };
    Ok(Json(DeadLetterView::from(dead)))
}

async fn redrive(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin, seq)): Path<(String, String, Seq)>,
    _access: TenantAccess,
) -> Result<Response, ApiError> {
    let found = api
        .bus
        .request_redrive(&tenant, &plugin, seq)
        .await
        .map_err(log_error)?;
    if !found {
        return Err(no_dead_letter(&tenant, &plugin, seq));
    }
    Ok((StatusCode::ACCEPTED, Json(RedriveAnswer { redrive: seq })).into_response())
}

async fn discard(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin, seq)): Path<(String, String, Seq)>,
    _access: TenantAccess,
) -> Result<Response, ApiError> {
    let found = api
        .bus
        .discard_dead_letter(&tenant, &plugin, seq)
        .await
        .map_err(log_error)?;
    if !found {
        return Err(no_dead_letter(&tenant, &plugin, seq));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// 404: `plugin` has no dead letter at `seq`.
fn no_dead_letter(tenant: &str, plugin: &str, seq: Seq) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{tenant}/{plugin} has no dead letter at {seq}"),
    )
}

async fn replay(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin)): Path<(String, String)>,
    axum::extract::Query(ReplayFrom { from }): axum::extract::Query<ReplayFrom>,
    _access: TenantAccess,
) -> Result<Json<ReplayAnswer>, ApiError> {
    let done = api.bus.replay(&tenant, &plugin, &from).await;
    use plugbus_log::ReplayError;
    match done {
        Ok(done) => Ok(Json(ReplayAnswer {
            before: done.before,
            first: done.first,
        })),
        Err(e @ ReplayError::NoCursor { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            e.to_string(),
        )),
        Err(ReplayError::Log(e)) => Err(log_error(e)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_replay",
            e.to_string(),
        )),
    }
}

async fn resume(
    State(api): State<Arc<Api>>,
    Path((tenant, plugin)): Path<(String, String)>,
    _access: TenantAccess,
) -> Result<Response, ApiError> {
    if api.bus.resume(&tenant, &plugin) {
        Ok((StatusCode::OK, Json(ResumeAnswer { resumed: plugin })).into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{tenant}/{plugin} is not quarantined"),
        ))
    }
}

async fn failures(
    State(api): State<Arc<Api>>,
    Path(tenant): Path<String>,
    _access: TenantAccess,
) -> Result<Json<FailuresAnswer>, ApiError> {
    let failures = api
        .bus
        .recent_failures(&tenant)
        .into_iter()
        .map(|f| RecentFailure {
            at: f.at,
            plugin: f.plugin,
            plugin_version: f.plugin_version,
            event_id: f.event_id,
            ty: f.event_type,
            kind: f.kind,
            message: f.message,
            fuel: f.fuel,
        })
        .collect();
    Ok(Json(FailuresAnswer { failures }))
}

async fn reload(State(api): State<Arc<Api>>, _: Admin) -> Result<Json<ReloadAnswer>, ApiError> {
    let Some(dir) = api.config.plugins_dir.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this host has no plugins directory to reload",
        ));
    };
    api.bus.refresh(&dir).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            e.to_string(),
        )
    })?;
    let statuses = api.bus.statuses();
    let failed = statuses.iter().filter(|s| s.last_error.is_some()).count();
    Ok(Json(ReloadAnswer {
        plugins: statuses.len(),
        with_errors: failed,
    }))
}

/// The hex SHA-256 of `token`, as the configuration stores it and the API
/// compares it.
pub fn hash_token(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
