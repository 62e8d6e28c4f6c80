//! The flat encoding of a batch of events for the `handle-batch` export of
//! world `plugbus:plugin/batch-handler`.
//!
//! One buffer holds the whole batch: a count, a table of ten
//! (offset, length) pairs and the attempt number per event, then the
//! attribute bytes. A guest
//! finds any attribute of any event in constant time and decodes only the
//! ones its handler reads; the layout is documented on `handle-batch` in
//! `wit/plugbus.wit`, and `plugbus-sdk` decodes it.

use plugbus_core::event::Event;

/// Attributes per event in the table, in the order of the WIT docs.
pub const FIELDS: usize = 10;
/// The offset that marks an absent optional attribute.
pub const ABSENT: u32 = u32::MAX;
/// Bytes of one event's entry in the table: the pairs, then the attempt.
const ENTRY_BYTES: usize = FIELDS * 8 + 4;

/// The bytes of an event as the host's budgets count them (the bytes one
/// delivery may emit, and the bytes one batch's pending commit may hold):
/// the UTF-8 bytes of every attribute value (`id`, `source`, `type`,
/// `subject`, `time`, `datacontenttype`, `dataschema` and the tenant), of
/// `data`, and of each extension attribute's name and value. It is what
/// the event holds in memory, less the bookkeeping of its containers, and
/// close to what it takes in the log.
pub fn event_bytes(event: &Event) -> usize {
    let optional = |v: Option<&str>| v.map_or(0, str::len);
    let extensions: usize = event
        .extensions()
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    event.id().len()
        + event.source().len()
        + event.ty().len()
        + optional(event.subject())
        + optional(event.time())
        + optional(event.datacontenttype())
        + optional(event.dataschema())
        + event.data().len()
        + extensions
        + event.tenant().len()
}

/// The bytes `event` takes in a batch: its table entry, the count and
/// lengths of its extensions, and its [`event_bytes`].
pub fn encoded_len(event: &Event) -> usize {
    ENTRY_BYTES + 4 + 8 * event.extensions().len() + event_bytes(event)
}

/// Encodes `events`, each with its attempt number, into `out` (cleared
/// first).
///
/// # Panics
/// When the batch would pass 4 GiB, which the offsets cannot address;
/// callers bound batches far below that.
pub fn encode<'a>(
    events: impl ExactSizeIterator<Item = (&'a Event, u32)> + Clone,
    out: &mut Vec<u8>,
) {
    out.clear();
    let count = events.len();
    let total = 4 + events.clone().map(|(e, _)| encoded_len(e)).sum::<usize>();
    assert!(
        u32::try_from(total).is_ok(),
        "a batch of {total} bytes is beyond the 4 GiB the encoding addresses"
    );
    out.reserve(total);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let table = out.len();
    out.resize(table + count * ENTRY_BYTES, 0);
    for (i, (event, attempt)) in events.enumerate() {
        let entry = table + i * ENTRY_BYTES;
        let mut fields = [(ABSENT, 0u32); FIELDS];
        fields[0] = append(out, event.id().as_bytes());
        fields[1] = append(out, event.source().as_bytes());
        fields[2] = append(out, event.ty().as_bytes());
        for (field, value) in [
            (3, event.subject()),
            (4, event.time()),
            (5, event.datacontenttype()),
            (6, event.dataschema()),
        ] {
            if let Some(value) = value {
                fields[field] = append(out, value.as_bytes());
            }
        }
        fields[7] = append(out, event.data());
        let start = out.len();
        out.extend_from_slice(&(event.extensions().len() as u32).to_le_bytes());
        for (name, value) in event.extensions() {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        fields[8] = (start as u32, (out.len() - start) as u32);
        fields[9] = append(out, event.tenant().as_bytes());
        for (f, (offset, len)) in fields.into_iter().enumerate() {
            let at = entry + f * 8;
            out[at..at + 4].copy_from_slice(&offset.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        let at = entry + FIELDS * 8;
        out[at..at + 4].copy_from_slice(&attempt.to_le_bytes());
    }
    debug_assert_eq!(out.len(), total);
}

/// Appends `bytes` and returns their (offset, length).
fn append(out: &mut Vec<u8>, bytes: &[u8]) -> (u32, u32) {
    let offset = out.len() as u32;
    out.extend_from_slice(bytes);
    (offset, bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, ty: &str) -> Event {
        Event::builder("acme", id, "pos", ty)
            .build()
            .expect("a valid event")
    }

    fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
    }

    fn field(buf: &[u8], event: usize, field: usize) -> Option<&[u8]> {
        let at = 4 + event * ENTRY_BYTES + field * 8;
        let (offset, len) = (u32_at(buf, at), u32_at(buf, at + 4));
        (offset != ABSENT).then(|| &buf[offset as usize..(offset + len) as usize])
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let a = event("t-1", "order.placed")
            .to_builder()
            .subject("o-1".to_owned())
            .data(b"{\"total\":3}".to_vec())
            .extension("partitionkey", "o-1")
            .build()
            .expect("a valid event");
        let b = event("t-2", "payment.completed");
        let mut buf = Vec::new();
        encode([(&a, 1), (&b, 3)].into_iter(), &mut buf);

        assert_eq!(buf.len(), 4 + encoded_len(&a) + encoded_len(&b));
        // id, source, type, subject, data, one extension, tenant.
        assert_eq!(event_bytes(&a), 3 + 3 + 12 + 3 + 11 + (12 + 3) + 4);
        assert_eq!(u32_at(&buf, 0), 2);
        assert_eq!(field(&buf, 0, 0), Some(&b"t-1"[..]));
        assert_eq!(field(&buf, 0, 2), Some(&b"order.placed"[..]));
        assert_eq!(field(&buf, 0, 3), Some(&b"o-1"[..]));
        assert_eq!(field(&buf, 0, 4), None);
        assert_eq!(field(&buf, 0, 7), Some(&b"{\"total\":3}"[..]));
        assert_eq!(field(&buf, 0, 9), Some(&b"acme"[..]));
        assert_eq!(u32_at(&buf, 4 + FIELDS * 8), 1, "the first event's attempt");
        assert_eq!(
            u32_at(&buf, 4 + ENTRY_BYTES + FIELDS * 8),
            3,
            "the second event's attempt"
        );
        let ext = field(&buf, 0, 8).expect("extensions");
        assert_eq!(u32_at(ext, 0), 1);
        assert_eq!(u32_at(ext, 4), 12);
        assert_eq!(&ext[8..20], b"partitionkey");
        assert_eq!(u32_at(ext, 20), 3);
        assert_eq!(&ext[24..], b"o-1");
        assert_eq!(field(&buf, 1, 2), Some(&b"payment.completed"[..]));
        assert_eq!(field(&buf, 1, 3), None);
        assert_eq!(field(&buf, 1, 7), Some(&b""[..]));
        assert_eq!(field(&buf, 1, 8), Some(&0u32.to_le_bytes()[..]));
    }

    #[test]
    fn an_empty_batch_is_a_zero_count() {
        let mut buf = vec![1, 2, 3];
        encode(std::iter::empty::<(&Event, u32)>(), &mut buf);
        assert_eq!(buf, [0, 0, 0, 0]);
    }
}
