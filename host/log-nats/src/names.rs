//! The names of the log's streams, subjects, buckets and keys, and the
//! message ids that make appends and emits idempotent.
//!
//! Tenant and plugin names are `a-z`, `0-9`, `-` and `_` (checked where
//! they enter plugbus), so they are valid subject tokens and key parts as
//! they are. A state key is any string a plugin chose: it is written in
//! base64url after a `k`, so that it is a valid key part too.

use base64::Engine as _;
use sha2::Digest as _;

use plugbus_log::Partition;

use crate::config::Prefix;

/// How many emitted events the index keeps per plugin: the most an
/// operator's `emits` page can show.
pub const EMITS_KEPT: i64 = 1_000;

/// The names of one deployment's stream, subjects and buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The prefix, e.g. `plugbus`.
    prefix: String,
    /// The stream of the events, `<prefix>_events`.
    pub events_stream: String,
    /// The stream of the emitted events' index, `<prefix>_emits`.
    pub emits_stream: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &Prefix) -> Self {
        let prefix = prefix.as_str().to_owned();
        Self {
            events_stream: format!("{prefix}_events"),
            emits_stream: format!("{prefix}_emits"),
            prefix,
        }
    }

    /// The subject of the events of `partition` of `tenant`'s events,
    /// `<prefix>.events.<tenant>.<partition>` (with one partition, 0).
    pub fn events_subject(&self, tenant: &str, partition: Partition) -> String {
        format!("{}.events.{tenant}.{partition}", self.prefix)
    }

    /// The subjects of all of `tenant`'s events, every partition.
    pub fn tenant_events(&self, tenant: &str) -> String {
        format!("{}.events.{tenant}.*", self.prefix)
    }

    /// The subjects of every tenant's events.
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.*.*", self.prefix)
    }

    /// The tenant whose events go on `subject`, if it is one of them.
    pub fn tenant_of<'s>(&self, subject: &'s str) -> Option<&'s str> {
        self.partition_of(subject).map(|(tenant, _)| tenant)
    }

    /// The tenant and partition whose events go on `subject`, if it is
    /// one of them.
    pub fn partition_of<'s>(&self, subject: &'s str) -> Option<(&'s str, Partition)> {
        let (tenant, partition) = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?
            .split_once('.')?;
        let valid = !tenant.is_empty()
            && !partition.is_empty()
            && partition.bytes().all(|b| b.is_ascii_digit());
        valid
            .then(|| partition.parse().ok().map(|p| (tenant, p)))
            .flatten()
    }

    /// The subject of the index of the events `plugin` of `tenant` emitted.
    pub fn emits_subject(&self, tenant: &str, plugin: &str) -> String {
        format!("{}.emits.{tenant}.{plugin}", self.prefix)
    }

    /// The subjects of every plugin's emitted-events index.
    pub fn emits_wildcard(&self) -> String {
        format!("{}.emits.*.*", self.prefix)
    }

    /// The bucket `<prefix>_<role>`.
    pub fn bucket(&self, role: &str) -> String {
        format!("{}_{role}", self.prefix)
    }
}

/// The key of a plugin's record in the quarantines bucket, and the
/// prefix of its dead letters' keys.
pub fn plugin_key(tenant: &str, plugin: &str) -> String {
    format!("{tenant}.{plugin}")
}

/// The key of a plugin's records of one partition in the cursors,
/// commits and leases buckets: `<tenant>.<plugin>.<partition>` (tenant and
/// plugin names are `a-z 0-9 - _`, the partition decimal digits: valid KV
/// key tokens as they are).
pub fn partition_key(tenant: &str, plugin: &str, partition: Partition) -> String {
    format!("{tenant}.{plugin}.{partition}")
}

/// The tenant, plugin and partition a [`partition_key`] names.
pub fn parse_partition_key(key: &str) -> Option<(&str, &str, Partition)> {
    let mut parts = key.split('.');
    let (tenant, plugin, partition) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tenant.is_empty() || plugin.is_empty() {
        return None;
    }
    Some((tenant, plugin, partition.parse().ok()?))
}

/// The key of one of a plugin's state entries.
pub fn state_key(tenant: &str, plugin: &str, key: &str) -> String {
    format!(
        "{tenant}.{plugin}.k{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    )
}

/// The state key a bucket key names, for one of `plugin`'s keys.
pub fn state_key_of(tenant: &str, plugin: &str, bucket_key: &str) -> Option<String> {
    let encoded = bucket_key
        .strip_prefix(tenant)?
        .strip_prefix('.')?
        .strip_prefix(plugin)?
        .strip_prefix(".k")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The key of `plugin`'s dead letter of the event at `seq`.
pub fn dead_letter_key(tenant: &str, plugin: &str, seq: u64) -> String {
    format!("{tenant}.{plugin}.{seq}")
}

/// The message id of a published event: the same for the same (tenant,
/// source, id), whatever their characters, so that JetStream's duplicate
/// window refuses a second copy.
pub fn ingest_id(tenant: &str, source: &str, id: &str) -> String {
    let mut hash = sha2::Sha256::new();
    for part in [tenant, source, id] {
        // Length-prefixed: ("a", "bc") and ("ab", "c") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    // Hex by table: this runs for every published event, and a `format!`
    // per byte showed in the client's profile.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = hash.finalize();
    let mut message_id = String::with_capacity(3 + 2 * digest.len());
    message_id.push_str("in-");
    for byte in digest.iter() {
        message_id.push(char::from(HEX[usize::from(byte >> 4)]));
        message_id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    message_id
}

/// The message id of the `index`th event emitted by commit number `commit`
/// of `plugin` of `tenant` in `partition` (each partition numbers its own
/// commits): a commit applied again publishes duplicates.
pub fn emit_id(
    tenant: &str,
    plugin: &str,
    partition: Partition,
    commit: u64,
    index: usize,
) -> String {
    format!("em-{tenant}.{plugin}.{partition}.{commit}.{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_tenants() {
        let names = Names::new(&Prefix::new("pos").expect("a prefix"));
        assert_eq!(names.events_subject("acme", 0), "pos.events.acme.0");
        assert_eq!(names.events_subject("acme", 17), "pos.events.acme.17");
        assert_eq!(names.tenant_events("acme"), "pos.events.acme.*");
        assert_eq!(names.events_wildcard(), "pos.events.*.*");
        assert_eq!(names.tenant_of("pos.events.acme.3"), Some("acme"));
        assert_eq!(names.partition_of("pos.events.acme.3"), Some(("acme", 3)));
        assert_eq!(names.tenant_of("pos.events.acme"), None);
        assert_eq!(names.tenant_of("pos.events.acme.x"), None);
        assert_eq!(names.tenant_of("pos.events.acme.1.2"), None);
        assert_eq!(names.tenant_of("pos.events..1"), None);
        assert_eq!(names.tenant_of("pos.events."), None);
        assert_eq!(names.tenant_of("pos.emits.acme.p"), None);
        assert_eq!(names.tenant_of("posx.events.acme"), None);
        assert_eq!(names.bucket("state"), "pos_state");
        assert_eq!(names.events_stream, "pos_events");
    }

    #[test]
    fn any_state_key_round_trips() {
        for key in ["", "order-1", "a.b c/d>*", "ünï", "k.k"] {
            let bucket_key = state_key("acme", "p", key);
            assert!(
                bucket_key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{bucket_key}"
            );
            assert_eq!(state_key_of("acme", "p", &bucket_key).as_deref(), Some(key));
            assert_eq!(state_key_of("acme", "q", &bucket_key), None);
        }
    }

    #[test]
    fn partition_keys_round_trip_and_emit_ids_differ_by_partition() {
        let key = partition_key("acme", "order-saga", 12);
        assert_eq!(key, "acme.order-saga.12");
        assert_eq!(parse_partition_key(&key), Some(("acme", "order-saga", 12)));
        assert_eq!(parse_partition_key("acme.order-saga"), None);
        assert_eq!(parse_partition_key("acme.p.1.2"), None);
        assert_ne!(emit_id("t", "p", 0, 1, 0), emit_id("t", "p", 1, 1, 0));
    }

    #[test]
    fn ingest_ids_differ_by_every_part() {
        let a = ingest_id("t", "ab", "c");
        assert_eq!(a, ingest_id("t", "ab", "c"));
        assert_ne!(a, ingest_id("t", "a", "bc"));
        assert_ne!(a, ingest_id("u", "ab", "c"));
        assert!(a.len() < 80);
    }

    #[test]
    fn an_ingest_id_stays_what_earlier_versions_published() {
        // Computed apart (Python's hashlib): a change here would let a copy
        // published by an older host through the duplicate window.
        assert_eq!(
            ingest_id("t", "ab", "c"),
            "in-5f1b7221d29b9680e382786bd9ef51df583533170a405633ba5b9ba7a3c2bd2e"
        );
    }
}
