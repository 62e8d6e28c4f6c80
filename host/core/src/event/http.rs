//! The content modes of the CloudEvents HTTP protocol binding: binary
//! (attributes in `ce-` headers, the body is the data), structured (one
//! event in JSON format) and batch (a JSON array of them). Structured and
//! batch go through the JSON format's one parser; binary mode decodes its
//! headers into the same [`Draft`] and is checked by the same
//! [`Draft::into_event`]. No HTTP types: the server hands over bytes.

use std::collections::BTreeSet;

use serde_json::value::RawValue;

use super::{
    Draft, Event, EventError, Format, Origin, Slot, TENANT_EXTENSION, TenantOf, check_specversion,
    json,
};

/// The prefix of the headers that carry attributes in binary mode.
pub(super) const HEADER_PREFIX: &str = "ce-";

impl Event {
    /// Parses the body of a structured-mode request
    /// (`application/cloudevents+json`): one event in JSON format, by the
    /// parser of [`Event::from_json`]. The tenant is `tenant` (the bearer
    /// token's): the event may leave its `tenant` attribute out, and may
    /// not name another.
    pub fn from_structured(body: &[u8], tenant: &str) -> Result<Self, EventError> {
        json::parse(utf8(body)?, TenantOf::Given(tenant))
    }

    /// Parses a binary-mode request: the attributes in `ce-` headers
    /// (names in any case; values percent-encoded UTF-8; other headers are
    /// ignored), the body as the data, `content_type` (empty when none was
    /// sent) as its media type. The tenant is `tenant`, as in
    /// [`Event::from_structured`].
    ///
    /// A `ce-datacontenttype` header is refused (the media type is
    /// `Content-Type`), so is an attribute given twice; `ce-data` and
    /// `ce-data_base64` are not attributes and are refused by name.
    ///
    /// A refusal names the header at fault ([`Origin::Header`]: `ce-id`,
    /// `content-type`), or the body ([`Origin::Body`]), not the attribute.
    pub fn from_binary<'h>(
        tenant: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Self, EventError> {
        let mut draft = Draft {
            format: Format::Binary,
            ..Draft::default()
        };
        let header = |attribute: &str| Format::Binary.origin(Slot::Attribute(attribute));
        let mut specversion = None;
        let mut seen = BTreeSet::new();
        for (name, value) in headers {
            let Some(attribute) = name
                .get(..HEADER_PREFIX.len())
                .filter(|prefix| prefix.eq_ignore_ascii_case(HEADER_PREFIX))
                .map(|_| name[HEADER_PREFIX.len()..].to_ascii_lowercase())
            else {
                continue;
            };
            let value = header_text(&attribute, value).map_err(|e| e.at(header(&attribute)))?;
            if !seen.insert(attribute.clone()) {
                return Err(EventError::invalid(
                    &attribute,
                    "is given twice; each attribute may appear once in an event",
                )
                .at(header(&attribute)));
            }
            let slot = match attribute.as_str() {
                "specversion" => &mut specversion,
                "id" => &mut draft.id,
                "source" => &mut draft.source,
                "type" => &mut draft.ty,
                "subject" => &mut draft.subject,
                "time" => &mut draft.time,
                "dataschema" => &mut draft.dataschema,
                TENANT_EXTENSION => &mut draft.tenant,
                "datacontenttype" => {
                    return Err(EventError::invalid(
                        "datacontenttype",
                        "in binary mode the media type is the Content-Type header, not ce-datacontenttype",
                    )
                    .at(Origin::Header(name.to_ascii_lowercase())));
                }
                _ => {
                    draft.extensions.insert(attribute, value);
                    continue;
                }
            };
            *slot = Some(value);
        }
        check_specversion(specversion, header("specversion"))?;
        if !content_type.is_empty() {
            draft.datacontenttype = Some(content_type.to_owned());
        }
        // The body is the data as it is, whatever its media type.
        draft.data = body;
        draft.into_event(TenantOf::Given(tenant))
    }
}

/// The text of one `ce-` header: visible ASCII, percent-decoded to UTF-8.
fn header_text(attribute: &str, value: &[u8]) -> Result<String, EventError> {
    let invalid = |reason: &str| EventError::invalid(attribute, reason);
    let raw = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
        .ok_or_else(|| invalid("the header value is not ASCII; percent-encode it"))?;
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| invalid("the percent-decoded header value is not UTF-8"))
}

fn utf8(body: &[u8]) -> Result<&str, EventError> {
    std::str::from_utf8(body).map_err(|e| EventError::Json(format!("not UTF-8: {e}")))
}

/// A CloudEvents JSON batch (`application/cloudevents-batch+json`): a JSON
/// array of events in JSON format, split into its events' JSON text, so
/// that its length can be checked before any of them is parsed.
#[derive(Debug)]
pub struct JsonBatch<'a> {
    items: Vec<&'a RawValue>,
}

/// Why a body is not a CloudEvents JSON batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The body is JSON, but not an array.
    #[error("a CloudEvents batch is a JSON array of events")]
    NotAnArray,
}

impl<'a> JsonBatch<'a> {
    /// Splits a batch body into its events, unparsed.
    pub fn split(body: &'a [u8]) -> Result<Self, BatchError> {
        let text = std::str::from_utf8(body).map_err(|e| BatchError::Json(e.to_string()))?;
        let items =
            serde_json::from_str::<Vec<&RawValue>>(text).map_err(|e| match e.classify() {
                serde_json::error::Category::Data
                    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() =>
                {
                    BatchError::NotAnArray
                }
                _ => BatchError::Json(e.to_string()),
            })?;
        Ok(Self { items })
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Parses the events in order, each as [`Event::from_structured`] does.
    pub fn events<'t>(
        &'t self,
        tenant: &'t str,
    ) -> impl Iterator<Item = Result<Event, EventError>> + 't {
        self.items
            .iter()
            .map(move |item| json::parse(item.get(), TenantOf::Given(tenant)))
    }
}
