//! The JSON event format of CloudEvents 1.0: one JSON object, one event.
//! The one JSON parser behind [`Event::from_json`],
//! [`Event::from_json_value`] and the HTTP structured and batch modes.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    Draft, Event, EventError, Format, INTEGER_RANGE, Origin, TENANT_EXTENSION, TenantOf,
    check_specversion, is_json_media_type,
};

/// Parses one event in JSON format: decodes it into a [`Draft`] and checks
/// that. A refusal names the member at fault ([`Origin::Member`]).
pub(super) fn parse(text: &str, tenant: TenantOf<'_>) -> Result<Event, EventError> {
    let members: Members<'_> = serde_json::from_str(text).map_err(|e| match e.classify() {
        // Valid JSON, but not an object.
        serde_json::error::Category::Data if serde_json::from_str::<IgnoredAny>(text).is_ok() => {
            EventError::NotAnObject
        }
        _ => EventError::Json(e.to_string()),
    })?;
    decode(members)?.into_event(tenant)
}

/// The members of one JSON object in the order given, each as its name
/// (borrowed from the text unless it has escapes) and its JSON text: no
/// tree of the event, no map, and a JSON payload is copied once, as it was
/// written.
struct Members<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// A member's name, borrowed from the text when it can be.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(12).min(64));
                while let Some((Name(name), value)) =
                    map.next_entry::<Name<'de>, &'de RawValue>()?
                {
                    entries.push((name, value));
                }
                Ok(Members { entries })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The members a CloudEvent in JSON format gives meaning to; every other
/// member is an extension attribute.
const KNOWN: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    TENANT_EXTENSION,
    "data_base64",
    "data",
];

/// The attributes, payload and extensions of one JSON object, checked in
/// a fixed order whatever the order of the members: a name given twice
/// first (the one whose second appearance comes first), then
/// `specversion`, the context attributes, the payload, and the extension
/// attributes by name.
fn decode(members: Members<'_>) -> Result<Draft, EventError> {
    let entries = members.entries;
    // The entries by name, then position: O(n log n) whatever a sender
    // puts in one object.
    let mut by_name: Vec<usize> = (0..entries.len()).collect();
    by_name.sort_by(|a, b| entries[*a].0.cmp(&entries[*b].0).then(a.cmp(b)));
    let duplicate = by_name
        .windows(2)
        .filter(|pair| entries[pair[0]].0 == entries[pair[1]].0)
        .map(|pair| pair[1])
        .min();
    if let Some(at) = duplicate {
        let name = entries[at].0.as_ref();
        return Err(EventError::invalid(
            name,
            "is given twice; each attribute may appear once in an event",
        )
        .at(Origin::Member(name.to_owned())));
    }
    let mut known: [Option<&RawValue>; KNOWN.len()] = [None; KNOWN.len()];
    let mut extensions = Vec::new();
    for &i in &by_name {
        let (name, raw) = &entries[i];
        match KNOWN.iter().position(|k| *k == name.as_ref()) {
            Some(slot) => known[slot] = Some(*raw),
            None => extensions.push((name, *raw)),
        }
    }
    let [
        specversion,
        id,
        source,
        ty,
        subject,
        time,
        datacontenttype,
        dataschema,
        tenant,
        data_base64,
        data,
    ] = known;
    check_specversion(
        string(specversion, "specversion")?,
        Origin::Member("specversion".to_owned()),
    )?;
    let mut draft = Draft {
        id: string(id, "id")?,
        source: string(source, "source")?,
        ty: string(ty, "type")?,
        subject: string(subject, "subject")?,
        time: string(time, "time")?,
        datacontenttype: string(datacontenttype, "datacontenttype")?,
        dataschema: string(dataschema, "dataschema")?,
        tenant: string(tenant, TENANT_EXTENSION)?,
        ..Draft::default()
    };
    let data_base64 = string(data_base64, "data_base64")?;
    draft.format = Format::Json {
        payload: if data_base64.is_some() {
            "data_base64"
        } else {
            "data"
        },
    };
    draft.data = payload(data, data_base64, draft.datacontenttype.as_deref())
        .map_err(|e| e.at(Origin::Member("data_base64".to_owned())))?;
    for (name, raw) in extensions {
        let value = extension(name, raw).map_err(|e| e.at(Origin::Member(name.to_string())))?;
        if let Some(value) = value {
            draft.extensions.insert(name.to_string(), value);
        }
    }
    Ok(draft)
}

/// A String attribute given as `raw`; `null` is unset.
fn string(raw: Option<&RawValue>, name: &'static str) -> Result<Option<String>, EventError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| {
            EventError::invalid(name, "must be a string").at(Origin::Member(name.to_owned()))
        }),
    }
}

/// The payload, from the `data` member and the (non-null) `data_base64`.
///
/// `"data": null` is a present, null payload (CloudEvents JSON format,
/// 3.1.1), stored as no payload; as the two members are mutually
/// exclusive, it cannot go with a `data_base64`.
fn payload(
    data: Option<&RawValue>,
    data_base64: Option<String>,
    datacontenttype: Option<&str>,
) -> Result<Vec<u8>, EventError> {
    match (data, data_base64) {
        (Some(_), Some(_)) => Err(EventError::invalid(
            "data_base64",
            "an event carries either 'data' or 'data_base64', not both",
        )),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| EventError::invalid("data_base64", format!("not valid base64: {e}"))),
        (None, None) => Ok(Vec::new()),
        (Some(raw), None) if raw.get() == "null" => Ok(Vec::new()),
        (Some(raw), None) => {
            // A string with a media type other than JSON is its text;
            // anything else is the JSON value as written.
            if !datacontenttype.is_none_or(is_json_media_type)
                && let Ok(text) = serde_json::from_str::<String>(raw.get())
            {
                return Ok(text.into_bytes());
            }
            Ok(raw.get().as_bytes().to_vec())
        }
    }
}

/// The text of an extension attribute: strings as they are, integers and
/// booleans as text; `None` for `null`, which is unset.
///
/// A JSON number is a CloudEvents `Integer`: a whole number within
/// [`INTEGER_RANGE`] (32-bit signed). Any other number (out of range,
/// fractional, or with an exponent) is refused, naming the attribute. A
/// JSON string is a CloudEvents `String` and is kept as it is, digits or
/// not: its range is not checked (binary mode's `ce-` headers are always
/// strings), except for the host's own `chaindepth` and `chainbudget`,
/// which [`Event::validate`] checks.
fn extension(name: &str, raw: &RawValue) -> Result<Option<String>, EventError> {
    let not_a_value = || {
        EventError::invalid(
            name,
            "an extension attribute must be a string, number or boolean",
        )
    };
    // Objects and arrays are refused without being parsed.
    if raw.get().starts_with(['{', '[']) {
        return Err(not_a_value());
    }
    match serde_json::from_str::<Value>(raw.get()).map_err(|_| not_a_value())? {
        Value::String(s) => Ok(Some(s)),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => integer_text(name, &n).map(Some),
        Value::Null => Ok(None),
        Value::Array(_) | Value::Object(_) => Err(not_a_value()),
    }
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
