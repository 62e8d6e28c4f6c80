//! The dead-letter and quarantine roles ([`DeadLetterStore`],
//! [`QuarantineStore`]): dead letters in their bucket under each tenant's
//! quota, redrive requests, and the depths every host sees (kept by a
//! watcher of the bucket, started by [`start`]).
//!
//! # The records
//! A dead letter is kept under `<tenant>.<plugin>.<seq>` in
//! `<prefix>_dead_letters` as `{"event": <the event's JSON>, "attempts":
//! [...], "redrive": bool}`. Its size, for the tenant's quota, is that of
//! its event and attempts as stored (as in the embedded log). One larger
//! than a message may carry is stored in parts (see `chunks` and
//! [`Record`]): the parts first, then the record naming them; the parts
//! of a record replaced (a failed redrive's longer history) or deleted go
//! after it. A crash in between leaves parts no record names, which are
//! never read (storing the same dead letter again reuses them). A quarantine
//! is kept under `<tenant>.<plugin>` in `<prefix>_quarantines` as the JSON
//! of [`Quarantine`].
//!
//! # What every host knows of the dead letters
//! Each log follows the whole dead-letters bucket (an ordered consumer
//! that first delivers the last record of every key, then every change),
//! and keeps per key its revision, size and redrive mark: the depths, each
//! tenant's usage for its quota, and the plugins with redrive requests
//! come from there without a request to the server. The log's own writes
//! are applied at once too; a record is applied only when its revision is
//! newer than what is known of its key, so the watcher's later copy of a
//! write changes nothing, and a stale copy never undoes a newer write.
//!
//! Within one process the quota is exact: a dead letter being stored holds
//! its room until its write ends. Hosts see each other's dead letters only
//! once the watcher delivers them (normally within milliseconds), so
//! several hosts storing dead letters of one tenant at the same moment may
//! together exceed its quota by the dead letters the others stored within
//! that delay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use plugbus_core::event::Event;
use plugbus_log::{
    DeadLetter, DeadLetterDepths, DeadLetterQuota, DeadLetterStore, FailedAttempt, LogError,
    Quarantine, QuarantineChange, QuarantineStore, Reply, Seq,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chunks::{self, Chunked};
use crate::{BackendError, Inner, NatsLog, names};

/// How often a write whose record another process changed meanwhile is
/// tried again before it fails.
const CONFLICT_RETRIES: usize = 16;

/// How long the watcher waits before following the bucket again after its
/// consumer ended.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// The most bytes of a tenant's text in a log line.
const LOGGED_TEXT: usize = 200;

/// What the dead-letter and quarantine roles keep in memory: what is known
/// of every dead letter, shared with the watcher task.
#[derive(Debug, Default)]
pub(crate) struct LettersState {
    usage: Arc<Mutex<Usage>>,
}

impl LettersState {
    fn usage(&self) -> MutexGuard<'_, Usage> {
        lock(&self.usage)
    }

    /// The last revision of the bucket the watcher delivered.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> u64 {
        self.usage().watched
    }
}

fn lock(usage: &Mutex<Usage>) -> MutexGuard<'_, Usage> {
    usage.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A (tenant, plugin).
type Plugin = (String, String);

/// What is known of the dead letters.
#[derive(Debug, Default)]
struct Usage {
    /// Every key seen, with its last known revision; deleted keys are kept
    /// (as tombstones) until the watcher has passed their revision.
    keys: HashMap<String, Known>,
    /// The dead letters of each plugin that has any.
    plugins: BTreeMap<Plugin, PluginLetters>,
    /// The tombstones, by revision, to forget once watched past.
    tombstones: BTreeMap<u64, String>,
    /// The last revision the watcher delivered.
    watched: u64,
    /// Room held by dead letters being stored now, per tenant: (count,
    /// bytes).
    reserved: HashMap<String, (u64, u64)>,
}

/// What is known of one key of the bucket.
#[derive(Debug, Clone)]
struct Known {
    revision: u64,
    /// `None`: deleted.
    letter: Option<Letter>,
}

/// What is known of one stored dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Letter {
    /// Its event and attempts as stored, in bytes.
    size: u64,
    /// Whether its redrive was requested.
    redrive: bool,
}

/// One plugin's dead letters.
#[derive(Debug, Default)]
struct PluginLetters {
    count: u64,
    bytes: u64,
    /// The positions of those whose redrive was requested.
    redrives: BTreeSet<Seq>,
}

impl Usage {
    /// Applies what a key holds at `revision` (`None`: deleted), unless
    /// something newer is known of it.
    fn apply(&mut self, key: &str, revision: u64, letter: Option<Letter>) {
        let Some((tenant, plugin, seq)) = parse_key(key) else {
            return;
        };
        if self.keys.get(key).is_some_and(|k| k.revision >= revision) {
            return;
        }
        let before = self
            .keys
            .insert(key.to_owned(), Known { revision, letter })
            .and_then(|k| k.letter);
        let id = (tenant.to_owned(), plugin.to_owned());
        if let Some(old) = before {
            let letters = self.plugins.entry(id.clone()).or_default();
            letters.count = letters.count.saturating_sub(1);
            letters.bytes = letters.bytes.saturating_sub(old.size);
            letters.redrives.remove(&seq);
        }
        match letter {
            Some(new) => {
                let letters = self.plugins.entry(id).or_default();
                letters.count += 1;
                letters.bytes = letters.bytes.saturating_add(new.size);
                if new.redrive {
                    letters.redrives.insert(seq);
                }
            }
            None => {
                if self.plugins.get(&id).is_some_and(|l| l.count == 0) {
                    self.plugins.remove(&id);
                }
                self.tombstones.insert(revision, key.to_owned());
            }
        }
        self.forget_tombstones();
    }

    /// Applies a record the watcher delivered.
    fn watched(&mut self, key: &str, revision: u64, letter: Option<Letter>) {
        self.watched = self.watched.max(revision);
        self.apply(key, revision, letter);
        self.forget_tombstones();
    }

    /// Forgets the deleted keys the watcher has passed: no older record of
    /// them can arrive any more.
    fn forget_tombstones(&mut self) {
        while let Some(entry) = self.tombstones.first_entry() {
            if *entry.key() > self.watched {
                break;
            }
            let (revision, key) = entry.remove_entry();
            if self
                .keys
                .get(&key)
                .is_some_and(|k| k.revision == revision && k.letter.is_none())
            {
                self.keys.remove(&key);
            }
        }
    }

    /// The dead letters of `tenant` and their bytes, with the room held by
    /// those being stored.
    fn used(&self, tenant: &str) -> (u64, u64) {
        let reserved = self.reserved.get(tenant).copied().unwrap_or_default();
        self.plugins
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .fold(reserved, |(count, bytes), (_, letters)| {
                (count + letters.count, bytes.saturating_add(letters.bytes))
            })
    }

    /// Holds room for a dead letter of `size` bytes of `tenant` being
    /// stored.
    fn reserve(&mut self, tenant: &str, size: u64) {
        let held = self.reserved.entry(tenant.to_owned()).or_default();
        held.0 += 1;
        held.1 = held.1.saturating_add(size);
    }

    /// Gives back the room [`reserve`](Self::reserve) held.
    fn release(&mut self, tenant: &str, size: u64) {
        if let Some(held) = self.reserved.get_mut(tenant) {
            held.0 = held.0.saturating_sub(1);
            held.1 = held.1.saturating_sub(size);
            if held.0 == 0 {
                self.reserved.remove(tenant);
            }
        }
    }

    /// Takes what a new watch of the bucket delivered up to `self.watched`
    /// from `fresh`, keeping what this process wrote after that.
    fn replace_with(&mut self, mut fresh: Usage) {
        for (key, known) in self.keys.drain() {
            if known.revision > fresh.watched {
                fresh.apply(&key, known.revision, known.letter);
            }
        }
        fresh.reserved = std::mem::take(&mut self.reserved);
        *self = fresh;
    }
}

/// The (tenant, plugin, seq) a dead letter's key names.
fn parse_key(key: &str) -> Option<(&str, &str, Seq)> {
    let mut parts = key.split('.');
    let (tenant, plugin, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tenant.is_empty() || plugin.is_empty() {
        return None;
    }
    Some((tenant, plugin, seq.parse().ok()?))
}

/// A dead letter as stored, its parts left as their JSON text.
///
/// One whose JSON is larger than a message may carry is stored in parts
/// (see `chunks`, under `d.<key>`), written before it: the record then
/// has `null` for its event and attempts, names its parts in `chunks` and
/// keeps its size for the quota in `size`; its redrive mark stays in the
/// record.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    event: Box<RawValue>,
    attempts: Box<RawValue>,
    redrive: bool,
    /// Where the whole record is, when it did not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<Chunked>,
    /// The size of its event and attempts, when they are in parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

impl Record {
    /// The dead letter's record, not yet redriven.
    fn of(dead: &DeadLetter) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event: RawValue::from_string(dead.event.to_json_string())?,
            attempts: RawValue::from_string(serde_json::to_string(&dead.attempts)?)?,
            redrive: false,
            chunks: None,
            size: None,
        })
    }

    fn parse(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Its size for the quota: its event and attempts, as stored.
    fn letter(&self) -> Letter {
        Letter {
            size: self
                .size
                .unwrap_or((self.event.get().len() + self.attempts.get().len()) as u64),
            redrive: self.redrive,
        }
    }

    /// The dead letter, parsed in full.
    fn dead_letter(&self, seq: Seq) -> Result<DeadLetter, String> {
        Ok(DeadLetter {
            seq,
            event: Event::from_json(self.event.get()).map_err(|e| format!("event: {e}"))?,
            attempts: serde_json::from_str::<Vec<FailedAttempt>>(self.attempts.get())
                .map_err(|e| format!("attempts: {e}"))?,
        })
    }
}

/// What the watcher knows of a record it cannot parse: a dead letter of
/// the record's size (reading it reports it as corrupt).
fn letter_of(key: &str, value: &[u8]) -> Letter {
    Record::parse(value).map_or_else(
        |e| {
            tracing::warn!(
                key = %plugbus_core::text::escape(key, LOGGED_TEXT),
                "a dead letter's record does not parse: {e}"
            );
            Letter {
                size: value.len() as u64,
                redrive: false,
            }
        },
        |record| record.letter(),
    )
}

/// One record of a bucket as a consumer delivered it.
struct Delivered {
    key: String,
    revision: u64,
    /// `None`: deleted or purged.
    value: Option<Vec<u8>>,
    /// Whether nothing more was pending when it was delivered.
    last: bool,
}

/// A consumer of the last record of every key of `store` under `filter`
/// (a key, with wildcards), then of every change; and how many records it
/// had to deliver when it was made.
async fn follow(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
) -> Result<(push::Ordered, u64), Box<dyn std::error::Error + Send + Sync>> {
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("plugbus: read a bucket".to_owned()),
            filter_subject: format!("{}{filter}", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    Ok((consumer.messages().await?, pending))
}

/// The next record `messages` delivers, waiting at most `timeout`.
async fn next_record(
    store: &kv::Store,
    messages: &mut push::Ordered,
    timeout: Option<Duration>,
) -> Result<Option<Delivered>, Box<dyn std::error::Error + Send + Sync>> {
    let next = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, messages.next())
            .await
            .map_err(|source| BackendError::Stalled { timeout, source })?,
        None => messages.next().await,
    };
    let Some(message) = next else {
        return Ok(None);
    };
    let message = message?;
    let info = message.info()?;
    let (revision, last) = (info.stream_sequence, info.pending == 0);
    let deleted = message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    let key = message
        .subject
        .as_str()
        .strip_prefix(store.prefix.as_str())
        .unwrap_or(message.subject.as_str())
        .to_owned();
    Ok(Some(Delivered {
        key,
        revision,
        value: (!deleted).then(|| message.payload.to_vec()),
        last,
    }))
}

/// The last record of every key of `store` under `filter` that holds one
/// (deleted keys left out), in the order of their revisions.
async fn scan(
    inner: &Inner,
    store: &kv::Store,
    filter: &str,
) -> Result<Vec<(String, u64, Vec<u8>)>, LogError> {
    let operation = || format!("read {filter} in the bucket {}", store.name);
    let (mut messages, pending) = follow(&inner.client, store, filter)
        .await
        .map_err(|e| inner.error(operation(), e))?;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    loop {
        let record = next_record(store, &mut messages, Some(inner.config.request_timeout))
            .await
            .map_err(|e| inner.error(operation(), e))?
            .ok_or_else(|| inner.error(operation(), BackendError::Ended))?;
        if let Some(value) = record.value {
            out.push((record.key, record.revision, value));
        }
        if record.last {
            return Ok(out);
        }
    }
}

/// The current value of `key` (`None` when it has none or was deleted),
/// and the revision to expect when writing it (0: never written).
async fn entry(
    inner: &Inner,
    store: &kv::Store,
    key: &str,
) -> Result<(Option<Vec<u8>>, u64), LogError> {
    let found = store
        .entry(key)
        .await
        .map_err(|e| inner.error(format!("read {key} in the bucket {}", store.name), e))?;
    Ok(match found {
        Some(e) if e.operation == kv::Operation::Put => (Some(e.value.to_vec()), e.revision),
        Some(e) => (None, e.revision),
        None => (None, 0),
    })
}

/// How a write that expected a revision ended.
enum Written {
    /// Written at this revision.
    At(u64),
    /// Someone else wrote the key since: read it again.
    Conflict,
}

/// Writes `value` to `key` if its last revision is `expected` (0: none).
async fn update(
    inner: &Inner,
    store: &kv::Store,
    key: &str,
    value: Vec<u8>,
    expected: u64,
) -> Result<Written, LogError> {
    match store.update(key, value.into(), expected).await {
        Ok(revision) => Ok(Written::At(revision)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
        Err(e) => Err(inner.error(format!("write {key} in the bucket {}", store.name), e)),
    }
}

/// Deletes `key` if its last revision is `expected`; answers the revision
/// of the delete.
async fn delete(
    inner: &Inner,
    store: &kv::Store,
    key: &str,
    expected: u64,
) -> Result<Written, LogError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
        inner.error(format!("delete {key} in the bucket {}", store.name), e)
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("KV-Operation", "DEL");
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    let subject = format!(
        "{}{key}",
        store.put_prefix.as_ref().unwrap_or(&store.prefix)
    );
    let published = inner
        .js
        .publish_with_headers(subject, headers, Vec::new().into())
        .await
        .map_err(|e| failed(Box::new(e)))?
        .await;
    match published {
        Ok(ack) => Ok(Written::At(ack.sequence)),
        Err(e)
            if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =>
        {
            Ok(Written::Conflict)
        }
        Err(e) => Err(failed(Box::new(e))),
    }
}

/// Starts what the roles run in the background (the depths watcher), and
/// waits until it has read every dead letter there is.
pub(crate) fn start(inner: &Arc<Inner>) -> Result<(), LogError> {
    let watcher = Watcher {
        client: inner.client.clone(),
        store: inner.buckets.dead_letters.clone(),
        usage: inner.letter_state.usage.clone(),
        timeout: inner.config.request_timeout,
    };
    let (ready, caught_up) = tokio::sync::oneshot::channel();
    inner.bridge.handle().spawn(watcher.run(ready));
    let backend = inner.backend.clone();
    inner.bridge.block(async move {
        caught_up
            .await
            .map_err(|_| LogError::Closed)?
            .map_err(|e| LogError::Backend {
                backend,
                operation: "read the dead letters".to_owned(),
                source: e,
            })
    })
}

/// The task that follows the dead-letters bucket. It holds no reference to
/// the log (whose runtime it runs on), so it ends with the log.
struct Watcher {
    client: async_nats::Client,
    store: kv::Store,
    usage: Arc<Mutex<Usage>>,
    timeout: Duration,
}

type Ready = tokio::sync::oneshot::Sender<Result<(), Box<dyn std::error::Error + Send + Sync>>>;

impl Watcher {
    /// Follows the bucket for ever; the first time it has caught up, or
    /// failed to, it says so through `ready`.
    async fn run(self, ready: Ready) {
        let mut ready = Some(ready);
        loop {
            let error = match self.watch(&mut ready).await {
                Ok(()) => BackendError::Ended.into(),
                Err(e) => e,
            };
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Err(error));
                    return;
                }
                None => tracing::warn!(
                    bucket = %self.store.name,
                    "following the dead letters stopped ({error}); following them again"
                ),
            }
            tokio::time::sleep(REWATCH_AFTER).await;
        }
    }

    /// Reads the last record of every key into a fresh count, puts that in
    /// place once caught up, then applies every change.
    async fn watch(
        &self,
        ready: &mut Option<Ready>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (mut messages, pending) = follow(&self.client, &self.store, ">").await?;
        let mut fresh = Usage::default();
        let mut caught_up = pending == 0;
        while !caught_up {
            let Some(record) = next_record(&self.store, &mut messages, Some(self.timeout)).await?
            else {
                return Ok(());
            };
            let letter = record.value.map(|v| letter_of(&record.key, &v));
            fresh.watched(&record.key, record.revision, letter);
            caught_up = record.last;
        }
        lock(&self.usage).replace_with(fresh);
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let mut failing = false;
        loop {
            match next_record(&self.store, &mut messages, None).await {
                Ok(Some(record)) => {
                    failing = false;
                    let letter = record.value.map(|v| letter_of(&record.key, &v));
                    lock(&self.usage).watched(&record.key, record.revision, letter);
                }
                Ok(None) => return Ok(()),
                // The ordered consumer makes itself again; say so once.
                Err(e) => {
                    if !failing {
                        tracing::warn!(bucket = %self.store.name, "following the dead letters: {e}");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The quota of `tenant`.
fn quota<'a>(inner: &'a Inner, tenant: &str) -> &'a DeadLetterQuota {
    inner
        .config
        .tenant_dead_letters
        .get(tenant)
        .unwrap_or(&inner.config.dead_letters)
}

/// Stores the dead letters of a commit of `plugin` of `tenant` within the
/// tenant's quota; a dead letter that replaces an earlier one of the same
/// event (a failed redrive) is always kept. Answers the positions of those
/// not kept. Idempotent: storing the same dead letters again changes
/// nothing.
pub(crate) async fn store_dead_letters(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    dead_letters: &[DeadLetter],
) -> Result<Vec<Seq>, LogError> {
    let mut refused = Vec::new();
    for dead in dead_letters {
        if !store_dead_letter(inner, tenant, plugin, dead).await? {
            refused.push(dead.seq);
        }
    }
    if !refused.is_empty() {
        let quota = quota(inner, tenant);
        tracing::warn!(
            tenant = %tenant,
            plugin = %plugin,
            seqs = ?refused,
            "events given up without a dead letter: the tenant has reached its dead-letter quota ({} dead letters, {} bytes)",
            quota.max_count,
            quota.max_bytes
        );
        metrics::counter!(
            "plugbus_dead_letters_refused_total",
            "tenant" => tenant.to_owned(),
            "plugin" => plugin.to_owned()
        )
        .increment(refused.len() as u64);
    }
    Ok(refused)
}

/// Stores one dead letter, unless it is new and its tenant's quota is
/// reached; answers whether it was stored. One stored again (after a
/// failed redrive) is always kept, with the attempts given (the whole
/// history), and is done being redriven.
async fn store_dead_letter(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    dead: &DeadLetter,
) -> Result<bool, LogError> {
    let store = &inner.buckets.dead_letters;
    let key = names::dead_letter_key(tenant, plugin, dead.seq);
    let record =
        Record::of(dead).map_err(|e| inner.error(format!("encode the dead letter {key}"), e))?;
    let letter = record.letter();
    let value = record
        .to_bytes()
        .map_err(|e| inner.error(format!("encode the dead letter {key}"), e))?;
    let (value, parts) = fit_letter(inner, &key, value, letter.size).await?;
    let usage = &inner.letter_state;
    for _ in 0..CONFLICT_RETRIES {
        let (before, revision) = entry(inner, store, &key).await?;
        let reserved = before.is_none();
        let admitted = !reserved || {
            let mut usage = usage.usage();
            let (count, bytes) = usage.used(tenant);
            let admits = quota(inner, tenant).admits(count, bytes, letter.size);
            if admits {
                usage.reserve(tenant, letter.size);
            }
            admits
        };
        if !admitted {
            // The parts written for it are named by no record.
            if let Some(parts) = &parts
                && let Err(e) = chunks::remove(inner, &parts_base(&key), parts).await
            {
                tracing::warn!(
                    key = %plugbus_core::text::escape(&key, LOGGED_TEXT),
                    "the parts of a refused dead letter are left behind: {e}"
                );
            }
            return Ok(false);
        }
        let written = update(inner, store, &key, value.clone(), revision).await;
        let stored = {
            let mut usage = usage.usage();
            if reserved {
                usage.release(tenant, letter.size);
            }
            match written? {
                Written::At(revision) => {
                    usage.apply(&key, revision, Some(letter));
                    true
                }
                Written::Conflict => false,
            }
        };
        if stored {
            drop_replaced_parts(inner, &key, before.as_deref(), parts.as_ref()).await;
            return Ok(true);
        }
    }
    Err(conflicts(inner, &key))
}

/// Where the parts of the dead letter at `key` go: `d.<key>`.
fn parts_base(key: &str) -> String {
    format!("d.{key}")
}

/// The record to write for a dead letter whose whole record is `value`
/// (its event and attempts `size` bytes): `value` itself when it fits in
/// a message; otherwise its parts are written first (see `chunks`) and
/// the answer is a small record naming them, with the parts.
async fn fit_letter(
    inner: &Inner,
    key: &str,
    value: Vec<u8>,
    size: u64,
) -> Result<(Vec<u8>, Option<Chunked>), LogError> {
    if value.len() as u64 <= inner.max_record_bytes() {
        return Ok((value, None));
    }
    let parts = chunks::put(inner, &parts_base(key), &value).await?;
    let null = || RawValue::from_string("null".to_owned());
    let small = null()
        .and_then(|event| {
            Record {
                event,
                attempts: null()?,
                redrive: false,
                chunks: Some(parts.clone()),
                size: Some(size),
            }
            .to_bytes()
        })
        .map_err(|e| inner.error(format!("encode the dead letter {key}"), e))?;
    Ok((small, Some(parts)))
}

/// After the dead letter at `key` was replaced (by a record naming
/// `parts`, or none) or deleted: removes the parts of the record it
/// replaced, `before`, unless they are the same. A failure is logged: the
/// parts take room, and are never read.
async fn drop_replaced_parts(
    inner: &Inner,
    key: &str,
    before: Option<&[u8]>,
    parts: Option<&Chunked>,
) {
    let old = match before.and_then(|value| Record::parse(value).ok()?.chunks) {
        Some(old) if parts.is_none_or(|parts| parts.hash != old.hash) => old,
        _ => return,
    };
    if let Err(e) = chunks::remove(inner, &parts_base(key), &old).await {
        tracing::warn!(
            key = %plugbus_core::text::escape(key, LOGGED_TEXT),
            "the parts of a replaced dead letter are left behind: {e}"
        );
    }
}

/// The record `value` of the dead letter at `key`, whole: read from its
/// parts when it names them (with its own redrive mark).
async fn whole_letter(inner: &Inner, key: &str, value: Vec<u8>) -> Result<Vec<u8>, LogError> {
    let record = Record::parse(&value).map_err(|e| inner.corrupt(key, e))?;
    let Some(parts) = &record.chunks else {
        return Ok(value);
    };
    let body = chunks::get(inner, &parts_base(key), parts).await?;
    let mut whole = Record::parse(&body).map_err(|e| inner.corrupt(key, e))?;
    whole.redrive = record.redrive;
    whole
        .to_bytes()
        .map_err(|e| inner.error(format!("encode the dead letter {key}"), e))
}

fn conflicts(inner: &Inner, key: &str) -> LogError {
    inner.error(
        format!("write {key}"),
        BackendError::Contended {
            key: key.to_owned(),
            tries: CONFLICT_RETRIES,
        },
    )
}

/// Deletes `plugin`'s dead letter of the event at `seq`; answers whether
/// there was one.
async fn drop_dead_letter(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    seq: Seq,
) -> Result<bool, LogError> {
    let store = &inner.buckets.dead_letters;
    let key = names::dead_letter_key(tenant, plugin, seq);
    for _ in 0..CONFLICT_RETRIES {
        let (Some(before), revision) = entry(inner, store, &key).await? else {
            return Ok(false);
        };
        if let Written::At(deleted) = delete(inner, store, &key, revision).await? {
            inner.letter_state.usage().apply(&key, deleted, None);
            drop_replaced_parts(inner, &key, Some(&before), None).await;
            return Ok(true);
        }
    }
    Err(conflicts(inner, &key))
}

/// Deletes the dead letters of `plugin` of `tenant` that were redriven and
/// handled. Idempotent.
pub(crate) async fn drop_redriven(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    seqs: &[Seq],
) -> Result<(), LogError> {
    for seq in seqs {
        drop_dead_letter(inner, tenant, plugin, *seq).await?;
    }
    Ok(())
}

/// Marks `plugin`'s dead letter of the event at `seq` for redrive; answers
/// whether there was one.
async fn mark_redrive(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    seq: Seq,
) -> Result<bool, LogError> {
    let store = &inner.buckets.dead_letters;
    let key = names::dead_letter_key(tenant, plugin, seq);
    for _ in 0..CONFLICT_RETRIES {
        let (Some(value), revision) = entry(inner, store, &key).await? else {
            return Ok(false);
        };
        let mut record = Record::parse(&value).map_err(|e| inner.corrupt(key.as_str(), e))?;
        record.redrive = true;
        let letter = record.letter();
        let value = record
            .to_bytes()
            .map_err(|e| inner.error(format!("encode the dead letter {key}"), e))?;
        if let Written::At(revision) = update(inner, store, &key, value, revision).await? {
            inner
                .letter_state
                .usage()
                .apply(&key, revision, Some(letter));
            return Ok(true);
        }
    }
    Err(conflicts(inner, &key))
}

/// A dead letter's record, parsed in full.
fn parse_letter(inner: &Inner, key: &str, value: &[u8]) -> Result<(DeadLetter, bool), LogError> {
    let seq = parse_key(key)
        .map(|(_, _, seq)| seq)
        .ok_or_else(|| inner.corrupt(key, "not a dead letter's key"))?;
    let record = Record::parse(value).map_err(|e| inner.corrupt(key, e))?;
    let dead = record
        .dead_letter(seq)
        .map_err(|reason| inner.corrupt(key, reason))?;
    Ok((dead, record.redrive))
}

/// The dead letters of `plugin` of `tenant`, oldest first, with whether
/// their redrive was requested.
async fn read_dead_letters(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
) -> Result<Vec<(DeadLetter, bool)>, LogError> {
    let filter = format!("{}.*", names::plugin_key(tenant, plugin));
    let mut out = Vec::new();
    for (key, _, value) in scan(inner, &inner.buckets.dead_letters, &filter).await? {
        let value = whole_letter(inner, &key, value).await?;
        out.push(parse_letter(inner, &key, &value)?);
    }
    out.sort_by_key(|(dead, _)| dead.seq);
    Ok(out)
}

/// Up to `limit` of `plugin`'s dead letters whose redrive was requested,
/// oldest first: those the watcher knows of, each read again.
async fn read_redrives(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, LogError> {
    let marked: Vec<Seq> = inner
        .letter_state
        .usage()
        .plugins
        .get(&(tenant.to_owned(), plugin.to_owned()))
        .map(|letters| letters.redrives.iter().copied().collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for seq in marked {
        if out.len() >= limit {
            break;
        }
        let key = names::dead_letter_key(tenant, plugin, seq);
        let (Some(value), _) = entry(inner, &inner.buckets.dead_letters, &key).await? else {
            continue;
        };
        let value = whole_letter(inner, &key, value).await?;
        let (dead, redrive) = parse_letter(inner, &key, &value)?;
        if redrive {
            out.push(dead);
        }
    }
    Ok(out)
}

/// Records a quarantine, or lifts one; answers whether there was one to
/// lift (always true for a quarantine recorded).
async fn quarantine(inner: &Inner, change: QuarantineChange) -> Result<bool, LogError> {
    let store = &inner.buckets.quarantines;
    match change {
        QuarantineChange::Begin(q) => {
            let key = names::plugin_key(&q.tenant, &q.plugin);
            let value = serde_json::to_vec(&q)
                .map_err(|e| inner.error(format!("encode the quarantine {key}"), e))?;
            store
                .put(&key, value.into())
                .await
                .map_err(|e| inner.error(format!("write {key} in the bucket {}", store.name), e))?;
            Ok(true)
        }
        QuarantineChange::Lift { tenant, plugin } => {
            let key = names::plugin_key(&tenant, &plugin);
            for _ in 0..CONFLICT_RETRIES {
                let (Some(_), revision) = entry(inner, store, &key).await? else {
                    return Ok(false);
                };
                if let Written::At(_) = delete(inner, store, &key, revision).await? {
                    return Ok(true);
                }
            }
            Err(conflicts(inner, &key))
        }
    }
}

/// Every quarantine recorded, by tenant and plugin.
async fn read_quarantines(inner: &Inner) -> Result<Vec<Quarantine>, LogError> {
    let mut out = scan(inner, &inner.buckets.quarantines, ">")
        .await?
        .into_iter()
        .map(|(key, _, value)| {
            serde_json::from_slice::<Quarantine>(&value).map_err(|e| inner.corrupt(key, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| (&a.tenant, &a.plugin).cmp(&(&b.tenant, &b.plugin)));
    Ok(out)
}

impl DeadLetterStore for NatsLog {
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        let read = self
            .inner
            .bridge
            .block(async move { read_dead_letters(&inner, &tenant, &plugin).await })?;
        Ok(read.into_iter().map(|(dead, _)| dead).collect())
    }

    /// From what the watcher knows (this log's own writes at once, other
    /// processes' within milliseconds).
    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        Ok(self
            .inner
            .letter_state
            .usage()
            .plugins
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .filter(|(_, letters)| letters.count > 0)
            .map(|((_, plugin), _)| plugin.clone())
            .collect())
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner.bridge.reply(async move {
            let result = drop_dead_letter(&inner, &tenant, &plugin, seq).await;
            inner.note_write(&result);
            result
        })
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        self.inner.bridge.reply(async move {
            let result = mark_redrive(&inner, &tenant, &plugin, seq).await;
            inner.note_write(&result);
            result
        })
    }

    /// The dead letters the watcher knows to be marked (this log's own
    /// requests at once, other processes' within milliseconds), each read
    /// from the bucket: no request at all while none is marked.
    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let (inner, tenant, plugin) = (self.inner.clone(), tenant.to_owned(), plugin.to_owned());
        let marked = inner
            .letter_state
            .usage()
            .plugins
            .get(&(tenant.clone(), plugin.clone()))
            .is_some_and(|letters| !letters.redrives.is_empty());
        if !marked || limit == 0 {
            return Ok(Vec::new());
        }
        self.inner
            .bridge
            .block(async move { read_redrives(&inner, &tenant, &plugin, limit).await })
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.inner
            .letter_state
            .usage()
            .plugins
            .iter()
            .filter(|(_, letters)| letters.count > 0)
            .map(|(plugin, letters)| (plugin.clone(), letters.count))
            .collect()
    }
}

impl QuarantineStore for NatsLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        let inner = self.inner.clone();
        self.inner.bridge.reply(async move {
            let result = quarantine(&inner, change).await;
            inner.note_write(&result);
            result
        })
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        let inner = self.inner.clone();
        self.inner
            .bridge
            .block(async move { read_quarantines(&inner).await })
    }
}

#[cfg(test)]
mod on_nats;

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(size: u64) -> Option<Letter> {
        Some(Letter {
            size,
            redrive: false,
        })
    }

    #[test]
    fn keys_name_tenant_plugin_and_seq() {
        assert_eq!(parse_key("acme.saga.42"), Some(("acme", "saga", 42)));
        for bad in [
            "acme.saga",
            "acme.saga.x",
            "acme.saga.1.2",
            ".saga.1",
            "acme..1",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_stale_record_never_undoes_a_newer_one() {
        let mut usage = Usage::default();
        usage.apply("a.p.1", 5, letter(10));
        usage.apply("a.p.1", 7, None);
        // The watcher delivers the put, then the delete: nothing changes.
        usage.watched("a.p.1", 5, letter(10));
        assert!(usage.plugins.is_empty());
        usage.watched("a.p.1", 7, None);
        assert!(
            usage.keys.is_empty(),
            "the tombstone is forgotten once watched past"
        );
        usage.apply("a.p.2", 9, letter(3));
        usage.apply("b.p.1", 10, letter(4));
        usage.watched("a.p.2", 9, letter(3));
        assert_eq!(usage.used("a"), (1, 3));
        assert_eq!(usage.used("b"), (1, 4));
    }

    #[test]
    fn a_new_watch_keeps_newer_local_writes() {
        let mut usage = Usage::default();
        usage.apply("a.p.1", 3, letter(10));
        usage.apply("a.p.2", 8, letter(20));
        let mut fresh = Usage::default();
        fresh.watched("a.p.1", 3, letter(10));
        fresh.watched("a.p.3", 5, letter(1));
        usage.replace_with(fresh);
        assert_eq!(usage.used("a"), (3, 31));
    }
}
