//! The host's configuration file, `plugbus.toml`.
//!
//! Every setting has a default, so an empty file (or none at all) is the
//! embedded default: listen on `127.0.0.1:8080`, plugins in `./plugins`,
//! data in `./data`, no tenant tokens. Unknown keys are errors that name
//! the key, so a typo never silently keeps a default.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! plugins_dir = "plugins"
//! data_dir = "data"
//! log_format = "human"            # or "json"
//! drain_seconds = 30              # SIGTERM: what is under way gets this long
//!
//! [limits]                        # for plugins whose manifest does not say
//! fuel = 50_000_000
//! memory_mib = 32
//! timeout_ms = 1000
//!
//! [limits.max]                    # the most a manifest may ask for
//! fuel = 1_000_000_000
//! memory_mib = 256
//! timeout_ms = 30_000
//! manifest_bytes = 65536
//! plugin_bytes = 67108864
//!
//! [budgets]                       # what one delivery, chain or batch may use
//! max_emits_per_delivery = 100
//! max_emit_bytes_per_delivery = 4194304
//! max_chain_depth = 16
//! max_events_per_chain = 10_000
//! max_state_bytes_per_delivery = 4194304
//! max_batch_commit_bytes = 16777216
//! max_error_bytes = 4096
//! max_log_bytes = 4096
//! max_log_lines_per_delivery = 256
//! max_pending_mib = 64
//!
//! [instances]
//! recycle_after_events = 100_000  # 0: never
//! recycle_memory_percent = 75     # 0: never
//! max_concurrent_compiles = 2     # plugins compiled at once (reloads, first loads)
//! background_compile_mib = 4      # larger components not in the compile cache compile in the background at start
//!
//! [delivery]
//! max_attempts = 5
//! quarantine_after = 20           # 0: never
//! quarantine_seconds = 300
//! dedupe_hours = 24
//! retain_hours = 168              # 0: no age limit
//! # retain_mib = 10240
//!
//! [http]
//! max_body_bytes = 1048576
//! max_batch_events = 1000
//! header_timeout_ms = 10_000
//! body_timeout_ms = 30_000
//! max_connections = 1024
//!
//! [outbound]                      # plugins' HTTP requests (wasi:http), within [http] allow of their manifest
//! max_requests_per_delivery = 16
//! max_request_body_bytes = 1048576
//! max_response_body_bytes = 4194304
//! connect_timeout_ms = 5000
//! first_byte_timeout_ms = 10_000
//! total_timeout_ms = 30_000        # every one of these also ends at the delivery's deadline
//! allow_private = []               # CIDRs of loopback/private/link-local/metadata addresses allowed, e.g. ["127.0.0.1/32"]
//!
//! [quotas]                        # every tenant's, unless its own section says otherwise
//! max_plugins = 100
//! ingest_events_per_second = 10_000
//! ingest_bytes_per_second = 33554432
//! max_requests_in_flight = 64
//! max_dead_letters = 100_000
//! max_dead_letter_mib = 1024
//!
//! [metrics]
//! # token_sha256 = "…"            # a bearer token for GET /metrics
//!
//! [otlp]                          # OpenTelemetry span export (off without an endpoint)
//! # endpoint = "http://127.0.0.1:4318"   # spans go to <endpoint>/v1/traces
//! service_name = "plugbus"
//! sample_ratio = 1.0
//!
//! [log]                           # where events are kept
//! backend = "sqlite"              # the embedded log in data_dir (default), or "nats"
//! # read_connections = 8           # embedded log: read connections (default 2 per CPU, 4..32)
//! # tail_cache_events = 65536      # embedded log: newest events kept parsed (0: off)
//! # tail_cache_mib = 64            # the same cache's bound in MiB of event JSON (0: off)
//!
//! [log.nats]                      # with backend = "nats": NATS JetStream, shared by several hosts
//! servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
//! # one way to authenticate, secrets from the environment or a file:
//! # token_env = "PLUGBUS_NATS_TOKEN"
//! # user = "plugbus"
//! # password_env = "PLUGBUS_NATS_PASSWORD"
//! # credentials_file = "/etc/plugbus/nats.creds"
//! # nkey_seed_file = "/etc/plugbus/nats.nk"
//! tls_required = false
//! # ca_file = "/etc/plugbus/nats-ca.pem"
//! # client_cert = "/etc/plugbus/client.pem"
//! # client_key = "/etc/plugbus/client-key.pem"
//! tls_first = false
//! prefix = "plugbus"              # names the stream, subjects and buckets
//! replicas = 1                    # 1, 3 or 5
//! partitions = 1                  # 1 to 256; fixed when the stream is made
//! connect_timeout_ms = 10_000
//! request_timeout_ms = 10_000
//!
//! [admin]
//! token_sha256 = "…"              # `plugbus hash-token`
//!
//! [tenants.acme-pos]
//! token_sha256 = "…"              # optional: without one the tenant cannot publish over HTTP
//! max_plugins = 10                # and the rates and dead letters, for this tenant alone
//!
//! [tenants.acme-pos.outbound]     # the tenant's ceiling: every [http] allow entry of its plugins'
//! allow = ["https://*.example.com"]  # manifests must be covered by one of these (default: none)
//! [tenants.acme-pos.secrets]      # the tenant's secrets, for its plugins' `[secrets] grant`
//! webhook_token = { env = "ACME_WEBHOOK_TOKEN" }      # from an environment variable
//! smtp_password = { file = "/run/secrets/acme-smtp" } # or a file (one trailing newline dropped)
//! ```
//!
//! Tokens are stored as the hex SHA-256 of the token, never the token.
//! A tenant's secrets are never in the file either: each names the
//! environment variable or the file that holds it (a bare string is
//! refused), read when `plugbus serve` starts ([`Config::tenant_secrets`]);
//! a secret's name is 1 to 64 of `a-z`, `0-9` and `_`, its value 1 byte to
//! 64 KiB of UTF-8. A variable that is not set, a file that cannot be read,
//! or a value that is empty, too large or not UTF-8 stops the start with
//! an error naming the tenant, the secret and the source, never the value.
//! A plugin reads only the secrets its manifest grants it, of its own
//! tenant; the host scrubs their values from the plugin's log lines,
//! output and error messages.
//! The NATS backend's secrets are never in the file either: it names the
//! environment variable or the file that holds each, read when `plugbus
//! serve` starts ([`Config::nats_log_config`]). With the NATS backend the
//! duplicate window is still `delivery.dedupe_hours` and the dead-letter
//! quotas are still `[quotas]`'s and the tenants', as for the embedded log.
//!
//! `[outbound]` bounds every outbound HTTP request of a plugin; each timeout
//! also ends at the delivery's own deadline. Addresses on loopback, private,
//! link-local (the cloud metadata service), carrier-grade NAT,
//! documentation, multicast and reserved networks are refused after DNS
//! resolution unless `allow_private` holds a CIDR that covers them (see
//! [`plugbus_core::outbound::is_refused_by_default`]); at most 256 CIDRs. A
//! tenant's `[tenants.<t>.outbound] allow` (at most 256 origins, written
//! like a manifest's `[http] allow`, wildcards included) is its ceiling: a
//! plugin whose manifest allows an origin no entry covers fails to load,
//! naming the entry. Without it the tenant's plugins may call nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugbus_core::secrets::{SecretName, SecretSource, SecretSourceError, Secrets, TenantSecrets};
use plugbus_log::DeadLetterQuota;
use plugbus_log_nats::{NatsAuth, NatsLogConfig, NatsTls, Prefix};

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path (`tenants.acme-pos.token_sha256`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting names an environment variable that is not set (read when
    /// `plugbus serve` starts).
    #[error("{key}: the environment variable {var} is not set, or not UTF-8")]
    MissingEnv {
        /// The setting, as a dotted path (`log.nats.token_env`).
        key: String,
        /// The variable it names.
        var: String,
    },
    /// A tenant's secret cannot be read from its source, or its value is
    /// not valid (read when `plugbus serve` starts). Never holds the value.
    #[error("tenants.{tenant}.secrets.{name}: {source}")]
    Secret {
        /// The tenant.
        tenant: String,
        /// The secret.
        name: SecretName,
        /// Why, naming the source.
        #[source]
        source: SecretSourceError,
    },
    /// A setting names a file that cannot be read (read when `plugbus
    /// serve` starts).
    #[error("{key}: cannot read {}", path.display())]
    UnreadableFile {
        /// The setting, as a dotted path (`log.nats.nkey_seed_file`).
        key: String,
        /// The file it names.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The whole configuration; see the [module docs](self) for the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The address HTTP ingest, the admin API and `/metrics` listen on
    /// (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The plugins directory (default `plugins`).
    pub plugins_dir: PathBuf,
    /// The data directory: the event log and the compile cache (default
    /// `data`).
    pub data_dir: PathBuf,
    /// How log lines are written (default human).
    pub log_format: LogFormat,
    /// At SIGTERM, how long HTTP requests and deliveries under way may take
    /// before the process exits anyway, in seconds (default 30).
    pub drain_seconds: u64,
    /// Default limits of plugins whose manifest does not set them, and the
    /// ceilings a manifest may not go past.
    pub limits: LimitsConfig,
    /// What one delivery, chain or batch may use.
    pub budgets: BudgetsConfig,
    /// When long-lived plugin instances are replaced by fresh ones.
    pub instances: InstancesConfig,
    /// Retries, quarantine, duplicates and retention.
    pub delivery: DeliveryConfig,
    /// HTTP request limits.
    pub http: HttpConfig,
    /// Plugins' outbound HTTP requests: limits and private networks allowed.
    pub outbound: OutboundConfig,
    /// Every tenant's quotas, unless its own `[tenants.<t>]` section sets them.
    pub quotas: QuotasConfig,
    /// The `/metrics` scrape.
    pub metrics: MetricsConfig,
    /// OpenTelemetry export of the ingest and delivery spans.
    pub otlp: OtlpConfig,
    /// Where events are kept: the embedded log or NATS JetStream.
    pub log: LogConfig,
    /// The admin token, for `/v1/admin/...`; without one the admin API
    /// answers 401 to everyone.
    pub admin: Option<TokenConfig>,
    /// The tenants, by name: the token with which each may publish over
    /// HTTP, its own plugin quota and ingest rates, and its secrets.
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// Default plugin limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Fuel per event (default 50,000,000).
    pub fuel: u64,
    /// Memory in MiB (default 32).
    pub memory_mib: u64,
    /// Wall-clock time per event in milliseconds (default 1000).
    pub timeout_ms: u64,
    /// The most a manifest may ask for.
    pub max: MaxLimitsConfig,
}

/// The ceilings of plugin limits: a manifest that asks for more is refused
/// at load, naming the key and the ceiling.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxLimitsConfig {
    /// Fuel per event (default 1,000,000,000).
    pub fuel: u64,
    /// Memory in MiB (default 256).
    pub memory_mib: u64,
    /// Wall-clock time per event in milliseconds (default 30,000).
    pub timeout_ms: u64,
    /// The largest manifest file, in bytes (default 64 KiB).
    pub manifest_bytes: u64,
    /// The largest component file, in bytes (default 64 MiB).
    pub plugin_bytes: u64,
}

/// What one delivery, one chain of events or one batch may use. Past a
/// budget, the host call is refused to the plugin with an error that names
/// the budget, and counted; nothing is buffered beyond it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Events one delivery may emit (default 100).
    pub max_emits_per_delivery: u64,
    /// Bytes of events one delivery may emit (default 4 MiB).
    pub max_emit_bytes_per_delivery: u64,
    /// Emits between an event and the root of its chain (default 16).
    pub max_chain_depth: u32,
    /// Events the whole chain below one published event may cause (default
    /// 10,000); the budget travels with the events through the log.
    pub max_events_per_chain: u64,
    /// Bytes of state keys and values one delivery may write (default 4 MiB).
    pub max_state_bytes_per_delivery: u64,
    /// Bytes of emitted events and state writes one batch of deliveries may
    /// hold until its commit (default 16 MiB).
    pub max_batch_commit_bytes: u64,
    /// The longest error message of a plugin that is kept, in bytes
    /// (default 4 KiB); longer ones are cut with a marker.
    pub max_error_bytes: u64,
    /// The longest log line of a plugin, in bytes (default 4 KiB).
    pub max_log_bytes: u64,
    /// Log lines one delivery may write (default 256).
    pub max_log_lines_per_delivery: u64,
    /// MiB of events a plugin's consumer may read ahead of its deliveries
    /// (default 64).
    pub max_pending_mib: u64,
}

/// When a long-lived plugin instance is replaced by a fresh one, so that a
/// plugin that leaks slowly is not killed by its memory limit mid-event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesConfig {
    /// After this many events (default 100,000; 0 never).
    pub recycle_after_events: u64,
    /// When its memory stays above this share of its limit, in percent
    /// (default 75; 0 never).
    pub recycle_memory_percent: u64,
    /// How many plugins are compiled at once, across every tenant
    /// (default 2, 1–64): the threads one tenant's large components can
    /// take from the others.
    pub max_concurrent_compiles: u64,
    /// At start, a component larger than this many MiB that is not in
    /// the compile cache is compiled in the background while the others
    /// serve (default 4, 0–1024; 0: every such component).
    pub background_compile_mib: u64,
}

/// Delivery policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts per event before it becomes a dead letter (default 5).
    pub max_attempts: u32,
    /// Failed deliveries in a row before a plugin is quarantined (default
    /// 20; 0 never).
    pub quarantine_after: u32,
    /// How long a quarantine lasts, in seconds (default 300).
    pub quarantine_seconds: u64,
    /// The duplicate window, in hours (default 24).
    pub dedupe_hours: u64,
    /// How long events are kept, in hours (default 168; 0 no age limit).
    pub retain_hours: u64,
    /// The most MiB the log may use (default none).
    pub retain_mib: Option<u64>,
}

/// HTTP request limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The largest request body, in bytes (default 1 MiB); a larger one
    /// is refused with 413 before it is read whole.
    pub max_body_bytes: usize,
    /// The most events in one batch request (default 1000).
    pub max_batch_events: usize,
    /// How long a client may take to send a request's headers, in
    /// milliseconds (default 10,000); then 408.
    pub header_timeout_ms: u64,
    /// How long a client may take to send a request's body, in milliseconds
    /// (default 30,000); then 408.
    pub body_timeout_ms: u64,
    /// The most connections open at once (default 1024); more are refused.
    pub max_connections: u64,
}

/// Plugins' outbound HTTP requests (`[outbound]`): limits on each, and the
/// networks refused by default that the operator allows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Requests one delivery may send (default 16, 1–10,000).
    pub max_requests_per_delivery: u64,
    /// The largest request body, in bytes (default 1 MiB, 0–1 GiB).
    pub max_request_body_bytes: u64,
    /// The largest response body, in bytes (default 4 MiB, 1 KiB–1 GiB).
    pub max_response_body_bytes: u64,
    /// How long resolving and connecting (TLS included) may take, in
    /// milliseconds (default 5,000, 100–600,000).
    pub connect_timeout_ms: u64,
    /// How long from the request's start to its response's headers, in
    /// milliseconds (default 10,000, 100–3,600,000).
    pub first_byte_timeout_ms: u64,
    /// How long from the request's start to the end of its response's
    /// body, in milliseconds (default 30,000, 100–3,600,000).
    pub total_timeout_ms: u64,
    /// Networks, as CIDRs (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`), whose
    /// addresses plugins may connect to although they are refused by
    /// default (default none; at most 256).
    #[serde(deserialize_with = "cidrs")]
    pub allow_private: Vec<ipnet::IpNet>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            max_requests_per_delivery: 16,
            max_request_body_bytes: MIB,
            max_response_body_bytes: 4 * MIB,
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 10_000,
            total_timeout_ms: 30_000,
            allow_private: Vec::new(),
        }
    }
}

/// Reads a list of CIDRs, naming the one that is not.
fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "{:?} is not a CIDR such as \"127.0.0.1/32\" or \"fd00::/8\"",
                    plugbus_core::text::truncate(text, 100)
                ))
            })
        })
        .collect()
}

/// The most CIDRs in `outbound.allow_private`, and origins in a tenant's
/// `outbound.allow`.
const MAX_OUTBOUND_ENTRIES: usize = 256;

/// A tenant's outbound ceiling (`[tenants.<t>.outbound]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantOutboundConfig {
    /// The origins the tenant's plugins may be allowed to call: each entry
    /// of a manifest's `[http] allow` must be covered by one of these
    /// (default none: the tenant's plugins may call nothing).
    pub allow: Vec<plugbus_core::outbound::OriginPattern>,
}

/// A tenant's quotas. `[quotas]` sets everyone's; a tenant's own section
/// may set all but `max_requests_in_flight` for itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Plugins loaded at once (default 100); more are refused at load.
    pub max_plugins: u64,
    /// Events per second over HTTP, with a burst of one second (default
    /// 10,000); more are answered 429 with `Retry-After`.
    pub ingest_events_per_second: u64,
    /// Request body bytes per second over HTTP, with a burst of one second
    /// (default 32 MiB); more are answered 429 with `Retry-After`.
    pub ingest_bytes_per_second: u64,
    /// HTTP requests under way at once (default 64); more are answered 429.
    pub max_requests_in_flight: u64,
    /// Dead letters kept (default 100,000); past it a failed event is given
    /// up without one, and counted.
    pub max_dead_letters: u64,
    /// MiB of dead letters kept (default 1024), likewise.
    pub max_dead_letter_mib: u64,
}

/// The `/metrics` scrape.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The hex SHA-256 of a bearer token `GET /metrics` must carry; without
    /// one (the default), `/metrics` is open to whoever reaches the port.
    pub token_sha256: Option<String>,
}

/// OpenTelemetry export of spans over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's base URL, `http://host:4318`; spans are posted to
    /// `<endpoint>/v1/traces`. Without one (the default) nothing is
    /// exported, unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub endpoint: Option<String>,
    /// The `service.name` of the exported spans (default `plugbus`).
    pub service_name: String,
    /// The share of traces started here that are exported, 0 to 1
    /// (default 1); traces continued from an event's `traceparent` follow
    /// its sampled flag.
    pub sample_ratio: f64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "plugbus".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// Where events, cursors, state and dead letters are kept.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The backend (default `sqlite`).
    pub backend: LogBackend,
    /// The NATS backend's settings; required with `backend = "nats"`,
    /// refused without it.
    pub nats: Option<NatsConfig>,
    /// The embedded log's read connections, 1 to 256 (default: twice the
    /// CPUs, from 4 to 32).
    pub read_connections: Option<usize>,
    /// The embedded log's tail cache, in events (default 65,536; 0 turns
    /// it off): the newest events kept parsed for the consumers.
    pub tail_cache_events: Option<usize>,
    /// The embedded log's tail cache, in MiB of the events' JSON (default
    /// 64; 0 turns it off; in memory the parsed events take about twice
    /// that).
    pub tail_cache_mib: Option<u64>,
}

/// The kinds of event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// The embedded SQLite log, `<data_dir>/events.db` (the default): one
    /// host.
    #[default]
    Sqlite,
    /// NATS JetStream (`[log.nats]`): several hosts share it.
    Nats,
}

/// The NATS backend's settings, `[log.nats]`. Secrets are named, never
/// written here: an environment variable (`token_env`, `password_env`) or
/// a file (`credentials_file`, `nkey_seed_file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The servers to connect to (`nats://host:4222`, `tls://host:4222`);
    /// required. The client learns a cluster's other members from them.
    pub servers: Vec<String>,
    /// The environment variable that holds a token.
    pub token_env: Option<String>,
    /// A user name, with `password_env`.
    pub user: Option<String>,
    /// The environment variable that holds `user`'s password.
    pub password_env: Option<String>,
    /// A `.creds` file (a JWT and an NKey seed), as `nsc` writes it.
    pub credentials_file: Option<PathBuf>,
    /// A file that holds an NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS (default false; a `tls://`
    /// URL or a server that asks for TLS gets it anyway).
    pub tls_required: bool,
    /// Certificates (PEM) of the authorities that signed the servers'
    /// certificates, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with `client_key`, for servers that
    /// verify clients.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
    /// Start TLS before the server's greeting, for servers with
    /// `handshake_first` (default false).
    pub tls_first: bool,
    /// The prefix of the stream, its subjects and the buckets (default
    /// `plugbus`): 1 to 32 of a-z, 0-9 and _, starting with a letter. Two
    /// deployments on one NATS system use two prefixes.
    pub prefix: String,
    /// How many servers keep each stream and bucket: 1, 3 or 5 (default 1).
    /// A cluster of three with 3 replicas survives the loss of one server.
    pub replicas: usize,
    /// How many partitions each tenant's events are split into, by
    /// partition key (`partitionkey`, else `subject`): 1 to 256 (default
    /// 1). Each (plugin, partition) is handled by one host at a time, in
    /// order. Fixed when the stream is made: a log opened with another
    /// count does not open.
    pub partitions: u32,
    /// How long to wait for the first connection at startup, in
    /// milliseconds (default 10,000); later disconnections are retried for
    /// ever.
    pub connect_timeout_ms: u64,
    /// How long one request to NATS may take, in milliseconds (default
    /// 10,000); an ingest whose publish is not acknowledged by then is
    /// answered 503.
    pub request_timeout_ms: u64,
    /// How long a host's hold on a plugin lasts unrenewed, in milliseconds
    /// (default 10,000): it renews every third of it and stops delivering
    /// a quarter of it before it would run out, so a dead host's plugins
    /// move to another within `lease_ttl_ms × 19/12` (15.8 s by default).
    pub lease_ttl_ms: u64,
    /// This host's name among the hosts sharing the log: 1 to 119 of
    /// A-Z, a-z, 0-9, `-` and `_` (default: the host name and the process
    /// id). A random suffix of the process is added (`<name>_<8 hex>`), so
    /// that two processes given one name never share a lease.
    pub host_id: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        let defaults = NatsLogConfig::default();
        Self {
            servers: Vec::new(),
            token_env: None,
            user: None,
            password_env: None,
            credentials_file: None,
            nkey_seed_file: None,
            tls_required: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_first: false,
            prefix: defaults.prefix.as_str().to_owned(),
            replicas: defaults.replicas,
            partitions: defaults.partitions,
            connect_timeout_ms: millis(defaults.connect_timeout),
            request_timeout_ms: millis(defaults.request_timeout),
            lease_ttl_ms: 10_000,
            host_id: None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A token, as the hex SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `plugbus hash-token` prints it.
    pub token_sha256: String,
}

/// A tenant: its token, the quotas it has other than `[quotas]`, and its
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// `plugbus hash-token` prints it. Without one the tenant cannot
    /// publish over HTTP (its plugins still run, on the events they emit
    /// and those published otherwise).
    pub token_sha256: Option<String>,
    /// Where each of the tenant's secrets is kept, by name
    /// (`[tenants.<t>.secrets]`).
    #[serde(default)]
    pub secrets: BTreeMap<SecretName, SecretSourceConfig>,
    /// See [`QuotasConfig::max_plugins`].
    pub max_plugins: Option<u64>,
    /// See [`QuotasConfig::ingest_events_per_second`].
    pub ingest_events_per_second: Option<u64>,
    /// See [`QuotasConfig::ingest_bytes_per_second`].
    pub ingest_bytes_per_second: Option<u64>,
    /// See [`QuotasConfig::max_dead_letters`].
    pub max_dead_letters: Option<u64>,
    /// See [`QuotasConfig::max_dead_letter_mib`].
    pub max_dead_letter_mib: Option<u64>,
    /// The tenant's outbound ceiling (default: none allowed).
    #[serde(default)]
    pub outbound: TenantOutboundConfig,
}

/// The parser's message for `text`'s error `e`: the parser's own, which
/// shows the line, except for a secret's source, whose line may hold a
/// value written in the file: that one names the line without showing it.
fn parse_reason(text: &str, e: &toml::de::Error) -> String {
    let secret_line = e.span().is_some_and(|span| in_secrets(text, span.start));
    if !secret_line && !e.message().starts_with("a secret") {
        return e.to_string();
    }
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |t| t.matches('\n').count())
                + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

/// Whether the byte `at` of `text` lies where a secret may be written by
/// mistake: under a `[tenants.<t>.secrets]` header, or on a line that
/// mentions `secrets` (an inline table). Any error there (a bad name, an
/// unterminated string) is shown without its line, which may hold a value.
fn in_secrets(text: &str, at: usize) -> bool {
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    if text[line_start..line_end].contains("secrets") {
        return true;
    }
    before
        .lines()
        .rev()
        .map(str::trim_start)
        .find(|line| line.starts_with('['))
        .is_some_and(|header| {
            let name: String = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '"')
                .collect();
            name.starts_with("tenants.")
                && (name.ends_with(".secrets") || name.contains(".secrets."))
        })
}

/// Where one secret is kept: `{ env = "VAR" }` or `{ file = "/path" }`,
/// exactly one of them; a bare string (a value written in the file) is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSourceConfig(pub SecretSource);

impl<'de> Deserialize<'de> for SecretSourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "{ env = \"VARIABLE\" } or { file = \"/path\" }";
        /// A value written in the file; not repeated, for it may be the
        /// secret.
        fn literal<E: serde::de::Error>() -> E {
            E::custom(format!(
                "a secret's value is never written in plugbus.toml; name where it is kept: {EXPECTED}"
            ))
        }
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretSourceConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(literal())
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(literal())
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(literal())
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(literal())
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(literal())
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<Self::Value, A::Error> {
                Err(literal())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                let mut source = None;
                while let Some(key) = map.next_key::<String>()? {
                    let next = match key.as_str() {
                        "env" => SecretSource::Env(map.next_value()?),
                        "file" => SecretSource::File(map.next_value()?),
                        other => {
                            return Err(A::Error::custom(format!(
                                "a secret is {EXPECTED}; it has no key {other:?}"
                            )));
                        }
                    };
                    if source.replace(next).is_some() {
                        return Err(A::Error::custom(format!(
                            "a secret has one source: {EXPECTED}"
                        )));
                    }
                }
                source.map(SecretSourceConfig).ok_or_else(|| {
                    A::Error::custom(format!("a secret needs one source: {EXPECTED}"))
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Config {
    /// Every tenant's secrets, read from the environment (`env`, e.g.
    /// `std::env::var_os`) and the files they are named in. Called when
    /// `plugbus serve` starts: a variable not set, a file that cannot be
    /// read, or a value that is empty, larger than 64 KiB or not UTF-8 is
    /// an error naming the tenant, the secret and its source. The values
    /// go into the returned secrets alone, never into an error or a log
    /// line.
    pub fn tenant_secrets(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<TenantSecrets, ConfigError> {
        let mut all = TenantSecrets::new();
        for (tenant, config) in &self.tenants {
            if config.secrets.is_empty() {
                continue;
            }
            let mut secrets = Secrets::new();
            for (name, source) in &config.secrets {
                let value = source
                    .0
                    .load_with(&env)
                    .map_err(|source| ConfigError::Secret {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        source,
                    })?;
                secrets.insert(name.clone(), value);
            }
            all.insert(tenant.clone(), secrets);
        }
        Ok(all)
    }

    /// The tenants that may publish over HTTP, with their token's hash.
    pub fn tenant_tokens(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tenants
            .iter()
            .filter_map(|(tenant, t)| Some((tenant.as_str(), t.token_sha256.as_deref()?)))
    }

    /// The quotas of `tenant`: its own, else `[quotas]`.
    pub fn quotas_of(&self, tenant: &str) -> QuotasConfig {
        let base = &self.quotas;
        match self.tenants.get(tenant) {
            None => base.clone(),
            Some(t) => QuotasConfig {
                max_plugins: t.max_plugins.unwrap_or(base.max_plugins),
                ingest_events_per_second: t
                    .ingest_events_per_second
                    .unwrap_or(base.ingest_events_per_second),
                ingest_bytes_per_second: t
                    .ingest_bytes_per_second
                    .unwrap_or(base.ingest_bytes_per_second),
                max_requests_in_flight: base.max_requests_in_flight,
                max_dead_letters: t.max_dead_letters.unwrap_or(base.max_dead_letters),
                max_dead_letter_mib: t.max_dead_letter_mib.unwrap_or(base.max_dead_letter_mib),
            },
        }
    }

    /// The host's outbound HTTP policy: `[outbound]` and every tenant's
    /// `[tenants.<t>.outbound]` ceiling.
    pub fn outbound_config(&self) -> plugbus_runtime::OutboundConfig {
        let o = &self.outbound;
        plugbus_runtime::OutboundConfig {
            // Range-checked when the file was read: it fits.
            max_requests_per_delivery: u32::try_from(o.max_requests_per_delivery)
                .unwrap_or(u32::MAX),
            max_request_body_bytes: o.max_request_body_bytes,
            max_response_body_bytes: o.max_response_body_bytes,
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(o.first_byte_timeout_ms),
            total_timeout: Duration::from_millis(o.total_timeout_ms),
            allow_private: o.allow_private.clone(),
            tenant_ceilings: self
                .tenants
                .iter()
                .map(|(tenant, t)| (tenant.clone(), t.outbound.allow.clone()))
                .collect(),
        }
    }

    /// The embedded log's settings: the duplicate window, the dead-letter
    /// quotas, and `[log]`'s read connections and tail cache.
    pub fn sqlite_log_config(&self) -> plugbus_log::SqliteLogConfig {
        let (dead_letters, tenant_dead_letters) = self.dead_letter_quotas();
        let defaults = plugbus_log::SqliteLogConfig::default();
        plugbus_log::SqliteLogConfig {
            duplicate_window: self.duplicate_window(),
            dead_letters,
            tenant_dead_letters,
            read_connections: self
                .log
                .read_connections
                .unwrap_or(defaults.read_connections),
            tail_cache: plugbus_log::TailCacheLimits {
                events: self
                    .log
                    .tail_cache_events
                    .unwrap_or(defaults.tail_cache.events),
                bytes: self
                    .log
                    .tail_cache_mib
                    .map_or(defaults.tail_cache.bytes, |mib| {
                        mib.saturating_mul(1024 * 1024)
                    }),
            },
            ..defaults
        }
    }

    /// The duplicate window of the event log: `delivery.dedupe_hours`.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.delivery.dedupe_hours.saturating_mul(3600))
    }

    /// Every tenant's dead-letter quota (`[quotas]`), and the quotas of
    /// the tenants whose own section sets theirs.
    pub fn dead_letter_quotas(&self) -> (DeadLetterQuota, HashMap<String, DeadLetterQuota>) {
        let quota = |q: &QuotasConfig| DeadLetterQuota {
            max_count: q.max_dead_letters,
            max_bytes: q.max_dead_letter_mib.saturating_mul(1024 * 1024),
        };
        let tenants = self
            .tenants
            .keys()
            .map(|t| (t.clone(), quota(&self.quotas_of(t))))
            .collect();
        (quota(&self.quotas), tenants)
    }

    /// The NATS log's settings from `[log.nats]`, with its secrets read
    /// from the environment (`env`, e.g. `|v| std::env::var(v).ok()`) and
    /// files they are named in; `None` with the embedded log. Called when
    /// `plugbus serve` starts: a variable not set or a file that cannot be
    /// read is an error naming the setting. The secrets go into the
    /// returned settings alone, never into an error or a log line.
    pub fn nats_log_config(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<NatsLogConfig>, ConfigError> {
        let (LogBackend::Nats, Some(nats)) = (self.log.backend, &self.log.nats) else {
            return Ok(None);
        };
        let key = |name: &str| format!("log.nats.{name}");
        let var = |name: &str, var: &str| {
            env(var).ok_or_else(|| ConfigError::MissingEnv {
                key: key(name),
                var: var.to_owned(),
            })
        };
        let readable = |name: &str, path: &Path| {
            std::fs::File::open(path)
                .map(drop)
                .map_err(|source| ConfigError::UnreadableFile {
                    key: key(name),
                    path: path.to_owned(),
                    source,
                })
        };
        let auth = if let Some(token) = &nats.token_env {
            NatsAuth::Token(var("token_env", token)?)
        } else if let (Some(user), Some(password)) = (&nats.user, &nats.password_env) {
            NatsAuth::UserPassword {
                user: user.clone(),
                password: var("password_env", password)?,
            }
        } else if let Some(path) = &nats.credentials_file {
            readable("credentials_file", path)?;
            NatsAuth::CredentialsFile(path.clone())
        } else if let Some(path) = &nats.nkey_seed_file {
            let seed =
                std::fs::read_to_string(path).map_err(|source| ConfigError::UnreadableFile {
                    key: key("nkey_seed_file"),
                    path: path.clone(),
                    source,
                })?;
            NatsAuth::NKey(seed.trim().to_owned())
        } else {
            NatsAuth::None
        };
        if let Some(path) = &nats.ca_file {
            readable("ca_file", path)?;
        }
        if let (Some(cert), Some(key)) = (&nats.client_cert, &nats.client_key) {
            readable("client_cert", cert)?;
            readable("client_key", key)?;
        }
        let (dead_letters, tenant_dead_letters) = self.dead_letter_quotas();
        Ok(Some(NatsLogConfig {
            servers: nats.servers.clone(),
            auth,
            tls: NatsTls {
                required: nats.tls_required,
                ca_file: nats.ca_file.clone(),
                client_cert: nats.client_cert.clone().zip(nats.client_key.clone()),
                first: nats.tls_first,
            },
            // Checked when the file was read.
            prefix: Prefix::new(&nats.prefix).unwrap_or_default(),
            replicas: nats.replicas,
            partitions: nats.partitions,
            duplicate_window: self.duplicate_window(),
            request_timeout: Duration::from_millis(nats.request_timeout_ms),
            connect_timeout: Duration::from_millis(nats.connect_timeout_ms),
            dead_letters,
            tenant_dead_letters,
        }))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Human,
            drain_seconds: 30,
            limits: LimitsConfig::default(),
            budgets: BudgetsConfig::default(),
            instances: InstancesConfig::default(),
            delivery: DeliveryConfig::default(),
            http: HttpConfig::default(),
            outbound: OutboundConfig::default(),
            quotas: QuotasConfig::default(),
            metrics: MetricsConfig::default(),
            otlp: OtlpConfig::default(),
            log: LogConfig::default(),
            admin: None,
            tenants: BTreeMap::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = plugbus_core::Limits::default();
        Self {
            fuel: limits.fuel,
            memory_mib: limits.memory_bytes / (1024 * 1024),
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            max: MaxLimitsConfig::default(),
        }
    }
}

impl Default for MaxLimitsConfig {
    fn default() -> Self {
        Self {
            fuel: 1_000_000_000,
            memory_mib: 256,
            timeout_ms: 30_000,
            manifest_bytes: 64 * 1024,
            plugin_bytes: 64 * MIB,
        }
    }
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            max_emits_per_delivery: 100,
            max_emit_bytes_per_delivery: 4 * MIB,
            max_chain_depth: 16,
            max_events_per_chain: 10_000,
            max_state_bytes_per_delivery: 4 * MIB,
            max_batch_commit_bytes: 16 * MIB,
            max_error_bytes: 4096,
            max_log_bytes: 4096,
            max_log_lines_per_delivery: 256,
            max_pending_mib: 64,
        }
    }
}

impl Default for InstancesConfig {
    fn default() -> Self {
        Self {
            recycle_after_events: 100_000,
            recycle_memory_percent: 75,
            max_concurrent_compiles: 2,
            background_compile_mib: 4,
        }
    }
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            max_plugins: 100,
            ingest_events_per_second: 10_000,
            ingest_bytes_per_second: 32 * MIB,
            max_requests_in_flight: 64,
            max_dead_letters: 100_000,
            max_dead_letter_mib: 1024,
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            quarantine_after: 20,
            quarantine_seconds: 300,
            dedupe_hours: 24,
            retain_hours: 7 * 24,
            retain_mib: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 1024,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, the contents of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: parse_reason(text, &e),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Checks the values serde cannot: ranges, names and token hashes.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let range = |key: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(invalid(key, format!("{value} is not in {low}..={high}")))
            }
        };
        range("drain_seconds", self.drain_seconds, 1, 3600)?;
        if let Some(n) = self.log.read_connections {
            range("log.read_connections", n as u64, 1, 256)?;
        }
        if let Some(n) = self.log.tail_cache_events {
            range("log.tail_cache_events", n as u64, 0, 16_777_216)?;
        }
        if let Some(mib) = self.log.tail_cache_mib {
            range("log.tail_cache_mib", mib, 0, 65_536)?;
        }
        let max = &self.limits.max;
        range("limits.max.fuel", max.fuel, 1, 1_000_000_000_000)?;
        range(
            "limits.max.memory_mib",
            max.memory_mib,
            1,
            plugbus_core::manifest::MAX_MEMORY_MIB,
        )?;
        range(
            "limits.max.timeout_ms",
            max.timeout_ms,
            1,
            plugbus_core::manifest::MAX_TIMEOUT_MS,
        )?;
        range(
            "limits.max.manifest_bytes",
            max.manifest_bytes,
            1024,
            16 * MIB,
        )?;
        range("limits.max.plugin_bytes", max.plugin_bytes, MIB, 1 << 30)?;
        // The defaults must fit under the ceilings: the key named is the
        // default, which is what a plugin without a manifest would get.
        range("limits.fuel", self.limits.fuel, 1, max.fuel)?;
        range(
            "limits.memory_mib",
            self.limits.memory_mib,
            1,
            max.memory_mib,
        )?;
        range(
            "limits.timeout_ms",
            self.limits.timeout_ms,
            1,
            max.timeout_ms,
        )?;
        let b = &self.budgets;
        range(
            "budgets.max_emits_per_delivery",
            b.max_emits_per_delivery,
            1,
            100_000,
        )?;
        range(
            "budgets.max_emit_bytes_per_delivery",
            b.max_emit_bytes_per_delivery,
            1024,
            1 << 30,
        )?;
        range(
            "budgets.max_chain_depth",
            u64::from(b.max_chain_depth),
            1,
            1000,
        )?;
        range(
            "budgets.max_events_per_chain",
            b.max_events_per_chain,
            1,
            1_000_000_000,
        )?;
        range(
            "budgets.max_state_bytes_per_delivery",
            b.max_state_bytes_per_delivery,
            1024,
            1 << 30,
        )?;
        range(
            "budgets.max_batch_commit_bytes",
            b.max_batch_commit_bytes,
            MIB,
            4 << 30,
        )?;
        range("budgets.max_error_bytes", b.max_error_bytes, 256, MIB)?;
        range("budgets.max_log_bytes", b.max_log_bytes, 256, MIB)?;
        range(
            "budgets.max_log_lines_per_delivery",
            b.max_log_lines_per_delivery,
            1,
            100_000,
        )?;
        range("budgets.max_pending_mib", b.max_pending_mib, 1, 65_536)?;
        range(
            "instances.recycle_memory_percent",
            self.instances.recycle_memory_percent,
            0,
            100,
        )?;
        range(
            "instances.max_concurrent_compiles",
            self.instances.max_concurrent_compiles,
            1,
            64,
        )?;
        range(
            "instances.background_compile_mib",
            self.instances.background_compile_mib,
            0,
            1024,
        )?;
        range(
            "delivery.max_attempts",
            u64::from(self.delivery.max_attempts),
            1,
            100,
        )?;
        // Thirty days: a longer quarantine is an operator's `resume` away
        // anyway, and time arithmetic stays far from overflow.
        range(
            "delivery.quarantine_seconds",
            self.delivery.quarantine_seconds,
            1,
            30 * 24 * 3600,
        )?;
        range(
            "delivery.dedupe_hours",
            self.delivery.dedupe_hours,
            1,
            24 * 365,
        )?;
        range(
            "delivery.retain_hours",
            self.delivery.retain_hours,
            0,
            24 * 365 * 10,
        )?;
        if let Some(mib) = self.delivery.retain_mib {
            range("delivery.retain_mib", mib, 1, 1 << 30)?;
        }
        range(
            "http.max_body_bytes",
            self.http.max_body_bytes as u64,
            1024,
            1 << 30,
        )?;
        range(
            "http.max_batch_events",
            self.http.max_batch_events as u64,
            1,
            100_000,
        )?;
        range(
            "http.header_timeout_ms",
            self.http.header_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "http.body_timeout_ms",
            self.http.body_timeout_ms,
            100,
            3_600_000,
        )?;
        range(
            "http.max_connections",
            self.http.max_connections,
            1,
            1_000_000,
        )?;
        let o = &self.outbound;
        range(
            "outbound.max_requests_per_delivery",
            o.max_requests_per_delivery,
            1,
            10_000,
        )?;
        range(
            "outbound.max_request_body_bytes",
            o.max_request_body_bytes,
            0,
            1 << 30,
        )?;
        range(
            "outbound.max_response_body_bytes",
            o.max_response_body_bytes,
            1024,
            1 << 30,
        )?;
        range(
            "outbound.connect_timeout_ms",
            o.connect_timeout_ms,
            100,
            600_000,
        )?;
        range(
            "outbound.first_byte_timeout_ms",
            o.first_byte_timeout_ms,
            100,
            3_600_000,
        )?;
        range(
            "outbound.total_timeout_ms",
            o.total_timeout_ms,
            100,
            3_600_000,
        )?;
        if o.allow_private.len() > MAX_OUTBOUND_ENTRIES {
            return Err(invalid(
                "outbound.allow_private",
                format!(
                    "has {} entries; at most {MAX_OUTBOUND_ENTRIES} are allowed",
                    o.allow_private.len()
                ),
            ));
        }
        for (tenant, t) in &self.tenants {
            if t.outbound.allow.len() > MAX_OUTBOUND_ENTRIES {
                return Err(invalid(
                    &format!("tenants.{tenant}.outbound.allow"),
                    format!(
                        "has {} entries; at most {MAX_OUTBOUND_ENTRIES} are allowed",
                        t.outbound.allow.len()
                    ),
                ));
            }
        }
        check_quotas("quotas", &self.quotas, &range)?;
        for tenant in self.tenants.keys() {
            check_quotas(
                &format!("tenants.{tenant}"),
                &self.quotas_of(tenant),
                &range,
            )?;
        }
        if let Some(endpoint) = &self.otlp.endpoint {
            crate::telemetry::traces_url("otlp.endpoint", endpoint)
                .map_err(|e| invalid("otlp.endpoint", endpoint_reason(e)))?;
        }
        if !(0.0..=1.0).contains(&self.otlp.sample_ratio) {
            return Err(invalid(
                "otlp.sample_ratio",
                format!("{} is not between 0 and 1", self.otlp.sample_ratio),
            ));
        }
        if self.otlp.service_name.trim().is_empty() {
            return Err(invalid("otlp.service_name", "is empty".into()));
        }
        check_log(&self.log, &invalid, &range)?;
        if let Some(admin) = &self.admin {
            check_hash(&admin.token_sha256).map_err(|r| invalid("admin.token_sha256", r))?;
        }
        if let Some(metrics) = &self.metrics.token_sha256 {
            check_hash(metrics).map_err(|r| invalid("metrics.token_sha256", r))?;
        }
        // A token names one caller: shared, it would not say which.
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        if let Some(admin) = &self.admin {
            owners.insert(admin.token_sha256.to_ascii_lowercase(), "admin".into());
        }
        if let Some(metrics) = &self.metrics.token_sha256
            && let Some(other) = owners.insert(metrics.to_ascii_lowercase(), "metrics".into())
        {
            return Err(invalid(
                "metrics.token_sha256",
                format!("the same token as {other}'s"),
            ));
        }
        for (tenant, config) in &self.tenants {
            let key = format!("tenants.{tenant}.token_sha256");
            plugbus_core::manifest::validate_name(tenant)
                .map_err(|e| invalid(&format!("tenants.{tenant}"), e.to_string()))?;
            let Some(token) = &config.token_sha256 else {
                continue;
            };
            check_hash(token).map_err(|r| invalid(&key, r))?;
            if let Some(other) = owners.insert(token.to_ascii_lowercase(), tenant.clone()) {
                return Err(invalid(&key, format!("the same token as {other}'s")));
            }
        }
        Ok(())
    }
}

/// Checks the ranges of one set of quotas, whose keys stand under `prefix`.
fn check_quotas(
    prefix: &str,
    quotas: &QuotasConfig,
    range: &impl Fn(&str, u64, u64, u64) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    range(
        &format!("{prefix}.max_plugins"),
        quotas.max_plugins,
        1,
        100_000,
    )?;
    range(
        &format!("{prefix}.ingest_events_per_second"),
        quotas.ingest_events_per_second,
        1,
        1_000_000_000,
    )?;
    range(
        &format!("{prefix}.ingest_bytes_per_second"),
        quotas.ingest_bytes_per_second,
        1024,
        1 << 40,
    )?;
    range(
        &format!("{prefix}.max_requests_in_flight"),
        quotas.max_requests_in_flight,
        1,
        100_000,
    )?;
    range(
        &format!("{prefix}.max_dead_letters"),
        quotas.max_dead_letters,
        1,
        1_000_000_000,
    )?;
    range(
        &format!("{prefix}.max_dead_letter_mib"),
        quotas.max_dead_letter_mib,
        1,
        1 << 20,
    )
}

/// Checks `[log]`: a backend's settings are there when it is chosen and
/// not otherwise, and `[log.nats]`'s values.
fn check_log(
    log: &LogConfig,
    invalid: &impl Fn(&str, String) -> ConfigError,
    range: &impl Fn(&str, u64, u64, u64) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let nats = match (log.backend, &log.nats) {
        (LogBackend::Sqlite, None) => return Ok(()),
        (LogBackend::Sqlite, Some(_)) => {
            return Err(invalid(
                "log.nats",
                "is set, but log.backend is \"sqlite\" (the default): set backend = \"nats\" to use it, or remove the section".into(),
            ));
        }
        (LogBackend::Nats, None) => {
            return Err(invalid(
                "log.nats",
                "is missing: backend = \"nats\" needs [log.nats] with servers = [\"nats://host:4222\", ...]".into(),
            ));
        }
        (LogBackend::Nats, Some(nats)) => nats,
    };
    if nats.servers.is_empty() {
        return Err(invalid(
            "log.nats.servers",
            "is empty: name at least one server, such as \"nats://127.0.0.1:4222\"".into(),
        ));
    }
    for server in &nats.servers {
        check_server(server).map_err(|reason| invalid("log.nats.servers", reason))?;
    }
    let ways = [
        ("token_env", nats.token_env.is_some()),
        ("user", nats.user.is_some() || nats.password_env.is_some()),
        ("credentials_file", nats.credentials_file.is_some()),
        ("nkey_seed_file", nats.nkey_seed_file.is_some()),
    ];
    let chosen: Vec<&str> = ways.iter().filter(|w| w.1).map(|w| w.0).collect();
    if chosen.len() > 1 {
        return Err(invalid(
            &format!("log.nats.{}", chosen[1]),
            format!(
                "choose one way to authenticate: {} are set",
                chosen.join(" and ")
            ),
        ));
    }
    match (&nats.user, &nats.password_env) {
        (Some(_), None) => {
            return Err(invalid(
                "log.nats.password_env",
                "is missing: user needs the environment variable that holds its password".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "log.nats.user",
                "is missing: password_env is set without a user".into(),
            ));
        }
        _ => {}
    }
    for (name, value) in [
        ("token_env", &nats.token_env),
        ("password_env", &nats.password_env),
    ] {
        if let Some(var) = value
            && (var.is_empty() || var.contains(['=', '\0']))
        {
            return Err(invalid(
                &format!("log.nats.{name}"),
                format!(
                    "{var:?} is not the name of an environment variable (the secret itself is never written in plugbus.toml)"
                ),
            ));
        }
    }
    if let Some(user) = &nats.user
        && user.is_empty()
    {
        return Err(invalid("log.nats.user", "is empty".into()));
    }
    match (&nats.client_cert, &nats.client_key) {
        (Some(_), None) => {
            return Err(invalid(
                "log.nats.client_key",
                "is missing: client_cert needs its key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "log.nats.client_cert",
                "is missing: client_key is set without a certificate".into(),
            ));
        }
        _ => {}
    }
    Prefix::new(&nats.prefix).map_err(|e| invalid("log.nats.prefix", e.to_string()))?;
    if ![1, 3, 5].contains(&nats.replicas) {
        return Err(invalid(
            "log.nats.replicas",
            format!("{} is not 1, 3 or 5", nats.replicas),
        ));
    }
    if !(1..=plugbus_log::MAX_PARTITIONS).contains(&nats.partitions) {
        return Err(invalid(
            "log.nats.partitions",
            format!(
                "{} is not between 1 and {}",
                nats.partitions,
                plugbus_log::MAX_PARTITIONS
            ),
        ));
    }
    range(
        "log.nats.connect_timeout_ms",
        nats.connect_timeout_ms,
        100,
        600_000,
    )?;
    range(
        "log.nats.request_timeout_ms",
        nats.request_timeout_ms,
        100,
        600_000,
    )?;
    range("log.nats.lease_ttl_ms", nats.lease_ttl_ms, 1_000, 600_000)?;
    if let Some(id) = &nats.host_id {
        // 119: the process's random suffix makes it at most 128.
        let valid = (1..=119).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(invalid(
                "log.nats.host_id",
                format!(
                    "{:?} is not 1 to 119 of A-Z, a-z, 0-9, - and _",
                    id.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks one server URL: `nats://`, `tls://`, `ws://` or `wss://` (or
/// none) and a host with an optional port; never a user or password in it
/// (they would be logged with the URL).
fn check_server(server: &str) -> Result<(), String> {
    let rest = match server.split_once("://") {
        Some((scheme, rest)) => {
            if !["nats", "tls", "ws", "wss"].contains(&scheme) {
                return Err(format!(
                    "{:?}: the scheme must be nats://, tls://, ws:// or wss://",
                    plugbus_core::text::truncate(server, 200)
                ));
            }
            rest
        }
        None => server,
    };
    if rest.contains('@') {
        return Err(
            "a server URL may not hold a user or password (they would be logged): use token_env, user and password_env, credentials_file or nkey_seed_file".into(),
        );
    }
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let (name, port) = match host.strip_prefix('[') {
        // An IPv6 address: `[::1]:4222`.
        Some(v6) => match v6.split_once(']') {
            Some((name, "")) => (name, None),
            Some((name, port)) => (name, port.strip_prefix(':').or(Some(""))),
            None => ("", None),
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if name.is_empty() || name.contains(char::is_whitespace) || !port_ok {
        return Err(format!(
            "{:?} is not a server URL such as \"nats://127.0.0.1:4222\"",
            plugbus_core::text::truncate(server, 200)
        ));
    }
    Ok(())
}

pub use plugbus_api::hash_token;

/// What is wrong with an endpoint, without the key the caller names.
fn endpoint_reason(error: crate::telemetry::TelemetryError) -> String {
    match error {
        crate::telemetry::TelemetryError::Endpoint { value, reason, .. } => {
            format!("{value:?}: {reason}")
        }
        other => other.to_string(),
    }
}

fn check_hash(hash: &str) -> Result<(), String> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("must be the 64 hex digits of a SHA-256 (`plugbus hash-token` prints it), not the token".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("plugbus.toml"))
    }

    #[test]
    fn an_empty_file_is_the_embedded_default() -> Result<(), ConfigError> {
        assert_eq!(parse("")?, Config::default());
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:8080");
        Ok(())
    }

    #[test]
    fn a_full_file_parses() -> Result<(), ConfigError> {
        let (hash, admin) = (hash_token("secret"), hash_token("admin"));
        let config = parse(&format!(
            r#"
            listen = "0.0.0.0:9000"
            log_format = "json"
            [limits]
            fuel = 5
            [delivery]
            retain_mib = 100
            [http]
            max_batch_events = 10
            [otlp]
            endpoint = "http://collector:4318"
            sample_ratio = 0.25
            [admin]
            token_sha256 = "{admin}"
            [tenants.acme-pos]
            token_sha256 = "{hash}"
            "#
        ))?;
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.limits.fuel, 5);
        assert_eq!(config.limits.memory_mib, 32, "the rest keep their defaults");
        assert_eq!(config.delivery.retain_mib, Some(100));
        assert_eq!(
            config.otlp.endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(config.otlp.sample_ratio, 0.25);
        assert_eq!(config.otlp.service_name, "plugbus");
        assert_eq!(config.tenants["acme-pos"].token_sha256, Some(hash));
        Ok(())
    }

    #[test]
    fn outbound_settings() -> Result<(), ConfigError> {
        let defaults = parse("")?;
        assert_eq!(defaults.outbound, OutboundConfig::default());
        assert_eq!(defaults.outbound.max_requests_per_delivery, 16);
        assert!(defaults.outbound.allow_private.is_empty());
        let hash = hash_token("t");
        let config = parse(&format!(
            r#"
            [outbound]
            max_requests_per_delivery = 4
            total_timeout_ms = 2000
            allow_private = ["127.0.0.1/32", "fd00::/8"]
            [tenants.acme-pos]
            token_sha256 = "{hash}"
            [tenants.acme-pos.outbound]
            allow = ["https://*.example.com", "http://127.0.0.1:8080"]
            "#
        ))?;
        assert_eq!(config.outbound.max_requests_per_delivery, 4);
        assert_eq!(config.outbound.total_timeout_ms, 2000);
        assert_eq!(config.outbound.connect_timeout_ms, 5000);
        assert_eq!(config.outbound.allow_private.len(), 2);
        let allow = &config.tenants["acme-pos"].outbound.allow;
        assert_eq!(allow.len(), 2);
        assert_eq!(allow[0].to_string(), "https://*.example.com");
        let message = |text: &str| match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        let m = message("[outbound]\nmax_requests_per_delivery = 0");
        assert!(
            m.contains("outbound.max_requests_per_delivery") && m.contains("1..=10000"),
            "{m}"
        );
        let m = message("[outbound]\nconnect_timeout_ms = 5");
        assert!(m.contains("outbound.connect_timeout_ms"), "{m}");
        let m = message("[outbound]\nmax_response_body_bytes = 1");
        assert!(m.contains("outbound.max_response_body_bytes"), "{m}");
        let m = message("[outbound]\nallow_private = [\"localhost\"]");
        assert!(
            m.contains("allow_private") && m.contains("\"localhost\""),
            "{m}"
        );
        let m = message("[outbound]\nallow_privat = []");
        assert!(m.contains("allow_privat"), "{m}");
        let many: Vec<String> = (0..257)
            .map(|i| format!("\"10.0.{}.{}/32\"", i / 256, i % 256))
            .collect();
        let m = message(&format!("[outbound]\nallow_private = [{}]", many.join(",")));
        assert!(
            m.contains("outbound.allow_private") && m.contains("257"),
            "{m}"
        );
        let m = message(&format!(
            "[tenants.acme]\ntoken_sha256 = \"{hash}\"\n[tenants.acme.outbound]\nallow = [\"https://a.example.com/x\"]"
        ));
        assert!(m.contains("allow") && m.contains("has a path"), "{m}");
        Ok(())
    }

    #[test]
    fn mistakes_are_named() {
        let message = |text: &str| match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        let m = message("listne = \"127.0.0.1:1\"");
        assert!(m.contains("listne"), "{m}");
        let m = message("[limits]\nmemory_mib = 0");
        assert!(m.contains("limits.memory_mib"), "{m}");
        let m = message("[tenants.acme-pos]\ntoken_sha256 = \"hunter2\"");
        assert!(
            m.contains("tenants.acme-pos.token_sha256") && m.contains("hash-token"),
            "{m}"
        );
        let m = message(&format!(
            "[tenants.\"Bad Name\"]\ntoken_sha256 = \"{}\"",
            hash_token("x")
        ));
        assert!(m.contains("tenants.Bad Name"), "{m}");
        let h = hash_token("shared");
        let m = message(&format!(
            "[admin]\ntoken_sha256 = \"{h}\"\n[tenants.acme]\ntoken_sha256 = \"{h}\""
        ));
        assert!(
            m.contains("tenants.acme.token_sha256") && m.contains("admin"),
            "{m}"
        );
        let m = message("listen = \"localhost\"");
        assert!(m.contains("listen"), "{m}");
        let m = message("[otlp]\nendpoint = \"https://collector:4318\"");
        assert!(m.contains("otlp.endpoint") && m.contains("TLS"), "{m}");
        let m = message("[otlp]\nendpoint = \"http://c:4318\"\nsample_ratio = 1.5");
        assert!(m.contains("otlp.sample_ratio"), "{m}");
    }

    #[test]
    fn tenants_take_their_own_quotas_over_the_defaults() -> Result<(), ConfigError> {
        let config = parse(&format!(
            "[quotas]\nmax_plugins = 7\n[tenants.acme]\ntoken_sha256 = \"{}\"\nmax_plugins = 3\n[tenants.globex]\ntoken_sha256 = \"{}\"",
            hash_token("a"),
            hash_token("g")
        ))?;
        assert_eq!(config.quotas_of("acme").max_plugins, 3);
        assert_eq!(config.quotas_of("globex").max_plugins, 7);
        assert_eq!(config.quotas_of("unknown").max_plugins, 7);
        assert_eq!(
            config.quotas_of("acme").max_requests_in_flight,
            QuotasConfig::default().max_requests_in_flight
        );
        Ok(())
    }

    #[test]
    fn every_number_is_range_checked_at_its_edge() {
        // (key, the largest value accepted) for keys whose edge matters.
        let accepted = [
            ("[delivery]\nquarantine_seconds", 30 * 24 * 3600),
            ("drain_seconds", 3600),
            (
                "[limits.max]\ntimeout_ms",
                plugbus_core::manifest::MAX_TIMEOUT_MS,
            ),
            ("[http]\nmax_connections", 1_000_000),
            ("[quotas]\nmax_requests_in_flight", 100_000),
            ("[instances]\nrecycle_memory_percent", 100),
            ("[instances]\nmax_concurrent_compiles", 64),
            ("[instances]\nbackground_compile_mib", 1024),
        ];
        for (key, edge) in accepted {
            assert!(parse(&format!("{key} = {edge}")).is_ok(), "{key} = {edge}");
            let refused = parse(&format!("{key} = {}", edge + 1))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let name = key.rsplit(['\n', ']']).next().unwrap_or(key);
            assert!(refused.contains(name), "{key} = {}: {refused}", edge + 1);
        }
        // Near u64::MAX, which used to overflow the quarantine's end.
        let m = parse("[delivery]\nquarantine_seconds = 18446744073709551615")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(m.contains("delivery.quarantine_seconds"), "{m}");
    }

    #[test]
    fn defaults_must_fit_under_the_ceilings() {
        let m = parse("[limits]\nfuel = 2000\n[limits.max]\nfuel = 1999")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(m.contains("limits.fuel") && m.contains("1999"), "{m}");
        assert!(parse("[limits]\nfuel = 1999\n[limits.max]\nfuel = 1999").is_ok());
        let m = parse("[tenants.acme]\ntoken_sha256 = \"x\"\nmax_plugins = 0")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(m.contains("tenants.acme"), "{m}");
        let m = parse(&format!(
            "[tenants.acme]\ntoken_sha256 = \"{}\"\nmax_plugins = 0",
            hash_token("a")
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(m.contains("tenants.acme.max_plugins"), "{m}");
    }

    #[test]
    fn the_metrics_token_is_a_hash_of_its_own() {
        let h = hash_token("scrape");
        assert!(parse(&format!("[metrics]\ntoken_sha256 = \"{h}\"")).is_ok());
        let m = parse("[metrics]\ntoken_sha256 = \"scrape\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(m.contains("metrics.token_sha256"), "{m}");
        let m = parse(&format!(
            "[admin]\ntoken_sha256 = \"{h}\"\n[metrics]\ntoken_sha256 = \"{h}\""
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            m.contains("metrics.token_sha256") && m.contains("admin"),
            "{m}"
        );
    }

    /// `[log.nats]` with the given lines under it.
    fn nats_toml(lines: &str) -> String {
        format!(
            "[log]\nbackend = \"nats\"\n[log.nats]\nservers = [\"nats://127.0.0.1:4222\"]\n{lines}"
        )
    }

    /// The message of the error `text` makes, which must name `key`.
    fn refused(text: &str, key: &str) -> String {
        let m = match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        assert!(m.contains(key), "{key} not named: {m}\n{text}");
        m
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_embedded_logs_reads_and_tail_cache_are_set_in_log() -> Result<(), ConfigError> {
        let defaults = plugbus_log::SqliteLogConfig::default();
        let log = parse("")?.sqlite_log_config();
        assert_eq!(log.read_connections, defaults.read_connections);
        assert_eq!(log.tail_cache, defaults.tail_cache);
        let log = parse("[log]\nread_connections = 3\ntail_cache_events = 0\ntail_cache_mib = 2")?
            .sqlite_log_config();
        assert_eq!(log.read_connections, 3);
        assert_eq!(log.tail_cache.events, 0);
        assert_eq!(log.tail_cache.bytes, 2 * 1024 * 1024);
        refused("[log]\nread_connections = 0", "log.read_connections");
        refused("[log]\nread_connections = 257", "log.read_connections");
        refused(
            "[log]\ntail_cache_events = 16777217",
            "log.tail_cache_events",
        );
        refused("[log]\ntail_cache_mib = 65537", "log.tail_cache_mib");
        Ok(())
    }

    #[test]
    fn the_embedded_log_is_the_default() -> Result<(), ConfigError> {
        let config = parse("")?;
        assert_eq!(config.log.backend, LogBackend::Sqlite);
        assert!(config.nats_log_config(no_env)?.is_none());
        assert!(
            parse("[log]\nbackend = \"sqlite\"")?
                .nats_log_config(no_env)?
                .is_none()
        );
        Ok(())
    }

    #[test]
    fn the_nats_section_makes_the_nats_log_settings() -> Result<(), ConfigError> {
        let config = parse(&format!(
            "[delivery]\ndedupe_hours = 2\n\
             [quotas]\nmax_dead_letters = 7\nmax_dead_letter_mib = 3\n\
             [tenants.acme]\ntoken_sha256 = \"{}\"\nmax_dead_letters = 2\n\
             [log]\nbackend = \"nats\"\n\
             [log.nats]\n\
             servers = [\"nats://10.0.0.1:4222\", \"tls://nats-2.example:4443\", \"[::1]:4222\", \"localhost\"]\n\
             token_env = \"PLUGBUS_NATS_TOKEN\"\n\
             tls_required = true\n\
             tls_first = true\n\
             prefix = \"pos_eu1\"\n\
             replicas = 3\n\
             partitions = 8\n\
             connect_timeout_ms = 2500\n\
             request_timeout_ms = 4000\n",
            hash_token("a")
        ))?;
        let env = |var: &str| (var == "PLUGBUS_NATS_TOKEN").then(|| "s3cret".to_owned());
        let nats = config.nats_log_config(env)?.expect("the NATS backend");
        assert_eq!(nats.servers.len(), 4);
        assert_eq!(nats.servers[0], "nats://10.0.0.1:4222");
        assert!(matches!(&nats.auth, NatsAuth::Token(t) if t == "s3cret"));
        assert!(nats.tls.required && nats.tls.first);
        assert_eq!(nats.prefix.as_str(), "pos_eu1");
        assert_eq!(nats.replicas, 3);
        assert_eq!(nats.partitions, 8);
        assert_eq!(nats.connect_timeout, Duration::from_millis(2500));
        assert_eq!(nats.request_timeout, Duration::from_millis(4000));
        // The duplicate window and the quotas are the embedded log's.
        assert_eq!(nats.duplicate_window, Duration::from_secs(2 * 3600));
        assert_eq!(nats.dead_letters.max_count, 7);
        assert_eq!(nats.dead_letters.max_bytes, 3 * MIB);
        assert_eq!(nats.tenant_dead_letters["acme"].max_count, 2);
        assert_eq!(nats.tenant_dead_letters["acme"].max_bytes, 3 * MIB);
        // The secret is in the settings, never in what they print.
        assert!(!format!("{nats:?}").contains("s3cret"));
        // Defaults.
        let nats = parse(&nats_toml(""))?
            .nats_log_config(no_env)?
            .expect("the NATS backend");
        assert_eq!(nats.prefix.as_str(), "plugbus");
        assert_eq!(nats.replicas, 1);
        assert!(matches!(nats.auth, NatsAuth::None));
        assert_eq!(nats.duplicate_window, Duration::from_secs(24 * 3600));
        Ok(())
    }

    #[test]
    fn each_way_to_authenticate_reads_its_secret_from_where_it_is_named() -> Result<(), ConfigError>
    {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Read {
            path: "tempdir".into(),
            reason: e.to_string(),
        })?;
        let seed = dir.path().join("nats.nk");
        let creds = dir.path().join("nats.creds");
        for (path, text) in [(&seed, "SUAEXAMPLESEED\n"), (&creds, "creds")] {
            std::fs::write(path, text).map_err(|e| ConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        let env = |var: &str| (var == "PW").then(|| "pw".to_owned());
        let auth = |lines: &str| -> Result<NatsAuth, ConfigError> {
            Ok(parse(&nats_toml(lines))?
                .nats_log_config(env)?
                .expect("the NATS backend")
                .auth)
        };
        assert!(matches!(
            auth("user = \"pos\"\npassword_env = \"PW\"")?,
            NatsAuth::UserPassword { user, password } if user == "pos" && password == "pw"
        ));
        assert!(matches!(
            auth(&format!("nkey_seed_file = {:?}", seed.display().to_string()))?,
            NatsAuth::NKey(s) if s == "SUAEXAMPLESEED"
        ));
        assert!(matches!(
            auth(&format!("credentials_file = {:?}", creds.display().to_string()))?,
            NatsAuth::CredentialsFile(p) if p == creds
        ));
        let tls = parse(&nats_toml(&format!(
            "ca_file = {0:?}\nclient_cert = {0:?}\nclient_key = {1:?}",
            creds.display().to_string(),
            seed.display().to_string()
        )))?
        .nats_log_config(env)?
        .expect("the NATS backend")
        .tls;
        assert_eq!(tls.ca_file.as_deref(), Some(creds.as_path()));
        assert_eq!(tls.client_cert, Some((creds.clone(), seed.clone())));
        Ok(())
    }

    #[test]
    fn a_secret_that_cannot_be_read_is_named_at_startup() -> Result<(), ConfigError> {
        let startup = |lines: &str| -> String {
            match parse(&nats_toml(lines)).map(|c| c.nats_log_config(no_env)) {
                Ok(Err(e)) => e.to_string(),
                other => panic!("not refused at startup: {lines}: {other:?}"),
            }
        };
        let m = startup("token_env = \"NO_SUCH_TOKEN_VAR\"");
        assert!(
            m.contains("log.nats.token_env") && m.contains("NO_SUCH_TOKEN_VAR"),
            "{m}"
        );
        let m = startup("user = \"pos\"\npassword_env = \"NO_SUCH_PW_VAR\"");
        assert!(
            m.contains("log.nats.password_env") && m.contains("NO_SUCH_PW_VAR"),
            "{m}"
        );
        for key in ["nkey_seed_file", "credentials_file", "ca_file"] {
            let m = startup(&format!("{key} = \"/no/such/file\""));
            assert!(
                m.contains(&format!("log.nats.{key}")) && m.contains("/no/such/file"),
                "{m}"
            );
        }
        let m = startup("client_cert = \"/no/such/cert\"\nclient_key = \"/no/such/key\"");
        assert!(m.contains("log.nats.client_cert"), "{m}");
        // The cause is kept, not flattened.
        let err = parse(&nats_toml("nkey_seed_file = \"/no/such/file\""))?
            .nats_log_config(no_env)
            .expect_err("unreadable");
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
        Ok(())
    }

    #[test]
    fn log_mistakes_are_named() {
        refused("[log]\nbackend = \"kafka\"", "kafka");
        refused("[log]\nbakend = \"nats\"", "bakend");
        refused(&nats_toml("token = \"s3cret\""), "token");
        refused(&nats_toml("password = \"s3cret\""), "password");
        refused("[log]\nbackend = \"nats\"", "log.nats");
        refused(
            "[log.nats]\nservers = [\"nats://127.0.0.1:4222\"]",
            "log.nats",
        );
        refused(
            "[log]\nbackend = \"nats\"\n[log.nats]\nservers = []",
            "log.nats.servers",
        );
        refused(
            "[log]\nbackend = \"nats\"\n[log.nats]\nreplicas = 3",
            "log.nats.servers",
        );
        for bad in [
            "http://127.0.0.1:4222",
            "nats://",
            "nats://host:port",
            "nats://host:0",
            "nats://host:99999",
            "nats://a b:4222",
            "[::1",
        ] {
            refused(
                &format!("[log]\nbackend = \"nats\"\n[log.nats]\nservers = [{bad:?}]"),
                "log.nats.servers",
            );
        }
        let m = refused(
            "[log]\nbackend = \"nats\"\n[log.nats]\nservers = [\"nats://pos:s3cret@127.0.0.1:4222\"]",
            "log.nats.servers",
        );
        assert!(!m.contains("s3cret"), "{m}");
        let m = refused(
            &nats_toml("token_env = \"T\"\nnkey_seed_file = \"/x\""),
            "log.nats.nkey_seed_file",
        );
        assert!(m.contains("token_env"), "{m}");
        refused(
            &nats_toml("user = \"u\"\npassword_env = \"P\"\ncredentials_file = \"/c\""),
            "log.nats.credentials_file",
        );
        refused(&nats_toml("user = \"u\""), "log.nats.password_env");
        refused(&nats_toml("password_env = \"P\""), "log.nats.user");
        refused(
            &nats_toml("user = \"\"\npassword_env = \"P\""),
            "log.nats.user",
        );
        refused(&nats_toml("token_env = \"\""), "log.nats.token_env");
        refused(
            &nats_toml("token_env = \"TOKEN=abc\""),
            "log.nats.token_env",
        );
        refused(&nats_toml("client_cert = \"/c\""), "log.nats.client_key");
        refused(&nats_toml("client_key = \"/k\""), "log.nats.client_cert");
        let m = refused(&nats_toml("prefix = \"Pos-EU\""), "log.nats.prefix");
        assert!(m.contains("a-z, 0-9 and _"), "{m}");
        for replicas in [0, 2, 4, 7] {
            refused(
                &nats_toml(&format!("replicas = {replicas}")),
                "log.nats.replicas",
            );
        }
        refused(&nats_toml("replicas = -1"), "replicas");
        for partitions in [0, 257] {
            refused(
                &nats_toml(&format!("partitions = {partitions}")),
                "log.nats.partitions",
            );
        }
        refused(
            &nats_toml("connect_timeout_ms = 99"),
            "log.nats.connect_timeout_ms",
        );
        refused(
            &nats_toml("request_timeout_ms = 600001"),
            "log.nats.request_timeout_ms",
        );
        refused(&nats_toml("lease_ttl_ms = 999"), "log.nats.lease_ttl_ms");
        let m = refused(&nats_toml("host_id = \"pos 1\""), "log.nats.host_id");
        assert!(m.contains("A-Z, a-z, 0-9"), "{m}");
        refused(&nats_toml("host_id = \"\""), "log.nats.host_id");
        for ok in [
            "replicas = 5",
            "connect_timeout_ms = 100",
            "request_timeout_ms = 600000",
            "lease_ttl_ms = 1000",
            "host_id = \"pos-eu1_a\"",
        ] {
            assert!(parse(&nats_toml(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_example_configurations_parse() -> Result<(), ConfigError> {
        let embedded = parse(include_str!("../../../examples/plugbus.toml"))?;
        assert_eq!(embedded.log.backend, LogBackend::Sqlite);
        let on_nats = parse(include_str!("../../../examples/plugbus-nats.toml"))?;
        let nats = on_nats
            .nats_log_config(no_env)?
            .expect("the example is on NATS");
        assert_eq!(nats.servers, ["nats://127.0.0.1:4222"]);
        // The same demo otherwise.
        assert_eq!(
            Config {
                log: LogConfig::default(),
                ..on_nats
            },
            embedded
        );
        Ok(())
    }

    #[test]
    fn tokens_are_hashed_as_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tenant_secrets_come_from_env_or_files() -> Result<(), ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("smtp");
        std::fs::write(&file, "from-the-file\n").expect("write");
        let config = parse(&format!(
            "[tenants.acme]\n[tenants.acme.secrets]\nwebhook_token = {{ env = \"ACME_HOOK\" }}\n\
             smtp_password = {{ file = {:?} }}\n[tenants.globex]\ntoken_sha256 = \"{}\"",
            file.display().to_string(),
            hash_token("g")
        ))?;
        // A tenant without a token: it cannot publish over HTTP.
        assert_eq!(config.tenants["acme"].token_sha256, None);
        let tokens: Vec<_> = config.tenant_tokens().map(|(t, _)| t).collect();
        assert_eq!(tokens, ["globex"]);
        let env = |var: &str| (var == "ACME_HOOK").then(|| "from-the-env".into());
        let secrets = config.tenant_secrets(env)?;
        let acme = secrets.of("acme").expect("acme has secrets");
        assert_eq!(
            acme.get("webhook_token").map(|v| v.expose()),
            Some("from-the-env")
        );
        assert_eq!(
            acme.get("smtp_password").map(|v| v.expose()),
            Some("from-the-file")
        );
        assert!(secrets.of("globex").is_none());
        // Nothing prints a value.
        assert!(!format!("{config:?}{secrets:?}").contains("from-the"));
        Ok(())
    }

    #[test]
    fn secret_mistakes_are_named_without_the_value() {
        let message = |text: &str| match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        // A literal value.
        let m = message("[tenants.acme.secrets]\nhook = \"hunter2-literal\"");
        assert!(m.contains("never written in plugbus.toml"), "{m}");
        // The line is named, not shown: it holds the value.
        assert!(m.contains("line 2") && !m.contains("hunter2"), "{m}");
        // A bad name.
        let m = message("[tenants.acme.secrets]\nHook = { env = \"X\" }");
        assert!(m.contains("Hook") && m.contains("lowercase"), "{m}");
        // Both sources, or none, or another key.
        let m = message("[tenants.acme.secrets]\nhook = { env = \"X\", file = \"/x\" }");
        assert!(m.contains("one source"), "{m}");
        let m = message("[tenants.acme.secrets]\nhook = {}");
        assert!(m.contains("needs"), "{m}");
        let m = message("[tenants.acme.secrets]\nhook = { value = \"hunter2\" }");
        assert!(m.contains("\"value\"") && !m.contains("hunter2"), "{m}");
        // A bad name beside a literal, an unterminated or unquoted
        // literal, an inline table: the line is never shown.
        for text in [
            "[tenants.acme.secrets]\nSMTP_PASSWORD = \"hunter2\"",
            "[tenants.acme.secrets]\nhook = \"hunter2",
            "[tenants.acme.secrets]\nhook = hunter2",
            "[ tenants.\"acme\" . secrets ]\nhook = hunter2",
            "[tenants.acme]\nsecrets = { hook = hunter2 }",
        ] {
            let m = message(text);
            assert!(!m.contains("hunter2"), "{text:?}: {m}");
        }

        // A missing variable, an unreadable file, an empty value: errors at
        // start that name the tenant, the secret and the source.
        let start = |text: &str| {
            parse(text)
                .expect("parses")
                .tenant_secrets(|var| (var == "EMPTY").then(Default::default))
                .expect_err("refused")
                .to_string()
        };
        let m = start("[tenants.acme.secrets]\nhook = { env = \"ACME_UNSET_HOOK\" }");
        assert!(
            m.contains("tenants.acme.secrets.hook") && m.contains("ACME_UNSET_HOOK"),
            "{m}"
        );
        let m = start("[tenants.acme.secrets]\nhook = { file = \"/nonexistent/plugbus-secret\" }");
        assert!(
            m.contains("tenants.acme.secrets.hook") && m.contains("/nonexistent/plugbus-secret"),
            "{m}"
        );
        let m = start("[tenants.acme.secrets]\nhook = { env = \"EMPTY\" }");
        assert!(m.contains("EMPTY") && m.contains("empty"), "{m}");
    }
}
