//! Plugin manifests (`<plugin>.toml`), subscription patterns, limits and the
//! validation of tenant and plugin names.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::outbound::{OriginError, OriginPattern};

/// The most entries a manifest's `[http] allow` list may hold.
pub const MAX_HTTP_ALLOW: usize = 64;
use crate::secrets::SecretName;

/// The longest tenant or plugin name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Why a tenant or plugin name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("the name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// The name contains a character other than `a-z`, `0-9`, `-` and `_`.
    #[error("the name contains {0:?}; only lowercase letters, digits, '-' and '_' are allowed")]
    InvalidChar(char),
}

/// Checks a tenant or plugin name: 1 to 64 of lowercase ASCII letters,
/// digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(NameError::InvalidChar(c)),
        None => Ok(()),
    }
}

/// The resource limits one delivery of an event to a plugin runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly: WebAssembly instructions) available to one event.
    pub fuel: u64,
    /// Bytes that all linear memories of the plugin's instance may hold together.
    pub memory_bytes: u64,
    /// Wall-clock time available to one event.
    pub timeout: Duration,
}

impl Default for Limits {
    /// 50 million fuel, 32 MiB of memory and one second per event.
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            memory_bytes: 32 * MIB,
            timeout: Duration::from_secs(1),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// One of a plugin's limits above the operator's ceiling for it, in the
/// manifest's own key and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AboveCeiling {
    /// The manifest key: `limits.fuel`, `limits.memory_mib` or
    /// `limits.timeout_ms`.
    pub key: &'static str,
    /// The value asked for, in the key's unit.
    pub value: u64,
    /// The ceiling, in the key's unit (rounded down).
    pub ceiling: u64,
    /// The operator's setting of the ceiling in `plugbus.toml`:
    /// `limits.max.fuel`, `limits.max.memory_mib` or `limits.max.timeout_ms`.
    pub setting: &'static str,
}

impl Limits {
    /// The operator's default ceilings: 1,000,000,000 fuel, 256 MiB of
    /// memory and 30 seconds per event.
    pub const DEFAULT_CEILINGS: Self = Self {
        fuel: 1_000_000_000,
        memory_bytes: 256 * MIB,
        timeout: Duration::from_secs(30),
    };

    /// The first of these limits (fuel, then memory, then time) that is
    /// above the same limit of `ceiling`, or `None` when all are within it.
    pub fn above(&self, ceiling: &Self) -> Option<AboveCeiling> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.fuel > ceiling.fuel {
            return Some(AboveCeiling {
                key: "limits.fuel",
                value: self.fuel,
                ceiling: ceiling.fuel,
                setting: "limits.max.fuel",
            });
        }
        if self.memory_bytes > ceiling.memory_bytes {
            return Some(AboveCeiling {
                key: "limits.memory_mib",
                value: self.memory_bytes.div_ceil(MIB),
                ceiling: ceiling.memory_bytes / MIB,
                setting: "limits.max.memory_mib",
            });
        }
        if self.timeout > ceiling.timeout {
            return Some(AboveCeiling {
                key: "limits.timeout_ms",
                value: millis(self.timeout).max(millis(ceiling.timeout) + 1),
                ceiling: millis(ceiling.timeout),
                setting: "limits.max.timeout_ms",
            });
        }
        None
    }
}

/// The largest `memory_mib` a manifest may ask for (4 GiB, the wasm32 maximum).
pub const MAX_MEMORY_MIB: u64 = 4096;
/// The longest `timeout_ms` a manifest may ask for (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// A pattern in a manifest's `subscribe` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// `"*"`: every event type.
    All,
    /// `"prefix.*"`: every type that starts with `prefix.` (the stored
    /// string includes the trailing dot).
    Prefix(String),
    /// An exact event type.
    Exact(String),
}

impl Subscription {
    /// Parses one pattern: `*`, `prefix.*` or an exact type.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::All);
        }
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!("pattern {pattern:?} contains the character {c:?}"));
        }
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') && prefix.len() > 1 && !prefix.contains('*') => {
                Ok(Self::Prefix(prefix.to_owned()))
            }
            Some(_) => Err(format!(
                "pattern {pattern:?}: '*' may only stand alone or after a final '.', as in \"order.*\""
            )),
            None if pattern.contains('*') => Err(format!(
                "pattern {pattern:?}: '*' may only stand alone or after a final '.', as in \"order.*\""
            )),
            None => Ok(Self::Exact(pattern.to_owned())),
        }
    }

    /// Whether an event of type `ty` matches this pattern.
    pub fn matches(&self, ty: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => ty.starts_with(prefix.as_str()),
            Self::Exact(exact) => ty == exact,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(exact) => f.write_str(exact),
        }
    }
}

/// A validated plugin manifest, with the host's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The event types the plugin receives.
    pub subscribe: Vec<Subscription>,
    /// The limits each delivery runs under.
    pub limits: Limits,
    /// The plugin's own configuration, served by `config-get`.
    pub config: BTreeMap<String, String>,
    /// Where in the durable log the plugin starts when it has no cursor yet
    /// (`start = "latest"` or `"earliest"`; default latest).
    pub start: Start,
    /// Deliveries of one event before it becomes a dead letter, the first
    /// included (`[retry] max_attempts`, 1 to 100); the host's default
    /// when absent.
    pub max_attempts: Option<u32>,
    /// The origins the plugin may send HTTP requests to (`[http] allow`;
    /// none by default), each within its tenant's ceiling (checked where
    /// the plugin is loaded).
    pub http_allow: Vec<OriginPattern>,
    /// The names of its tenant's secrets the plugin may read
    /// (`[secrets] grant`), each once, in the manifest's order; none by
    /// default.
    pub secrets: Vec<SecretName>,
}

/// Where a plugin without a cursor starts reading the durable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// At the end: the events published after the plugin was loaded.
    #[default]
    Latest,
    /// At the beginning: every event of its tenant still in the log.
    Earliest,
}

/// The most attempts a manifest may ask for.
const MAX_ATTEMPTS: u32 = 100;

impl Manifest {
    /// The manifest of a plugin that has no `<plugin>.toml`: every event
    /// type, the default limits, no configuration.
    pub fn with_defaults(limits: Limits) -> Self {
        Self {
            subscribe: vec![Subscription::All],
            limits,
            config: BTreeMap::new(),
            start: Start::Latest,
            max_attempts: None,
            http_allow: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Parses and validates a manifest's TOML text. Limits the manifest
    /// leaves out come from `defaults`.
    pub fn parse(text: &str, defaults: Limits) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        let subscribe = match raw.subscribe {
            None => vec![Subscription::All],
            Some(patterns) => patterns
                .iter()
                .map(|p| Subscription::parse(p).map_err(ManifestError::Subscribe))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut limits = defaults;
        if let Some(raw_limits) = raw.limits {
            if let Some(fuel) = raw_limits.fuel {
                if fuel == 0 {
                    return Err(ManifestError::Limit(
                        "limits.fuel must be at least 1".into(),
                    ));
                }
                limits.fuel = fuel;
            }
            if let Some(mib) = raw_limits.memory_mib {
                if !(1..=MAX_MEMORY_MIB).contains(&mib) {
                    return Err(ManifestError::Limit(format!(
                        "limits.memory_mib is {mib}; it must be between 1 and {MAX_MEMORY_MIB}"
                    )));
                }
                limits.memory_bytes = mib * MIB;
            }
            if let Some(ms) = raw_limits.timeout_ms {
                if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
                    return Err(ManifestError::Limit(format!(
                        "limits.timeout_ms is {ms}; it must be between 1 and {MAX_TIMEOUT_MS}"
                    )));
                }
                limits.timeout = Duration::from_millis(ms);
            }
        }
        let start = match raw.start.as_deref() {
            None | Some("latest") => Start::Latest,
            Some("earliest") => Start::Earliest,
            Some(other) => {
                return Err(ManifestError::Start(format!(
                    "start is {other:?}; it must be \"latest\" or \"earliest\""
                )));
            }
        };
        let max_attempts = match raw.retry.and_then(|r| r.max_attempts) {
            Some(n) if !(1..=MAX_ATTEMPTS).contains(&n) => {
                return Err(ManifestError::Limit(format!(
                    "retry.max_attempts is {n}; it must be between 1 and {MAX_ATTEMPTS}"
                )));
            }
            other => other,
        };
        let http_allow = parse_http_allow(raw.http.and_then(|h| h.allow).unwrap_or_default())?;
        let mut secrets: Vec<SecretName> = Vec::new();
        for name in raw.secrets.map(|s| s.grant).unwrap_or_default() {
            if secrets.contains(&name) {
                return Err(ManifestError::Secrets(format!(
                    "secrets.grant names {name:?} twice"
                )));
            }
            secrets.push(name);
        }
        Ok(Self {
            subscribe,
            limits,
            config: raw.config.unwrap_or_default(),
            start,
            max_attempts,
            http_allow,
            secrets,
        })
    }

    /// Whether the plugin subscribes to events of type `ty`.
    pub fn subscribes_to(&self, ty: &str) -> bool {
        self.subscribe.iter().any(|s| s.matches(ty))
    }
}

/// Parses `[http] allow`: at most [`MAX_HTTP_ALLOW`] origin patterns, no
/// two the same (after the scheme's default port is filled in and case is
/// folded).
fn parse_http_allow(entries: Vec<String>) -> Result<Vec<OriginPattern>, ManifestError> {
    if entries.len() > MAX_HTTP_ALLOW {
        return Err(ManifestError::HttpAllowTooMany(entries.len()));
    }
    let mut patterns: Vec<OriginPattern> = Vec::with_capacity(entries.len());
    for entry in entries {
        let pattern = OriginPattern::parse(&entry).map_err(|source| ManifestError::HttpAllow {
            entry: entry.clone(),
            source,
        })?;
        if patterns.contains(&pattern) {
            return Err(ManifestError::HttpAllowDuplicate(entry));
        }
        patterns.push(pattern);
    }
    Ok(patterns)
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The TOML does not parse, has a key the manifest does not know, or a
    /// value of the wrong type. The message names the key and position.
    #[error("{0}")]
    Syntax(String),
    /// A `subscribe` pattern is malformed.
    #[error("subscribe: {0}")]
    Subscribe(String),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
    /// `start` is neither `latest` nor `earliest`.
    #[error("{0}")]
    Start(String),
    /// An entry of `[http] allow` is not a valid origin pattern.
    #[error("http.allow: {entry:?} is refused: {source}")]
    HttpAllow {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        source: OriginError,
    },
    /// An entry of `[http] allow` repeats an earlier one.
    #[error("http.allow: {0:?} is listed twice")]
    HttpAllowDuplicate(String),
    /// `[http] allow` has more than [`MAX_HTTP_ALLOW`] entries.
    #[error("http.allow has {0} entries; at most {MAX_HTTP_ALLOW} are allowed")]
    HttpAllowTooMany(usize),
    /// `[secrets] grant` names a secret twice. (A malformed name is a
    /// [`ManifestError::Syntax`] error, which names the key and position.)
    #[error("{0}")]
    Secrets(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    subscribe: Option<Vec<String>>,
    limits: Option<RawLimits>,
    config: Option<BTreeMap<String, String>>,
    start: Option<String>,
    retry: Option<RawRetry>,
    http: Option<RawHttp>,
    secrets: Option<RawSecrets>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    allow: Option<Vec<String>>,
}

/// `[secrets]`: the tenant's secrets the plugin may read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    /// Their names, validated as they are read.
    #[serde(default)]
    grant: Vec<SecretName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<u64>,
    memory_mib: Option<u64>,
    timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("acme-pos_2").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("Acme"), Err(NameError::InvalidChar('A')));
        assert_eq!(validate_name("a/b"), Err(NameError::InvalidChar('/')));
        assert_eq!(validate_name(".."), Err(NameError::InvalidChar('.')));
        assert_eq!(validate_name(&"a".repeat(65)), Err(NameError::TooLong(65)));
    }

    #[test]
    fn subscriptions() {
        assert_eq!(Subscription::parse("*"), Ok(Subscription::All));
        let prefix = Subscription::parse("order.*").expect("valid");
        assert!(prefix.matches("order.created"));
        assert!(!prefix.matches("order"));
        assert!(!prefix.matches("orders.created"));
        let exact = Subscription::parse("order.created").expect("valid");
        assert!(exact.matches("order.created"));
        assert!(!exact.matches("order.created.v2"));
        for bad in [
            "",
            "order*",
            "*.created",
            "a.*.b",
            ".*",
            "with space",
            "o.**",
        ] {
            assert!(Subscription::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(prefix.to_string(), "order.*");
    }

    #[test]
    fn full_manifest() {
        let m = Manifest::parse(
            r#"
            subscribe = ["inventory.stock_changed", "order.*"]
            [limits]
            fuel = 50_000_000
            memory_mib = 16
            timeout_ms = 250
            [config]
            threshold = "10"
            "#,
            Limits::default(),
        )
        .expect("valid manifest");
        assert!(m.subscribes_to("order.paid"));
        assert!(m.subscribes_to("inventory.stock_changed"));
        assert!(!m.subscribes_to("inventory.low_stock"));
        assert_eq!(m.limits.memory_bytes, 16 * MIB);
        assert_eq!(m.limits.timeout, Duration::from_millis(250));
        assert_eq!(m.config.get("threshold").map(String::as_str), Some("10"));
        assert_eq!(m.start, Start::Latest);
        assert_eq!(m.max_attempts, None);
    }

    #[test]
    fn start_and_retry() {
        let m = Manifest::parse(
            "start = \"earliest\"\n[retry]\nmax_attempts = 3\n",
            Limits::default(),
        )
        .expect("valid manifest");
        assert_eq!(m.start, Start::Earliest);
        assert_eq!(m.max_attempts, Some(3));
        let err = Manifest::parse("start = \"now\"", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("\"now\""), "{err}");
        let err = Manifest::parse("[retry]\nmax_attempts = 0", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("retry.max_attempts is 0"), "{err}");
        let err = Manifest::parse("[retry]\nbackoff = 1", Limits::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Syntax(_)), "{err}");
    }

    #[test]
    fn limits_above_a_ceiling_name_the_key_in_its_unit() {
        let ceiling = Limits::DEFAULT_CEILINGS;
        assert_eq!(ceiling.above(&ceiling), None);
        assert_eq!(Limits::default().above(&ceiling), None);
        let fuel = Limits {
            fuel: ceiling.fuel + 1,
            ..ceiling
        };
        assert_eq!(
            fuel.above(&ceiling),
            Some(AboveCeiling {
                key: "limits.fuel",
                value: 1_000_000_001,
                ceiling: 1_000_000_000,
                setting: "limits.max.fuel",
            })
        );
        let memory = Limits {
            memory_bytes: 257 * MIB,
            ..ceiling
        };
        let above = memory.above(&ceiling).expect("above");
        assert_eq!(
            (above.key, above.value, above.ceiling, above.setting),
            ("limits.memory_mib", 257, 256, "limits.max.memory_mib")
        );
        // A byte over is a MiB over, as a manifest would have to ask.
        let byte = Limits {
            memory_bytes: 256 * MIB + 1,
            ..ceiling
        };
        assert_eq!(byte.above(&ceiling).map(|a| a.value), Some(257));
        let timeout = Limits {
            timeout: Duration::from_millis(30_001),
            ..ceiling
        };
        let above = timeout.above(&ceiling).expect("above");
        assert_eq!(
            (above.key, above.value, above.ceiling, above.setting),
            ("limits.timeout_ms", 30_001, 30_000, "limits.max.timeout_ms")
        );
        // Less than a millisecond over still reads as over.
        let nanos = Limits {
            timeout: Duration::from_secs(30) + Duration::from_nanos(1),
            ..ceiling
        };
        assert_eq!(nanos.above(&ceiling).map(|a| a.value), Some(30_001));
        // Fuel is reported first when several are above.
        let all = Limits {
            fuel: u64::MAX,
            memory_bytes: 4096 * MIB,
            timeout: Duration::from_secs(3600),
        };
        assert_eq!(all.above(&ceiling).map(|a| a.key), Some("limits.fuel"));
    }

    #[test]
    fn the_largest_fuel_parses_and_is_above_the_ceiling() {
        // What the issue saw a tenant ask for.
        let m = Manifest::parse("[limits]\nfuel = 18446744073709551615", Limits::default())
            .expect("valid");
        assert_eq!(m.limits.fuel, u64::MAX);
        let above = m.limits.above(&Limits::DEFAULT_CEILINGS).expect("above");
        assert_eq!((above.key, above.value), ("limits.fuel", u64::MAX));
    }

    #[test]
    fn http_allow() {
        let m = Manifest::parse(
            "[http]\nallow = [\"https://api.example.com\", \"https://*.hooks.example.com:443\", \"http://127.0.0.1:8080\"]\n",
            Limits::default(),
        )
        .expect("valid");
        let shown: Vec<String> = m.http_allow.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "https://api.example.com",
                "https://*.hooks.example.com",
                "http://127.0.0.1:8080"
            ]
        );
        assert!(
            Manifest::parse("", Limits::default())
                .expect("valid")
                .http_allow
                .is_empty()
        );
        assert!(
            Manifest::parse("[http]\n", Limits::default())
                .expect("valid")
                .http_allow
                .is_empty()
        );
        let err = Manifest::parse(
            "[http]\nallow = [\"https://a.example.com/path\"]",
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ManifestError::HttpAllow { entry, source: OriginError::Path } if entry == "https://a.example.com/path"),
            "{err}"
        );
        assert!(
            err.to_string().contains("https://a.example.com/path"),
            "{err}"
        );
        let err = Manifest::parse(
            "[http]\nallow = [\"https://a.example.com\", \"HTTPS://A.example.com:443/\"]",
            Limits::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ManifestError::HttpAllowDuplicate("HTTPS://A.example.com:443/".into())
        );
        let many: Vec<String> = (0..=MAX_HTTP_ALLOW)
            .map(|i| format!("\"https://h{i}.example.com\""))
            .collect();
        let err = Manifest::parse(
            &format!("[http]\nallow = [{}]", many.join(",")),
            Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err, ManifestError::HttpAllowTooMany(MAX_HTTP_ALLOW + 1));
        let err = Manifest::parse("[http]\ndeny = []", Limits::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Syntax(_)), "{err}");
    }

    #[test]
    fn defaults_fill_in() {
        let m = Manifest::parse("", Limits::default()).expect("empty manifest is valid");
        assert_eq!(m, Manifest::with_defaults(Limits::default()));
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = Manifest::parse("subscrbe = [\"*\"]", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("subscrbe"), "{err}");
        let err = Manifest::parse("[limits]\nfuel = 1\ncpu = 2", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
        let err = Manifest::parse("[limits]\nmemory_mib = 0", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("memory_mib"), "{err}");
        let err = Manifest::parse("[limits]\ntimeout_ms = -5", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("timeout_ms"), "{err}");
        let err = Manifest::parse("[config]\nthreshold = 10", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let err = Manifest::parse("subscribe = [\"a*\"]", Limits::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Subscribe(_)), "{err}");
    }

    #[test]
    fn secret_grants() {
        let m = Manifest::parse("", Limits::default()).expect("valid");
        assert!(m.secrets.is_empty());
        let m = Manifest::parse(
            "[secrets]\ngrant = [\"webhook_token\", \"smtp_password\"]",
            Limits::default(),
        )
        .expect("valid");
        let names: Vec<_> = m.secrets.iter().map(SecretName::as_str).collect();
        assert_eq!(names, ["webhook_token", "smtp_password"]);
        let err = |text: &str| Manifest::parse(text, Limits::default()).unwrap_err();
        let e = err("[secrets]\ngrant = [\"Token\"]");
        assert!(matches!(e, ManifestError::Syntax(_)), "{e:?}");
        assert!(e.to_string().contains("Token"), "{e}");
        let e = err("[secrets]\ngrant = [\"a\", \"a\"]");
        assert!(matches!(e, ManifestError::Secrets(_)), "{e:?}");
        let e = err("[secrets]\ngrants = [\"a\"]");
        assert!(e.to_string().contains("grants"), "{e}");
        let e = err("[secrets]\ngrant = [\"\"]");
        assert!(matches!(e, ManifestError::Syntax(_)), "{e:?}");
    }
}
