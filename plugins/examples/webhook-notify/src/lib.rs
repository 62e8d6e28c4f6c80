//! `webhook-notify`: on `inventory.low_stock` (emitted by `low-stock-alert`
//! as `{sku, quantity, threshold}`), POSTs a JSON alert to the URL in the
//! config key `webhook_url`, with `Authorization: Bearer <the secret
//! webhook_token>`. Other event types are ignored.
//!
//! The answer decides the delivery: a `2xx` is success; `429`, a `5xx`, a
//! timeout or a lost connection is retryable (the host delivers the event
//! again, and its `Idempotency-Key` header is the same, so the receiver can
//! drop the repeat); another status (a `4xx`, a redirect, which the host
//! does not follow) or a request the allow-list refuses is permanent. A
//! missing `webhook_url` or secret is permanent and named.
//!
//! Its manifest allows the webhook's origin and grants the secret:
//!
//! ```toml
//! subscribe = ["inventory.low_stock"]
//! [config]
//! webhook_url = "https://hooks.example.com/alerts"
//! [http]
//! allow = ["https://hooks.example.com"]
//! [secrets]
//! grant = ["webhook_token"]
//! ```

use std::time::Duration;

use plugbus_sdk::{Context, Event, Handler, HandlerError, Response, export_handler};
use serde::{Deserialize, Serialize};

/// The config key of the webhook's URL.
pub const URL_KEY: &str = "webhook_url";
/// The secret sent as the bearer token.
pub const TOKEN_SECRET: &str = "webhook_token";
/// The longest wait for the connection, the first byte of the answer and
/// between its bytes, when the config does not set `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The payload of `inventory.low_stock`.
#[derive(Debug, Deserialize)]
pub struct LowStock {
    /// The stock-keeping unit.
    pub sku: String,
    /// The quantity on hand.
    pub quantity: i64,
    /// The threshold it is at or below.
    pub threshold: i64,
}

/// The JSON the webhook receives.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alert {
    /// A line for a chat channel.
    pub text: String,
    /// The stock-keeping unit.
    pub sku: String,
    /// The quantity on hand.
    pub quantity: i64,
    /// The threshold it is at or below.
    pub threshold: i64,
    /// The tenant the alert is about.
    pub tenant: String,
    /// The id of the `inventory.low_stock` event: the same on every retry.
    pub event_id: String,
}

/// What the webhook's status means for the delivery: `Ok` for a `2xx`,
/// retryable for `429` and `5xx`, permanent otherwise.
pub fn outcome(response: &Response) -> Result<(), HandlerError> {
    let status = response.status();
    match status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(HandlerError::retryable(format!(
            "the webhook answered {status}; trying again later"
        ))),
        _ => Err(HandlerError::permanent(format!(
            "the webhook answered {status}: {}",
            response.text().chars().take(200).collect::<String>()
        ))),
    }
}

/// The handler.
pub struct WebhookNotify;

impl Handler for WebhookNotify {
    fn handle(ctx: &mut Context<'_>, event: Event) -> Result<(), HandlerError> {
        if event.ty() != "inventory.low_stock" {
            return Ok(());
        }
        let low: LowStock = event.json()?;
        let url = ctx.config(URL_KEY).ok_or_else(|| {
            HandlerError::permanent(format!(
                "the manifest's [config] has no {URL_KEY}: where should the alert go?"
            ))
        })?;
        let token = ctx.secret(TOKEN_SECRET).ok_or_else(|| {
            HandlerError::permanent(format!(
                "no secret {TOKEN_SECRET}: grant it in the manifest ([secrets] grant = \
                 [\"{TOKEN_SECRET}\"]) and give it in the tenant's [tenants.<tenant>.secrets]"
            ))
        })?;
        let timeout = ctx
            .config_parse::<u64>("timeout_ms")?
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let alert = Alert {
            text: format!(
                "{} is low: {} left (threshold {})",
                low.sku, low.quantity, low.threshold
            ),
            sku: low.sku,
            quantity: low.quantity,
            threshold: low.threshold,
            tenant: event.tenant().to_owned(),
            event_id: event.id().to_owned(),
        };
        // An error without an answer (denied, timeout, connection) becomes
        // a permanent or retryable HandlerError through `?`.
        let response = ctx
            .http()
            .post(url)
            .header("authorization", format!("Bearer {token}"))
            .json(&alert)
            .timeout(timeout)
            .send()?;
        ctx.info(format!(
            "alert for {} posted (attempt {}): {}",
            alert.sku,
            event.attempt(),
            response.status()
        ));
        outcome(&response)
    }
}

export_handler!(WebhookNotify);

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_sdk::testing::{TestContext, idempotency_key};
    use plugbus_sdk::{HttpError, Method};

    const URL: &str = "https://hooks.example.com/alerts";

    fn low(sku: &str, quantity: i64) -> Event {
        Event::new("inventory.low_stock")
            .with_id("low-1")
            .with_tenant("acme-pos")
            .with_json(&serde_json::json!({ "sku": sku, "quantity": quantity, "threshold": 10 }))
    }

    fn ready() -> TestContext {
        TestContext::new()
            .with_config(URL_KEY, URL)
            .with_secret(TOKEN_SECRET, "t0k")
    }

    fn answered(status: u16) -> Result<(), HandlerError> {
        ready()
            .on_http(Method::Post, URL, Response::new(status))
            .run::<WebhookNotify>(low("sku-1", 3))
    }

    #[test]
    fn a_2xx_is_success_and_the_alert_carries_token_and_key() {
        let mut ctx = ready().on_http(Method::Post, URL, Response::new(200));
        ctx.run::<WebhookNotify>(low("sku-1", 3)).expect("handled");
        let [request] = ctx.requests() else {
            panic!("one request: {:?}", ctx.requests());
        };
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.header("authorization"), Some("Bearer t0k"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("idempotency-key"),
            Some(idempotency_key("low-1", 0).as_str())
        );
        assert_eq!(request.timeout, Some(DEFAULT_TIMEOUT));
        let alert: Alert = request.body_json().expect("the alert");
        assert_eq!(
            alert,
            Alert {
                text: "sku-1 is low: 3 left (threshold 10)".into(),
                sku: "sku-1".into(),
                quantity: 3,
                threshold: 10,
                tenant: "acme-pos".into(),
                event_id: "low-1".into(),
            }
        );
        assert_eq!(ctx.logs()[0].1, "alert for sku-1 posted (attempt 1): 200");
        answered(204).expect("204 is success too");
    }

    #[test]
    fn too_many_requests_and_server_errors_are_retryable() {
        for status in [429, 500, 502, 503] {
            let err = answered(status).unwrap_err();
            assert!(
                matches!(&err, HandlerError::Retryable(m) if m.contains(&status.to_string())),
                "{status}: {err}"
            );
        }
    }

    #[test]
    fn other_statuses_are_permanent() {
        for status in [301, 400, 401, 404, 410] {
            let err = answered(status).unwrap_err();
            assert!(
                matches!(&err, HandlerError::Permanent(m) if m.contains(&status.to_string())),
                "{status}: {err}"
            );
        }
    }

    #[test]
    fn timeouts_and_lost_connections_are_retryable_denials_permanent() {
        for (error, retryable) in [
            (HttpError::Timeout("no first byte".into()), true),
            (HttpError::Connection("connection refused".into()), true),
            (HttpError::Denied("not in [http] allow".into()), false),
        ] {
            let err = ready()
                .on_http_error(Method::Post, URL, error.clone())
                .run::<WebhookNotify>(low("sku-1", 3))
                .unwrap_err();
            assert_eq!(
                matches!(err, HandlerError::Retryable(_)),
                retryable,
                "{error}: {err}"
            );
        }
    }

    #[test]
    fn a_retry_sends_the_same_idempotency_key() {
        let mut calls = 0;
        let mut ctx = ready().on_http_with(Method::Post, URL, move |_| {
            calls += 1;
            Ok(Response::new(if calls == 1 { 503 } else { 200 }))
        });
        ctx.run::<WebhookNotify>(low("sku-1", 3)).unwrap_err();
        ctx.run::<WebhookNotify>(low("sku-1", 3).with_attempt(2))
            .expect("the retry is accepted");
        let keys: Vec<_> = ctx
            .requests()
            .iter()
            .map(|r| r.header("idempotency-key"))
            .collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], keys[1]);
    }

    #[test]
    fn a_missing_url_or_secret_is_permanent_and_named() {
        let mut ctx = TestContext::new().with_secret(TOKEN_SECRET, "t0k");
        let err = ctx.run::<WebhookNotify>(low("sku-1", 3)).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains(URL_KEY)),
            "{err}"
        );
        let mut ctx = TestContext::new().with_config(URL_KEY, URL);
        let err = ctx.run::<WebhookNotify>(low("sku-1", 3)).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains(TOKEN_SECRET)),
            "{err}"
        );
        assert!(!err.to_string().contains("t0k"));
        assert!(ctx.requests().is_empty());
    }

    #[test]
    fn the_timeout_comes_from_config_and_a_bad_one_is_named() {
        let mut ctx = ready().with_config("timeout_ms", "1500").on_http(
            Method::Post,
            URL,
            Response::new(200),
        );
        ctx.run::<WebhookNotify>(low("sku-1", 3)).expect("handled");
        assert_eq!(ctx.requests()[0].timeout, Some(Duration::from_millis(1500)));
        let err = ready()
            .with_config("timeout_ms", "soon")
            .run::<WebhookNotify>(low("sku-1", 3))
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m) if m.contains("timeout_ms")),
            "{err}"
        );
    }

    #[test]
    fn a_bad_payload_is_permanent_and_other_types_are_ignored() {
        let err = ready()
            .run::<WebhookNotify>(Event::new("inventory.low_stock").with_data("{}"))
            .unwrap_err();
        assert!(matches!(err, HandlerError::Permanent(_)), "{err}");
        let mut ctx = ready();
        ctx.run::<WebhookNotify>(Event::new("inventory.out_of_stock"))
            .expect("ignored");
        assert!(ctx.requests().is_empty());
    }
}
