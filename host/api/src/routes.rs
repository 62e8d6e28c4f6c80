//! The routes and the bound on the time a request takes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::admin::{
    admin_plugins, admin_tenants, dead_letter, dead_letters, discard, failures, redrive, reload,
    replay, resume, tenant_plugins,
};
use crate::auth::Caller;
use crate::error::{ApiError, rejected};
use crate::ingest::ingest;
use crate::inspect::{emits, state, state_key};
use crate::monitoring::{ready, render_metrics};
use crate::state::Api;
use crate::whoami::whoami;

/// The routes, ready to serve (by [`serve`](crate::server::serve), which adds the
/// connection-level bounds), each request within
/// [`ApiLimits::request_timeout`](crate::limits::ApiLimits::request_timeout).
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
        .route("/v1/tenants/{tenant}/plugins/{plugin}/state", get(state))
        .route(
            "/v1/tenants/{tenant}/plugins/{plugin}/state/{*key}",
            get(state_key),
        )
        .route("/v1/tenants/{tenant}/plugins/{plugin}/emits", get(emits))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/whoami", get(whoami))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            within_request_timeout,
        ))
        .with_state(api)
}

/// Answers 503 (and closes the connection) when a request is not answered
/// within [`ApiLimits::request_timeout`](crate::limits::ApiLimits::request_timeout).
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
