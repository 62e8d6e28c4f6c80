//! The plugin, tenant, dead-letter, replay, resume, failure and reload
//! routes: a tenant's own with its token, every tenant's with the admin's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::{Admin, TenantAccess};
use crate::error::ApiError;
use crate::state::Api;
use crate::types::{
    DeadLetterView, DeadLettersAnswer, FailuresAnswer, PluginLimits, PluginState, PluginView,
    PluginsAnswer, RecentFailure, RedriveAnswer, ReloadAnswer, ReplayAnswer, ReplayFrom,
    ResumeAnswer, TenantView, TenantsAnswer,
};
use plugbus_log::Seq;

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

pub(crate) async fn admin_plugins(
    State(api): State<Arc<Api>>,
    _: Admin,
) -> Result<Json<PluginsAnswer>, ApiError> {
    let plugins = plugin_views(&api, None).await;
    Ok(Json(PluginsAnswer { plugins }))
}

pub(crate) async fn admin_tenants(
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

pub(crate) async fn tenant_plugins(
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

pub(crate) async fn dead_letters(
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

pub(crate) async fn dead_letter(
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

pub(crate) async fn redrive(
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

pub(crate) async fn discard(
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

pub(crate) async fn replay(
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

pub(crate) async fn resume(
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

pub(crate) async fn failures(
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

pub(crate) async fn reload(
    State(api): State<Arc<Api>>,
    _: Admin,
) -> Result<Json<ReloadAnswer>, ApiError> {
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
