//! Who is asking: the request's bearer token, checked once by an axum
//! extractor per kind of route instead of by each handler.
//!
//! - [`Publisher`]: a tenant's token (ingest); the admin token is refused.
//! - [`TenantAccess`]: the `{tenant}` of the path, by that tenant's token
//!   or the admin token; another tenant's token finds nothing (404, as if
//!   the tenant did not exist).
//! - [`Admin`]: the admin token only.
//! - [`Scraper`]: `/metrics`, open unless [`ApiLimits::metrics_token`]
//!   is set, then with the scrape token or the admin token.
//!
//! Every refusal names what is wrong: no `Authorization` header, one that
//! is not `Bearer <token>`, a token that is not valid, or a valid token of
//! the wrong kind for the route.
//!
//! [`ApiLimits::metrics_token`]: crate::limits::ApiLimits::metrics_token

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use crate::error::{ApiError, rejected};
use crate::state::Api;

/// A place among a tenant's requests in flight (`None` for the admin, or
/// without a limit).
pub(crate) type InFlight = Option<tokio::sync::OwnedSemaphorePermit>;

/// Who presented the request's bearer token.
pub(super) enum Caller {
    /// The admin token.
    Admin,
    /// A tenant's token.
    Tenant(String),
}

/// The hex SHA-256 of the request's bearer token, as tokens are
/// configured.
fn bearer_hash(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not Bearer <token>"))?;
    Ok(hash_token(token))
}

impl Api {
    /// Who presented the bearer token of `headers`.
    pub(super) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let hash = bearer_hash(headers)?;
        if self
            .config
            .admin_token
            .as_deref()
            .is_some_and(|admin| admin.eq_ignore_ascii_case(&hash))
        {
            return Ok(Caller::Admin);
        }
        match self.tenants_by_token.get(&hash) {
            Some(tenant) => Ok(Caller::Tenant(tenant.clone())),
            None => Err(ApiError::unauthorized("the token is not valid")),
        }
    }

    /// A place among `tenant`'s requests in flight, held until dropped;
    /// 429 when it has [`ApiLimits::max_in_flight_per_tenant`] already.
    ///
    /// [`ApiLimits::max_in_flight_per_tenant`]: crate::limits::ApiLimits::max_in_flight_per_tenant
    fn enter(&self, tenant: &str) -> Result<InFlight, ApiError> {
        self.admission.enter(tenant).ok_or_else(|| {
            let max = self.admission.limits().max_in_flight_per_tenant;
            rejected(
                tenant,
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    format!("tenant {tenant} has {max} requests under way, its limit; retry once one is answered"),
                )
                .limit("max_in_flight_per_tenant")
                .retry_after(1),
            )
        })
    }
}

/// A request with a tenant's token, which publishes as that tenant:
/// within the tenant's requests in flight. Its refusals are counted in
/// `plugbus_rejected_requests_total`.
pub(super) struct Publisher {
    /// The token's tenant.
    pub(super) tenant: String,
    /// Its place among the tenant's requests in flight.
    _in_flight: InFlight,
}

impl FromRequestParts<Arc<Api>> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let tenant = match api.caller(&parts.headers).map_err(|e| rejected("", e))? {
            Caller::Tenant(tenant) => tenant,
            Caller::Admin => {
                return Err(rejected(
                    "",
                    ApiError::unauthorized(
                        "events are published with a tenant's token, not the admin token",
                    ),
                ));
            }
        };
        let in_flight = api.enter(&tenant)?;
        Ok(Self {
            tenant,
            _in_flight: in_flight,
        })
    }
}

/// A request for the resources of the path's `{tenant}`, by that tenant
/// (then within its requests in flight) or by the admin. Another tenant's
/// token is answered 404, as if the tenant did not exist.
pub(super) struct TenantAccess {
    /// Its place among the tenant's requests in flight (`None` for the
    /// admin).
    _in_flight: InFlight,
}

impl FromRequestParts<Arc<Api>> for TenantAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let caller = api.caller(&parts.headers)?;
        let params = RawPathParams::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))?;
        let Some((_, tenant)) = params.iter().find(|(name, _)| *name == "tenant") else {
            // A route without `{tenant}` is a programming error: refuse.
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "this route names no tenant",
            ));
        };
        let in_flight = match caller {
            Caller::Admin => None,
            Caller::Tenant(own) if own == tenant => api.enter(&own)?,
            // Another tenant's: as if it did not exist.
            Caller::Tenant(_) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no tenant {tenant:?} for this token"),
                ));
            }
        };
        Ok(Self {
            _in_flight: in_flight,
        })
    }
}

/// A request with the admin token.
pub(super) struct Admin;

impl FromRequestParts<Arc<Api>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        match api.caller(&parts.headers)? {
            Caller::Admin => Ok(Self),
            Caller::Tenant(_) => Err(ApiError::unauthorized("this route needs the admin token")),
        }
    }
}

/// A scrape of `/metrics`: with [`ApiLimits::metrics_token`] set, the
/// scrape token or the admin token must be presented. Its refusals are
/// counted in `plugbus_rejected_requests_total`.
///
/// [`ApiLimits::metrics_token`]: crate::limits::ApiLimits::metrics_token
pub(super) struct Scraper;

impl FromRequestParts<Arc<Api>> for Scraper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let Some(expected) = &api.admission.limits().metrics_token else {
            return Ok(Self);
        };
        let refused = |e| rejected("", e);
        let hash = bearer_hash(&parts.headers).map_err(refused)?;
        if expected.eq_ignore_ascii_case(&hash) {
            return Ok(Self);
        }
        match api.caller(&parts.headers).map_err(refused)? {
            Caller::Admin => Ok(Self),
            Caller::Tenant(_) => Err(refused(ApiError::unauthorized(
                "/metrics needs the scrape token (or the admin token)",
            ))),
        }
    }
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
