//! The JSON bodies of the HTTP API, one set of types for both sides: the
//! server ([`super`]) writes them and the CLI client (`plugbus publish`,
//! `plugins`, `status`, `dlq`, `replay`, `quarantine` with `--url`) reads
//! them.
//!
//! The field order is the order on the wire; an `Option` without
//! `skip_serializing_if` is written as `null` when absent, one with it is
//! left out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use plugbus_core::FailureKind;
use plugbus_log::{DeadLetter, FailedAttempt, Quarantine, Seq};

/// Every refusal: `{"error": kind, "message": …}`, with the attribute at
/// fault, the index of the event in a batch, and the bound crossed when
/// there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The kind of refusal (`unauthorized`, `invalid_event`, `too_large`,
    /// `rate_limited`, `not_found`, …).
    pub error: String,
    /// What was wrong, for people.
    pub message: String,
    /// The CloudEvents attribute at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// The event of a batch at fault, counting from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The bound that was crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// One event of an ingest request, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The event's id.
    pub id: String,
    /// Its position in the log (the first one's, for a duplicate).
    pub seq: Seq,
    /// Whether the log already held it.
    pub duplicate: bool,
}

/// The answer of `POST /v1/events` (202): the events in request order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IngestAnswer {
    /// The events, as stored.
    pub accepted: Vec<Accepted>,
}

/// Where a plugin stands, as a plugin view says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// It serves.
    Active,
    /// Its newest files failed to load; an older version serves.
    Degraded,
    /// Nothing of it serves.
    FailedToLoad,
    /// Its deliveries kept failing: paused until the quarantine ends.
    Quarantined,
}

impl PluginState {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::FailedToLoad => "failed_to_load",
            Self::Quarantined => "quarantined",
        }
    }
}

/// A plugin's limits, as its manifest and the defaults set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLimits {
    /// Fuel per event.
    pub fuel: u64,
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit per event, in milliseconds.
    pub timeout_ms: u64,
}

/// One plugin, in `GET /v1/admin/plugins` and
/// `GET /v1/tenants/{tenant}/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginView {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub plugin: String,
    /// The version serving, if any.
    pub version: Option<String>,
    /// Where it stands.
    pub status: PluginState,
    /// Why its newest files failed to load, if they did.
    pub last_error: Option<String>,
    /// How many times a new version replaced the one serving.
    pub reloads: u64,
    /// How many times a new version failed to load.
    pub failed_reloads: u64,
    /// Its quarantine, if it is quarantined.
    pub quarantine: Option<Quarantine>,
    /// Its limits, when a version of it is loaded.
    pub limits: Option<PluginLimits>,
    /// The last position it finished, if it has a cursor.
    pub cursor: Option<Seq>,
    /// How many of its tenant's events it has yet to finish, when known.
    pub lag: Option<u64>,
}

/// The answer of the plugin listings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PluginsAnswer {
    /// The plugins.
    pub plugins: Vec<PluginView>,
}

/// One tenant, in `GET /v1/admin/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    /// The tenant.
    pub tenant: String,
    /// Whether it has a token (can publish).
    pub has_token: bool,
    /// How many plugins it has loaded.
    pub plugins: usize,
}

/// The answer of `GET /v1/admin/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantsAnswer {
    /// The tenants, by name.
    pub tenants: Vec<TenantView>,
}

/// One dead letter: the event, in CloudEvents JSON format, and every
/// failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The event's position in the log.
    pub seq: Seq,
    /// The event in CloudEvents JSON format.
    pub event: Value,
    /// Its failed attempts, oldest first.
    pub attempts: Vec<FailedAttempt>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(dead: DeadLetter) -> Self {
        Self {
            seq: dead.seq,
            event: dead.event.to_json_value(),
            attempts: dead.attempts,
        }
    }
}

/// The answer of `GET .../dead-letters`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeadLettersAnswer {
    /// The plugin's dead letters, by position.
    pub dead_letters: Vec<DeadLetterView>,
}

/// The answer of `POST .../dead-letters/{seq}/redrive` (202).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveAnswer {
    /// The position of the dead letter to deliver again.
    pub redrive: Seq,
}

/// The query of `POST .../replay`: where to deliver from again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFrom {
    /// A position in the log, or an RFC 3339 time.
    pub from: String,
}

/// The answer of `POST .../replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayAnswer {
    /// The plugin's cursor before.
    pub before: Seq,
    /// The first position delivered again.
    pub first: Seq,
}

/// The answer of `POST .../resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeAnswer {
    /// The plugin whose quarantine was lifted.
    pub resumed: String,
}

/// One recent failed delivery, in `GET /v1/tenants/{tenant}/failures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFailure {
    /// When it was seen, RFC 3339.
    pub at: String,
    /// The plugin.
    pub plugin: String,
    /// The plugin version that failed.
    pub plugin_version: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub ty: String,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The handler's message, the trap, or the limit that was hit.
    pub message: String,
    /// The fuel the delivery consumed.
    pub fuel: u64,
}

/// The answer of `GET /v1/tenants/{tenant}/failures`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailuresAnswer {
    /// The tenant's recent failed deliveries, newest last.
    pub failures: Vec<RecentFailure>,
}

/// The answer of `POST /v1/admin/reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    /// How many plugins the host knows after the reload.
    pub plugins: usize,
    /// How many of them have a load error.
    pub with_errors: usize,
}

/// The answer of `GET /v1/whoami`: whose the bearer token is,
/// `{"role":"admin"}` or `{"role":"tenant","tenant":"acme-pos"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum WhoAmI {
    /// The admin token: every tenant's routes.
    Admin,
    /// A tenant's token: that tenant's routes only.
    Tenant {
        /// The token's tenant.
        tenant: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absent details are left out of a refusal, not written as null.
    #[test]
    fn error_body_leaves_out_what_is_absent() {
        let body = ErrorBody {
            error: "unauthorized".into(),
            message: "no".into(),
            attribute: None,
            index: Some(2),
            limit: None,
        };
        let text = serde_json::to_string(&body).expect("serialises");
        assert_eq!(text, r#"{"error":"unauthorized","message":"no","index":2}"#);
        assert_eq!(
            serde_json::from_str::<ErrorBody>(&text).expect("reads back"),
            body
        );
    }

    /// A plugin view writes its absent values as null, in the order of
    /// the fields.
    #[test]
    fn plugin_view_writes_nulls_in_order() {
        let view = PluginView {
            tenant: "t".into(),
            plugin: "p".into(),
            version: None,
            status: PluginState::FailedToLoad,
            last_error: Some("bad".into()),
            reloads: 0,
            failed_reloads: 1,
            quarantine: None,
            limits: None,
            cursor: None,
            lag: Some(3),
        };
        let text = serde_json::to_string(&view).expect("serialises");
        assert_eq!(
            text,
            r#"{"tenant":"t","plugin":"p","version":null,"status":"failed_to_load","last_error":"bad","reloads":0,"failed_reloads":1,"quarantine":null,"limits":null,"cursor":null,"lag":3}"#
        );
        assert_eq!(
            serde_json::from_str::<PluginView>(&text).expect("reads back"),
            view
        );
    }
}

/// The entries or emits a page of `GET .../state` or `GET .../emits`
/// holds when `limit` is not given.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// The most entries or emits one page of `GET .../state` or
/// `GET .../emits` may ask for; a larger `limit` is refused (400).
pub const MAX_PAGE_LIMIT: usize = 1000;

/// How stored bytes (a state value, an event's data) are written in an
/// answer: as JSON where they are JSON text, else in base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The value is the stored bytes themselves: UTF-8 JSON text, exactly
    /// as stored (without surrounding whitespace).
    Json,
    /// The value is a string: the stored bytes in standard base64 with
    /// padding, as they are not JSON text.
    Base64,
}

/// Stored bytes, as JSON where they are JSON text: see [`Encoding`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBytes {
    /// How `value` holds the bytes.
    pub encoding: Encoding,
    /// The bytes: their JSON text, or a base64 string.
    pub value: Box<serde_json::value::RawValue>,
}

impl StoredBytes {
    /// `bytes`, as JSON when they are exactly one JSON text, else in
    /// base64.
    pub fn new(bytes: &[u8]) -> Self {
        let json = std::str::from_utf8(bytes).ok().and_then(|text| {
            serde_json::value::RawValue::from_string(text.to_owned())
                .ok()
                // Surrounding whitespace would be lost: not exact.
                .filter(|raw| raw.get().len() == text.len())
        });
        if let Some(value) = json {
            return Self {
                encoding: Encoding::Json,
                value,
            };
        }
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        // A base64 string is always valid JSON once quoted.
        let value = serde_json::value::to_raw_value(&encoded)
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        Self {
            encoding: Encoding::Base64,
            value,
        }
    }

    /// The stored bytes again; `None` when a base64 value does not decode.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self.encoding {
            Encoding::Json => Some(self.value.get().as_bytes().to_vec()),
            Encoding::Base64 => {
                use base64::Engine as _;
                let text: String = serde_json::from_str(self.value.get()).ok()?;
                base64::engine::general_purpose::STANDARD.decode(text).ok()
            }
        }
    }
}

impl PartialEq for StoredBytes {
    fn eq(&self, other: &Self) -> bool {
        self.encoding == other.encoding && self.value.get() == other.value.get()
    }
}

impl Eq for StoredBytes {}

/// One key of a plugin's state, in `GET .../state` and
/// `GET .../state/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEntryView {
    /// The key.
    pub key: String,
    /// How `value` holds the stored bytes.
    pub encoding: Encoding,
    /// The value: its JSON text, or a base64 string (see [`Encoding`]).
    pub value: Box<serde_json::value::RawValue>,
}

impl StateEntryView {
    /// The entry of `key` with the stored `value`.
    pub fn new(key: String, value: &[u8]) -> Self {
        let StoredBytes { encoding, value } = StoredBytes::new(value);
        Self {
            key,
            encoding,
            value,
        }
    }

    /// The value, with its encoding.
    pub fn stored(&self) -> StoredBytes {
        StoredBytes {
            encoding: self.encoding,
            value: self.value.clone(),
        }
    }
}

impl PartialEq for StateEntryView {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.encoding == other.encoding
            && self.value.get() == other.value.get()
    }
}

impl Eq for StateEntryView {}

/// The query of `GET .../state`: which keys, and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateParams {
    /// Only the keys that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only the keys after this one: the `next_after` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The most entries (default [`DEFAULT_PAGE_LIMIT`], at most
    /// [`MAX_PAGE_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer of `GET /v1/tenants/{tenant}/plugins/{plugin}/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAnswer {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The entries, in key order (by the keys' UTF-8 bytes).
    pub entries: Vec<StateEntryView>,
    /// When more entries follow: the `after` that reads them.
    pub next_after: Option<String>,
}

/// The query of `GET .../emits`: how many, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmitsParams {
    /// Only the emits before this position: the `next_before` of the page
    /// before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    /// The most emits (default [`DEFAULT_PAGE_LIMIT`], at most
    /// [`MAX_PAGE_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One event a plugin emitted, in `GET .../emits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmitView {
    /// Its position in the log.
    pub seq: Seq,
    /// Its id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its subject, if any.
    pub subject: Option<String>,
    /// Its time (set by the host when it was emitted), RFC 3339.
    pub time: Option<String>,
    /// When the log stored it (with the delivery's commit), RFC 3339.
    pub appended_at: String,
    /// The id of the event whose delivery emitted it.
    pub causation_id: Option<String>,
    /// Its data's media type, if given.
    pub datacontenttype: Option<String>,
    /// Its data, if any.
    pub data: Option<StoredBytes>,
}

/// The answer of `GET /v1/tenants/{tenant}/plugins/{plugin}/emits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmitsAnswer {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The events the plugin emitted that the log still holds, newest
    /// first.
    pub emits: Vec<EmitView>,
    /// When older emits follow: the `before` that reads them.
    pub next_before: Option<Seq>,
}
