//! The state behind the routes: the bus, the configuration, the tokens
//! and the admission of requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::limits::{Admission, ApiLimits};
use plugbus_bus::DurableBus;

/// What the HTTP surface needs to know besides the bus. Its bounds are
/// [`ApiLimits`], given to [`Api::with_limits`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body, in bytes (default 1 MiB); a larger one is
    /// refused (413) before it is read whole.
    pub max_body_bytes: usize,
    /// The most events in one batch request (default 1000).
    pub max_batch_events: usize,
    /// Each tenant's token, as the hex SHA-256 of the token.
    pub tenant_tokens: HashMap<String, String>,
    /// The admin token, as the hex SHA-256 of the token.
    pub admin_token: Option<String>,
    /// The plugins directory, for `POST /v1/admin/reload`.
    pub plugins_dir: Option<std::path::PathBuf>,
}

impl Default for ApiConfig {
    /// The limits of `plugbus.toml`'s defaults, no tokens, no plugins
    /// directory.
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1000,
            tenant_tokens: HashMap::new(),
            admin_token: None,
            plugins_dir: None,
        }
    }
}

/// The state behind the routes.
pub struct Api {
    pub(crate) bus: Arc<DurableBus>,
    pub(crate) config: ApiConfig,
    /// Token hash → tenant.
    pub(crate) tenants_by_token: HashMap<String, String>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The per-plugin gauges `/metrics` sets, and which of them it shows.
    pub(crate) scraped: crate::monitoring::ScrapedGauges,
    /// Requests in flight and ingest rates, per tenant.
    pub(crate) admission: Admission,
    pub(crate) ready: AtomicBool,
}

impl Api {
    /// The HTTP surface over `bus`, with the default [`ApiLimits`]; see
    /// [`Api::with_limits`].
    pub fn new(
        bus: Arc<DurableBus>,
        config: ApiConfig,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Self> {
        Self::with_limits(bus, config, ApiLimits::default(), metrics)
    }

    /// The HTTP surface over `bus`, within `limits`; `/metrics` renders
    /// `metrics` (the process's Prometheus recorder, installed before:
    /// the metrics are described to it here), or answers 404 without one.
    pub fn with_limits(
        bus: Arc<DurableBus>,
        config: ApiConfig,
        limits: ApiLimits,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Self> {
        let tenants_by_token = config
            .tenant_tokens
            .iter()
            .map(|(tenant, hash)| (hash.to_ascii_lowercase(), tenant.clone()))
            .collect();
        if metrics.is_some() {
            crate::monitoring::describe_metrics();
        }
        Arc::new(Self {
            bus,
            config,
            tenants_by_token,
            metrics,
            scraped: Default::default(),
            admission: Admission::new(limits),
            ready: AtomicBool::new(true),
        })
    }

    /// Says whether `/readyz` answers 200; false while shutting down.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}
