//! The CloudEvents 1.0 envelope as the host sees it, its formats (JSON, and
//! the HTTP binding's binary, structured and batch modes), and the
//! validation every event passes before it is routed.
//!
//! Every format decodes into one [`Draft`], and one function,
//! [`Draft::into_event`], checks it: an event is refused or accepted the
//! same way whichever way it came in.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

mod http;
mod json;

pub use self::http::{BatchError, JsonBatch};

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

/// A CloudEvents 1.0 event that belongs to one tenant, valid by
/// construction: the only ways to one are the formats' parsers
/// ([`Event::from_json`], [`Event::from_json_value`],
/// [`Event::from_structured`], [`JsonBatch::events`],
/// [`Event::from_binary`]) and [`Event::builder`], which all end in the
/// same checks. Its attributes are read through methods named like them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Vec<u8>,
    /// By name; the tenant is not among them.
    extensions: BTreeMap<String, String>,
    tenant: String,
}

/// Why an event was refused. Each variant about an attribute names it,
/// and says where it was given ([`Origin`]): the message names what the
/// sender wrote, the header in HTTP binary mode, the member in JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The input is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The JSON value is not an object.
    #[error("a CloudEvent in JSON format must be an object")]
    NotAnObject,
    /// A required attribute is missing.
    #[error("required {} is missing", Field(.origin, .name))]
    Missing {
        /// The attribute.
        name: &'static str,
        /// Where it should have been given.
        origin: Origin,
    },
    /// `specversion` is not `1.0`.
    #[error("{} is {value:?}; only \"1.0\" is supported", Field(.origin, "specversion"))]
    SpecVersion {
        /// The version given.
        value: String,
        /// Where it was given.
        origin: Origin,
    },
    /// An attribute has an invalid value.
    #[error("{}: {reason}", Field(.origin, .name))]
    Invalid {
        /// The attribute.
        name: String,
        /// What is wrong with it.
        reason: String,
        /// Where it was given.
        origin: Origin,
    },
}

/// Where an attribute was given: what an error names, so that the sender
/// finds what they sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Set by name, through an [`EventBuilder`] (an event a program makes).
    Attribute,
    /// The member of this name of an event in JSON format
    /// ([`Event::from_json`], HTTP structured and batch modes). It is the
    /// attribute's own name, except for the payload, which is `data` or
    /// `data_base64` as sent.
    Member(String),
    /// The HTTP header of this (lower-case) name, in binary mode: `ce-`
    /// and the attribute's name, `content-type` for `datacontenttype`, and
    /// `ce-*` for the extension attributes together (their count).
    Header(String),
    /// The body of a binary-mode HTTP request, which is the data.
    Body,
}

/// An attribute as its [`Origin`] names it in a message.
struct Field<'a>(&'a Origin, &'a str);

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Origin::Attribute => write!(f, "attribute '{}'", self.1),
            // In JSON each attribute is the member of the same name.
            Origin::Member(member) => write!(f, "attribute '{member}'"),
            Origin::Header(header) => write!(f, "header '{header}'"),
            Origin::Body => f.write_str("the body"),
        }
    }
}

impl EventError {
    /// An invalid attribute, given by name; [`EventError::at`] says where.
    fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            reason: reason.into(),
            origin: Origin::Attribute,
        }
    }

    /// A missing attribute, to be given at `origin`.
    fn missing(name: &'static str, origin: Origin) -> Self {
        Self::Missing { name, origin }
    }

    /// The same refusal, of an attribute given at `origin`.
    fn at(self, at: Origin) -> Self {
        match self {
            Self::Missing { name, .. } => Self::Missing { name, origin: at },
            Self::SpecVersion { value, .. } => Self::SpecVersion { value, origin: at },
            Self::Invalid { name, reason, .. } => Self::Invalid {
                name,
                reason,
                origin: at,
            },
            other @ (Self::Json(_) | Self::NotAnObject) => other,
        }
    }

    /// The CloudEvents attribute at fault, if the refusal is about one.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            Self::Missing { name, .. } => Some(name),
            Self::SpecVersion { .. } => Some("specversion"),
            Self::Invalid { name, .. } => Some(name),
            Self::Json(_) | Self::NotAnObject => None,
        }
    }

    /// Where the attribute at fault was given, if the refusal is about one.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Self::Missing { origin, .. }
            | Self::SpecVersion { origin, .. }
            | Self::Invalid { origin, .. } => Some(origin),
            Self::Json(_) | Self::NotAnObject => None,
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
    /// Identifies the event; unique per `source`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Identifies the context the event happened in (a URI-reference).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The kind of event, such as `inventory.stock_changed`.
    pub fn ty(&self) -> &str {
        &self.ty
    }

    /// The subject within the source, such as a SKU or an order id.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// When the event happened, as an RFC 3339 timestamp.
    pub fn time(&self) -> Option<&str> {
        self.time.as_deref()
    }

    /// The media type of `data`.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// An absolute URI of the schema `data` adheres to.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }

    /// The payload; empty when there is none.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Extension attributes, by name. The tenant is not among them.
    pub fn extensions(&self) -> &BTreeMap<String, String> {
        &self.extensions
    }

    /// The tenant that owns the event.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// A builder for an event the host or a program makes itself (emitted
    /// events, the CLI, benchmarks, tests): the required attributes here,
    /// the rest through the builder; [`EventBuilder::build`] checks it as
    /// the parsers do.
    pub fn builder(
        tenant: impl Into<String>,
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> EventBuilder {
        EventBuilder {
            draft: Draft {
                tenant: Some(tenant.into()),
                id: Some(id.into()),
                source: Some(source.into()),
                ty: Some(ty.into()),
                ..Draft::default()
            },
        }
    }

    /// A builder that starts from this event's attributes: to make a
    /// changed copy, which is checked again.
    pub fn to_builder(&self) -> EventBuilder {
        EventBuilder {
            draft: Draft {
                format: Format::Builder,
                id: Some(self.id.clone()),
                source: Some(self.source.clone()),
                ty: Some(self.ty.clone()),
                subject: self.subject.clone(),
                time: self.time.clone(),
                datacontenttype: self.datacontenttype.clone(),
                dataschema: self.dataschema.clone(),
                tenant: Some(self.tenant.clone()),
                data: self.data.clone(),
                extensions: self.extensions.clone(),
            },
        }
    }

    /// Sets the host's own `chainbudget` extension: a whole number, valid
    /// whatever it is. For events built with one (the emit path sets it
    /// before the event is checked), so that it was counted among their
    /// extensions then.
    pub fn set_chain_budget(&mut self, budget: usize) {
        self.extensions
            .insert(BUDGET_EXTENSION.to_owned(), budget.to_string());
    }
}

/// The attributes of an event being made, checked by
/// [`EventBuilder::build`] exactly as the parsers check theirs.
#[derive(Debug)]
#[must_use = "an event builder does nothing until it is built"]
pub struct EventBuilder {
    draft: Draft,
}

impl EventBuilder {
    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.draft.tenant = Some(tenant.into());
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.draft.id = Some(id.into());
        self
    }

    /// Sets the source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.draft.source = Some(source.into());
        self
    }

    /// Sets the type.
    pub fn ty(mut self, ty: impl Into<String>) -> Self {
        self.draft.ty = Some(ty.into());
        self
    }

    /// Sets (or, with `None`, unsets) the subject.
    pub fn subject(mut self, subject: impl Into<Option<String>>) -> Self {
        self.draft.subject = subject.into();
        self
    }

    /// Sets (or unsets) the time, an RFC 3339 timestamp.
    pub fn time(mut self, time: impl Into<Option<String>>) -> Self {
        self.draft.time = time.into();
        self
    }

    /// Sets (or unsets) the media type of the data.
    pub fn datacontenttype(mut self, datacontenttype: impl Into<Option<String>>) -> Self {
        self.draft.datacontenttype = datacontenttype.into();
        self
    }

    /// Sets (or unsets) the schema of the data, an absolute URI.
    pub fn dataschema(mut self, dataschema: impl Into<Option<String>>) -> Self {
        self.draft.dataschema = dataschema.into();
        self
    }

    /// Sets the payload.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.draft.data = data.into();
        self
    }

    /// Sets one extension attribute.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.draft.extensions.insert(name.into(), value.into());
        self
    }

    /// Sets the extension attributes, replacing any set before.
    pub fn extensions(mut self, extensions: BTreeMap<String, String>) -> Self {
        self.draft.extensions = extensions;
        self
    }

    /// The event, if it passes the checks every event passes.
    pub fn build(self) -> Result<Event, EventError> {
        self.draft.into_event(TenantOf::Attribute)
    }
}

/// Where the tenant of an event being parsed comes from.
#[derive(Debug, Clone, Copy)]
enum TenantOf<'a> {
    /// The `tenant` extension attribute names it, and is required.
    Attribute,
    /// The caller knows it (HTTP ingest: the bearer token's tenant). The
    /// attribute may be left out; given, it must name the same tenant.
    Given(&'a str),
}

/// An event's attributes as one format delivered them, before the checks
/// that every event passes. Each format's decoder fills one in (JSON in
/// [`Event::from_json`], HTTP binary mode in [`Event::from_binary`]) and
/// [`Draft::into_event`] is the one way from there to an [`Event`].
#[derive(Debug, Default)]
struct Draft {
    /// Where its attributes were given, for the messages.
    format: Format,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    tenant: Option<String>,
    data: Vec<u8>,
    extensions: BTreeMap<String, String>,
}

/// The format a [`Draft`] was given in: where each of its attributes came
/// from, so that a refusal names what the sender wrote.
#[derive(Debug, Default, Clone, Copy)]
enum Format {
    /// An [`EventBuilder`]: attributes by name.
    #[default]
    Builder,
    /// An event in JSON format, whose payload was the member `payload`
    /// (`data` or `data_base64`).
    Json { payload: &'static str },
    /// HTTP binary mode: `ce-` headers, `Content-Type` and the body.
    Binary,
}

/// A part of a [`Draft`] a check can refuse.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    /// A context attribute (`id`, `time`, ...) or the tenant.
    Attribute(&'a str),
    /// An extension attribute.
    Extension(&'a str),
    /// The payload.
    Data,
    /// The extension attributes together (their count).
    Extensions,
}

impl Format {
    /// Where `slot` was given in this format.
    fn origin(self, slot: Slot<'_>) -> Origin {
        match (self, slot) {
            (Self::Builder, _) | (Self::Json { .. }, Slot::Extensions) => Origin::Attribute,
            (Self::Json { payload }, Slot::Data) => Origin::Member(payload.to_owned()),
            (Self::Json { .. }, Slot::Attribute(name) | Slot::Extension(name)) => {
                Origin::Member(name.to_owned())
            }
            (Self::Binary, Slot::Attribute("datacontenttype")) => {
                Origin::Header("content-type".to_owned())
            }
            (Self::Binary, Slot::Attribute(name) | Slot::Extension(name)) => {
                Origin::Header(format!("{}{name}", http::HEADER_PREFIX))
            }
            (Self::Binary, Slot::Data) => Origin::Body,
            (Self::Binary, Slot::Extensions) => Origin::Header(format!("{}*", http::HEADER_PREFIX)),
        }
    }
}

impl Draft {
    /// The event, once it has the required attributes and the tenant and
    /// passes [`Event::validate`]; a refusal names the attribute where the
    /// draft's format gave it.
    fn into_event(self, tenant: TenantOf<'_>) -> Result<Event, EventError> {
        let format = self.format;
        let missing = |name| EventError::missing(name, format.origin(Slot::Attribute(name)));
        let tenant = match (tenant, self.tenant) {
            (TenantOf::Attribute, named) => named.ok_or_else(|| missing(TENANT_EXTENSION))?,
            (TenantOf::Given(given), None) => given.to_owned(),
            (TenantOf::Given(given), Some(named)) if named == given => named,
            (TenantOf::Given(_), Some(_)) => {
                return Err(EventError::invalid(
                    TENANT_EXTENSION,
                    "the tenant comes from the bearer token; this event names another",
                )
                .at(format.origin(Slot::Attribute(TENANT_EXTENSION))));
            }
        };
        let event = Event {
            id: self.id.ok_or_else(|| missing("id"))?,
            source: self.source.ok_or_else(|| missing("source"))?,
            ty: self.ty.ok_or_else(|| missing("type"))?,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data: self.data,
            extensions: self.extensions,
            tenant,
        };
        event.validate(format)?;
        Ok(event)
    }
}

/// Checks `specversion`, which every format decodes first (the version
/// decides what the other attributes mean), given at `origin`.
fn check_specversion(specversion: Option<String>, origin: Origin) -> Result<(), EventError> {
    match specversion {
        None => Err(EventError::missing("specversion", origin)),
        Some(v) if v == "1.0" => Ok(()),
        Some(value) => Err(EventError::SpecVersion { value, origin }),
    }
}

impl Event {
    /// Parses one event in the JSON event format of CloudEvents 1.0. The
    /// tenant is taken from the `tenant` extension attribute, which is
    /// required.
    ///
    /// This is the one JSON parser: [`Event::from_json_value`] and the HTTP
    /// structured and batch modes go through it too. The rules, from the
    /// CloudEvents JSON format:
    /// - a member whose value is `null` is unset, except `data`: `"data":
    ///   null` is a present (null) payload, which the host stores as no
    ///   payload, and which cannot go with a `data_base64`;
    /// - `data` and a non-null `data_base64` together are refused;
    /// - `data` with a JSON media type (or none) is kept as its JSON text,
    ///   as written; a string with any other media type is its text;
    /// - a member given twice is refused, naming it: the document would
    ///   mean different events to different readers;
    /// - members other than the CloudEvents attributes and `tenant` are
    ///   extension attributes: strings, 32-bit integers, booleans.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        json::parse(text, TenantOf::Attribute)
    }

    /// Like [`Event::from_json`], from an already parsed JSON value: the
    /// value's JSON text goes through the same parser.
    pub fn from_json_value(value: Value) -> Result<Self, EventError> {
        Self::from_json(&value.to_string())
    }

    /// Checks the event against CloudEvents 1.0 and the host's limits (in
    /// [`Draft::into_event`], the one way to an event):
    /// non-empty `id`, `source` and `type`, a valid tenant name, an RFC 3339
    /// `time`, an absolute `dataschema`, extension names of lowercase letters
    /// and digits, no control characters, and bounded sizes.
    fn validate(&self, format: Format) -> Result<(), EventError> {
        self.check()
            .map_err(|(slot, error)| error.at(format.origin(slot)))
    }

    /// The checks of [`Event::validate`]; a refusal says the part of the
    /// event at fault, which the format turns into where it was given.
    fn check(&self) -> Result<(), (Slot<'_>, EventError)> {
        let attribute = |name| move |e| (Slot::Attribute(name), e);
        crate::manifest::validate_name(&self.tenant)
            .map_err(|e| EventError::invalid(TENANT_EXTENSION, e.to_string()))
            .map_err(attribute(TENANT_EXTENSION))?;
        check_text("id", &self.id, true).map_err(attribute("id"))?;
        check_text("source", &self.source, true).map_err(attribute("source"))?;
        check_text("type", &self.ty, true).map_err(attribute("type"))?;
        if let Some(subject) = &self.subject {
            check_text("subject", subject, true).map_err(attribute("subject"))?;
        }
        if let Some(time) = &self.time {
            check_text("time", time, true).map_err(attribute("time"))?;
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .map_err(|e| EventError::invalid("time", format!("not an RFC 3339 timestamp: {e}")))
                .map_err(attribute("time"))?;
        }
        if let Some(ct) = &self.datacontenttype {
            check_text("datacontenttype", ct, true).map_err(attribute("datacontenttype"))?;
        }
        if let Some(schema) = &self.dataschema {
            check_text("dataschema", schema, true).map_err(attribute("dataschema"))?;
            if !has_uri_scheme(schema) {
                return Err(attribute("dataschema")(EventError::invalid(
                    "dataschema",
                    "must be an absolute URI, with a scheme such as https:",
                )));
            }
        }
        if self.data.len() > MAX_DATA_BYTES {
            return Err((
                Slot::Data,
                EventError::invalid(
                    "data",
                    format!(
                        "{} bytes is more than the limit of {MAX_DATA_BYTES}",
                        self.data.len()
                    ),
                ),
            ));
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            return Err((
                Slot::Extensions,
                EventError::invalid(
                    "extensions",
                    format!(
                        "{} extension attributes is more than the limit of {MAX_EXTENSIONS}",
                        self.extensions.len()
                    ),
                ),
            ));
        }
        for (name, value) in &self.extensions {
            check_extension_name(name)
                .and_then(|()| check_text(name, value, false))
                .map_err(|e| (Slot::Extension(name), e))?;
        }
        if let Some(depth) = self.extensions.get(DEPTH_EXTENSION) {
            depth.parse::<u32>().map_err(|_| {
                (
                    Slot::Extension(DEPTH_EXTENSION),
                    EventError::invalid(
                        DEPTH_EXTENSION,
                        format!("{depth:?} is not a whole number"),
                    ),
                )
            })?;
        }
        if let Some(budget) = self.extensions.get(BUDGET_EXTENSION) {
            budget.parse::<u64>().map_err(|_| {
                (
                    Slot::Extension(BUDGET_EXTENSION),
                    EventError::invalid(
                        BUDGET_EXTENSION,
                        format!("{budget:?} is not a whole number"),
                    ),
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

    /// The tenant every document below names, and the one the HTTP modes
    /// are given (the bearer token's).
    const TENANT: &str = "acme";

    /// One document through every JSON entry point: text, parsed value
    /// (when the document has no member twice, which a value cannot hold),
    /// HTTP structured mode and a one-event HTTP batch.
    fn every_json_entry(doc: &str) -> Vec<(&'static str, Result<Event, EventError>)> {
        let mut results = vec![("from_json", Event::from_json(doc))];
        // A value cannot hold a member twice: only the documents that are
        // their value's own text go through it.
        if let Ok(value) = serde_json::from_str::<Value>(doc)
            && serde_json::to_string(&value).ok().as_deref() == Some(doc)
        {
            results.push(("from_json_value", Event::from_json_value(value)));
        }
        results.push(("structured", Event::from_structured(doc.as_bytes(), TENANT)));
        let batch = format!("[{doc}]");
        let split = JsonBatch::split(batch.as_bytes()).expect("a batch");
        let mut events: Vec<_> = split.events(TENANT).collect();
        assert_eq!(events.len(), 1);
        results.push(("batch", events.remove(0)));
        results
    }

    /// The result every entry point agrees on.
    /// [`every_json_entry`] for text that may not be JSON at all: the
    /// entry points that take text (a batch only when its text is one).
    fn every_json_entry_of_text(text: &str) -> Vec<(&'static str, Result<Event, EventError>)> {
        vec![
            ("from_json", Event::from_json(text)),
            (
                "structured",
                Event::from_structured(text.as_bytes(), TENANT),
            ),
        ]
    }

    fn agreed(doc: &str) -> Result<Event, EventError> {
        let mut results = every_json_entry(doc).into_iter();
        let (_, first) = results.next().expect("from_json");
        for (entry, result) in results {
            assert_eq!(result, first, "{entry} disagrees with from_json on {doc}");
        }
        first
    }

    fn doc(members: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e-1","source":"/pos","type":"t","tenant":"{TENANT}"{members}}}"#
        )
    }

    fn refused_for(result: Result<Event, EventError>) -> String {
        match result {
            Ok(event) => panic!("accepted: {event:?}"),
            Err(EventError::Invalid { name, .. }) => name,
            Err(EventError::Missing { name, .. }) => name.to_owned(),
            Err(EventError::SpecVersion { .. }) => "specversion".to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_entry_point_gives_the_same_event() {
        let cases: &[(&str, &[u8])] = &[
            (
                r#","data":{"a":1,"b":[true,null]}"#,
                br#"{"a":1,"b":[true,null]}"#,
            ),
            (r#","data":"hi""#, br#""hi""#),
            (r#","datacontenttype":"text/plain","data":"hi""#, b"hi"),
            (
                r#","datacontenttype":"text/plain","data":{"a":1}"#,
                br#"{"a":1}"#,
            ),
            (r#","data_base64":"AAEC""#, &[0, 1, 2]),
            (r#","data_base64":"""#, b""),
            // null is unset (CloudEvents JSON format 2.2)...
            (r#","data_base64":null"#, b""),
            (r#","data":{"a":1},"data_base64":null"#, br#"{"a":1}"#),
            // ...and `data: null` a null payload, stored as none.
            (r#","data":null"#, b""),
            (r#","data":null,"data_base64":null"#, b""),
            ("", b""),
        ];
        for &(members, data) in cases {
            let doc = doc(members);
            let event = agreed(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(event.data, data, "{doc}");
        }
    }

    #[test]
    fn every_entry_point_keeps_attributes_and_extensions_alike() {
        let event = agreed(&doc(
            r#","subject":null,"time":"2026-11-25T10:00:00Z","partitionkey":"k","count":-7,"flag":false,"unset":null,"dataschema":"https://s.example/o""#,
        ))
        .expect("valid");
        assert_eq!(event.subject, None);
        assert_eq!(event.time.as_deref(), Some("2026-11-25T10:00:00Z"));
        let extensions: Vec<(&str, &str)> = event
            .extensions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            extensions,
            [("count", "-7"), ("flag", "false"), ("partitionkey", "k")]
        );
    }

    #[test]
    fn every_entry_point_refuses_alike_naming_the_attribute() {
        for (members, attribute) in [
            (r#","data":1,"data_base64":"AA==""#, "data_base64"),
            // The issue's case: a null payload and a binary one.
            (r#","data_base64":"AAEC","data":null"#, "data_base64"),
            (r#","data_base64":5"#, "data_base64"),
            (r#","data_base64":"!!""#, "data_base64"),
            (r#","subject":7"#, "subject"),
            (r#","subject":"""#, "subject"),
            (r#","time":"yesterday""#, "time"),
            (r#","dataschema":"/relative""#, "dataschema"),
            (r#","Upper":"x""#, "Upper"),
            (r#","ext":{"a":1}"#, "ext"),
            (r#","ext":[1]"#, "ext"),
            (r#","ext":1.5"#, "ext"),
            (r#","ext":2147483648"#, "ext"),
            (r#","chaindepth":"x""#, "chaindepth"),
            (r#","chaindepth":-1"#, "chaindepth"),
            (r#","datacontenttype":5"#, "datacontenttype"),
        ] {
            let doc = doc(members);
            assert_eq!(refused_for(agreed(&doc)), attribute, "{doc}");
        }
        for (doc, attribute) in [
            (
                r#"{"id":"1","source":"s","type":"t","tenant":"acme"}"#,
                "specversion",
            ),
            (
                r#"{"specversion":null,"id":"1","source":"s","type":"t","tenant":"acme"}"#,
                "specversion",
            ),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t","tenant":"acme"}"#,
                "specversion",
            ),
            (
                r#"{"specversion":1.0,"id":"1","source":"s","type":"t","tenant":"acme"}"#,
                "specversion",
            ),
            (
                r#"{"specversion":"1.0","source":"s","type":"t","tenant":"acme"}"#,
                "id",
            ),
            (
                r#"{"specversion":"1.0","id":null,"source":"s","type":"t","tenant":"acme"}"#,
                "id",
            ),
            (
                r#"{"specversion":"1.0","id":"1","type":"t","tenant":"acme"}"#,
                "source",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","tenant":"acme"}"#,
                "type",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","tenant":7}"#,
                "tenant",
            ),
        ] {
            assert_eq!(refused_for(agreed(doc)), attribute, "{doc}");
        }
        for doc in ["[1]", "7", "\"event\"", "null"] {
            for (entry, result) in every_json_entry(doc) {
                assert_eq!(result, Err(EventError::NotAnObject), "{entry}: {doc}");
            }
        }
    }

    /// A member given twice would mean different events to readers that
    /// keep the first and readers that keep the last: refused, by name.
    #[test]
    fn a_member_given_twice_is_refused_by_every_entry_point() {
        for (doc, attribute) in [
            (doc(r#","id":"e-2""#), "id"),
            (doc(r#","tenant":"other""#), "tenant"),
            (doc(r#","specversion":"0.3""#), "specversion"),
            (doc(r#","k":"1","k":"2""#), "k"),
            (doc(r#","data":1,"data":2"#), "data"),
        ] {
            assert_eq!(refused_for(agreed(&doc)), attribute, "{doc}");
        }
        // Inside the payload, JSON is the plugin's business: kept as is.
        let event = agreed(&doc(r#","data":{"a":1,"a":2}"#)).expect("valid");
        assert_eq!(event.data, br#"{"a":1,"a":2}"#);
    }

    /// The members are checked in a fixed order whatever order they come
    /// in: a repeated name first (the one repeated earliest in the text),
    /// an escaped name is the name it decodes to, and a member that is
    /// neither a known attribute nor a valid extension is named.
    #[test]
    fn json_members_are_checked_in_a_fixed_order() {
        // Two names repeated: the one whose second appearance comes first.
        let two = doc(r#","b":"1","a":"1","a":"2","b":"2""#);
        assert_eq!(refused_for(agreed(&two)), "a");
        let two = doc(r#","b":"1","a":"1","b":"2","a":"2""#);
        assert_eq!(refused_for(agreed(&two)), "b");
        // A repeat is refused before a wrong type elsewhere.
        let both = doc(r#","subject":7,"k":"1","k":"2""#);
        assert_eq!(refused_for(agreed(&both)), "k");
        // An escaped name is its decoded name: "i\u0064" is "id", given twice.
        let escaped = doc(r#","i\u0064":"e-2""#);
        assert_eq!(refused_for(agreed(&escaped)), "id");
        // Extensions are refused by name order, not text order.
        let bad = doc(r#","zz":[1],"aa":{"x":1}"#);
        assert_eq!(refused_for(agreed(&bad)), "aa");
        // Context attributes before extensions, whatever the text order.
        let bad = doc(r#","aa":[1],"subject":7"#);
        assert_eq!(refused_for(agreed(&bad)), "subject");
        // Truncated, or not JSON at all.
        for text in [r#"{"specversion":"1.0","id":"#, "{", "", "{\"a\"}"] {
            for (entry, result) in every_json_entry_of_text(text) {
                assert!(
                    matches!(result, Err(EventError::Json(_))),
                    "{entry}: {text}: {result:?}"
                );
            }
        }
        // Not UTF-8.
        assert!(matches!(
            Event::from_structured(b"{\"id\":\"\xff\"}", TENANT),
            Err(EventError::Json(_))
        ));
    }

    /// A hostile object with a great many members, or a great many
    /// repeats, is refused by name (in O(n log n)), not accepted.
    #[test]
    fn an_object_with_many_members_is_refused() {
        let many: String = (0..20_000).map(|i| format!(r#","x{i}":"v""#)).collect();
        assert!(matches!(
            agreed(&doc(&many)),
            Err(EventError::Invalid { .. })
        ));
        let repeats: String = (0..20_000).map(|_| r#","x":"v""#).collect();
        assert_eq!(refused_for(agreed(&doc(&repeats))), "x");
    }

    /// The JSON format takes the tenant from its attribute; HTTP from the
    /// token, and the attribute may be left out but not name another.
    #[test]
    fn the_tenant_comes_from_the_attribute_or_the_token() {
        let without = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        let null = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","tenant":null}"#;
        for doc in [without, null] {
            assert_eq!(
                Event::from_json(doc),
                Err(EventError::Missing {
                    name: "tenant",
                    origin: Origin::Member("tenant".to_owned())
                })
            );
            let given = Event::from_structured(doc.as_bytes(), TENANT).expect("the token's");
            assert_eq!(given.tenant, TENANT);
            let mut named: Value = serde_json::from_str(doc).expect("JSON");
            named[TENANT_EXTENSION] = TENANT.into();
            assert_eq!(Event::from_json_value(named), Ok(given));
        }
        let other = doc("").replace(TENANT, "globex");
        assert_eq!(
            refused_for(Event::from_structured(other.as_bytes(), TENANT)),
            "tenant"
        );
        assert!(Event::from_json(&other).is_ok());
    }

    #[test]
    fn a_batch_is_an_array() {
        assert_eq!(
            JsonBatch::split(b"{}").map(|b| b.len()),
            Err(BatchError::NotAnArray)
        );
        assert!(matches!(JsonBatch::split(b"[{"), Err(BatchError::Json(_))));
        let batch = format!("[{},7]", doc(""));
        let split = JsonBatch::split(batch.as_bytes()).expect("an array");
        assert_eq!(split.len(), 2);
        let events: Vec<_> = split.events(TENANT).collect();
        assert!(events[0].is_ok());
        assert_eq!(events[1], Err(EventError::NotAnObject));
        assert!(JsonBatch::split(b"[]").expect("empty").is_empty());
    }

    fn binary(
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Result<Event, EventError> {
        Event::from_binary(
            TENANT,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            content_type,
            body.to_vec(),
        )
    }

    const HEADERS: &[(&str, &str)] = &[
        ("ce-specversion", "1.0"),
        ("ce-id", "e-1"),
        ("ce-source", "/pos"),
        ("ce-type", "t"),
        ("content-length", "5"),
    ];

    /// Binary mode decodes into the same draft and passes the same checks
    /// as the JSON format: the same event, the same refusals.
    #[test]
    fn binary_mode_is_the_json_event() {
        fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
            let mut headers = HEADERS.to_vec();
            headers.extend_from_slice(extra);
            headers
        }
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [u8], &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[],
                "text/plain",
                &b"hello"[..],
                r#","datacontenttype":"text/plain","data":"hello""#,
            ),
            (&[], "", b"", ""),
            (
                &[("Ce-Subject", "caf%C3%A9"), ("ce-count", "12")],
                "application/octet-stream",
                &[0, 1, 2],
                r#","subject":"café","count":"12","datacontenttype":"application/octet-stream","data_base64":"AAEC""#,
            ),
            (
                &[("ce-tenant", TENANT)],
                "application/json",
                br#"{"a":1}"#,
                r#","datacontenttype":"application/json","data":{"a":1}"#,
            ),
        ];
        for &(extra, content_type, body, members) in cases {
            let json = doc(members);
            assert_eq!(
                binary(&with(extra), content_type, body),
                agreed(&json),
                "{json}"
            );
        }
        let refusals: &[(&[(&str, &str)], &str)] = &[
            (&[("ce-time", "yesterday")], "time"),
            (&[("ce-chaindepth", "x")], "chaindepth"),
            (&[("ce-subject", "")], "subject"),
            (&[("ce-tenant", "globex")], "tenant"),
            (&[("ce-Bad_Name", "x")], "bad_name"),
            (&[("ce-datacontenttype", "text/plain")], "datacontenttype"),
            (&[("ce-data", "x")], "data"),
            (&[("ce-data_base64", "AAEC")], "data_base64"),
            (&[("ce-id", "e-2")], "id"),
            (&[("ce-subject", "caf%FF")], "subject"),
            (&[("ce-subject", "caf\u{e9}")], "subject"),
        ];
        for &(extra, attribute) in refusals {
            assert_eq!(
                refused_for(binary(&with(extra), "", b"")),
                attribute,
                "{extra:?}"
            );
        }
        assert_eq!(
            binary(&HEADERS[1..], "", b""),
            Err(EventError::Missing {
                name: "specversion",
                origin: Origin::Header("ce-specversion".to_owned())
            })
        );
    }

    /// Where a refused attribute was given and what the message calls it.
    fn refusal(result: Result<Event, EventError>) -> (Origin, String) {
        let error = result.expect_err("refused");
        let origin = error.origin().cloned().expect("about an attribute");
        (origin, error.to_string())
    }

    /// Binary mode names the header that was sent (or not), whichever
    /// check refuses it: the decoding of the headers or the one check.
    #[test]
    fn binary_mode_refusals_name_the_header() {
        let without = |name: &str| -> Vec<(&str, &str)> {
            HEADERS
                .iter()
                .copied()
                .filter(|(n, _)| *n != name)
                .collect()
        };
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut headers = HEADERS.to_vec();
            headers.extend_from_slice(extra);
            headers
        };
        let header = |name: &str| Origin::Header(name.to_owned());
        let (origin, message) = refusal(binary(&without("ce-id"), "", b""));
        assert_eq!(origin, header("ce-id"));
        assert_eq!(message, "required header 'ce-id' is missing");
        for (name, attribute) in [("ce-source", "source"), ("ce-type", "type")] {
            let error = binary(&without(name), "", b"").expect_err(name);
            assert_eq!(error.attribute(), Some(attribute));
            assert_eq!(error.origin(), Some(&header(name)));
            assert!(error.to_string().contains(&format!("header '{name}'")));
        }
        let long_type = "text/".repeat(MAX_ATTRIBUTE_BYTES);
        let too_much = vec![b'x'; MAX_DATA_BYTES + 1];
        let extensions: Vec<(String, String)> = (0..=MAX_EXTENSIONS)
            .map(|i| (format!("ce-x{i}"), "v".to_owned()))
            .collect();
        let mut many = HEADERS.to_vec();
        many.extend(extensions.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        for (result, origin, text) in [
            (
                binary(&with(&[("ce-time", "yesterday")]), "", b""),
                header("ce-time"),
                "header 'ce-time': not an RFC 3339 timestamp",
            ),
            (
                binary(&with(&[("Ce-Subject", "")]), "", b""),
                header("ce-subject"),
                "header 'ce-subject': must not be empty",
            ),
            (
                binary(&with(&[("ce-subject", "caf%FF")]), "", b""),
                header("ce-subject"),
                "header 'ce-subject': the percent-decoded",
            ),
            (
                binary(&with(&[("CE-ID", "e-2")]), "", b""),
                header("ce-id"),
                "header 'ce-id': is given twice",
            ),
            (
                binary(&with(&[("ce-tenant", "globex")]), "", b""),
                header("ce-tenant"),
                "header 'ce-tenant': the tenant comes from the bearer token",
            ),
            (
                binary(&with(&[("ce-data", "x")]), "", b""),
                header("ce-data"),
                "header 'ce-data': this attribute name is reserved",
            ),
            (
                binary(&with(&[("ce-Datacontenttype", "text/plain")]), "", b""),
                header("ce-datacontenttype"),
                "header 'ce-datacontenttype': in binary mode",
            ),
            (
                binary(&with(&[("ce-chaindepth", "x")]), "", b""),
                header("ce-chaindepth"),
                "header 'ce-chaindepth': \"x\" is not a whole number",
            ),
            (
                binary(HEADERS, &long_type, b""),
                header("content-type"),
                "header 'content-type': ",
            ),
            (binary(HEADERS, "", &too_much), Origin::Body, "the body: "),
            (binary(&many, "", b""), header("ce-*"), "header 'ce-*': "),
            (
                binary(&with(&[("ce-specversion", "0.3")]), "", b""),
                header("ce-specversion"),
                "header 'ce-specversion': is given twice",
            ),
        ] {
            let (got, message) = refusal(result);
            assert_eq!(got, origin, "{message}");
            assert!(
                message.starts_with(text),
                "{message:?} starts with {text:?}"
            );
        }
        let mut old = HEADERS.to_vec();
        old[0] = ("ce-specversion", "0.3");
        assert_eq!(
            refusal(binary(&old, "", b"")).1,
            "header 'ce-specversion' is \"0.3\"; only \"1.0\" is supported"
        );
    }

    /// Structured and batch mode (and the JSON format) name the member
    /// that was sent; the builder names the attribute.
    #[test]
    fn json_refusals_name_the_member() {
        let member = |name: &str| Origin::Member(name.to_owned());
        let no_id = r#"{"specversion":"1.0","source":"/pos","type":"t"}"#;
        let big = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(vec![0; MAX_DATA_BYTES + 1])
        );
        for (doc, origin, text) in [
            (no_id, member("id"), "required attribute 'id' is missing"),
            (
                &doc(r#","time":"yesterday""#),
                member("time"),
                "attribute 'time': not an RFC 3339 timestamp",
            ),
            (
                &doc(r#","subject":7"#),
                member("subject"),
                "attribute 'subject': must be a string",
            ),
            (
                &doc(r#","ext":1.5"#),
                member("ext"),
                "attribute 'ext': 1.5 is not a whole number",
            ),
            (
                &doc(r#","data":1,"data_base64":"AA==""#),
                member("data_base64"),
                "attribute 'data_base64': an event carries either",
            ),
            (
                &big,
                member("data_base64"),
                "attribute 'data_base64': 1048577 bytes",
            ),
            (
                &doc(r#","specversion":"1.0""#),
                member("specversion"),
                "attribute 'specversion': is given twice",
            ),
        ] {
            let structured = refusal(Event::from_structured(doc.as_bytes(), TENANT));
            let batch = format!("[{},{doc}]", self::doc(""));
            let split = JsonBatch::split(batch.as_bytes()).expect("a batch");
            let mut events = split.events(TENANT);
            assert!(events.next().expect("the first").is_ok());
            let in_batch = refusal(events.next().expect("the second"));
            for (got, message) in [structured, in_batch] {
                assert_eq!(got, origin, "{message}");
                assert!(
                    message.starts_with(text),
                    "{message:?} starts with {text:?}"
                );
                assert!(!message.contains("header"), "{message}");
            }
        }
        let (origin, message) = refusal(
            Event::builder(TENANT, "e-1", "/pos", "t")
                .time("yesterday".to_owned())
                .build(),
        );
        assert_eq!(origin, Origin::Attribute);
        assert!(message.starts_with("attribute 'time': "), "{message}");
    }

    /// The builder ends in the parsers' checks: the same attributes make
    /// the same event, and an invalid one is refused by name.
    #[test]
    fn the_builder_makes_what_the_parser_makes() {
        let parsed = Event::from_json(&doc(
            r#","subject":"o-1","time":"2026-11-25T10:00:00Z","datacontenttype":"text/plain","partitionkey":"o-1","data":"hi""#,
        ))
        .expect("valid");
        let built = Event::builder(TENANT, "e-1", "/pos", "t")
            .subject("o-1".to_owned())
            .time("2026-11-25T10:00:00Z".to_owned())
            .datacontenttype("text/plain".to_owned())
            .extension("partitionkey", "o-1")
            .data("hi")
            .build()
            .expect("valid");
        assert_eq!(built, parsed);
        assert_eq!(parsed.to_builder().build(), Ok(parsed.clone()));
        for (builder, attribute) in [
            (parsed.to_builder().id(""), "id"),
            (parsed.to_builder().tenant("../x"), "tenant"),
            (parsed.to_builder().time("yesterday".to_owned()), "time"),
            (parsed.to_builder().extension("Bad", "x"), "Bad"),
            (
                parsed.to_builder().extension(DEPTH_EXTENSION, "x"),
                DEPTH_EXTENSION,
            ),
            (
                parsed.to_builder().data(vec![0; MAX_DATA_BYTES + 1]),
                "data",
            ),
        ] {
            assert_eq!(refused_for(builder.build()), attribute);
        }
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/cloudevents+json"));
        assert!(!is_json_media_type("text/plain"));
    }
}
