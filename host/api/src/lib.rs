//! The HTTP surface of `plugbus serve` (axum):
//!
//! - `POST /v1/events`: CloudEvents ingest in the HTTP binding's three
//!   modes — binary (`ce-` headers, percent-decoded; the body is the data),
//!   structured (`application/cloudevents+json`) and batch
//!   (`application/cloudevents-batch+json`, all or nothing). The tenant is
//!   the bearer token's, never the event's. An event is acknowledged (202)
//!   only once it is durable in the log.
//! - `GET /v1/tenants/{tenant}/plugins` and `.../dead-letters...`: a
//!   tenant's own plugins and dead letters, with the tenant's token (or the
//!   admin token).
//! - `GET /v1/tenants/{tenant}/plugins/{plugin}/state[/{key}]` and
//!   `.../emits`: a plugin's state and the events it emitted (`inspect`),
//!   with the tenant's token (or the admin token).
//! - `GET /v1/admin/...`: every tenant's, with the admin token.
//! - `GET /v1/whoami`: whose the bearer token is (`{"role":"admin"}` or
//!   `{"role":"tenant","tenant":…}`).
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text; with
//!   [`ApiLimits::metrics_token`] set, only with that bearer token or the
//!   admin's).
//!
//! Every body is one of [`types`], the serde types the CLI client reads
//! too; who may call a route is said by its auth extractor (`auth`: a
//! tenant's token, the path's tenant or the admin, the admin, the scrape
//! token).
//!
//! Every refusal is a JSON body `{"error": kind, "message": …}`, with
//! `"attribute"` naming the CloudEvents attribute at fault when there is
//! one, `"index"` the event of a batch, and `"limit"` the bound that was
//! crossed; each is counted in
//! `plugbus_rejected_requests_total{tenant,status,reason}`.
//!
//! Bounds (every one with a default, see [`ApiLimits`] and
//! [`ServerLimits`]): the request head and body must arrive in time (408),
//! a request must be answered in time (503), a client that does not read
//! its answer is cut off, the server holds a bounded number of
//! connections (503 and closed beyond it), each tenant a bounded number of
//! requests in flight (429) and a bounded ingest rate in events and bytes
//! per second (429 with `Retry-After`, nothing stored), and at shutdown the
//! requests under way get a bounded drain. [`serve`] runs it all.
//!
//! Metrics of the HTTP surface: `plugbus_rejected_requests_total{tenant,
//! status,reason}` (every refused request; `reason` is the limit crossed,
//! or the error kind; `tenant` is empty before a token is recognised),
//! `plugbus_http_connections_refused_total` (connections over
//! [`ServerLimits::max_connections`]),
//! `plugbus_http_connections_closed_total{reason}` (`header_timeout`,
//! `write_timeout`, `drain_deadline`) and the gauge
//! `plugbus_http_connections_open`.

mod admin;
mod auth;
mod error;
mod ingest;
mod inspect;
mod limits;
mod monitoring;
mod routes;
mod scrape;
mod server;
mod state;
pub mod types;
mod whoami;

pub use auth::hash_token;
pub use limits::{ApiLimits, RateLimit};
pub use monitoring::{METRICS, Metric, MetricKind, describe_metrics};
pub use routes::router;
pub use server::{ServerLimits, serve};
pub use state::{Api, ApiConfig};
