//! `GET /v1/whoami`: whose the request's bearer token is, so that a client
//! given a tenant's token can work on that tenant without being told its
//! name, and one given the admin token knows it may see every tenant.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::Api;
use crate::types::WhoAmI;

/// Answers `{"role":"admin"}` or `{"role":"tenant","tenant":…}` for a
/// valid token; 401 naming what is wrong otherwise.
pub(crate) async fn whoami(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(match api.caller(&headers)? {
        Caller::Admin => WhoAmI::Admin,
        Caller::Tenant(tenant) => WhoAmI::Tenant { tenant },
    }))
}
