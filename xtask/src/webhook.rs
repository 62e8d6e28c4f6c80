//! The demo's webhook receiver, which the `webhook-notify` example posts
//! its low-stock alerts to: an HTTP server on a free port of 127.0.0.1
//! that checks the bearer token, answers `503` to the first request of each
//! `Idempotency-Key` (so that the host retries the delivery) and `200`
//! after, and prints per alert how many requests arrived, under how many
//! idempotency keys, and how often it was accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// The tenant whose manifest `webhook-notify.toml` the demo points at the
/// receiver.
pub const TENANT: &str = "acme-pos";
/// The demo's secret token; public, like the demo's other tokens.
pub const TOKEN: &str = "demo-webhook-token";
/// The environment variable the demo's `plugbus.toml` reads the token from;
/// the demo sets it for the host.
pub const TOKEN_VAR: &str = "ACME_WEBHOOK_TOKEN";
/// The origin `examples/plugins/acme-pos/webhook-notify.toml` names, which
/// the demo's copy gets the receiver's instead of.
pub const MANIFEST_ORIGIN: &str = "http://127.0.0.1:8090";
/// The path the receiver takes alerts on.
pub const PATH: &str = "/alerts";

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub origin: String,
}

/// Starts the receiver on a free port of 127.0.0.1, in a thread of its
/// own; `say` prints what it receives.
pub fn start(say: fn(String)) -> anyhow::Result<Receiver> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot listen on 127.0.0.1 for the webhook receiver")?;
    listener
        .set_nonblocking(true)
        .context("cannot make the webhook receiver's socket non-blocking")?;
    let addr: SocketAddr = listener
        .local_addr()
        .context("the webhook receiver's address")?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    std::thread::Builder::new()
        .name("webhook-receiver".into())
        .spawn(move || {
            if let Err(e) = serve(listener, ledger, say) {
                say(format!("warning: the webhook receiver stopped: {e:#}"));
            }
        })
        .context("cannot start the webhook receiver's thread")?;
    Ok(Receiver {
        origin: format!("http://{addr}"),
    })
}

fn serve(
    listener: std::net::TcpListener,
    ledger: Arc<Mutex<Ledger>>,
    say: fn(String),
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the webhook receiver's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = axum::Router::new()
            .route(
                PATH,
                axum::routing::post(
                    move |State(ledger): State<Arc<Mutex<Ledger>>>,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        let token_ok = headers
                            .get("authorization")
                            .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
                        let (status, line) = match ledger.lock() {
                            Ok(mut ledger) => ledger.receive(token_ok, key, &body),
                            Err(_) => (500, "webhook: the ledger is poisoned".to_owned()),
                        };
                        say(line);
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    },
                ),
            )
            .with_state(ledger);
        axum::serve(listener, app).await
    })?;
    Ok(())
}

/// What arrived for one alert (one `inventory.low_stock` event).
#[derive(Debug, Default)]
struct Tally {
    sku: String,
    requests: u32,
    keys: BTreeSet<String>,
    accepted: u32,
}

/// What the receiver has seen, by the alert's event id.
#[derive(Debug, Default)]
struct Ledger {
    alerts: BTreeMap<String, Tally>,
    /// Keys already answered `503` once.
    refused: BTreeSet<String>,
    /// Keys already accepted: a repeat is answered `200` and dropped.
    accepted: BTreeSet<String>,
}

/// The part of the alert the receiver reads.
#[derive(Debug, serde::Deserialize)]
struct Alert {
    event_id: String,
    sku: String,
}

impl Ledger {
    /// Takes a request; answers its status and the line to print.
    fn receive(&mut self, token_ok: bool, key: Option<&str>, body: &[u8]) -> (u16, String) {
        if !token_ok {
            return (
                401,
                "webhook: 401 to a request without the bearer token".into(),
            );
        }
        let Some(key) = key else {
            return (
                400,
                "webhook: 400 to a request without an Idempotency-Key".into(),
            );
        };
        let alert: Alert = match serde_json::from_slice(body) {
            Ok(alert) => alert,
            Err(e) => {
                return (
                    400,
                    format!("webhook: 400 to a body that is not an alert: {e}"),
                );
            }
        };
        let tally = self.alerts.entry(alert.event_id.clone()).or_default();
        tally.sku = alert.sku;
        tally.requests += 1;
        tally.keys.insert(key.to_owned());
        let short: String = key.chars().take(12).collect();
        if self.refused.insert(key.to_owned()) {
            return (
                503,
                format!(
                    "webhook: alert for {} (event {}): request {} with key {short}…: 503, so the \
                     host retries the delivery",
                    tally.sku, alert.event_id, tally.requests
                ),
            );
        }
        let repeat = !self.accepted.insert(key.to_owned());
        if !repeat {
            tally.accepted += 1;
        }
        let keys = tally.keys.len();
        (
            200,
            format!(
                "webhook: alert for {} (event {}): {} requests, {keys} idempotency key{}, \
                 accepted {}{}",
                tally.sku,
                alert.event_id,
                tally.requests,
                if keys == 1 { "" } else { "s" },
                match tally.accepted {
                    1 => "once".to_owned(),
                    n => format!("{n} times"),
                },
                if repeat {
                    " (this repeat was answered 200 and dropped)"
                } else {
                    ""
                }
            ),
        )
    }
}

/// Points the demo's copy of `webhook-notify.toml` (in `plugins`) at the
/// receiver: its `[http] allow` and `webhook_url`. Answers whether the
/// manifest is there.
pub fn point_manifest(plugins: &Path, origin: &str) -> anyhow::Result<bool> {
    let path = plugins.join(TENANT).join("webhook-notify.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if !text.contains(MANIFEST_ORIGIN) {
        bail!(
            "{}: names no {MANIFEST_ORIGIN}, which the demo replaces with its receiver's origin",
            path.display()
        );
    }
    std::fs::write(&path, text.replace(MANIFEST_ORIGIN, origin))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Writes the demo's configuration to `target`: `examples/plugbus.toml`
/// (`source`) with the receiver allowed (loopback for the host, the
/// origin in the tenant's ceiling) and the tenant's secret read from
/// [`TOKEN_VAR`]. Answers `target`.
pub fn write_config(source: &Path, target: &Path, origin: &str) -> anyhow::Result<PathBuf> {
    let base = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let text = format!(
        "{base}\n\
         # Added by cargo xtask demo for its webhook receiver on {origin}.\n\
         [outbound]\n\
         allow_private = [\"127.0.0.1/32\"]\n\n\
         [tenants.{TENANT}.outbound]\n\
         allow = [\"{origin}\"]\n\n\
         [tenants.{TENANT}.secrets]\n\
         webhook_token = {{ env = \"{TOKEN_VAR}\" }}\n"
    );
    text.parse::<toml::Table>().with_context(|| {
        format!(
            "{} with the webhook receiver's settings added is not valid TOML",
            source.display()
        )
    })?;
    std::fs::write(target, text).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(target.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(event: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "event_id": event, "sku": "sku-1", "text": "low" }))
            .expect("json")
    }

    #[test]
    fn the_first_request_of_a_key_is_refused_the_retry_accepted_a_repeat_dropped() {
        let mut ledger = Ledger::default();
        let (status, line) = ledger.receive(true, Some("k1"), &alert("e1"));
        assert_eq!(status, 503, "{line}");
        assert!(line.contains("request 1"), "{line}");
        let (status, line) = ledger.receive(true, Some("k1"), &alert("e1"));
        assert_eq!(status, 200, "{line}");
        assert!(
            line.ends_with("2 requests, 1 idempotency key, accepted once"),
            "{line}"
        );
        let (status, line) = ledger.receive(true, Some("k1"), &alert("e1"));
        assert_eq!(status, 200, "{line}");
        assert!(line.contains("accepted once (this repeat"), "{line}");
        // Another event's key starts over.
        assert_eq!(ledger.receive(true, Some("k2"), &alert("e2")).0, 503);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.receive(false, Some("k"), &alert("e")).0, 401);
        assert_eq!(ledger.receive(true, None, &alert("e")).0, 400);
        assert_eq!(ledger.receive(true, Some("k"), b"{}").0, 400);
        assert!(ledger.alerts.is_empty());
    }

    #[test]
    fn the_manifest_and_the_config_are_pointed_at_the_receiver() {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let plugins = tmp.path().join("plugins");
        assert!(!point_manifest(&plugins, "http://127.0.0.1:4711").expect("no manifest"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        std::fs::create_dir_all(plugins.join(TENANT)).expect("mkdir");
        std::fs::copy(
            root.join("examples/plugins/acme-pos/webhook-notify.toml"),
            plugins.join(TENANT).join("webhook-notify.toml"),
        )
        .expect("copy");
        assert!(point_manifest(&plugins, "http://127.0.0.1:4711").expect("rewritten"));
        let manifest: toml::Table =
            std::fs::read_to_string(plugins.join(TENANT).join("webhook-notify.toml"))
                .expect("read")
                .parse()
                .expect("toml");
        assert_eq!(
            manifest["config"]["webhook_url"].as_str(),
            Some("http://127.0.0.1:4711/alerts")
        );
        assert_eq!(
            manifest["http"]["allow"][0].as_str(),
            Some("http://127.0.0.1:4711")
        );

        let config = write_config(
            &root.join("examples/plugbus.toml"),
            &tmp.path().join("plugbus.toml"),
            "http://127.0.0.1:4711",
        )
        .expect("written");
        let config: toml::Table = std::fs::read_to_string(config)
            .expect("read")
            .parse()
            .expect("toml");
        let tenant = &config["tenants"][TENANT];
        assert!(tenant.get("token_sha256").is_some(), "the base is kept");
        assert_eq!(
            tenant["outbound"]["allow"][0].as_str(),
            Some("http://127.0.0.1:4711")
        );
        assert_eq!(
            tenant["secrets"]["webhook_token"]["env"].as_str(),
            Some(TOKEN_VAR)
        );
        assert_eq!(
            config["outbound"]["allow_private"][0].as_str(),
            Some("127.0.0.1/32")
        );
    }
}
