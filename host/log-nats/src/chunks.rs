//! Records larger than one message: a commit record or a dead letter whose
//! JSON passes the server's `max_payload` (less [`crate::HEADER_ROOM`]) is
//! stored in parts in the bucket `<prefix>_chunks`, and the record itself
//! keeps only a [`Chunked`] naming them.
//!
//! # Keys
//! The parts of a body are `<base>.<hash>.<i>`, `i` from 0: `base` says
//! whose record it is (`c.<commit key>.<n>` for commit number `n` of a
//! plugin, `d.<dead letter key>` for a dead letter) and `hash` is the
//! first 16 bytes of the SHA-256 of the whole body, in hex. So the parts
//! of one body are written under the same keys however often they are
//! written (a retry stores nothing new), and two different bodies never
//! share a key: a writer whose claim lost never overwrites the parts the
//! winner's record names.
//!
//! # Order, and what a crash leaves
//! The parts are written (and acknowledged) before the record that names
//! them, and removed only after that record is replaced, applied or
//! deleted. A crash between the two leaves parts no record names: they
//! take room until swept (commits: see `progress`; dead letters: until the
//! same body is written again, which reuses them), and are never read.

use futures::TryStreamExt as _;
use plugbus_log::LogError;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::Inner;

/// Where a record's body is, when it did not fit in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chunked {
    /// The hash that names the parts (see the module's documentation).
    pub(crate) hash: String,
    /// How many parts.
    pub(crate) parts: u32,
    /// The body's size, in bytes.
    pub(crate) bytes: u64,
}

impl Chunked {
    /// The key of part `i` of this body under `base`.
    fn key(&self, base: &str, i: u32) -> String {
        format!("{base}.{}.{i}", self.hash)
    }
}

/// The hash that names `body`'s parts.
fn hash(body: &[u8]) -> String {
    let digest = sha2::Sha256::digest(body);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Stores `body` in parts under `base`; answers what names them. Each part
/// is acknowledged before this answers.
pub(crate) async fn put(inner: &Inner, base: &str, body: &[u8]) -> Result<Chunked, LogError> {
    let room = usize::try_from(inner.max_record_bytes())
        .unwrap_or(usize::MAX)
        .max(1);
    let parts = u32::try_from(body.len().div_ceil(room)).map_err(|e| {
        inner.error(
            format!("store {} bytes in parts under {base}", body.len()),
            e,
        )
    })?;
    let chunked = Chunked {
        hash: hash(body),
        parts,
        bytes: body.len() as u64,
    };
    let store = &inner.buckets.chunks;
    futures::future::try_join_all(body.chunks(room).zip(0..).map(|(part, i)| {
        let key = chunked.key(base, i);
        async move {
            store
                .put(&key, part.to_vec().into())
                .await
                .map_err(|e| inner.error(format!("write {key} in the bucket {}", store.name), e))
        }
    }))
    .await?;
    Ok(chunked)
}

/// The body `chunked` names under `base`, whole. A part that is missing
/// or a body that does not match its hash is a corrupt record: the parts
/// were removed because the record was applied or replaced meanwhile (the
/// caller reads the record again), or changed by something else.
pub(crate) async fn get(inner: &Inner, base: &str, chunked: &Chunked) -> Result<Vec<u8>, LogError> {
    let store = &inner.buckets.chunks;
    let parts = futures::future::try_join_all((0..chunked.parts).map(|i| {
        let key = chunked.key(base, i);
        async move {
            store
                .get(&key)
                .await
                .map_err(|e| inner.error(format!("read {key} in the bucket {}", store.name), e))?
                .ok_or_else(|| {
                    inner.corrupt(format!("{}/{key}", store.name), "the part is missing")
                })
        }
    }))
    .await?;
    let mut body = Vec::with_capacity(usize::try_from(chunked.bytes).unwrap_or(0));
    for part in parts {
        body.extend_from_slice(&part);
    }
    if body.len() as u64 != chunked.bytes || hash(&body) != chunked.hash {
        return Err(inner.corrupt(
            format!("{}/{base}.{}", store.name, chunked.hash),
            "the parts do not add up to the body their record names",
        ));
    }
    Ok(body)
}

/// Removes the parts `chunked` names under `base`, markers and all.
/// Idempotent.
pub(crate) async fn remove(inner: &Inner, base: &str, chunked: &Chunked) -> Result<(), LogError> {
    purge(inner, &format!("{base}.{}.>", chunked.hash)).await
}

/// Removes every message of the keys `filter` (with wildcards) matches in
/// the chunks bucket, leaving no marker.
async fn purge(inner: &Inner, filter: &str) -> Result<(), LogError> {
    let store = &inner.buckets.chunks;
    store
        .stream
        .purge()
        .filter(format!("{}{filter}", store.prefix))
        .await
        .map(drop)
        .map_err(|e| inner.error(format!("remove {filter} in the bucket {}", store.name), e))
}

/// Removes every part under `prefix` (`<prefix>.…`) whose key, past the
/// prefix and its dot, `doomed` answers true for; answers how many went.
pub(crate) async fn sweep(
    inner: &Inner,
    prefix: &str,
    doomed: impl Fn(&str) -> bool,
) -> Result<usize, LogError> {
    let store = &inner.buckets.chunks;
    let operation = || format!("list {prefix}.> in the bucket {}", store.name);
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{}{prefix}.>", store.prefix))
        .await
        .map_err(|e| inner.error(operation(), e))?
        .try_collect()
        .await
        .map_err(|e| inner.error(operation(), e))?;
    let keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| {
            let key = subject.strip_prefix(store.prefix.as_str())?;
            let rest = key.strip_prefix(prefix)?.strip_prefix('.')?;
            doomed(rest).then(|| key.to_owned())
        })
        .collect();
    let count = keys.len();
    futures::future::try_join_all(keys.iter().map(|key| purge(inner, key))).await?;
    Ok(count)
}
