//! What a plugin kept and what it emitted, for the people who run it or
//! wrote it: its state (`GET .../state`, `GET .../state/{key}`) and the
//! events it emitted that the log still holds (`GET .../emits`). A
//! tenant's own plugins with its token, every tenant's with the admin's;
//! a tenant or plugin the host does not know is a 404 naming it.
//!
//! Values are bytes: they are written as JSON when they are exactly one
//! JSON text, else in base64, and say which
//! ([`Encoding`](crate::types::Encoding)).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::auth::TenantAccess;
use crate::error::ApiError;
use crate::state::Api;
use crate::types::{
    DEFAULT_PAGE_LIMIT, EmitView, EmitsAnswer, EmitsParams, MAX_PAGE_LIMIT, StateAnswer,
    StateEntryView, StateParams, StoredBytes,
};
use plugbus_log::{ReadLimit, StateQuery, StoredEvent};

/// The most bytes of keys and values, or of events, on one page: a page
/// of large values ends sooner (its first entry always comes).
const MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;

/// 404 unless the host knows `tenant` (it has a token or a plugin) and
/// its `plugin` (loaded, or failed to load).
fn known(api: &Api, tenant: &str, plugin: &str) -> Result<(), ApiError> {
    let statuses = api.bus.statuses();
    let has_plugins = statuses.iter().any(|s| s.tenant == tenant);
    if !has_plugins && !api.config.tenant_tokens.contains_key(tenant) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no tenant {tenant:?}"),
        ));
    }
    if !statuses
        .iter()
        .any(|s| s.tenant == tenant && s.name == plugin)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("tenant {tenant:?} has no plugin {plugin:?}"),
        ));
    }
    Ok(())
}

/// A page's `limit`: [`DEFAULT_PAGE_LIMIT`] when absent; 400 unless from
/// 1 to [`MAX_PAGE_LIMIT`].
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE_LIMIT) {
        limit @ 1..=MAX_PAGE_LIMIT => Ok(limit),
        limit => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE_LIMIT}, not {limit}"),
        )
        .limit("max_page_limit")),
    }
}

/// A query string that does not parse: 400 with axum's reason.
fn invalid_query(rejection: &QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        rejection.body_text(),
    )
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        error.to_string(),
    )
}

/// `GET /v1/tenants/{tenant}/plugins/{plugin}/state?prefix=&after=&limit=`.
pub(crate) async fn state(
    State(api): State<Arc<Api>>,
    _access: TenantAccess,
    Path((tenant, plugin)): Path<(String, String)>,
    params: Result<Query<StateParams>, QueryRejection>,
) -> Result<Json<StateAnswer>, ApiError> {
    let Query(params) = params.map_err(|e| invalid_query(&e))?;
    let limit = page_limit(params.limit)?;
    known(&api, &tenant, &plugin)?;
    let query = StateQuery {
        prefix: params.prefix.unwrap_or_default(),
        after: params.after,
        limit,
        max_bytes: MAX_PAGE_BYTES,
    };
    let page = api
        .bus
        .state_entries(&tenant, &plugin, query)
        .await
        .map_err(unavailable)?;
    let next_after = page
        .more
        .then(|| page.items.last().map(|e| e.key.clone()))
        .flatten();
    let entries = page
        .items
        .into_iter()
        .map(|entry| StateEntryView::new(entry.key, &entry.value))
        .collect();
    Ok(Json(StateAnswer {
        tenant,
        plugin,
        entries,
        next_after,
    }))
}

/// `GET /v1/tenants/{tenant}/plugins/{plugin}/state/{key}`: the key is the
/// rest of the path, percent-decoded, and may hold `/`.
pub(crate) async fn state_key(
    State(api): State<Arc<Api>>,
    _access: TenantAccess,
    Path((tenant, plugin, key)): Path<(String, String, String)>,
) -> Result<Json<StateEntryView>, ApiError> {
    known(&api, &tenant, &plugin)?;
    let value = api
        .bus
        .state_value(&tenant, &plugin, &key)
        .await
        .map_err(unavailable)?;
    match value {
        Some(value) => Ok(Json(StateEntryView::new(key, &value))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{tenant}/{plugin} has no state under the key {key:?}"),
        )),
    }
}

/// `GET /v1/tenants/{tenant}/plugins/{plugin}/emits?limit=&before=`.
pub(crate) async fn emits(
    State(api): State<Arc<Api>>,
    _access: TenantAccess,
    Path((tenant, plugin)): Path<(String, String)>,
    params: Result<Query<EmitsParams>, QueryRejection>,
) -> Result<Json<EmitsAnswer>, ApiError> {
    let Query(params) = params.map_err(|e| invalid_query(&e))?;
    let limit = page_limit(params.limit)?;
    known(&api, &tenant, &plugin)?;
    let limit = ReadLimit {
        events: limit,
        bytes: MAX_PAGE_BYTES,
        first_always: true,
    };
    let page = api
        .bus
        .emitted(&tenant, &plugin, params.before, limit)
        .await
        .map_err(unavailable)?;
    let next_before = page
        .more
        .then(|| page.items.last().map(|e| e.seq))
        .flatten();
    Ok(Json(EmitsAnswer {
        tenant,
        plugin,
        emits: page.items.into_iter().map(emit_view).collect(),
        next_before,
    }))
}

/// An emitted event as `GET .../emits` shows it.
fn emit_view(stored: StoredEvent) -> EmitView {
    let event = &stored.event;
    EmitView {
        seq: stored.seq,
        id: event.id().to_owned(),
        ty: event.ty().to_owned(),
        subject: event.subject().map(str::to_owned),
        time: event.time().map(str::to_owned),
        appended_at: plugbus_core::clock::rfc3339_ms(stored.appended_at_ms),
        causation_id: event.causation_id().map(str::to_owned),
        datacontenttype: event.datacontenttype().map(str::to_owned),
        data: (!event.data().is_empty()).then(|| StoredBytes::new(event.data())),
    }
}
