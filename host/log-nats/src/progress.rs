//! The progress roles: each plugin's cursor and what it finished ahead
//! ([`CursorStore`]), the [`Commit`] protocol (written whole, then applied
//! step by step, applied again after a crash), the plugins' state
//! ([`StateStore`]), and what operators inspect ([`InspectStore`]).
//!
//! # The commit protocol
//! A plugin's records are two keys, `<tenant>.<plugin>` in the buckets
//! `plugbus_cursors` ([`CursorRecord`]: the cursor, what was finished
//! ahead, and the number of the last commit applied) and
//! `plugbus_commits` ([`CommitRecord`]: the last commit with effects,
//! numbered). A [`Commit`] with effects (emitted events, state writes,
//! dead letters, redriven dead letters):
//! 1. reads both records (or uses what this log cached of them); a commit
//!    record newer than the cursor record's `applied` is applied first
//!    (see below);
//! 2. claims the number `n = applied + 1` by writing its commit record
//!    with the record's last revision expected, so that two writers never
//!    use one number (the emitted events' message ids derive from it);
//! 3. publishes the emitted events, writes the state (the last write of
//!    each key, all keys at once) and stores the dead letters, each step
//!    idempotent;
//! 4. writes the cursor record (`applied: n`; the cursor unless
//!    [`Commit::expected`] differs from the stored cursor) with its last
//!    revision expected. On a conflict it reads the record again and
//!    decides `expected` again; a writer that finds `applied >= n` knows
//!    someone else applied its commit.
//!
//! # A commit record larger than a message
//! A commit record whose JSON passes the server's `max_payload` (less
//! 1 KiB for headers) is written in parts at step 2 (see `chunks`): its
//! parts first, each acknowledged, under `c.<key>.<n>.<hash>.<i>` in
//! `plugbus_chunks`; then the claim, a small commit record with the same
//! number that names them (`chunks`). A reader that finds such a record
//! unapplied reads the parts and applies the whole. Once the commit is
//! applied (step 4 written), the parts of every commit of the plugin
//! numbered `applied` or lower are removed. Which crash leaves what:
//! - while writing the parts, or after them but before the claim: parts
//!   no record names, numbered `n`. Nothing was claimed: the commit was
//!   not made (the caller got no answer, and its events are delivered
//!   again). The next commit claims `n` itself (its own body, its own
//!   parts) and, once applied, removes the dead host's parts with its
//!   own;
//! - after the claim, before step 4: the record names parts that are all
//!   there (they were acknowledged before it); the next reader applies
//!   the whole commit as any other, then removes the parts;
//! - after step 4, before the parts are removed: the record is applied,
//!   so it is never read whole again; the next reader of the plugin's
//!   records (its consumer at start, any cursor read) removes the parts.
//!
//! A writer whose claim loses to another's removes the parts it wrote:
//! they carry the hash of its own body, so they are never the winner's.
//! A reader that finds parts missing while it reads them (the commit was
//! applied and its parts removed meanwhile) reads the records again.
//!
//! [`EventStore::max_event_bytes`]: plugbus_log::EventStore::max_event_bytes
//!
//! A commit of only a cursor (and what was finished ahead) is step 4
//! alone, without a number. Whoever reads a plugin's cursor ([`cursor`],
//! [`ahead`], [`cursor_of`], and every commit) and finds a commit record
//! whose number is past `applied` applies steps 3 and 4 for it first: a
//! host that died after step 2 leaves its commit to the next reader, whole.
//!
//! # Limits
//! - A reader on another host (an operator's `status`, retention) that
//!   reads a plugin's cursor while its owner is in the middle of a commit
//!   applies that commit too, at the same time as the owner. Both apply
//!   the same writes, so that is harmless unless the reader is so slow
//!   that the owner has applied a later commit in between: the reader's
//!   late state writes then overwrite the later ones. Leases make the
//!   owner the only one that need apply a commit left alone; readers that
//!   do not hold the plugin's lease could leave a recent commit record to
//!   its owner.
//! - A commit whose emitted events or state values include one larger than
//!   a message may carry ([`EventStore::max_event_bytes`]) is refused
//!   whole before step 2 ([`LogError::TooLarge`]): it could never be
//!   applied. The runtime refuses such an emit or state write first.
//! - A state write outside a commit ([`StateStore::apply`]) is not all or
//!   none across keys.
//!
//! [`cursor`]: CursorStore::cursor
//! [`ahead`]: CursorStore::ahead

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use plugbus_core::event::Event;
use plugbus_core::state::{StateError, StateStore, StateWrite};
use plugbus_log::{
    Commit, Committed, CursorStore, DeadLetter, FailedAttempt, InspectStore, LogError, Page,
    Partition, ReadLimit, Reply, Seq, StateEntry, StateQuery, StoredEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chunks::{self, Chunked};
use crate::{Inner, NatsLog, events, letters, names};

/// How many times a write of a plugin's records is tried again when
/// another writer changed them in between, before the commit fails.
const TRIES: usize = 10;

/// How many state values or events one inspection reads at once.
const READ_AHEAD: usize = 16;

/// A plugin's record in `plugbus_cursors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorRecord {
    /// The position of the last event the plugin is finished with; `null`
    /// when a commit of it was applied before it had a cursor.
    pub(crate) cursor: Option<Seq>,
    /// What the plugin finished past its cursor, in order.
    #[serde(default)]
    pub(crate) ahead: Vec<Seq>,
    /// The number of the last commit record applied (0: none).
    #[serde(default)]
    pub(crate) applied: u64,
    /// The newest lease epoch a commit was made under (0: none): a commit
    /// under an older one comes from a host that lost the plugin, and is
    /// refused.
    #[serde(default)]
    pub(crate) epoch: u64,
}

/// A plugin's record in `plugbus_commits`: its last commit with effects,
/// whole, with its number.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CommitRecord {
    /// Its number: the cursor record's `applied` once it is applied.
    pub(crate) n: u64,
    /// The plugin's tenant.
    pub(crate) tenant: String,
    /// The plugin.
    pub(crate) plugin: String,
    /// See [`Commit::partition`].
    #[serde(default)]
    pub(crate) partition: Partition,
    /// See [`Commit::cursor`].
    pub(crate) cursor: Seq,
    /// See [`Commit::expected`].
    #[serde(default)]
    pub(crate) expected: Option<Seq>,
    /// The emitted events, each as the events role stores it (its
    /// CloudEvents JSON).
    #[serde(default)]
    pub(crate) emitted: Vec<Box<RawValue>>,
    /// See [`Commit::dead_letters`].
    #[serde(default)]
    pub(crate) dead_letters: Vec<DeadLetterRecord>,
    /// See [`Commit::state`].
    #[serde(default)]
    pub(crate) state: Vec<StateWriteRecord>,
    /// See [`Commit::redriven`].
    #[serde(default)]
    pub(crate) redriven: Vec<Seq>,
    /// See [`Commit::ahead`].
    #[serde(default)]
    pub(crate) ahead: Vec<Seq>,
    /// See [`Commit::lease`].
    #[serde(default)]
    pub(crate) lease: Option<u64>,
    /// Set when the whole record did not fit in one message: it is stored
    /// in parts (see [`claim_body`]), and this record holds only its
    /// number, its plugin and its cursor besides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) chunks: Option<Chunked>,
}

/// A dead letter in a [`CommitRecord`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeadLetterRecord {
    /// The event's position.
    pub(crate) seq: Seq,
    /// The event's CloudEvents JSON.
    pub(crate) event: Box<RawValue>,
    /// Its failed attempts, oldest first.
    pub(crate) attempts: Vec<FailedAttempt>,
}

/// A state write in a [`CommitRecord`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StateWriteRecord {
    /// The key.
    pub(crate) key: String,
    /// The value in standard base64, or `null` to delete the key.
    pub(crate) value: Option<String>,
}

/// Why a record could not be written; the source of a
/// [`LogError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// Other writers kept changing the plugin's records.
    #[error(
        "the record {key} changed under every one of {tries} tries: another host commits for the plugin"
    )]
    Contended {
        /// The record's key.
        key: String,
        /// How many tries were made.
        tries: usize,
    },
    /// Something that cannot go into a record.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
}

/// What the progress role keeps in memory: per plugin, a lock that
/// serializes this log's commits of it, and what it last knew of the
/// plugin's records (checked by every write's expected revision).
#[derive(Debug, Default)]
pub(crate) struct ProgressState {
    plugins: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<View>>>>>,
}

impl ProgressState {
    /// The lock and cache of the plugin whose records are at `key`.
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<View>>> {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins.entry(key.to_owned()).or_default().clone()
    }
}

/// What is known of a plugin's two records.
#[derive(Debug, Clone, Default)]
struct View {
    /// The cursor record (default when there is none).
    cursor: CursorRecord,
    /// Its revision; 0 when there is none.
    cursor_rev: u64,
    /// The revision of the commit record; 0 when there is none.
    commit_rev: u64,
    /// Read from the buckets just now, not from the cache.
    fresh: bool,
}

/// A plugin in one partition: its tenant, its name, the partition, and
/// the key of its records.
struct Plugin<'a> {
    tenant: &'a str,
    plugin: &'a str,
    partition: Partition,
    key: String,
}

impl<'a> Plugin<'a> {
    fn new(tenant: &'a str, plugin: &'a str, partition: Partition) -> Self {
        Self {
            tenant,
            plugin,
            partition,
            key: names::partition_key(tenant, plugin, partition),
        }
    }
}

/// The cursor of `plugin` of `tenant`: the lowest of its partitions'
/// cursors (`None` while none has one), after applying each partition's
/// last commit if that was not applied yet (a host died in the middle of
/// it).
pub(crate) async fn cursor_of(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
) -> Result<Option<Seq>, LogError> {
    let mut lowest: Option<Seq> = None;
    for partition in 0..inner.partitions() {
        if let Some(cursor) = settled(inner, tenant, plugin, partition).await?.cursor {
            lowest = Some(lowest.map_or(cursor, |l| l.min(cursor)));
        }
    }
    Ok(lowest)
}

/// The cursor of `plugin` of `tenant` in `partition` as stored, without
/// applying an unfinished commit.
pub(crate) async fn stored_cursor(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    partition: Partition,
) -> Result<Option<Seq>, LogError> {
    let key = names::partition_key(tenant, plugin, partition);
    Ok(entry::<CursorRecord>(inner, &inner.buckets.cursors, &key)
        .await?
        .and_then(|(record, _)| record)
        .and_then(|record| record.cursor))
}

/// The newest lease epoch a commit of `plugin` of `tenant` was made under,
/// as its cursor record stores it (0: none): the fence a new lease's epoch
/// must pass (see `leases`).
pub(crate) async fn fenced_epoch(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    partition: Partition,
) -> Result<u64, LogError> {
    let key = names::partition_key(tenant, plugin, partition);
    Ok(entry::<CursorRecord>(inner, &inner.buckets.cursors, &key)
        .await?
        .and_then(|(record, _)| record)
        .map_or(0, |record| record.epoch))
}

/// The cursor record of `plugin` of `tenant` as it is now, after applying
/// its last commit if that was not applied yet.
async fn settled(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    partition: Partition,
) -> Result<CursorRecord, LogError> {
    let who = Plugin::new(tenant, plugin, partition);
    let slot = inner.progress_state.slot(&who.key);
    let mut cached = slot.lock().await;
    *cached = None;
    let view = fresh_view(inner, &who).await?;
    let record = view.cursor.clone();
    *cached = Some(view);
    Ok(record)
}

/// Reads the plugin's records; applies its commit record first when that
/// is newer than the cursor record's `applied`.
async fn fresh_view(inner: &Inner, who: &Plugin<'_>) -> Result<View, LogError> {
    let (view, record) = read_records(inner, who).await?;
    let (mut view, record) = match whole_record(inner, who, record, view.cursor.applied).await {
        Ok(record) => (view, record),
        // The parts went while they were read: applied meanwhile, so
        // the records have changed; read them again.
        Err(LogError::CorruptRecord { .. }) => {
            let (view, record) = read_records(inner, who).await?;
            let record = whole_record(inner, who, record, view.cursor.applied).await?;
            (view, record)
        }
        Err(e) => return Err(e),
    };
    if let Some(record) = record
        && record.n > view.cursor.applied
    {
        let (n, chunked) = (record.n, record.chunks.is_some());
        let commit = record
            .into_commit(who.tenant, who.plugin, who.partition)
            .map_err(|reason| {
                inner.corrupt(
                    format!("{}/{}", inner.buckets.commits.name, who.key),
                    reason,
                )
            })?;
        tracing::info!(
            tenant = %who.tenant,
            plugin = %who.plugin,
            commit = n,
            "applying a commit a host did not finish"
        );
        apply_effects(inner, who, n, &commit, Applier::Recovery).await?;
        move_cursor(inner, who, &mut view, &commit, Some(n)).await?;
        if chunked {
            sweep_chunks(inner, who, view.cursor.applied).await;
        }
    }
    Ok(view)
}

/// Both records of a plugin, read at once.
async fn read_records(
    inner: &Inner,
    who: &Plugin<'_>,
) -> Result<(View, Option<CommitRecord>), LogError> {
    let (cursor, commit) = tokio::try_join!(
        entry::<CursorRecord>(inner, &inner.buckets.cursors, &who.key),
        entry::<CommitRecord>(inner, &inner.buckets.commits, &who.key),
    )?;
    let mut view = View {
        fresh: true,
        ..View::default()
    };
    if let Some((record, revision)) = cursor {
        view.cursor_rev = revision;
        view.cursor = record.unwrap_or_default();
    }
    let mut record = None;
    if let Some((commit, revision)) = commit {
        view.commit_rev = revision;
        record = commit;
    }
    Ok((view, record))
}

/// The record at `key` in `bucket` (`None` when deleted) and its
/// revision, if the key has any.
async fn entry<T: serde::de::DeserializeOwned>(
    inner: &Inner,
    bucket: &kv::Store,
    key: &str,
) -> Result<Option<(Option<T>, u64)>, LogError> {
    let entry = bucket
        .entry(key)
        .await
        .map_err(|e| inner.error(format!("read {}/{key}", bucket.name), e))?;
    let Some(entry) = entry else {
        return Ok(None);
    };
    if !matches!(entry.operation, kv::Operation::Put) {
        return Ok(Some((None, entry.revision)));
    }
    let record = serde_json::from_slice(&entry.value)
        .map_err(|e| inner.corrupt(format!("{}/{key}", bucket.name), e))?;
    Ok(Some((Some(record), entry.revision)))
}

/// Whether a write failed only because the record's revision was not the
/// one expected.
fn conflict(error: &kv::UpdateError) -> bool {
    matches!(error.kind(), kv::UpdateErrorKind::WrongLastRevision)
}

impl CommitRecord {
    /// The record of `commit`, numbered `n`.
    fn of(commit: &Commit, n: u64) -> Result<Self, ProgressError> {
        let raw = |json: String| RawValue::from_string(json).map_err(ProgressError::Encode);
        let base64 = base64::engine::general_purpose::STANDARD;
        Ok(Self {
            n,
            tenant: commit.tenant.clone(),
            plugin: commit.plugin.clone(),
            partition: commit.partition,
            cursor: commit.cursor,
            expected: commit.expected,
            emitted: commit
                .emitted
                .iter()
                .map(|event| raw(event.to_json_string()))
                .collect::<Result<_, _>>()?,
            dead_letters: commit
                .dead_letters
                .iter()
                .map(|dead| {
                    Ok(DeadLetterRecord {
                        seq: dead.seq,
                        event: raw(dead.event.to_json_string())?,
                        attempts: dead.attempts.clone(),
                    })
                })
                .collect::<Result<_, ProgressError>>()?,
            state: commit
                .state
                .iter()
                .map(|write| StateWriteRecord {
                    key: write.key.clone(),
                    value: write.value.as_ref().map(|v| base64.encode(v)),
                })
                .collect(),
            redriven: commit.redriven.clone(),
            ahead: commit.ahead.clone(),
            lease: commit.lease,
            chunks: None,
        })
    }

    /// The commit this record holds, for `plugin` of `tenant` in
    /// `partition`; why not, when it does not parse as one.
    fn into_commit(
        self,
        tenant: &str,
        plugin: &str,
        partition: Partition,
    ) -> Result<Commit, String> {
        if self.tenant != tenant || self.plugin != plugin || self.partition != partition {
            return Err(format!(
                "it holds a commit of {}/{} in partition {}",
                self.tenant, self.plugin, self.partition
            ));
        }
        let event =
            |raw: &RawValue| Event::from_json(raw.get()).map_err(|e| format!("an event: {e}"));
        let base64 = base64::engine::general_purpose::STANDARD;
        Ok(Commit {
            emitted: self
                .emitted
                .iter()
                .map(|raw| event(raw))
                .collect::<Result<_, _>>()?,
            dead_letters: self
                .dead_letters
                .into_iter()
                .map(|dead| {
                    Ok(DeadLetter {
                        seq: dead.seq,
                        event: event(&dead.event)?,
                        attempts: dead.attempts,
                    })
                })
                .collect::<Result<_, String>>()?,
            state: self
                .state
                .into_iter()
                .map(|write| {
                    let value = write
                        .value
                        .map(|v| base64.decode(v))
                        .transpose()
                        .map_err(|e| format!("the state key {:?}: {e}", write.key))?;
                    Ok(StateWrite {
                        key: write.key,
                        value,
                    })
                })
                .collect::<Result<_, String>>()?,
            redriven: self.redriven,
            ahead: self.ahead,
            cursor: self.cursor,
            expected: self.expected,
            lease: self.lease,
            tenant: self.tenant,
            plugin: self.plugin,
            partition: self.partition,
        })
    }
}

/// Whether `commit` does more than move a cursor.
fn has_effects(commit: &Commit) -> bool {
    !(commit.emitted.is_empty()
        && commit.state.is_empty()
        && commit.dead_letters.is_empty()
        && commit.redriven.is_empty())
}

/// What applying a commit's effects produced.
struct Effects {
    emitted: Vec<Seq>,
    refused_dead_letters: Vec<Seq>,
}

/// Who applies a commit's effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applier {
    /// The writer that claimed the commit's number.
    Claimant,
    /// A reader that found the commit unfinished: it may be late, after
    /// the claimant finished this commit and began the next.
    Recovery,
}

/// Steps 3 of the protocol for commit number `n`: its emitted events, its
/// state writes and its dead letters, at once. Each is idempotent.
async fn apply_effects(
    inner: &Inner,
    who: &Plugin<'_>,
    n: u64,
    commit: &Commit,
    applier: Applier,
) -> Result<Effects, LogError> {
    let emitted = async {
        if commit.emitted.is_empty() {
            return Ok(Vec::new());
        }
        events::publish_emitted(
            inner,
            who.tenant,
            who.plugin,
            (who.partition, n),
            &commit.emitted,
        )
        .await
    };
    let state = write_commit_state(inner, who, n, &commit.state, applier);
    let letters = async {
        if !commit.redriven.is_empty() {
            letters::drop_redriven(inner, who.tenant, who.plugin, &commit.redriven).await?;
        }
        if commit.dead_letters.is_empty() {
            return Ok(Vec::new());
        }
        letters::store_dead_letters(inner, who.tenant, who.plugin, &commit.dead_letters).await
    };
    let (emitted, (), refused_dead_letters) = tokio::try_join!(emitted, state, letters)?;
    Ok(Effects {
        emitted,
        refused_dead_letters,
    })
}

/// Applies the state writes of commit number `n`: the last write of each
/// key, all keys at once, each only over the revision of the key read
/// just before.
///
/// A recovering reader ([`Applier::Recovery`]) drops a write that meets
/// another revision: someone else wrote the key since, either this same
/// commit (the claimant, or another reader) or a later one, which must not
/// be undone. That also holds for a write the client kept while
/// disconnected and sends late. It first checks, after reading the
/// revisions, that the commit is still unapplied: then no later commit can
/// have begun, and any that begins changes the revisions it is about to
/// write over.
///
/// The claimant ([`Applier::Claimant`]) meets another revision also when
/// another partition of the plugin wrote the key meanwhile (partitions
/// run at once, on one host or several): it reads the revision again,
/// checks as a reader does that its commit is still unapplied (else a
/// reader applied it, and a later commit may have written since), and
/// writes again — the last writer wins between partitions.
async fn write_commit_state(
    inner: &Inner,
    who: &Plugin<'_>,
    n: u64,
    writes: &[StateWrite],
    applier: Applier,
) -> Result<(), LogError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut last: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
    for write in writes {
        last.insert(&write.key, write.value.as_deref());
    }
    let revisions =
        futures::future::try_join_all(last.keys().map(|key| key_revision(inner, who, key))).await?;
    if applier == Applier::Recovery && applied_already(inner, who, n).await? {
        return Ok(());
    }
    futures::future::try_join_all(last.into_iter().zip(revisions).map(
        |((key, value), revision)| async move {
            let mut revision = revision;
            for _ in 0..TRIES {
                if write_key(inner, who, key, value, revision).await? {
                    return Ok(());
                }
                if applier == Applier::Recovery {
                    return Ok(());
                }
                revision = key_revision(inner, who, key).await?;
                if applied_already(inner, who, n).await? {
                    return Ok(());
                }
            }
            let bucket_key = names::state_key(who.tenant, who.plugin, key);
            Err(inner.error(
                format!("write the state key {bucket_key}"),
                ProgressError::Contended {
                    key: bucket_key.clone(),
                    tries: TRIES,
                },
            ))
        },
    ))
    .await
    .map(drop)
}

/// The revision of the plugin's state key `key`, and whether it holds a
/// value (not a deletion); `None` when the key was never written.
async fn key_revision(
    inner: &Inner,
    who: &Plugin<'_>,
    key: &str,
) -> Result<Option<(u64, bool)>, LogError> {
    let bucket_key = names::state_key(who.tenant, who.plugin, key);
    let entry = inner
        .buckets
        .state
        .entry(&bucket_key)
        .await
        .map_err(|e| inner.error(format!("read the state key {bucket_key}"), e))?;
    Ok(entry.map(|e| (e.revision, matches!(e.operation, kv::Operation::Put))))
}

/// Whether the partition's cursor record says commit `n` is applied.
async fn applied_already(inner: &Inner, who: &Plugin<'_>, n: u64) -> Result<bool, LogError> {
    let applied = entry::<CursorRecord>(inner, &inner.buckets.cursors, &who.key)
        .await?
        .and_then(|(record, _)| record)
        .map_or(0, |record| record.applied);
    Ok(applied >= n)
}

/// Writes `value` (or deletes, `None`) at the plugin's state key `key`
/// over `revision`; false when the key has another revision now.
async fn write_key(
    inner: &Inner,
    who: &Plugin<'_>,
    key: &str,
    value: Option<&[u8]>,
    revision: Option<(u64, bool)>,
) -> Result<bool, LogError> {
    let bucket = &inner.buckets.state;
    let bucket_key = names::state_key(who.tenant, who.plugin, key);
    let written: Result<bool, Box<dyn std::error::Error + Send + Sync>> = match (value, revision) {
        (Some(value), revision) => match bucket
            .update(
                &bucket_key,
                value.to_vec().into(),
                revision.map_or(0, |(r, _)| r),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        },
        // Nothing to delete.
        (None, None | Some((_, false))) => Ok(true),
        (None, Some((revision, true))) => {
            match bucket
                .delete_expect_revision(&bucket_key, Some(revision))
                .await
            {
                Ok(()) => Ok(true),
                Err(e) if matches!(e.kind(), kv::DeleteErrorKind::WrongLastRevision) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    };
    written.map_err(|e| inner.error(format!("write the state key {bucket_key}"), e))
}

/// Applies `writes` to the state of `plugin` of `tenant`, outside any
/// commit: the last write of each key, all keys at once (writes of
/// different keys commute, and of one key only the last counts).
async fn write_state(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    writes: &[StateWrite],
) -> Result<(), LogError> {
    let mut last: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
    for write in writes {
        last.insert(&write.key, write.value.as_deref());
    }
    let bucket = &inner.buckets.state;
    futures::future::try_join_all(last.into_iter().map(|(key, value)| async move {
        let bucket_key = names::state_key(tenant, plugin, key);
        match value {
            Some(value) => bucket
                .put(&bucket_key, value.to_vec().into())
                .await
                .map(drop)
                .map_err(|e| inner.error(format!("write the state key {bucket_key}"), e)),
            None => bucket
                .delete(&bucket_key)
                .await
                .map_err(|e| inner.error(format!("delete the state key {bucket_key}"), e)),
        }
    }))
    .await
    .map(drop)
}

/// The cursor record after `commit` (numbered `n`, or `None` for a commit
/// of only a cursor) on top of `current`, and whether the cursor moves.
fn next_record(current: &CursorRecord, commit: &Commit, n: Option<u64>) -> (CursorRecord, bool) {
    let applied = n.map_or(current.applied, |n| n.max(current.applied));
    let epoch = commit.lease.map_or(current.epoch, |e| e.max(current.epoch));
    match commit.expected {
        // Moved by force (an operator's replay): what was finished ahead
        // is to be delivered again.
        None => (
            CursorRecord {
                cursor: Some(commit.cursor),
                ahead: Vec::new(),
                applied,
                epoch,
            },
            true,
        ),
        Some(expected) if current.cursor == Some(expected) => {
            let mut ahead: Vec<Seq> = current
                .ahead
                .iter()
                .chain(&commit.ahead)
                .copied()
                .filter(|seq| *seq > commit.cursor)
                .collect();
            ahead.sort_unstable();
            ahead.dedup();
            (
                CursorRecord {
                    cursor: Some(commit.cursor),
                    ahead,
                    applied,
                    epoch,
                },
                true,
            )
        }
        Some(_) => (
            CursorRecord {
                applied,
                epoch,
                ..current.clone()
            },
            false,
        ),
    }
}

/// Step 4: writes the cursor record after `commit` (numbered `n`) with
/// the revision `view` knows expected; on a conflict reads the record
/// again and decides again. Answers whether the cursor moved; `view` is
/// left as written.
async fn move_cursor(
    inner: &Inner,
    who: &Plugin<'_>,
    view: &mut View,
    commit: &Commit,
    n: Option<u64>,
) -> Result<bool, LogError> {
    let bucket = &inner.buckets.cursors;
    for _ in 0..TRIES {
        if let Some(n) = n
            && view.cursor.applied >= n
        {
            // Someone else applied this very commit (a reader that found
            // it unapplied), deciding `expected` themselves: a forced move
            // moved; otherwise, as far as the cursor now tells.
            return Ok(commit.expected.is_none() || view.cursor.cursor == Some(commit.cursor));
        }
        fenced(inner, who, &view.cursor, commit)?;
        let (next, moved) = next_record(&view.cursor, commit, n);
        if next == view.cursor && view.fresh {
            return Ok(moved);
        }
        if next != view.cursor {
            let json = serde_json::to_vec(&next).map_err(|e| {
                inner.error(
                    format!("write {}/{}", bucket.name, who.key),
                    ProgressError::Encode(e),
                )
            })?;
            match bucket.update(&who.key, json.into(), view.cursor_rev).await {
                Ok(revision) => {
                    view.cursor = next;
                    view.cursor_rev = revision;
                    return Ok(moved);
                }
                Err(e) if conflict(&e) => {}
                Err(e) => {
                    return Err(inner.error(format!("write {}/{}", bucket.name, who.key), e));
                }
            }
        }
        // Changed by someone else, or nothing to write as far as the cache
        // knows: read the record again.
        let (record, revision) = entry::<CursorRecord>(inner, bucket, &who.key)
            .await?
            .unwrap_or((None, 0));
        view.cursor = record.unwrap_or_default();
        view.cursor_rev = revision;
        view.fresh = true;
    }
    Err(inner.error(
        format!("write {}/{}", bucket.name, who.key),
        ProgressError::Contended {
            key: who.key.clone(),
            tries: TRIES,
        },
    ))
}

/// Refuses `commit` when it was made under a lease older than the newest
/// the plugin's cursor record has seen: its host lost the plugin to
/// another.
fn fenced(
    inner: &Inner,
    who: &Plugin<'_>,
    current: &CursorRecord,
    commit: &Commit,
) -> Result<(), LogError> {
    match commit.lease {
        Some(epoch) if epoch < current.epoch => {
            tracing::warn!(
                tenant = %who.tenant,
                plugin = %who.plugin,
                epoch,
                newer = current.epoch,
                "commit refused: another host holds the plugin now ({})",
                inner.backend
            );
            Err(LogError::LeaseLost {
                key: who.key.clone(),
                epoch,
                newer: current.epoch,
            })
        }
        _ => Ok(()),
    }
}

/// How long to wait before try number `tries` + 1 after a conflict: a
/// random time up to 2 ms, doubled with each try up to 64 ms.
fn backoff(tries: usize) -> Duration {
    use std::hash::BuildHasher as _;
    let most = 2u64 << tries.min(5);
    let random = std::hash::RandomState::new().hash_one(tries);
    Duration::from_micros(random % (most * 1000) + 1)
}

/// Commits `commit`: see the module's documentation.
async fn commit(inner: &Inner, commit: Commit) -> Result<Committed, LogError> {
    let who = Plugin::new(&commit.tenant, &commit.plugin, commit.partition);
    let slot = inner.progress_state.slot(&who.key);
    let mut cached = slot.lock().await;
    let mut view = match cached.take() {
        Some(view) => View {
            fresh: false,
            ..view
        },
        None => fresh_view(inner, &who).await?,
    };
    fenced(inner, &who, &view.cursor, &commit)?;
    fits(inner, &commit)?;
    // The first commit under a new lease goes through the commit record
    // even without effects: writing it changes the record's revision, so a
    // host that lost the lease and still commits effects fails its claim
    // (its expected revision is gone), reads again, and is refused above.
    // A commit of only a cursor by that host can still land between the
    // new holder's claim and its cursor write; the new holder's fence then
    // answers `cursor_moved: false`, and its consumer reads the cursor
    // again before it delivers anything.
    let fencing = commit.lease.is_some_and(|e| e > view.cursor.epoch);
    if !has_effects(&commit) && !fencing {
        let cursor_moved = move_cursor(inner, &who, &mut view, &commit, None).await?;
        *cached = Some(view);
        return Ok(Committed {
            emitted: Vec::new(),
            cursor_moved,
            refused_dead_letters: Vec::new(),
        });
    }
    let bucket = &inner.buckets.commits;
    let mut claimed = None;
    let mut chunked = false;
    for tries in 0..TRIES {
        let n = view.cursor.applied + 1;
        let (record, parts) = claim_body(inner, &who, &commit, n).await?;
        match bucket
            .update(&who.key, record.into(), view.commit_rev)
            .await
        {
            Ok(revision) => {
                view.commit_rev = revision;
                claimed = Some(n);
                chunked = parts.is_some();
                break;
            }
            // Another writer numbered a commit since: after a moment (so
            // that two writers do not collide again in step), read both
            // records again, applying theirs if it is not yet.
            Err(e) if conflict(&e) => {
                if let Some(parts) = &parts {
                    drop_parts(inner, &who, n, parts).await;
                }
                tokio::time::sleep(backoff(tries)).await;
                view = fresh_view(inner, &who).await?;
                fenced(inner, &who, &view.cursor, &commit)?;
            }
            Err(e) => return Err(inner.error(format!("write {}/{}", bucket.name, who.key), e)),
        }
    }
    let Some(n) = claimed else {
        return Err(inner.error(
            format!("write {}/{}", bucket.name, who.key),
            ProgressError::Contended {
                key: who.key.clone(),
                tries: TRIES,
            },
        ));
    };
    let effects = apply_effects(inner, &who, n, &commit, Applier::Claimant).await?;
    let cursor_moved = move_cursor(inner, &who, &mut view, &commit, Some(n)).await?;
    if chunked {
        sweep_chunks(inner, &who, view.cursor.applied).await;
    }
    *cached = Some(view);
    refused(&commit, &effects.refused_dead_letters);
    Ok(Committed {
        emitted: effects.emitted,
        cursor_moved,
        refused_dead_letters: effects.refused_dead_letters,
    })
}

/// Refuses `commit` whole, before anything of it is written, when one of
/// its emitted events or state values is larger than the log stores
/// ([`LogError::TooLarge`]): publishing it, or writing it, would fail at
/// every try, and the commit could never be applied. The runtime refuses
/// such an emit or state write to the plugin first (its bound is
/// [`EventStore::max_event_bytes`](plugbus_log::EventStore::max_event_bytes));
/// this is the last line, for a server whose limit shrank since.
fn fits(inner: &Inner, commit: &Commit) -> Result<(), LogError> {
    let limit = inner.max_record_bytes();
    for (index, event) in commit.emitted.iter().enumerate() {
        let bytes = event.to_json_string().len() as u64;
        if bytes > limit {
            return Err(inner.too_large(
                format!(
                    "the emitted event {index} of a commit of {}/{}",
                    commit.tenant, commit.plugin
                ),
                bytes,
                None,
            ));
        }
    }
    for write in &commit.state {
        let bytes = write.value.as_ref().map_or(0, |v| v.len() as u64);
        if bytes > limit {
            return Err(inner.too_large(
                format!(
                    "a state value of a commit of {}/{}",
                    commit.tenant, commit.plugin
                ),
                bytes,
                None,
            ));
        }
    }
    Ok(())
}

/// Where the parts of commit number `n` of a plugin go: `c.<key>.<n>`.
fn parts_base(who: &Plugin<'_>, n: u64) -> String {
    format!("{}.{n}", parts_prefix(who))
}

/// Where the parts of every commit of a plugin go: `c.<key>`.
fn parts_prefix(who: &Plugin<'_>) -> String {
    format!("c.{}", who.key)
}

/// The commit record of `commit`, numbered `n`, as written at step 2;
/// with where its parts are, when the whole record is larger than one
/// message: then its parts are written (and acknowledged) first, under
/// keys of `n` and their hash (see `chunks`), and the record written is a
/// small one naming them.
async fn claim_body(
    inner: &Inner,
    who: &Plugin<'_>,
    commit: &Commit,
    n: u64,
) -> Result<(Vec<u8>, Option<Chunked>), LogError> {
    let failed = |e| {
        inner.error(
            format!("write {}/{}", inner.buckets.commits.name, who.key),
            e,
        )
    };
    let record = CommitRecord::of(commit, n).map_err(failed)?;
    let whole = serde_json::to_vec(&record).map_err(|e| failed(ProgressError::Encode(e)))?;
    if whole.len() as u64 <= inner.max_record_bytes() {
        return Ok((whole, None));
    }
    let parts = chunks::put(inner, &parts_base(who, n), &whole).await?;
    let small = CommitRecord {
        n,
        tenant: record.tenant,
        plugin: record.plugin,
        partition: record.partition,
        cursor: record.cursor,
        expected: record.expected,
        emitted: Vec::new(),
        dead_letters: Vec::new(),
        state: Vec::new(),
        redriven: Vec::new(),
        ahead: Vec::new(),
        lease: record.lease,
        chunks: Some(parts.clone()),
    };
    let small = serde_json::to_vec(&small).map_err(|e| failed(ProgressError::Encode(e)))?;
    Ok((small, Some(parts)))
}

/// The commit record `record` read from the bucket, whole: when it names
/// parts and is not yet applied (its number is past `applied`), read from
/// them. One that is applied is answered as it is (it is not applied
/// again), and its parts, if any are left, are swept.
async fn whole_record(
    inner: &Inner,
    who: &Plugin<'_>,
    record: Option<CommitRecord>,
    applied: u64,
) -> Result<Option<CommitRecord>, LogError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let Some(parts) = &record.chunks else {
        return Ok(Some(record));
    };
    if record.n <= applied {
        sweep_chunks(inner, who, applied).await;
        return Ok(Some(record));
    }
    let key = format!("{}/{}", inner.buckets.commits.name, who.key);
    let body = chunks::get(inner, &parts_base(who, record.n), parts).await?;
    let whole: CommitRecord =
        serde_json::from_slice(&body).map_err(|e| inner.corrupt(key.as_str(), e))?;
    if whole.n != record.n || whole.chunks.is_some() {
        return Err(inner.corrupt(key, "its parts hold another commit"));
    }
    Ok(Some(CommitRecord {
        chunks: record.chunks,
        ..whole
    }))
}

/// Removes the parts of commit number `n` that lost its claim; a failure
/// is logged (the parts are swept later).
async fn drop_parts(inner: &Inner, who: &Plugin<'_>, n: u64, parts: &Chunked) {
    if let Err(e) = chunks::remove(inner, &parts_base(who, n), parts).await {
        tracing::warn!(
            tenant = %who.tenant,
            plugin = %who.plugin,
            commit = n,
            "the parts of a commit record that lost its claim are left for later: {e}"
        );
    }
}

/// Removes the parts of every commit of the plugin numbered `applied` or
/// lower: applied, or never claimed (a writer died between writing them
/// and its claim, or lost its claim). Parts of a higher number may belong
/// to a commit being claimed now, and are left. A failure is logged: the
/// parts take room until the next sweep, and are never read.
async fn sweep_chunks(inner: &Inner, who: &Plugin<'_>, applied: u64) {
    let doomed = |rest: &str| {
        rest.split('.')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n <= applied)
    };
    if let Err(e) = chunks::sweep(inner, &parts_prefix(who), doomed).await {
        tracing::warn!(
            tenant = %who.tenant,
            plugin = %who.plugin,
            "the parts of applied commit records are left for later: {e}"
        );
    }
}

/// Logs and counts the dead letters of `commit` that its tenant's quota
/// refused, as the embedded log does.
fn refused(commit: &Commit, refused: &[Seq]) {
    if refused.is_empty() {
        return;
    }
    tracing::warn!(
        tenant = %commit.tenant,
        plugin = %commit.plugin,
        seqs = ?refused,
        "events given up without a dead letter: the tenant has reached its dead-letter quota"
    );
    metrics::counter!(
        "plugbus_dead_letters_refused_total",
        "tenant" => commit.tenant.clone(),
        "plugin" => commit.plugin.clone()
    )
    .increment(refused.len() as u64);
}

impl CursorStore for NatsLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner
            .bridge
            .block(async move { cursor_of(&inner, &tenant, &plugin).await })
    }

    /// Every partition's, merged in order.
    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner.bridge.block(async move {
            let mut ahead = Vec::new();
            for partition in 0..inner.partitions() {
                ahead.extend(settled(&inner, &tenant, &plugin, partition).await?.ahead);
            }
            ahead.sort_unstable();
            Ok(ahead)
        })
    }

    fn partition_cursor(
        &self,
        tenant: &str,
        plugin: &str,
        partition: Partition,
    ) -> Result<Option<Seq>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner
            .bridge
            .block(async move { Ok(settled(&inner, &tenant, &plugin, partition).await?.cursor) })
    }

    fn partition_ahead(
        &self,
        tenant: &str,
        plugin: &str,
        partition: Partition,
    ) -> Result<Vec<Seq>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner
            .bridge
            .block(async move { Ok(settled(&inner, &tenant, &plugin, partition).await?.ahead) })
    }

    /// Moves the cursor of every partition, one after the other (not all
    /// or none: a failure part-way leaves the first partitions moved, and
    /// moving again is safe).
    fn commit_cursor(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<Committed> {
        let inner = self.inner.clone();
        let (tenant, plugin) = (tenant.to_owned(), plugin.to_owned());
        self.inner.bridge.reply(async move {
            let mut all = Committed {
                emitted: Vec::new(),
                cursor_moved: true,
                refused_dead_letters: Vec::new(),
            };
            for partition in 0..inner.partitions() {
                let result = commit(
                    &inner,
                    Commit {
                        tenant: tenant.clone(),
                        plugin: plugin.clone(),
                        partition,
                        cursor: seq,
                        ..Commit::default()
                    },
                )
                .await;
                inner.note_write(&result);
                all.cursor_moved &= result?.cursor_moved;
            }
            Ok(all)
        })
    }

    fn commit(&self, commit: Commit) -> Reply<Committed> {
        let inner = self.inner.clone();
        self.inner.bridge.reply(async move {
            let result = self::commit(&inner, commit).await;
            inner.note_write(&result);
            result
        })
    }
}

impl StateStore for NatsLog {
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let inner = self.inner.clone();
        let bucket_key = names::state_key(tenant, plugin, key);
        self.inner
            .bridge
            .block(async move {
                let value = inner
                    .buckets
                    .state
                    .get(&bucket_key)
                    .await
                    .map_err(|e| inner.error(format!("read the state key {bucket_key}"), e))?;
                Ok(value.map(|v| v.to_vec()))
            })
            .map_err(StateError::store)
    }

    /// Applies `writes` as a commit does: the last write of each key, all
    /// keys at once. Unlike a commit, not all or none: a failure may leave
    /// some keys written (the embedded log's state is transactional).
    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        let writes = writes.to_vec();
        self.inner
            .bridge
            .reply(async move {
                let result = write_state(&inner, &tenant, &plugin, &writes).await;
                inner.note_write(&result);
                result
            })
            .wait()
            .map_err(StateError::store)
    }
}

/// The page of `items` (each a future of an item and its size, `None`
/// when it is gone), read a few at once, that fits in `limit`.
async fn page<T, F>(items: impl Iterator<Item = F>, limit: ReadLimit) -> Result<Page<T>, LogError>
where
    F: Future<Output = Result<Option<(T, u64)>, LogError>>,
{
    let mut found = futures::stream::iter(items).buffered(READ_AHEAD);
    let mut page = Vec::new();
    let mut bytes = 0u64;
    while let Some(item) = found.try_next().await? {
        let Some((item, size)) = item else {
            continue;
        };
        let first = page.is_empty() && limit.first_always;
        if page.len() >= limit.events || (!first && bytes.saturating_add(size) > limit.bytes) {
            return Ok(Page {
                items: page,
                more: true,
            });
        }
        bytes = bytes.saturating_add(size);
        page.push(item);
    }
    Ok(Page {
        items: page,
        more: false,
    })
}

/// The state keys of `plugin` of `tenant` that `query` selects, in key
/// order, each with its key in the bucket.
async fn state_keys(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    query: &StateQuery,
) -> Result<Vec<(String, String)>, LogError> {
    let bucket = &inner.buckets.state;
    let filter = format!("{}{tenant}.{plugin}.>", bucket.prefix);
    let subjects = bucket
        .stream
        .info_with_subjects(&filter)
        .await
        .map_err(|e| inner.error(format!("list the state keys of {tenant}/{plugin}"), e))?;
    let subjects: Vec<(String, usize)> = subjects
        .try_collect()
        .await
        .map_err(|e| inner.error(format!("list the state keys of {tenant}/{plugin}"), e))?;
    let after = query.after.as_deref();
    let mut keys: Vec<(String, String)> = subjects
        .into_iter()
        .filter_map(|(subject, _)| {
            let bucket_key = subject.strip_prefix(bucket.prefix.as_str())?.to_owned();
            let key = names::state_key_of(tenant, plugin, &bucket_key)?;
            Some((key, bucket_key))
        })
        .filter(|(key, _)| {
            key.starts_with(&query.prefix) && after.is_none_or(|after| key.as_str() > after)
        })
        .collect();
    keys.sort_unstable();
    Ok(keys)
}

/// The positions of the events `plugin` of `tenant` emitted into its own
/// tenant that the index still holds, oldest first.
async fn emitted_seqs(inner: &Inner, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
        inner.error(format!("read the emitted events of {tenant}/{plugin}"), e)
    };
    let subject = inner.names.emits_subject(tenant, plugin);
    let consumer = inner
        .emits
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.clone(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(Box::new(e)))?;
    let mut seqs = Vec::new();
    let read = async {
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(usize::try_from(names::EMITS_KEPT).unwrap_or(1000))
                .messages()
                .await
                .map_err(|e| failed(Box::new(e)))?;
            let mut got = 0usize;
            let mut pending = 0;
            while let Some(message) = batch.try_next().await.map_err(&failed)? {
                got += 1;
                pending = message.info().map_or(0, |info| info.pending);
                let seq = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|text| text.trim().parse::<Seq>().ok())
                    .ok_or_else(|| {
                        inner.corrupt(
                            format!("{}/{subject}", inner.names.emits_stream),
                            "an index entry is not a position",
                        )
                    })?;
                seqs.push(seq);
            }
            if got == 0 || pending == 0 {
                return Ok::<_, LogError>(());
            }
        }
    };
    let result = read.await;
    let name = consumer.cached_info().name.clone();
    // The consumer goes by itself once inactive; deleting it now keeps
    // the server tidy, and nothing waits for that.
    let stream = inner.emits.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    result?;
    Ok(seqs)
}

impl InspectStore for NatsLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        let query = query.clone();
        self.inner.bridge.block(async move {
            let keys = state_keys(&inner, &tenant, &plugin, &query).await?;
            let inner = &inner;
            let values =
                keys.into_iter().map(|(key, bucket_key)| async move {
                    let value =
                        inner.buckets.state.get(&bucket_key).await.map_err(|e| {
                            inner.error(format!("read the state key {bucket_key}"), e)
                        })?;
                    Ok(value.map(|value| {
                        let size = (key.len() + value.len()) as u64;
                        (
                            StateEntry {
                                key,
                                value: value.to_vec(),
                            },
                            size,
                        )
                    }))
                });
            page(
                values,
                ReadLimit {
                    events: query.limit,
                    bytes: query.max_bytes,
                    first_always: true,
                },
            )
            .await
        })
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner.bridge.block(async move {
            let mut seqs = emitted_seqs(&inner, &tenant, &plugin).await?;
            seqs.retain(|seq| before.is_none_or(|before| *seq < before));
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            seqs.dedup();
            let inner = &inner;
            let events = seqs.into_iter().map(|seq| async move {
                Ok(events::event_at(inner, seq).await?.map(|stored| {
                    let size = stored.bytes;
                    (stored, size)
                }))
            });
            page(events, limit).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that found commit 1 unfinished and applies its state only
    /// after the owner finished it and committed 2 must not undo 2.
    #[test]
    fn a_late_recovery_does_not_undo_a_later_commit() -> Result<(), LogError> {
        let server = plugbus_nats_server::NatsServer::start();
        let log = NatsLog::open(crate::NatsLogConfig {
            servers: vec![server.url()],
            ..crate::NatsLogConfig::default()
        })?;
        let set = |value: &str| StateWrite {
            key: "k".into(),
            value: Some(value.as_bytes().to_vec()),
        };
        log.commit(Commit {
            state: vec![set("1")],
            ..commit(1, None, &[])
        })
        .wait()?;
        log.commit(Commit {
            state: vec![set("2")],
            ..commit(2, Some(1), &[])
        })
        .wait()?;
        let inner = log.inner.clone();
        let late = set("1");
        log.inner.bridge.block(async move {
            let who = Plugin::new("acme", "p", 0);
            write_commit_state(&inner, &who, 1, &[late], Applier::Recovery).await
        })?;
        let value = log.get("acme", "p", "k").map_err(|e| LogError::Backend {
            backend: "test".into(),
            operation: "read k".into(),
            source: Box::new(e),
        })?;
        assert_eq!(value.as_deref(), Some(&b"2"[..]));
        Ok(())
    }

    fn commit(cursor: Seq, expected: Option<Seq>, ahead: &[Seq]) -> Commit {
        Commit {
            tenant: "acme".into(),
            plugin: "p".into(),
            cursor,
            expected,
            ahead: ahead.to_vec(),
            ..Commit::default()
        }
    }

    #[test]
    fn the_cursor_moves_as_in_the_embedded_log() {
        let none = CursorRecord::default();
        let (first, moved) = next_record(&none, &commit(5, Some(0), &[]), None);
        assert!(!moved, "no cursor is not the cursor 0");
        assert_eq!(first, none);
        let (first, moved) = next_record(&none, &commit(5, None, &[9]), Some(1));
        assert!(moved);
        assert_eq!(
            first,
            CursorRecord {
                cursor: Some(5),
                ahead: vec![],
                applied: 1,
                epoch: 0
            }
        );
        let (second, moved) = next_record(&first, &commit(7, Some(5), &[12, 6, 9, 9]), None);
        assert!(moved);
        assert_eq!(second.ahead, vec![9, 12]);
        assert_eq!(second.applied, 1);
        let (third, moved) = next_record(&second, &commit(10, Some(6), &[11]), Some(2));
        assert!(!moved, "rewound meanwhile");
        assert_eq!(third.cursor, Some(7));
        assert_eq!(third.ahead, vec![9, 12]);
        assert_eq!(third.applied, 2);
        let (fourth, _) = next_record(&third, &commit(10, Some(7), &[]), None);
        assert_eq!(fourth.ahead, vec![12], "records at or before the cursor go");
        let (fifth, _) = next_record(&fourth, &commit(3, None, &[]), None);
        assert!(fifth.ahead.is_empty(), "moved by force");
    }

    #[test]
    fn a_commit_record_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let event = Event::from_json(
            r#"{"specversion":"1.0","id":"e-1","source":"/s","type":"t","tenant":"acme","data":{"a":[1,2]}}"#,
        )?;
        let mut original = commit(4, Some(3), &[6]);
        original.emitted = vec![event.clone()];
        original.state = vec![
            StateWrite {
                key: "k/ü".into(),
                value: Some(vec![0, 255, 7]),
            },
            StateWrite {
                key: "gone".into(),
                value: None,
            },
        ];
        original.dead_letters = vec![DeadLetter {
            seq: 2,
            event,
            attempts: Vec::new(),
        }];
        original.redriven = vec![1];
        let json = serde_json::to_string(&CommitRecord::of(&original, 9)?)?;
        assert!(json.contains(r#""data":{"a":[1,2]}"#), "{json}");
        let record: CommitRecord = serde_json::from_str(&json)?;
        assert_eq!(record.n, 9);
        let (tenant, plugin) = ("acme", "p");
        let back = record.into_commit(tenant, plugin, 0)?;
        assert_eq!(back.emitted, original.emitted);
        assert_eq!(back.state, original.state);
        assert_eq!(back.dead_letters, original.dead_letters);
        assert_eq!(back.redriven, original.redriven);
        assert_eq!(back.ahead, original.ahead);
        assert_eq!((back.cursor, back.expected), (4, Some(3)));
        Ok(())
    }
}
