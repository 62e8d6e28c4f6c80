//! The durable event log: events are appended (publish returns only once
//! they are durable), read back per tenant in order, and each plugin's
//! progress is kept as a durable cursor.
//!
//! The log plays a few roles, one trait each: [`EventStore`] (append,
//! read, retention), [`CursorStore`] (cursors, and the [`Commit`] that
//! moves one together with what the plugin finished), [`DeadLetterStore`],
//! [`QuarantineStore`], the plugins' [`StateStore`], [`InspectStore`]
//! (a plugin's state and recent emits, for operators), and [`LeaseStore`]
//! (which host handles which plugin, when several share one log).
//! [`EventLog`] is
//! all of them together: what the host holds, so that a second backend
//! (NATS JetStream, for hosts on several machines) can stand beside the
//! embedded one. Writes answer through a [`Reply`], awaited or waited
//! for; reads block, and [`blocking`] runs one from an async task.
//!
//! [`SqliteLog`] is the embedded default; [`MemoryLog`]
//! keeps the same contract in memory, for tests.

mod memory;
mod replay;
mod sqlite;

use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::memory::{MemoryLog, MemoryLogConfig};
pub use self::replay::{ReplayError, Replayed, replay};
pub use self::sqlite::{
    Durability, LogStats, SqliteLog, SqliteLogConfig, TailCacheLimits, default_read_connections,
};
use plugbus_core::event::Event;
use plugbus_core::state::{StateStore, StateWrite};

/// The position of an event in the log: increasing, never reused, not
/// necessarily contiguous (a refused duplicate may leave a gap).
pub type Seq = u64;

/// One of a tenant's partitions, `0..partitions` (see
/// [`EventStore::partitions`]).
pub type Partition = u32;

/// The most partitions a log may have.
pub const MAX_PARTITIONS: Partition = 256;

/// What `event` keeps its order with: its partition key, the CloudEvents
/// `partitionkey` extension, else its `subject`; `None` when it has neither
/// (it keeps no order with other events).
pub fn order_key(event: &Event) -> Option<&str> {
    event
        .extensions()
        .get("partitionkey")
        .map(String::as_str)
        .or(event.subject())
}

/// The partition of `event` among `partitions` (at least 1): a stable
/// hash of its order key — the `partitionkey` extension, else its
/// `subject` — so that the events of one key, which are delivered in
/// order, are in one partition; an event with neither (it keeps no order)
/// goes by its id. The hash is the first 8 bytes of SHA-256 over the key,
/// read big-endian, modulo `partitions`: the same on every host, build
/// and platform.
pub fn partition_of(event: &Event, partitions: Partition) -> Partition {
    use sha2::Digest as _;
    if partitions <= 1 {
        return 0;
    }
    let digest = match order_key(event) {
        Some(key) => sha2::Sha256::new().chain_update(b"k").chain_update(key),
        None => sha2::Sha256::new()
            .chain_update(b"i")
            .chain_update(event.id()),
    }
    .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let hash = u64::from_be_bytes(first);
    Partition::try_from(hash % u64::from(partitions)).unwrap_or(0)
}

/// Why the log could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The data directory cannot be created or used.
    #[error("data directory {}: {reason}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store failed (disk full, I/O error, a corrupt file, …); nothing
    /// of the request was stored.
    #[error("event log {}: {reason}", path.display())]
    Store {
        /// The log's file.
        path: PathBuf,
        /// SQLite's message.
        reason: String,
    },
    /// A stored event no longer parses: the file was changed by hand.
    #[error("event log {}: the event at {seq} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The log's file.
        path: PathBuf,
        /// The event's position.
        seq: Seq,
        /// Why it does not parse.
        reason: String,
    },
    /// The log has been closed; its writer is gone.
    #[error("the event log is closed")]
    Closed,
    /// A networked backend (NATS JetStream) failed or could not be
    /// reached while doing `operation`; what was asked is not known to be
    /// done (an append may be retried: it is de-duplicated).
    #[error("event log ({backend}): {operation}: {source}")]
    Backend {
        /// Which backend, e.g. `nats nats://10.0.0.5:4222`.
        backend: String,
        /// What the log was doing.
        operation: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record the backend keeps (a cursor, a commit, a dead letter) does
    /// not parse: it was written by something other than plugbus.
    #[error("event log ({backend}): the record {key} is corrupt: {reason}")]
    CorruptRecord {
        /// Which backend.
        backend: String,
        /// The record's key.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A record is larger than the log can store: an event (appended or
    /// emitted) or a state value over [`EventStore::max_event_bytes`] (on
    /// NATS, the server's `max_payload` less room for the message's
    /// headers). Nothing of the request was stored; asking again fails
    /// again.
    #[error(
        "{what} takes {bytes} bytes; the event log ({backend}) stores at most {limit} bytes per record"
    )]
    TooLarge {
        /// Which backend, e.g. `nats nats://10.0.0.5:4222`.
        backend: String,
        /// What is too large, e.g. `event 3 of the request` (no tenant
        /// text).
        what: String,
        /// Its size, in bytes (an event's stored form: its CloudEvents
        /// JSON).
        bytes: u64,
        /// The most the log stores.
        limit: u64,
        /// Where in the request: the index of the event that is too large,
        /// for an append.
        index: Option<usize>,
    },
    /// A [`Commit`] made under a lease ([`Commit::lease`]) was refused:
    /// the lease has changed hands since (another host committed under a
    /// newer epoch). Nothing of the commit was applied; the caller no
    /// longer owns the plugin's work.
    #[error("the lease on {key} was lost: epoch {epoch} committed after epoch {newer}")]
    LeaseLost {
        /// The lease's key, `<tenant>.<plugin>.<partition>`.
        key: String,
        /// The epoch the refused commit was made under.
        epoch: u64,
        /// The newer epoch the log has seen.
        newer: u64,
    },
}

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Where the event is stored; for a duplicate, where the first copy is.
    pub seq: Seq,
    /// The same (tenant, source, id) was appended within the duplicate
    /// window: this copy was not stored again.
    pub duplicate: bool,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its position.
    pub seq: Seq,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub appended_at_ms: i64,
    /// The event.
    pub event: Event,
    /// The size of its stored form (its CloudEvents JSON), in bytes: what
    /// [`ReadLimit::bytes`] and a consumer's read-ahead bound count.
    pub bytes: u64,
}

/// How much one [`EventStore::read_bounded`] may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    /// The most events.
    pub events: usize,
    /// The most bytes of the events' stored forms together (see
    /// [`StoredEvent::bytes`]).
    pub bytes: u64,
    /// Whether the first event comes back even when it alone is larger
    /// than `bytes`, so that a reader with nothing in hand always makes
    /// progress; without it the bound is strict and the read may be empty.
    pub first_always: bool,
}

impl ReadLimit {
    /// Up to `events` events, however large.
    pub fn events(events: usize) -> Self {
        Self {
            events,
            bytes: u64::MAX,
            first_always: true,
        }
    }
}

/// Whether the log can be written, as its last write or probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHealth {
    /// Appends and commits succeed. False from the first failed write
    /// (disk full, data directory gone, file system read-only, …) until a
    /// write or a probe succeeds again.
    pub writable: bool,
    /// The last write error, while not writable.
    pub error: Option<String>,
    /// Since when the log is in this state, in milliseconds since the Unix
    /// epoch.
    pub since_ms: i64,
}

impl Default for LogHealth {
    fn default() -> Self {
        Self {
            writable: true,
            error: None,
            since_ms: now_ms(),
        }
    }
}

/// The dead letters of each (tenant, plugin) that has any.
pub type DeadLetterDepths = std::collections::BTreeMap<(String, String), u64>;

/// One failed attempt to deliver an event, as kept in its dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedAttempt {
    /// What kind of failure.
    pub kind: plugbus_core::FailureKind,
    /// The handler's message, the trap, or the limit that was hit.
    pub message: String,
    /// The fuel the attempt consumed.
    pub fuel: u64,
    /// The plugin version that made the attempt.
    pub plugin_version: String,
    /// When the attempt ended, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// An event a plugin gave up on, with every failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The event's position in the log.
    pub seq: Seq,
    /// The event.
    pub event: Event,
    /// Its failed attempts, oldest first.
    pub attempts: Vec<FailedAttempt>,
}

pub use plugbus_core::outcome::Quarantine;

/// What a plugin finished, committed in one transaction: its cursor moves
/// to `cursor`, the events its successful deliveries emitted are appended,
/// their state writes are applied, and the events it gave up on become
/// dead letters — all, or none.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The partition of the tenant's events whose cursor this is (0 on a
    /// log of one partition; see [`EventStore::partitions`]).
    pub partition: Partition,
    /// The position of the last event the plugin is finished with.
    pub cursor: Seq,
    /// The cursor the plugin's consumer started from. When set and the
    /// stored cursor is another (an operator rewound it meanwhile), the
    /// cursor is left as it is; the rest is committed.
    pub expected: Option<Seq>,
    /// Events to append.
    pub emitted: Vec<Event>,
    /// Events to store as the plugin's dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// State writes of the plugin's successful deliveries, in order.
    pub state: Vec<StateWrite>,
    /// Dead letters that were redriven and handled: they are deleted.
    pub redriven: Vec<Seq>,
    /// Events past `cursor` the plugin finished (handled, dead-lettered
    /// or not subscribed to) while an earlier event of another partition
    /// key waits for its retry: a restart must not deliver them again.
    /// Recorded only when the cursor moves as expected; the records at or
    /// before the cursor are dropped.
    pub ahead: Vec<Seq>,
    /// The epoch of the lease ([`LeaseStore`]) under which the plugin's
    /// consumer commits, or `None` where there are no leases (a log one
    /// process uses alone) or for an operator's change. A log shared by
    /// several hosts remembers the newest epoch a plugin's commits were
    /// made under and refuses one with an older epoch
    /// ([`LogError::LeaseLost`]); the embedded and in-memory logs ignore
    /// it.
    pub lease: Option<u64>,
}

/// What a [`Commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The positions of the appended emitted events.
    pub emitted: Vec<Seq>,
    /// Whether the cursor moved; false when it had been moved by someone
    /// else since (see [`Commit::expected`]).
    pub cursor_moved: bool,
    /// The positions of the commit's dead letters that were not kept,
    /// because the tenant has reached its [`DeadLetterQuota`]: their
    /// events are given up all the same.
    pub refused_dead_letters: Vec<Seq>,
}

/// How many dead letters one tenant's plugins keep together, at most. A
/// dead letter beyond either bound is not kept (its event is given up all
/// the same), logged and counted
/// (`plugbus_dead_letters_refused_total{tenant,plugin}`); a dead letter
/// stored again after a failed redrive is always kept. Discarding or
/// redriving dead letters makes room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterQuota {
    /// The most dead letters (default 100,000).
    pub max_count: u64,
    /// The most bytes of dead letters: each one's event and attempts as
    /// stored (default 1 GiB).
    pub max_bytes: u64,
}

impl DeadLetterQuota {
    /// Whether a new dead letter of `size` bytes fits beside `count` dead
    /// letters of `bytes` bytes the tenant keeps already.
    pub fn admits(&self, count: u64, bytes: u64, size: u64) -> bool {
        count < self.max_count && bytes.saturating_add(size) <= self.max_bytes
    }
}

impl Default for DeadLetterQuota {
    fn default() -> Self {
        Self {
            max_count: 100_000,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A request to the log whose answer arrives later: await it, or
/// [`wait`](Reply::wait) for it on a blocking thread.
#[derive(Debug)]
pub struct Reply<T>(tokio::sync::oneshot::Receiver<Result<T, LogError>>);

impl<T> Reply<T> {
    /// A reply and the sender that answers it. A reply whose sender is
    /// dropped unanswered answers [`LogError::Closed`].
    pub fn channel() -> (ReplySender<T>, Self) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (ReplySender(sender), Self(receiver))
    }

    /// A reply that is already answered.
    pub fn ready(answer: Result<T, LogError>) -> Self {
        let (sender, reply) = Self::channel();
        sender.send(answer);
        reply
    }

    /// Blocks until the answer arrives. Not from an async task: await the
    /// `Reply` there.
    pub fn wait(self) -> Result<T, LogError> {
        self.0.blocking_recv().unwrap_or(Err(LogError::Closed))
    }
}

/// The sending half of a [`Reply`].
#[derive(Debug)]
pub struct ReplySender<T>(tokio::sync::oneshot::Sender<Result<T, LogError>>);

impl<T> ReplySender<T> {
    /// Answers the reply; an answer nobody waits for any more is dropped.
    pub fn send(self, answer: Result<T, LogError>) {
        let _ = self.0.send(answer);
    }
}

impl<T> IntoFuture for Reply<T>
where
    T: Send + 'static,
{
    type Output = Result<T, LogError>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.await.unwrap_or(Err(LogError::Closed)) })
    }
}

/// Runs `read`, a blocking call on the log, on tokio's blocking threads
/// and awaits its answer; a call that panicked answers
/// [`LogError::Closed`].
pub async fn blocking<L, T, E>(
    log: &Arc<L>,
    read: impl FnOnce(&L) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    L: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
    E: From<LogError> + Send + 'static,
{
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || read(&log))
        .await
        .unwrap_or_else(|_| Err(LogError::Closed.into()))
}

/// The events: appended in order, read back per tenant, pruned by
/// retention. Writes answer through a [`Reply`]; reads block.
pub trait EventStore: Send + Sync {
    /// Appends `events` in order, all or none, and answers once they are
    /// durable. An event whose (tenant, source, id) was appended within the
    /// duplicate window is not stored again; its answer says so.
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>>;

    /// The largest event the log can store, in bytes of its stored form
    /// (its CloudEvents JSON, [`StoredEvent::bytes`]); `None` when the log
    /// sets no bound of its own (the embedded and in-memory logs). A
    /// networked log answers what its server allows now (NATS:
    /// `max_payload` less room for headers), which may change when it
    /// reconnects to another server. An append with a larger event is
    /// refused whole ([`LogError::TooLarge`]); a [`Commit`] with a larger
    /// emitted event or state value is refused whole too. Not blocking.
    fn max_event_bytes(&self) -> Option<u64> {
        None
    }

    /// Events of `tenant` after position `after`, in order, as many as
    /// `limit` allows. Blocking.
    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError>;

    /// Up to `limit` events of `tenant` after position `after`, in order,
    /// however large. Blocking.
    fn read(&self, tenant: &str, after: Seq, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        self.read_bounded(tenant, after, ReadLimit::events(limit))
    }

    /// How many events of `tenant` there are after position `after`,
    /// counting at most `limit`: a plugin's lag, without reading the
    /// events. Blocking.
    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError>;

    /// How many partitions each tenant's events are split into
    /// ([`partition_of`]): each (plugin, partition) has its own cursor and
    /// is delivered by one consumer, in order. 1 unless the log is
    /// configured otherwise (only a shared log is).
    fn partitions(&self) -> Partition {
        1
    }

    /// Like [`read_bounded`](EventStore::read_bounded), only the events
    /// of `partition`. The provided method serves a log of one partition.
    fn read_partition(
        &self,
        tenant: &str,
        partition: Partition,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let _ = partition;
        self.read_bounded(tenant, after, limit)
    }

    /// Like [`count_after`](EventStore::count_after), only the events of
    /// `partition`. The provided method serves a log of one partition.
    fn count_partition_after(
        &self,
        tenant: &str,
        partition: Partition,
        after: Seq,
        limit: u64,
    ) -> Result<u64, LogError> {
        let _ = partition;
        self.count_after(tenant, after, limit)
    }

    /// The position of the first event of `tenant` appended at or after
    /// `at_ms` (milliseconds since the Unix epoch). Blocking.
    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError>;

    /// The position of the newest event in the log (0 when it is empty).
    /// Blocking.
    fn head(&self) -> Result<Seq, LogError>;

    /// Deletes the events `retention` no longer keeps, never one that a
    /// plugin in `live` (tenant, plugin) has not finished with: of a
    /// tenant with live plugins, only events at or before the lowest of
    /// their cursors go. Dead letters keep their own copy of their event.
    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned>;

    /// Whether the log can be written now. Not blocking.
    fn health(&self) -> LogHealth {
        LogHealth::default()
    }
}

/// Each plugin's progress: its cursor, and the [`Commit`] that moves it
/// together with what the plugin finished.
pub trait CursorStore: Send + Sync {
    /// The position of the last event of `tenant` that `plugin` has
    /// finished with, or `None` when it has no cursor yet. Blocking.
    /// With several partitions, the lowest of the partitions' cursors
    /// (`None` while no partition has one): everything at or before it is
    /// finished.
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError>;

    /// The events past its cursor that `plugin` has finished (see
    /// [`Commit::ahead`]), in order. Blocking.
    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError>;

    /// The cursor of `plugin` in `partition` of its tenant's events. The
    /// provided method serves a log of one partition. Blocking.
    fn partition_cursor(
        &self,
        tenant: &str,
        plugin: &str,
        partition: Partition,
    ) -> Result<Option<Seq>, LogError> {
        let _ = partition;
        self.cursor(tenant, plugin)
    }

    /// What `plugin` finished past its cursor in `partition`. The
    /// provided method serves a log of one partition. Blocking.
    fn partition_ahead(
        &self,
        tenant: &str,
        plugin: &str,
        partition: Partition,
    ) -> Result<Vec<Seq>, LogError> {
        let _ = partition;
        self.ahead(tenant, plugin)
    }

    /// Commits what a plugin finished (see [`Commit`]) and answers once it
    /// is durable.
    fn commit(&self, commit: Commit) -> Reply<Committed>;

    /// Moves `plugin`'s cursor to `seq` (in every partition) and answers
    /// once that is durable.
    fn commit_cursor(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<Committed> {
        self.commit(Commit {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            cursor: seq,
            ..Commit::default()
        })
    }
}

/// The events plugins gave up on, and the operator's requests to deliver
/// them again. Dead letters are stored by a [`Commit`].
pub trait DeadLetterStore: Send + Sync {
    /// The dead letters of `plugin`, oldest first. Blocking.
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError>;

    /// The plugins of `tenant` that have dead letters. Blocking.
    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError>;

    /// Deletes `plugin`'s dead letter of the event at `seq`; answers whether
    /// there was one.
    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool>;

    /// Asks for `plugin`'s dead letter of the event at `seq` to be delivered
    /// again, to the plugin's current version; answers whether there was
    /// one. A running host's consumer of the plugin takes the request: the
    /// dead letter is deleted when the event is handled, and gets the new
    /// attempts appended when it fails again.
    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool>;

    /// Up to `limit` of `plugin`'s dead letters whose redrive was
    /// requested, oldest first. Blocking.
    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError>;

    /// How many dead letters each plugin has, without reading them: kept
    /// as they are stored, discarded and redriven. Not blocking.
    fn dead_letter_depths(&self) -> DeadLetterDepths;
}

/// The quarantined plugins, recorded so that another process can see and
/// lift them.
pub trait QuarantineStore: Send + Sync {
    /// Records a plugin's quarantine, or with `lift`, ends the quarantine
    /// of `tenant`/`plugin`; answers whether there was one to end.
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool>;

    /// The quarantines recorded now, by tenant and plugin. Blocking.
    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError>;
}

/// One key of a plugin's state, with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// Its value, as the plugin stored it.
    pub value: Vec<u8>,
}

/// Which of a plugin's state entries an [`InspectStore::state_entries`]
/// reads, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateQuery {
    /// Only the keys that start with this (all keys when empty).
    pub prefix: String,
    /// Only the keys after this one, in key order: the last key of the
    /// page before.
    pub after: Option<String>,
    /// The most entries.
    pub limit: usize,
    /// The most bytes of keys and values together; the first entry comes
    /// back however large it is, so that paging always makes progress.
    pub max_bytes: u64,
}

/// Part of a longer answer, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// What is on this page.
    pub items: Vec<T>,
    /// Whether more follows: the page ended at its limit or its byte bound
    /// with items left.
    pub more: bool,
}

/// What operators look at of a plugin: its state, in key order, and the
/// events it emitted that the log still holds, newest first. Reads only;
/// blocking.
///
/// Keys are ordered by their UTF-8 bytes. An emitted event is one a
/// [`Commit`] of the plugin appended into the plugin's own tenant; the
/// embedded log records this from the version that added the
/// `emitted_by` column on, so events emitted before are not found.
pub trait InspectStore: Send + Sync {
    /// The entries of the state of `plugin` of `tenant` that `query`
    /// selects, in key order.
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError>;

    /// The events `plugin` of `tenant` emitted, newest first, before
    /// position `before` when given, as many as `limit` allows.
    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError>;
}

/// What a lease is on: one plugin of one tenant, in one partition of the
/// tenant's events (see [`EventStore::partitions`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseKey {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The partition.
    pub partition: Partition,
}

impl LeaseKey {
    /// The lease on `plugin` of `tenant` in partition 0 (the whole
    /// tenant, on a log of one partition).
    pub fn new(tenant: &str, plugin: &str) -> Self {
        Self::of(tenant, plugin, 0)
    }

    /// The lease on `plugin` of `tenant` in `partition`.
    pub fn of(tenant: &str, plugin: &str, partition: Partition) -> Self {
        Self {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            partition,
        }
    }
}

impl std::fmt::Display for LeaseKey {
    /// `<tenant>.<plugin>.<partition>`, as a shared log keys it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.tenant, self.plugin, self.partition)
    }
}

/// How long leases and host entries last, and the safety margin around
/// their expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// How long a lease (or a host's entry) lasts after it was taken or
    /// last renewed.
    pub ttl: Duration,
    /// The safety margin: the holder stops using a lease `margin` before
    /// it expires (counting from when it sent its last successful renewal,
    /// on its own monotonic clock), and another host takes an expired lease
    /// only `margin` after its expiry (on its own wall clock). So the
    /// hosts' wall clocks may differ by up to `margin` without two hosts
    /// holding a lease at once, and a commit started just before the
    /// holder stopped has `margin` more to land before anyone else begins.
    pub margin: Duration,
}

impl LeaseTerms {
    /// The margin in milliseconds, for comparisons with wall-clock stamps.
    pub fn margin_ms(&self) -> i64 {
        i64::try_from(self.margin.as_millis()).unwrap_or(i64::MAX)
    }

    /// The ttl in milliseconds.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A lease as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// Who holds it: a host id.
    pub holder: String,
    /// When it expires, in milliseconds since the Unix epoch (the
    /// holder's wall clock when it last renewed, plus the ttl).
    pub expires_ms: i64,
    /// Its epoch: grows each time the lease changes hands, and stays the
    /// same while one holder renews it.
    pub epoch: u64,
}

impl LeaseState {
    /// Whether another host may take it at `now_ms` (its own wall clock):
    /// `margin` past its expiry.
    pub fn takeable(&self, now_ms: i64, terms: &LeaseTerms) -> bool {
        now_ms > self.expires_ms.saturating_add(terms.margin_ms())
    }
}

/// What an [`LeaseStore::acquire`] or [`LeaseStore::renew`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The caller holds the lease now, under this epoch, until
    /// `expires_ms`.
    Held {
        /// The lease's epoch.
        epoch: u64,
        /// When it expires (the caller's wall clock plus the ttl).
        expires_ms: i64,
    },
    /// Someone else holds it (or held it and it has not expired long
    /// enough), or the caller's lease changed hands: the caller does not
    /// hold it.
    Refused {
        /// The lease as recorded, when there is a record.
        current: Option<LeaseState>,
    },
}

impl LeaseGrant {
    /// The epoch when held.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Self::Held { epoch, .. } => Some(*epoch),
            Self::Refused { .. } => None,
        }
    }
}

/// A host that renews its entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The host's id.
    pub host: String,
    /// When its entry expires, in milliseconds since the Unix epoch.
    pub expires_ms: i64,
}

/// Which host handles which plugin, when several hosts share one log: a
/// registry of the live hosts, and one lease per [`LeaseKey`] that one
/// host at a time holds, renews and releases. Every change of a lease
/// is a compare-and-set on what the caller last saw, never a blind write.
///
/// The provided methods are the semantics of a log that one process uses
/// alone (one `plugbus serve` delivers from an embedded SQLite log's data
/// directory; the in-memory log lives in one process): there is nobody to share with, so every
/// lease is granted to whoever asks, for ever, under epoch 1, and the
/// registry is empty (the caller is the only host).
/// [`shared`](LeaseStore::shared) says which kind a log is.
pub trait LeaseStore: Send + Sync {
    /// Whether several processes share this log, so that leases mean
    /// something; false for a log one process uses alone.
    fn shared(&self) -> bool {
        false
    }

    /// Registers `host` as live, or renews its entry: it lasts
    /// `terms.ttl` from now.
    fn register(&self, host: &str, terms: LeaseTerms) -> Reply<()> {
        let _ = (host, terms);
        Reply::ready(Ok(()))
    }

    /// Removes `host`'s entry (a host that stops).
    fn deregister(&self, host: &str) -> Reply<()> {
        let _ = host;
        Reply::ready(Ok(()))
    }

    /// The live hosts, sorted by id: those whose entry has not expired at
    /// the caller's wall clock. Blocking.
    fn hosts(&self) -> Result<Vec<HostEntry>, LogError> {
        Ok(Vec::new())
    }

    /// The lease on `key` as recorded, if there is one (released leases
    /// have none). Blocking.
    fn lease(&self, key: &LeaseKey) -> Result<Option<LeaseState>, LogError> {
        let _ = key;
        Ok(None)
    }

    /// Takes the lease on `key` for `holder` for `terms.ttl`, if it is
    /// free, or takeable ([`LeaseState::takeable`]), or held by `holder`
    /// already (then it is renewed, under its epoch). A lease that
    /// changes hands gets a higher epoch than any before.
    fn acquire(&self, key: &LeaseKey, holder: &str, terms: LeaseTerms) -> Reply<LeaseGrant> {
        let _ = (key, holder, terms);
        Reply::ready(Ok(LeaseGrant::Held {
            epoch: 1,
            expires_ms: i64::MAX,
        }))
    }

    /// Extends `holder`'s lease on `key` under `epoch` by `terms.ttl` from
    /// now; refused when the lease is no longer `holder`'s under that
    /// epoch (it expired and was taken, or was released).
    fn renew(
        &self,
        key: &LeaseKey,
        holder: &str,
        epoch: u64,
        terms: LeaseTerms,
    ) -> Reply<LeaseGrant> {
        let _ = (key, holder, terms);
        Reply::ready(Ok(LeaseGrant::Held {
            epoch,
            expires_ms: i64::MAX,
        }))
    }

    /// Gives up `holder`'s lease on `key` under `epoch`, so that another
    /// host may take it at once; answers whether it was still held.
    fn release(&self, key: &LeaseKey, holder: &str, epoch: u64) -> Reply<bool> {
        let _ = (key, holder, epoch);
        Reply::ready(Ok(true))
    }
}

/// The log the host publishes into and delivers from: every role together.
/// It keeps the plugins' state too ([`StateStore`]), so that state writes
/// commit with the cursor. Implemented for every type that plays all the
/// roles.
pub trait EventLog:
    EventStore
    + CursorStore
    + DeadLetterStore
    + QuarantineStore
    + StateStore
    + InspectStore
    + LeaseStore
{
}

impl<L> EventLog for L where
    L: EventStore
        + CursorStore
        + DeadLetterStore
        + QuarantineStore
        + StateStore
        + InspectStore
        + LeaseStore
        + ?Sized
{
}

/// How long the log keeps events. Either bound, or both, may be set;
/// an event goes when it is past either, once every live plugin of its
/// tenant has finished with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Events appended longer ago than this go.
    pub max_age: Option<Duration>,
    /// While the log uses more bytes than this (pages in use: events,
    /// indexes, cursors, dead letters and state), its oldest events go.
    /// The file itself does not shrink: SQLite reuses the freed pages.
    pub max_bytes: Option<u64>,
}

/// What an [`EventStore::prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Events deleted.
    pub deleted: u64,
    /// The log is still over `max_bytes`, because the events that would
    /// have to go are not yet handled by a live plugin.
    pub held_back: bool,
}

/// A change to the recorded quarantines.
#[derive(Debug, Clone)]
pub enum QuarantineChange {
    /// A plugin is quarantined (replacing any earlier record of it).
    Begin(Quarantine),
    /// A plugin's quarantine is over: lifted, timed out or replaced.
    Lift {
        /// The plugin's tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
}

/// Milliseconds since the Unix epoch, as the log stamps its records.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_admits_a_dead_letter_below_both_bounds() {
        let quota = DeadLetterQuota {
            max_count: 2,
            max_bytes: 100,
        };
        assert!(quota.admits(0, 0, 100), "exactly the bytes fit");
        assert!(!quota.admits(0, 0, 101));
        assert!(quota.admits(1, 60, 40));
        assert!(!quota.admits(1, 61, 40));
        assert!(!quota.admits(2, 0, 1), "the count is reached");
        assert!(!quota.admits(0, u64::MAX, 1), "no overflow");
    }

    fn keyed(id: &str, key: Option<&str>, subject: Option<&str>) -> Event {
        let mut builder = Event::builder("acme", id, "/src", "t.x");
        if let Some(subject) = subject {
            builder = builder.subject(subject.to_owned());
        }
        if let Some(key) = key {
            builder = builder.extension("partitionkey", key);
        }
        builder.build().expect("an event")
    }

    #[test]
    fn one_key_one_partition() {
        // One partition: everything in 0.
        assert_eq!(partition_of(&keyed("a", Some("k"), None), 1), 0);
        assert_eq!(partition_of(&keyed("a", Some("k"), None), 0), 0);
        for n in [2, 4, 7, 256] {
            let by_key = partition_of(&keyed("a", Some("order-1"), Some("x")), n);
            assert!(by_key < n);
            // The partition key decides, whatever the id and subject.
            assert_eq!(
                partition_of(&keyed("b", Some("order-1"), Some("y")), n),
                by_key
            );
            // Else the subject, as a key.
            assert_eq!(
                partition_of(&keyed("c", None, Some("order-1")), n),
                partition_of(&keyed("d", Some("order-1"), None), n)
            );
        }
        // Fixed across builds and platforms: known answers.
        let known: Vec<Partition> = (0..8)
            .map(|i| partition_of(&keyed("x", Some(&format!("key-{i}")), None), 4))
            .collect();
        assert_eq!(known, KNOWN);
        // Keys spread over the partitions.
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[partition_of(&keyed("x", Some(&format!("k{i}")), None), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (850..=1150).contains(c)),
            "{counts:?}"
        );
        // Without a key, by id.
        let ids: std::collections::BTreeSet<Partition> = (0..64)
            .map(|i| partition_of(&keyed(&format!("id-{i}"), None, None), 4))
            .collect();
        assert_eq!(ids.len(), 4);
    }

    /// `partition_of` of the keys `key-0` to `key-7` among 4, as
    /// computed apart: `int.from_bytes(sha256(b"k" + key)[:8], "big") % 4`.
    const KNOWN: [Partition; 8] = [1, 1, 0, 0, 2, 1, 2, 2];

    #[test]
    fn a_reply_whose_sender_is_gone_answers_closed() {
        let (sender, reply) = Reply::<u32>::channel();
        drop(sender);
        assert!(matches!(reply.wait(), Err(LogError::Closed)));
        assert_eq!(Reply::ready(Ok(7)).wait().ok(), Some(7));
    }
}
