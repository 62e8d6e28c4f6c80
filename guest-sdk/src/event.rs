//! The event a handler receives, read through accessors.
//!
//! An event delivered in a batch stays where the host put it, in the
//! batch's flat buffer (the layout documented on `handle-batch` in
//! `wit/plugbus.wit`), and each accessor decodes only its own attribute:
//! a handler that reads only [`Event::ty`] and [`Event::data`] pays only
//! for those. An event delivered through `handle`, or built in a test,
//! holds its attributes as owned values.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HandlerError;

/// Attributes per event in a batch's table, in the order of the WIT docs.
const FIELDS: usize = 10;
/// Bytes of one event's table entry: the (offset, length) pairs, then the
/// attempt number.
const ENTRY_BYTES: usize = FIELDS * 8 + 4;
/// The offset that marks an absent optional attribute.
const ABSENT: u32 = u32::MAX;
/// The attributes' positions in a table entry.
const ID: usize = 0;
const SOURCE: usize = 1;
const TYPE: usize = 2;
const SUBJECT: usize = 3;
const TIME: usize = 4;
const DATACONTENTTYPE: usize = 5;
const DATASCHEMA: usize = 6;
const DATA: usize = 7;
const EXTENSIONS: usize = 8;
const TENANT: usize = 9;
const NAMES: [&str; FIELDS] = [
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "extensions",
    "tenant",
];

/// A CloudEvents 1.0 event delivered to a plugin.
///
/// Build one for a test with [`Event::new`] and the `with_*` methods:
///
/// ```
/// use plugbus_sdk::Event;
///
/// let event = Event::new("order.placed")
///     .with_id("evt-4")
///     .with_source("/pos/store-12")
///     .with_subject("order-1001")
///     .with_time("2026-11-22T10:02:30Z")
///     .with_tenant("acme-pos")
///     .with_extension("partitionkey", "order-1001")
///     .with_attempt(2)
///     .with_json(&serde_json::json!({ "order_id": "order-1001", "total_cents": 1299 }));
/// assert_eq!(event.extension("partitionkey"), Some("order-1001"));
/// ```
#[derive(Clone)]
pub struct Event {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Owned(Box<Attributes>),
    Flat { batch: Arc<Vec<u8>>, entry: usize },
}

/// An event's attributes as owned values.
#[derive(Clone, Default)]
pub(crate) struct Attributes {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: Vec<u8>,
    pub extensions: Vec<(String, String)>,
    pub tenant: String,
    pub attempt: u32,
}

/// A batch buffer that breaks the documented layout. Only a broken host
/// sends one, so it ends the call: the host reports a trap.
#[cold]
#[track_caller]
fn malformed(what: &str) -> ! {
    panic!("plugbus: the host sent a malformed event batch: {what}")
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => malformed("a length or offset lies outside the buffer"),
    }
}

fn text(bytes: &[u8], field: usize) -> &str {
    std::str::from_utf8(bytes)
        .unwrap_or_else(|_| malformed(&format!("attribute {} is not UTF-8", NAMES[field])))
}

/// The number of events in a batch buffer.
pub(crate) fn batch_len(batch: &[u8]) -> usize {
    let count = u32_at(batch, 0) as usize;
    if count
        .checked_mul(ENTRY_BYTES)
        .and_then(|table| table.checked_add(4))
        .is_none_or(|end| end > batch.len())
    {
        malformed("the table of events is longer than the buffer");
    }
    count
}

impl Event {
    /// Event `index` of a batch buffer whose length [`batch_len`] checked.
    pub(crate) fn from_batch(batch: Arc<Vec<u8>>, index: usize) -> Self {
        Self {
            repr: Repr::Flat {
                batch,
                entry: 4 + index * ENTRY_BYTES,
            },
        }
    }

    pub(crate) fn from_attributes(attributes: Attributes) -> Self {
        Self {
            repr: Repr::Owned(Box::new(attributes)),
        }
    }

    /// A test event of type `ty`: id `test-event-1`, source `test`, tenant
    /// `test-tenant`, JSON content type, no data.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("order.placed");
    /// assert_eq!((event.id(), event.tenant(), event.attempt()), ("test-event-1", "test-tenant", 1));
    /// ```
    pub fn new(ty: impl Into<String>) -> Self {
        Self::from_attributes(Attributes {
            id: "test-event-1".into(),
            source: "test".into(),
            ty: ty.into(),
            datacontenttype: Some("application/json".into()),
            tenant: "test-tenant".into(),
            attempt: 1,
            ..Attributes::default()
        })
    }

    /// The raw bytes of attribute `field` of a flat event; `None` when the
    /// optional attribute is absent.
    fn field(batch: &[u8], entry: usize, field: usize) -> Option<&[u8]> {
        let at = entry + field * 8;
        let offset = u32_at(batch, at);
        if offset == ABSENT {
            return None;
        }
        let start = offset as usize;
        let end = start.saturating_add(u32_at(batch, at + 4) as usize);
        match batch.get(start..end) {
            Some(bytes) => Some(bytes),
            None => malformed(&format!(
                "attribute {} lies outside the buffer",
                NAMES[field]
            )),
        }
    }

    fn required(&self, field: usize) -> &str {
        self.optional(field)
            .unwrap_or_else(|| malformed(&format!("required attribute {} is absent", NAMES[field])))
    }

    fn optional(&self, field: usize) -> Option<&str> {
        match &self.repr {
            Repr::Flat { batch, entry } => {
                Self::field(batch, *entry, field).map(|bytes| text(bytes, field))
            }
            Repr::Owned(a) => match field {
                ID => Some(&a.id),
                SOURCE => Some(&a.source),
                TYPE => Some(&a.ty),
                SUBJECT => a.subject.as_deref(),
                TIME => a.time.as_deref(),
                DATACONTENTTYPE => a.datacontenttype.as_deref(),
                DATASCHEMA => a.dataschema.as_deref(),
                _ => Some(&a.tenant),
            },
        }
    }

    /// Identifies the event; unique per [`Event::source`].
    pub fn id(&self) -> &str {
        self.required(ID)
    }

    /// The context the event happened in, as a URI-reference. Events
    /// emitted by plugins carry `plugbus://<tenant>/<plugin>`.
    pub fn source(&self) -> &str {
        self.required(SOURCE)
    }

    /// The kind of event, such as `inventory.stock_changed`.
    pub fn ty(&self) -> &str {
        self.required(TYPE)
    }

    /// The subject within the source, such as a SKU or an order id.
    pub fn subject(&self) -> Option<&str> {
        self.optional(SUBJECT)
    }

    /// When the event happened, as an RFC 3339 timestamp.
    pub fn time(&self) -> Option<&str> {
        self.optional(TIME)
    }

    /// The media type of [`Event::data`].
    pub fn datacontenttype(&self) -> Option<&str> {
        self.optional(DATACONTENTTYPE)
    }

    /// A URI of the schema [`Event::data`] adheres to.
    pub fn dataschema(&self) -> Option<&str> {
        self.optional(DATASCHEMA)
    }

    /// The tenant that owns the event.
    pub fn tenant(&self) -> &str {
        self.required(TENANT)
    }

    /// Which delivery of this event to this plugin this is: 1 for the
    /// first, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        match &self.repr {
            Repr::Flat { batch, entry } => u32_at(batch, entry + FIELDS * 8),
            Repr::Owned(a) => a.attempt,
        }
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        match &self.repr {
            Repr::Flat { batch, entry } => Self::field(batch, *entry, DATA).unwrap_or_default(),
            Repr::Owned(a) => &a.data,
        }
    }

    /// The payload, owned: moved out of an event that owns it, copied out
    /// of a batch.
    pub fn into_data(self) -> Vec<u8> {
        match self.repr {
            Repr::Flat { .. } => self.data().to_vec(),
            Repr::Owned(a) => a.data,
        }
    }

    /// The payload as text, when it is valid UTF-8.
    pub fn data_str(&self) -> Option<&str> {
        std::str::from_utf8(self.data()).ok()
    }

    /// Reads the payload as JSON into `T`. A payload that does not decode is
    /// a [`HandlerError::Permanent`] naming the event type and the reason:
    /// delivering the same bytes again cannot help.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(self.data()).map_err(|e| {
            HandlerError::Permanent(format!(
                "the payload of {} event {} is not the expected JSON: {e}",
                self.ty(),
                self.id()
            ))
        })
    }

    /// The extension attributes as name/value pairs (`causationid`,
    /// `correlationid`, `chaindepth`, `partitionkey`, …).
    pub fn extensions(&self) -> Extensions<'_> {
        match &self.repr {
            Repr::Flat { batch, entry } => {
                let bytes = Self::field(batch, *entry, EXTENSIONS).unwrap_or_default();
                let left = if bytes.is_empty() {
                    0
                } else {
                    u32_at(bytes, 0)
                };
                Extensions(ExtensionsRepr::Flat { bytes, at: 4, left })
            }
            Repr::Owned(a) => Extensions(ExtensionsRepr::Owned(a.extensions.iter())),
        }
    }

    /// The value of an extension attribute.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The attributes as owned values, for a builder to change.
    fn into_attributes(self) -> Attributes {
        match self.repr {
            Repr::Owned(a) => *a,
            Repr::Flat { .. } => Attributes {
                id: self.id().to_owned(),
                source: self.source().to_owned(),
                ty: self.ty().to_owned(),
                subject: self.subject().map(str::to_owned),
                time: self.time().map(str::to_owned),
                datacontenttype: self.datacontenttype().map(str::to_owned),
                dataschema: self.dataschema().map(str::to_owned),
                data: self.data().to_vec(),
                extensions: self
                    .extensions()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
                tenant: self.tenant().to_owned(),
                attempt: self.attempt(),
            },
        }
    }

    fn change(self, f: impl FnOnce(&mut Attributes)) -> Self {
        let mut attributes = self.into_attributes();
        f(&mut attributes);
        Self::from_attributes(attributes)
    }

    /// Sets the payload to `value` as JSON, with content type
    /// `application/json`.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("order.placed").with_json(&serde_json::json!({ "order_id": "o-1" }));
    /// assert_eq!(event.data(), br#"{"order_id":"o-1"}"#);
    /// ```
    ///
    /// # Panics
    /// When `value` cannot be serialised as JSON (a map with non-string
    /// keys, for example); this builder is meant for tests.
    pub fn with_json<T: Serialize>(self, value: &T) -> Self {
        let data = serde_json::to_vec(value).expect("test payload serialises as JSON");
        self.change(|a| {
            a.data = data;
            a.datacontenttype = Some("application/json".into());
        })
    }

    /// Sets the payload bytes.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("report.ready").with_data("sku,quantity\n");
    /// assert_eq!(event.data_str(), Some("sku,quantity\n"));
    /// ```
    pub fn with_data(self, data: impl Into<Vec<u8>>) -> Self {
        self.change(|a| a.data = data.into())
    }

    /// Sets the id.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// assert_eq!(Event::new("order.placed").with_id("evt-4").id(), "evt-4");
    /// ```
    pub fn with_id(self, id: impl Into<String>) -> Self {
        self.change(|a| a.id = id.into())
    }

    /// Sets the source.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// assert_eq!(Event::new("order.placed").with_source("/pos/store-12").source(), "/pos/store-12");
    /// ```
    pub fn with_source(self, source: impl Into<String>) -> Self {
        self.change(|a| a.source = source.into())
    }

    /// Sets the subject.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// assert_eq!(Event::new("order.placed").with_subject("order-1001").subject(), Some("order-1001"));
    /// ```
    pub fn with_subject(self, subject: impl Into<String>) -> Self {
        self.change(|a| a.subject = Some(subject.into()))
    }

    /// Sets the time, an RFC 3339 timestamp.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("order.placed").with_time("2026-11-22T10:02:30Z");
    /// assert_eq!(event.time(), Some("2026-11-22T10:02:30Z"));
    /// ```
    pub fn with_time(self, time: impl Into<String>) -> Self {
        self.change(|a| a.time = Some(time.into()))
    }

    /// Sets the content type, or removes it with `None`.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("report.ready").with_datacontenttype(Some("text/csv"));
    /// assert_eq!(event.datacontenttype(), Some("text/csv"));
    /// ```
    pub fn with_datacontenttype(self, media_type: Option<&str>) -> Self {
        self.change(|a| a.datacontenttype = media_type.map(str::to_owned))
    }

    /// Sets the schema URI.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("order.placed").with_dataschema("https://schemas.example/order.json");
    /// assert_eq!(event.dataschema(), Some("https://schemas.example/order.json"));
    /// ```
    pub fn with_dataschema(self, uri: impl Into<String>) -> Self {
        self.change(|a| a.dataschema = Some(uri.into()))
    }

    /// Sets the tenant.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// assert_eq!(Event::new("order.placed").with_tenant("acme-pos").tenant(), "acme-pos");
    /// ```
    pub fn with_tenant(self, tenant: impl Into<String>) -> Self {
        self.change(|a| a.tenant = tenant.into())
    }

    /// Sets the attempt number, as the host does on a retry.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// assert_eq!(Event::new("order.placed").with_attempt(2).attempt(), 2);
    /// ```
    pub fn with_attempt(self, attempt: u32) -> Self {
        self.change(|a| a.attempt = attempt)
    }

    /// Adds an extension attribute.
    ///
    /// ```
    /// # use plugbus_sdk::Event;
    /// let event = Event::new("order.placed").with_extension("partitionkey", "order-1001");
    /// assert_eq!(event.extension("partitionkey"), Some("order-1001"));
    /// ```
    pub fn with_extension(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.change(|a| a.extensions.push((name.into(), value.into())))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (0..FIELDS)
            .filter(|f| *f != DATA && *f != EXTENSIONS)
            .all(|f| self.optional(f) == other.optional(f))
            && self.data() == other.data()
            && self.extensions().eq(other.extensions())
            && self.attempt() == other.attempt()
    }
}

impl Eq for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("source", &self.source())
            .field("type", &self.ty())
            .field("subject", &self.subject())
            .field("time", &self.time())
            .field("datacontenttype", &self.datacontenttype())
            .field("dataschema", &self.dataschema())
            .field("data", &self.data_str().ok_or(self.data().len()))
            .field("extensions", &self.extensions().collect::<Vec<_>>())
            .field("tenant", &self.tenant())
            .field("attempt", &self.attempt())
            .finish()
    }
}

/// The extension attributes of an [`Event`], as `(name, value)` pairs.
pub struct Extensions<'a>(ExtensionsRepr<'a>);

enum ExtensionsRepr<'a> {
    Owned(std::slice::Iter<'a, (String, String)>),
    Flat {
        bytes: &'a [u8],
        at: usize,
        left: u32,
    },
}

impl<'a> Iterator for Extensions<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            ExtensionsRepr::Owned(iter) => iter.next().map(|(n, v)| (n.as_str(), v.as_str())),
            ExtensionsRepr::Flat { bytes, at, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                let mut string = || {
                    let len = u32_at(bytes, *at) as usize;
                    let start = *at + 4;
                    let slice = bytes
                        .get(start..start.saturating_add(len))
                        .unwrap_or_else(|| malformed("an extension lies outside the buffer"));
                    *at = start + len;
                    text(slice, EXTENSIONS)
                };
                let name = string();
                Some((name, string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch encoded by hand, the way the WIT docs describe it; event
    /// `i` is on attempt `i + 1`.
    fn encode(events: &[&[Option<&[u8]>; FIELDS]]) -> Vec<u8> {
        let mut out = (events.len() as u32).to_le_bytes().to_vec();
        let table = out.len();
        out.resize(table + events.len() * ENTRY_BYTES, 0);
        for (i, fields) in events.iter().enumerate() {
            for (f, value) in fields.iter().enumerate() {
                let (offset, len) = match value {
                    Some(bytes) => {
                        let offset = out.len() as u32;
                        out.extend_from_slice(bytes);
                        (offset, bytes.len() as u32)
                    }
                    None => (ABSENT, 0),
                };
                let at = table + i * ENTRY_BYTES + f * 8;
                out[at..at + 4].copy_from_slice(&offset.to_le_bytes());
                out[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
            }
            let at = table + i * ENTRY_BYTES + FIELDS * 8;
            out[at..at + 4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        }
        out
    }

    fn extensions(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    #[test]
    fn flat_events_decode_each_attribute() {
        let ext = extensions(&[("partitionkey", "o-1"), ("chaindepth", "2")]);
        let no_ext = extensions(&[]);
        let batch = encode(&[
            &[
                Some(b"e-1"),
                Some(b"pos"),
                Some(b"order.placed"),
                Some(b"o-1"),
                Some(b"2026-11-25T00:00:00Z"),
                Some(b"application/json"),
                None,
                Some(b"{\"total\":3}"),
                Some(&ext),
                Some(b"acme"),
            ],
            &[
                Some(b"e-2"),
                Some(b"pos"),
                Some(b"payment.failed"),
                None,
                None,
                None,
                Some(b"https://schemas.example/p"),
                Some(b""),
                Some(&no_ext),
                Some(b"acme"),
            ],
        ]);
        let batch = Arc::new(batch);
        assert_eq!(batch_len(&batch), 2);
        let first = Event::from_batch(batch.clone(), 0);
        assert_eq!(first.id(), "e-1");
        assert_eq!(first.ty(), "order.placed");
        assert_eq!(first.subject(), Some("o-1"));
        assert_eq!(first.time(), Some("2026-11-25T00:00:00Z"));
        assert_eq!(first.dataschema(), None);
        assert_eq!(first.data(), b"{\"total\":3}");
        assert_eq!(first.extension("chaindepth"), Some("2"));
        assert_eq!(first.extensions().count(), 2);
        assert_eq!(first.tenant(), "acme");
        let second = Event::from_batch(batch, 1);
        assert_eq!(second.ty(), "payment.failed");
        assert_eq!(second.subject(), None);
        assert_eq!(second.datacontenttype(), None);
        assert_eq!(second.dataschema(), Some("https://schemas.example/p"));
        assert!(second.data().is_empty());
        assert_eq!(second.extensions().next(), None);
        assert_eq!((first.attempt(), second.attempt()), (1, 2));

        // The same event, owned, compares equal; a builder turns a flat
        // event into an owned one.
        let owned = Event::new("order.placed")
            .with_id("e-1")
            .with_source("pos")
            .with_subject("o-1")
            .with_time("2026-11-25T00:00:00Z")
            .with_data(b"{\"total\":3}".to_vec())
            .with_extension("partitionkey", "o-1")
            .with_extension("chaindepth", "2")
            .with_tenant("acme");
        assert_eq!(first, owned);
        let changed = first.clone().with_id("e-9");
        assert_eq!(changed.id(), "e-9");
        assert_eq!(changed.extension("partitionkey"), Some("o-1"));
        assert_ne!(changed, first);
        assert_eq!(first.into_data(), b"{\"total\":3}");
    }

    #[test]
    #[should_panic(expected = "malformed event batch: the table of events is longer")]
    fn a_count_beyond_the_buffer_is_malformed() {
        batch_len(&[5, 0, 0, 0, 1, 2]);
    }

    #[test]
    #[should_panic(expected = "attribute type lies outside the buffer")]
    fn an_offset_beyond_the_buffer_is_malformed() {
        let mut batch = encode(&[&[Some(b"x"); FIELDS]]);
        let at = 4 + TYPE * 8;
        batch[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        Event::from_batch(Arc::new(batch), 0).ty();
    }
}
