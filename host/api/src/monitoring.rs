//! `GET /readyz` and `GET /metrics`, with the gauges read off the bus
//! when scraped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
