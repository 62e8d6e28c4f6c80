//! `POST /v1/events`: CloudEvents ingest in the binary, structured and
//! batch modes, within the body and rate limits, acknowledged once durable.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Publisher;
use crate::error::{ApiError, rejected};
use crate::state::Api;
use crate::types::{Accepted, IngestAnswer};
use plugbus_bus::DurablePublishError;
use plugbus_core::event::{BatchError, Event, EventError, JsonBatch};
use plugbus_log::LogError;

pub(crate) async fn ingest(
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
/// [`ApiLimits::body_read_timeout`](crate::limits::ApiLimits::body_read_timeout), into its events; with the body's size.
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
    // The answer names each event by its id; the events themselves go to
    // the log whole, in one append (no copy of the batch kept here).
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    let started = std::time::Instant::now();
    let appended = match api.bus.publish(events).await {
        Ok(appended) => appended,
        // An event larger than the log stores (a NATS server's
        // `max_payload`): refused whole before anything was stored.
        Err(DurablePublishError::Log(LogError::TooLarge {
            bytes,
            limit,
            index,
            ..
        })) => {
            let which = index.map_or_else(|| "an event".to_owned(), |i| format!("event {i}"));
            return Err(rejected(
                &tenant,
                ApiError {
                    index,
                    ..ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "{which} takes {bytes} bytes as stored (its CloudEvents JSON); the event log stores events of at most {limit} bytes; nothing was stored"
                        ),
                    )
                    .limit("max_event_bytes")
                },
            ));
        }
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
    let accepted = ids
        .into_iter()
        .zip(&appended)
        .map(|(id, a)| Accepted {
            id,
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
        EventError::Missing {
            name: "specversion",
            ..
        } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            "no ce-specversion header: send a binary-mode event (ce- headers), or set Content-Type to application/cloudevents+json (structured) or application/cloudevents-batch+json (batch)",
        ),
        e => ApiError::invalid(&e, None),
    })
}
