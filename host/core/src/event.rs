//! The CloudEvents 1.0 envelope as the host sees it, its JSON format, and
//! the validation every event passes before it is routed.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

/// The extension attribute that carries an event's tenant in the JSON
/// input of `plugbus dispatch`.
pub const TENANT_EXTENSION: &str = "tenant";
/// The extension attribute the host sets on emitted events: the id of the
/// event whose handler emitted it.
pub const CAUSATION_EXTENSION: &str = "causationid";
/// The extension attribute the host sets on emitted events: the id of the
/// root event of the chain.
pub const CORRELATION_EXTENSION: &str = "correlationid";
/// The extension attribute the host sets on emitted events: how many emits
/// separate the event from the root event of its chain.
pub const DEPTH_EXTENSION: &str = "chaindepth";
/// The extension attribute the host sets on emitted events: how many more
/// events the chain below this event may still cause. A chain's budget
/// travels with its events through the durable log, so that it holds across
/// deliveries, restarts and hosts; the host clamps it to its own limit.
pub const BUDGET_EXTENSION: &str = "chainbudget";

/// The values of the CloudEvents `Integer` type: a signed 32-bit whole
/// number. A JSON number given as an extension attribute must be one.
pub const INTEGER_RANGE: std::ops::RangeInclusive<i64> = (i32::MIN as i64)..=(i32::MAX as i64);

/// The largest event payload accepted, in bytes.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// The longest attribute value accepted, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;
/// The most extension attributes one event may carry.
pub const MAX_EXTENSIONS: usize = 64;

/// Attribute names the CloudEvents JSON format or the host itself reserve;
/// they cannot be used as extension names.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// A CloudEvents 1.0 event that belongs to one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Identifies the event; unique per `source`.
    pub id: String,
    /// Identifies the context the event happened in (a URI-reference).
    pub source: String,
    /// The kind of event, such as `inventory.stock_changed`.
    pub ty: String,
    /// The subject within the source, such as a SKU or an order id.
    pub subject: Option<String>,
    /// When the event happened, as an RFC 3339 timestamp.
    pub time: Option<String>,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// An absolute URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// Extension attributes, by name. The tenant is not among them.
    pub extensions: BTreeMap<String, String>,
    /// The tenant that owns the event.
    pub tenant: String,
}

/// Why an event was refused. Each variant names the attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The input is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The JSON value is not an object.
    #[error("a CloudEvent in JSON format must be an object")]
    NotAnObject,
    /// A required attribute is missing.
    #[error("required attribute '{0}' is missing")]
    Missing(&'static str),
    /// `specversion` is not `1.0`.
    #[error("attribute 'specversion' is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    /// An attribute has an invalid value.
    #[error("attribute '{name}': {reason}")]
    Invalid {
        /// The attribute.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl EventError {
    fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Whether a media type means JSON (`application/json`, `text/json`,
/// `application/*+json`), ignoring parameters such as `charset`.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

impl Event {
    /// Parses one line of CloudEvents JSON (the JSON event format of
    /// CloudEvents 1.0). The tenant is taken from the `tenant` extension
    /// attribute, which is required.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        // Each attribute is parsed from its own slice of the text, and a
        // JSON payload is copied as it is: no tree of the whole event.
        let mut map: BTreeMap<String, &serde_json::value::RawValue> = serde_json::from_str(text)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => match serde_json::from_str::<Value>(text) {
                    Ok(_) => EventError::NotAnObject,
                    Err(e) => EventError::Json(e.to_string()),
                },
                _ => EventError::Json(e.to_string()),
            })?;
        let mut string = |name: &'static str| -> Result<Option<String>, EventError> {
            match map
                .remove(name)
                .map(|raw| serde_json::from_str::<Option<String>>(raw.get()))
            {
                None => Ok(None),
                Some(Ok(value)) => Ok(value),
                Some(Err(_)) => Err(EventError::invalid(name, "must be a string")),
            }
        };
        match string("specversion")? {
            None => return Err(EventError::Missing("specversion")),
            Some(v) if v == "1.0" => {}
            Some(v) => return Err(EventError::SpecVersion(v)),
        }
        let id = string("id")?.ok_or(EventError::Missing("id"))?;
        let source = string("source")?.ok_or(EventError::Missing("source"))?;
        let ty = string("type")?.ok_or(EventError::Missing("type"))?;
        let subject = string("subject")?;
        let time = string("time")?;
        let datacontenttype = string("datacontenttype")?;
        let dataschema = string("dataschema")?;
        let tenant = string(TENANT_EXTENSION)?.ok_or(EventError::Missing(TENANT_EXTENSION))?;
        let base64 = string("data_base64");
        let data = match (map.remove("data"), base64) {
            (_, Err(_)) => return Err(EventError::invalid("data_base64", "must be a string")),
            (Some(data), Ok(Some(_))) if data.get() != "null" => {
                return Err(EventError::invalid(
                    "data_base64",
                    "an event carries either 'data' or 'data_base64', not both",
                ));
            }
            (_, Ok(Some(b64))) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    EventError::invalid("data_base64", format!("not valid base64: {e}"))
                })?,
            (None, Ok(None)) => Vec::new(),
            (Some(data), Ok(None)) if data.get() == "null" => Vec::new(),
            (Some(data), Ok(None)) => {
                let json_type = datacontenttype.as_deref().is_none_or(is_json_media_type);
                match serde_json::from_str::<String>(data.get()) {
                    Ok(text) if !json_type => text.into_bytes(),
                    _ => data.get().as_bytes().to_vec(),
                }
            }
        };
        let extensions = map.into_iter().map(|(name, raw)| {
            let value =
                serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Array(Vec::new()));
            (name, value)
        });
        Self::with_extensions(
            Self {
                id,
                source,
                ty,
                subject,
                time,
                datacontenttype,
                dataschema,
                data,
                extensions: BTreeMap::new(),
                tenant,
            },
            extensions,
        )
    }

    /// Like [`Event::from_json`], from an already parsed JSON value.
    pub fn from_json_value(value: Value) -> Result<Self, EventError> {
        let Value::Object(mut map) = value else {
            return Err(EventError::NotAnObject);
        };
        match take_string(&mut map, "specversion")? {
            None => return Err(EventError::Missing("specversion")),
            Some(v) if v == "1.0" => {}
            Some(v) => return Err(EventError::SpecVersion(v)),
        }
        let id = take_string(&mut map, "id")?.ok_or(EventError::Missing("id"))?;
        let source = take_string(&mut map, "source")?.ok_or(EventError::Missing("source"))?;
        let ty = take_string(&mut map, "type")?.ok_or(EventError::Missing("type"))?;
        let subject = take_string(&mut map, "subject")?;
        let time = take_string(&mut map, "time")?;
        let datacontenttype = take_string(&mut map, "datacontenttype")?;
        let dataschema = take_string(&mut map, "dataschema")?;
        let tenant = take_string(&mut map, TENANT_EXTENSION)?
            .ok_or(EventError::Missing(TENANT_EXTENSION))?;

        let data = match (map.remove("data"), map.remove("data_base64")) {
            (Some(_), Some(_)) => {
                return Err(EventError::invalid(
                    "data_base64",
                    "an event carries either 'data' or 'data_base64', not both",
                ));
            }
            (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    EventError::invalid("data_base64", format!("not valid base64: {e}"))
                })?,
            (None, Some(_)) => {
                return Err(EventError::invalid("data_base64", "must be a string"));
            }
            (Some(Value::Null), None) | (None, None) => Vec::new(),
            (Some(Value::String(s)), None)
                if !datacontenttype.as_deref().is_none_or(is_json_media_type) =>
            {
                s.into_bytes()
            }
            (Some(value), None) => serde_json::to_vec(&value)
                .map_err(|e| EventError::invalid("data", e.to_string()))?,
        };

        Self::with_extensions(
            Self {
                id,
                source,
                ty,
                subject,
                time,
                datacontenttype,
                dataschema,
                data,
                extensions: BTreeMap::new(),
                tenant,
            },
            map,
        )
    }

    /// Adds the extension attributes (strings, integers and booleans as
    /// text; `null` is no attribute) and checks the whole event.
    ///
    /// A JSON number is a CloudEvents `Integer`: a whole number within
    /// [`INTEGER_RANGE`] (32-bit signed). Any other number (out of range,
    /// fractional, or with an exponent) is refused, naming the attribute.
    /// A JSON string is a CloudEvents `String` and is kept as it is, digits
    /// or not: its range is not checked (binary mode's `ce-` headers are
    /// always strings), except for the host's own `chaindepth` and
    /// `chainbudget`, which [`Event::validate`] checks.
    fn with_extensions(
        mut self,
        extensions: impl IntoIterator<Item = (String, Value)>,
    ) -> Result<Self, EventError> {
        for (name, value) in extensions {
            let value = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => integer_text(&name, &n)?,
                Value::Null => continue,
                _ => {
                    return Err(EventError::invalid(
                        &name,
                        "an extension attribute must be a string, number or boolean",
                    ));
                }
            };
            self.extensions.insert(name, value);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the event against CloudEvents 1.0 and the host's limits:
    /// non-empty `id`, `source` and `type`, a valid tenant name, an RFC 3339
    /// `time`, an absolute `dataschema`, extension names of lowercase letters
    /// and digits, no control characters, and bounded sizes.
    pub fn validate(&self) -> Result<(), EventError> {
        crate::manifest::validate_name(&self.tenant)
            .map_err(|e| EventError::invalid(TENANT_EXTENSION, e.to_string()))?;
        check_text("id", &self.id, true)?;
        check_text("source", &self.source, true)?;
        check_text("type", &self.ty, true)?;
        if let Some(subject) = &self.subject {
            check_text("subject", subject, true)?;
        }
        if let Some(time) = &self.time {
            check_text("time", time, true)?;
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    EventError::invalid("time", format!("not an RFC 3339 timestamp: {e}"))
                })?;
        }
        if let Some(ct) = &self.datacontenttype {
            check_text("datacontenttype", ct, true)?;
        }
        if let Some(schema) = &self.dataschema {
            check_text("dataschema", schema, true)?;
            if !has_uri_scheme(schema) {
                return Err(EventError::invalid(
                    "dataschema",
                    "must be an absolute URI, with a scheme such as https:",
                ));
            }
        }
        if self.data.len() > MAX_DATA_BYTES {
            return Err(EventError::invalid(
                "data",
                format!(
                    "{} bytes is more than the limit of {MAX_DATA_BYTES}",
                    self.data.len()
                ),
            ));
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            return Err(EventError::invalid(
                "extensions",
                format!(
                    "{} extension attributes is more than the limit of {MAX_EXTENSIONS}",
                    self.extensions.len()
                ),
            ));
        }
        for (name, value) in &self.extensions {
            check_extension_name(name)?;
            check_text(name, value, false)?;
        }
        if let Some(depth) = self.extensions.get(DEPTH_EXTENSION) {
            depth.parse::<u32>().map_err(|_| {
                EventError::invalid(DEPTH_EXTENSION, format!("{depth:?} is not a whole number"))
            })?;
        }
        if let Some(budget) = self.extensions.get(BUDGET_EXTENSION) {
            budget.parse::<u64>().map_err(|_| {
                EventError::invalid(
                    BUDGET_EXTENSION,
                    format!("{budget:?} is not a whole number"),
                )
            })?;
        }
        Ok(())
    }

    /// How many emits separate this event from the root of its chain
    /// (the `chaindepth` extension; 0 when absent).
    pub fn chain_depth(&self) -> u32 {
        self.extensions
            .get(DEPTH_EXTENSION)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }

    /// How many more events the chain below this event may cause (the
    /// `chainbudget` extension), at most `limit`; `limit` when absent.
    pub fn chain_budget(&self, limit: usize) -> usize {
        self.extensions
            .get(BUDGET_EXTENSION)
            .and_then(|b| b.parse::<u64>().ok())
            .map_or(limit, |b| {
                usize::try_from(b).unwrap_or(usize::MAX).min(limit)
            })
    }

    /// The id of the root event of this event's chain: the `correlationid`
    /// extension, or the event's own id.
    pub fn correlation_id(&self) -> &str {
        self.extensions
            .get(CORRELATION_EXTENSION)
            .map(String::as_str)
            .unwrap_or(&self.id)
    }

    /// The id of the event whose handler emitted this one, if any.
    pub fn causation_id(&self) -> Option<&str> {
        self.extensions.get(CAUSATION_EXTENSION).map(String::as_str)
    }

    /// The event in CloudEvents JSON format, with the tenant as the
    /// `tenant` extension. JSON payloads are embedded as `data`, text as a
    /// string, anything else as `data_base64`.
    pub fn to_json_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("specversion".into(), "1.0".into());
        map.insert("id".into(), self.id.clone().into());
        map.insert("source".into(), self.source.clone().into());
        map.insert("type".into(), self.ty.clone().into());
        for (name, value) in [
            ("subject", &self.subject),
            ("time", &self.time),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ] {
            if let Some(v) = value {
                map.insert(name.into(), v.clone().into());
            }
        }
        map.insert(TENANT_EXTENSION.into(), self.tenant.clone().into());
        for (name, value) in &self.extensions {
            map.insert(name.clone(), value.clone().into());
        }
        if !self.data.is_empty() {
            let json_type = self
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_media_type);
            let embedded = if json_type {
                serde_json::from_slice::<Value>(&self.data).ok()
            } else {
                std::str::from_utf8(&self.data)
                    .ok()
                    .map(|s| Value::String(s.to_owned()))
            };
            match embedded {
                Some(v) => map.insert("data".into(), v),
                None => map.insert(
                    "data_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&self.data)
                        .into(),
                ),
            };
        }
        Value::Object(map)
    }
}

impl Event {
    /// The same JSON as [`Event::to_json_value`], written directly: a JSON
    /// payload is checked and copied as it is, not parsed into a tree.
    pub fn to_json_string(&self) -> String {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            specversion: &'static str,
            id: &'a str,
            source: &'a str,
            #[serde(rename = "type")]
            ty: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            time: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            datacontenttype: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dataschema: Option<&'a str>,
            tenant: &'a str,
            #[serde(flatten)]
            extensions: &'a BTreeMap<String, String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<Data<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data_base64: Option<String>,
        }
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Data<'a> {
            Json(Box<serde_json::value::RawValue>),
            Text(&'a str),
        }
        let (mut data, mut data_base64) = (None, None);
        if !self.data.is_empty() {
            let json_type = self
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_media_type);
            let text = std::str::from_utf8(&self.data).ok();
            data = match text {
                Some(text) if json_type => {
                    serde_json::value::RawValue::from_string(text.trim().to_owned())
                        .ok()
                        .map(Data::Json)
                }
                Some(text) if !json_type => Some(Data::Text(text)),
                _ => None,
            };
            if data.is_none() {
                data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&self.data));
            }
        }
        let wire = Wire {
            specversion: "1.0",
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time: self.time.as_deref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            tenant: &self.tenant,
            extensions: &self.extensions,
            data,
            data_base64,
        };
        // Strings, a map of strings and checked raw JSON always serialise.
        serde_json::to_string(&wire).unwrap_or_else(|_| self.to_json_value().to_string())
    }
}

/// Checks an extension attribute name: 1 to 20 lowercase letters or digits
/// (CloudEvents 1.0), not one of the attribute names the format reserves.
pub fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(EventError::invalid(
            name,
            "extension attribute names are 1 to 20 lowercase letters or digits",
        ));
    }
    if RESERVED.contains(&name) || name == TENANT_EXTENSION {
        return Err(EventError::invalid(name, "this attribute name is reserved"));
    }
    Ok(())
}

/// The text of a JSON number given as the extension attribute `name`: a
/// CloudEvents `Integer`, within [`INTEGER_RANGE`].
fn integer_text(name: &str, number: &serde_json::Number) -> Result<String, EventError> {
    match number.as_i64() {
        Some(n) if INTEGER_RANGE.contains(&n) => Ok(n.to_string()),
        Some(_) => Err(out_of_range(name, number)),
        // Above i64::MAX.
        None if number.is_u64() => Err(out_of_range(name, number)),
        None => Err(EventError::invalid(
            name,
            format!(
                "{number} is not a whole number: a JSON number is a CloudEvents Integer; send other values as a string"
            ),
        )),
    }
}

fn out_of_range(name: &str, number: &serde_json::Number) -> EventError {
    EventError::invalid(
        name,
        format!(
            "{number} is outside the CloudEvents Integer range {} to {}; send it as a string",
            INTEGER_RANGE.start(),
            INTEGER_RANGE.end()
        ),
    )
}

fn check_text(name: &str, value: &str, non_empty: bool) -> Result<(), EventError> {
    if non_empty && value.is_empty() {
        return Err(EventError::invalid(name, "must not be empty"));
    }
    if value.len() > MAX_ATTRIBUTE_BYTES {
        return Err(EventError::invalid(
            name,
            format!(
                "{} bytes is more than the limit of {MAX_ATTRIBUTE_BYTES}",
                value.len()
            ),
        ));
    }
    // Printable ASCII, the common case, needs no decoding.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(EventError::invalid(
            name,
            format!("contains the control character {c:?}"),
        ));
    }
    Ok(())
}

fn has_uri_scheme(uri: &str) -> bool {
    match uri.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

fn take_string(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, EventError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::invalid(name, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_json_is_the_json_value() {
        let base = Event::from_json_value(serde_json::json!({
            "specversion": "1.0", "id": "e-1", "source": "/pos", "type": "order.placed",
            "subject": "o-1", "time": "2026-11-25T10:00:00Z", "tenant": "acme",
            "dataschema": "https://schemas.example/o", "partitionkey": "o-1",
            "data": { "total": 12, "lines": [1, 2] },
        }))
        .expect("valid");
        let mut text = base.clone();
        text.datacontenttype = Some("text/plain".into());
        text.data = b"hello".to_vec();
        let mut binary = base.clone();
        binary.datacontenttype = Some("application/octet-stream".into());
        binary.data = vec![0xff, 0x00, 0x10];
        let mut bad_json = base.clone();
        bad_json.data = b"{not json".to_vec();
        let mut empty = base.clone();
        empty.data.clear();
        for event in [base, text, binary, bad_json, empty] {
            let direct: Value = serde_json::from_str(&event.to_json_string()).expect("valid JSON");
            assert_eq!(direct, event.to_json_value(), "{event:?}");
            assert_eq!(Event::from_json_value(direct).expect("round trip"), event);
        }
    }

    const STOCK: &str = r#"{"specversion":"1.0","id":"evt-1","source":"/pos/store-12","type":"inventory.stock_changed","subject":"sku-123","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","tenant":"acme-pos","partitionkey":"sku-123","data":{"sku":"sku-123","new_quantity":4}}"#;

    #[test]
    fn parses_a_full_event() {
        let e = Event::from_json(STOCK).expect("valid");
        assert_eq!(e.tenant, "acme-pos");
        assert_eq!(e.ty, "inventory.stock_changed");
        assert_eq!(e.subject.as_deref(), Some("sku-123"));
        assert_eq!(e.data, br#"{"sku":"sku-123","new_quantity":4}"#);
        assert_eq!(
            e.extensions.get("partitionkey").map(String::as_str),
            Some("sku-123")
        );
        assert!(!e.extensions.contains_key("tenant"));
        assert_eq!(e.chain_depth(), 0);
        assert_eq!(e.correlation_id(), "evt-1");
        let back = Event::from_json_value(e.to_json_value()).expect("round trip");
        assert_eq!(back, e);
    }

    #[test]
    fn text_and_binary_payloads() {
        let e = Event::from_json(
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","tenant":"a","datacontenttype":"text/plain","data":"hello"}"#,
        )
        .expect("valid");
        assert_eq!(e.data, b"hello");
        let e = Event::from_json(
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","tenant":"a","data_base64":"AAEC"}"#,
        )
        .expect("valid");
        assert_eq!(e.data, [0, 1, 2]);
        let back = Event::from_json_value(e.to_json_value()).expect("round trip");
        assert_eq!(back.data, [0, 1, 2]);
    }

    fn error_of(json: &str) -> String {
        Event::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_attribute() {
        assert!(error_of("{").contains("JSON"));
        assert!(error_of("[1]").contains("object"));
        assert!(error_of(r#"{"id":"1"}"#).contains("specversion"));
        assert!(error_of(r#"{"specversion":"0.3","id":"1"}"#).contains("0.3"));
        let base = r#""specversion":"1.0","source":"s","type":"t","tenant":"a""#;
        assert!(error_of(&format!("{{{base}}}")).contains("'id'"));
        assert!(error_of(&format!(r#"{{{base},"id":""}}"#)).contains("'id'"));
        assert!(error_of(&format!(r#"{{{base},"id":7}}"#)).contains("'id'"));
        assert!(error_of(&format!(r#"{{{base},"id":"1","time":"yesterday"}}"#)).contains("'time'"));
        assert!(
            error_of(&format!(r#"{{{base},"id":"1","dataschema":"/relative"}}"#))
                .contains("'dataschema'")
        );
        assert!(error_of(&format!(r#"{{{base},"id":"1","Bad-Name":"x"}}"#)).contains("Bad-Name"));
        assert!(error_of(&format!(r#"{{{base},"id":"1","ext":{{"a":1}}}}"#)).contains("'ext'"));
        assert!(error_of(&format!(r#"{{{base},"id":"a\u0007b"}}"#)).contains("control"));
        assert!(
            error_of(&format!(
                r#"{{{base},"id":"1","data":1,"data_base64":"AA=="}}"#
            ))
            .contains("data_base64")
        );
        assert!(error_of(&format!(r#"{{{base},"id":"1","data_base64":"!!"}}"#)).contains("base64"));
        assert!(
            error_of(&format!(r#"{{{base},"id":"1","chaindepth":"x"}}"#)).contains("chaindepth")
        );
        assert!(
            error_of(r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#)
                .contains("tenant")
        );
        assert!(
            error_of(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","tenant":"../x"}"#)
                .contains("tenant")
        );
    }

    #[test]
    fn integer_extensions_are_32_bit() {
        let base = r#""specversion":"1.0","id":"1","source":"s","type":"t","tenant":"a""#;
        for (value, text) in [
            ("2147483647", "2147483647"),
            ("-2147483648", "-2147483648"),
            ("0", "0"),
            // A string is a String: kept as it is, whatever its digits.
            (r#""2147483648""#, "2147483648"),
        ] {
            let json = format!(r#"{{{base},"count":{value}}}"#);
            for event in [
                Event::from_json(&json),
                Event::from_json_value(serde_json::from_str(&json).expect("JSON")),
            ] {
                let event = event.unwrap_or_else(|e| panic!("{value}: {e}"));
                assert_eq!(
                    event.extensions.get("count").map(String::as_str),
                    Some(text)
                );
            }
        }
        for value in [
            "2147483648",
            "-2147483649",
            "18446744073709551616",
            "1.5",
            "1e3",
        ] {
            let json = format!(r#"{{{base},"count":{value}}}"#);
            for error in [
                Event::from_json(&json).expect_err(value),
                Event::from_json_value(serde_json::from_str(&json).expect("JSON"))
                    .expect_err(value),
            ] {
                assert!(
                    matches!(&error, EventError::Invalid { name, .. } if name == "count"),
                    "{value}: {error}"
                );
            }
        }
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/cloudevents+json"));
        assert!(!is_json_media_type("text/plain"));
    }
}
