//! A refusal: its status, its JSON body, and how it is counted.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::types::ErrorBody;
use plugbus_core::event::EventError;

/// A refusal: a status and a JSON body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) attribute: Option<String>,
    pub(crate) index: Option<usize>,
    /// The bound that was crossed.
    pub(crate) limit: Option<&'static str>,
    /// `Retry-After`, in seconds.
    pub(crate) retry_after: Option<u64>,
    /// Whether the connection closes after the answer.
    pub(crate) close: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
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
    pub(crate) fn limit(mut self, limit: &'static str) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Closes the connection after the answer.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// What `plugbus_rejected_requests_total` counts it as.
    pub(crate) fn reason(&self) -> &'static str {
        self.limit.unwrap_or(self.kind)
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn invalid(error: &EventError, index: Option<usize>) -> Self {
        let attribute = error.attribute().map(str::to_owned);
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

/// Counts a refusal in `plugbus_rejected_requests_total`.
pub(crate) fn rejected(tenant: &str, error: ApiError) -> ApiError {
    metrics::counter!(
        "plugbus_rejected_requests_total",
        "tenant" => tenant.to_owned(),
        "status" => error.status.as_u16().to_string(),
        "reason" => error.reason()
    )
    .increment(1);
    error
}
