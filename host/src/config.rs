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
//!
//! [limits]                        # for plugins whose manifest does not say
//! fuel = 50_000_000
//! memory_mib = 32
//! timeout_ms = 1000
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
//!
//! [otlp]                          # OpenTelemetry span export (off without an endpoint)
//! # endpoint = "http://127.0.0.1:4318"   # spans go to <endpoint>/v1/traces
//! service_name = "plugbus"
//! sample_ratio = 1.0
//!
//! [admin]
//! token_sha256 = "…"              # `plugbus hash-token`
//!
//! [tenants.acme-pos]
//! token_sha256 = "…"
//! ```
//!
//! Tokens are stored as the hex SHA-256 of the token, never the token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;

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
    /// Default limits of plugins whose manifest does not set them.
    pub limits: LimitsConfig,
    /// Retries, quarantine, duplicates and retention.
    pub delivery: DeliveryConfig,
    /// HTTP request limits.
    pub http: HttpConfig,
    /// OpenTelemetry export of the ingest and delivery spans.
    pub otlp: OtlpConfig,
    /// The admin token, for `/v1/admin/...`; without one the admin API
    /// answers 401 to everyone.
    pub admin: Option<TokenConfig>,
    /// The tenants that may publish over HTTP, by name, with their tokens.
    pub tenants: BTreeMap<String, TokenConfig>,
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

/// A token, as the hex SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `plugbus hash-token` prints it.
    pub token_sha256: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Human,
            limits: LimitsConfig::default(),
            delivery: DeliveryConfig::default(),
            http: HttpConfig::default(),
            otlp: OtlpConfig::default(),
            admin: None,
            tenants: BTreeMap::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = crate::Limits::default();
        Self {
            fuel: limits.fuel,
            memory_mib: limits.memory_bytes / (1024 * 1024),
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

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
            reason: e.to_string(),
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
        range("limits.fuel", self.limits.fuel, 1, u64::MAX)?;
        range(
            "limits.memory_mib",
            self.limits.memory_mib,
            1,
            crate::manifest::MAX_MEMORY_MIB,
        )?;
        range(
            "limits.timeout_ms",
            self.limits.timeout_ms,
            1,
            crate::manifest::MAX_TIMEOUT_MS,
        )?;
        range(
            "delivery.max_attempts",
            u64::from(self.delivery.max_attempts),
            1,
            100,
        )?;
        range(
            "delivery.quarantine_seconds",
            self.delivery.quarantine_seconds,
            1,
            u64::MAX,
        )?;
        range(
            "delivery.dedupe_hours",
            self.delivery.dedupe_hours,
            1,
            24 * 365,
        )?;
        if let Some(mib) = self.delivery.retain_mib {
            range("delivery.retain_mib", mib, 1, u64::MAX)?;
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
        if let Some(admin) = &self.admin {
            check_hash(&admin.token_sha256).map_err(|r| invalid("admin.token_sha256", r))?;
        }
        // A token names one caller: shared, it would not say which.
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        if let Some(admin) = &self.admin {
            owners.insert(admin.token_sha256.to_ascii_lowercase(), "admin".into());
        }
        for (tenant, token) in &self.tenants {
            let key = format!("tenants.{tenant}.token_sha256");
            crate::manifest::validate_name(tenant)
                .map_err(|e| invalid(&format!("tenants.{tenant}"), e.to_string()))?;
            check_hash(&token.token_sha256).map_err(|r| invalid(&key, r))?;
            if let Some(other) =
                owners.insert(token.token_sha256.to_ascii_lowercase(), tenant.clone())
            {
                return Err(invalid(&key, format!("the same token as {other}'s")));
            }
        }
        Ok(())
    }
}

/// The hex SHA-256 of `token`, as the configuration stores it.
pub fn hash_token(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
        assert_eq!(config.tenants["acme-pos"].token_sha256, hash);
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
    fn tokens_are_hashed_as_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
