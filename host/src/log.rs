//! The durable event log: events are appended (publish returns only once
//! they are durable), read back per tenant in order, and each plugin's
//! progress is kept as a durable cursor.
//!
//! [`EventLog`] is the narrow interface the host uses, so that a second
//! backend (NATS JetStream, for hosts on several machines) can stand beside
//! the embedded one. [`SqliteLog`] is the embedded default: SQLite in WAL
//! mode, one writer thread that groups whatever appends and cursor commits
//! are waiting into one transaction, so durability costs one fsync per
//! group rather than per event. An operator can open the file with
//! `sqlite3`: each event is stored as its CloudEvents JSON.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::event::Event;
use crate::state::{StateError, StateStore, StateWrite};

/// The position of an event in the log: increasing, never reused, not
/// necessarily contiguous (a refused duplicate may leave a gap).
pub type Seq = u64;

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

/// How much one [`EventLog::read_bounded`] may return.
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
pub struct Attempt {
    /// What kind of failure.
    pub kind: crate::FailureKind,
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
    pub attempts: Vec<Attempt>,
}

/// A quarantined plugin, as the log records it so that an operator can see
/// it and lift it from another process (`plugbus quarantine`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantine {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The version that failed.
    pub version: String,
    /// When the quarantine began, in milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// When it ends unless lifted first, in milliseconds since the epoch.
    pub until_ms: i64,
}

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

impl Default for DeadLetterQuota {
    fn default() -> Self {
        Self {
            max_count: 100_000,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A request to the log whose answer arrives later: await it, or
/// [`wait`](Pending::wait) for it on a blocking thread.
#[derive(Debug)]
pub struct Pending<T>(tokio::sync::oneshot::Receiver<Result<T, LogError>>);

impl<T> Pending<T> {
    /// Blocks until the answer arrives. Not from an async task: await the
    /// `Pending` there.
    pub fn wait(self) -> Result<T, LogError> {
        self.0.blocking_recv().unwrap_or(Err(LogError::Closed))
    }
}

impl<T> IntoFuture for Pending<T>
where
    T: Send + 'static,
{
    type Output = Result<T, LogError>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.await.unwrap_or(Err(LogError::Closed)) })
    }
}

/// The log the host publishes into and delivers from. It keeps the
/// plugins' state too ([`StateStore`]), so that state writes commit with
/// the cursor.
pub trait EventLog: StateStore {
    /// Appends `events` in order, all or none, and answers once they are
    /// durable. An event whose (tenant, source, id) was appended within the
    /// duplicate window is not stored again; its answer says so.
    fn append(&self, events: Vec<Event>) -> Pending<Vec<Appended>>;

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

    /// The position of the last event of `tenant` that `plugin` has
    /// finished with, or `None` when it has no cursor yet. Blocking.
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError>;

    /// The events past its cursor that `plugin` has finished (see
    /// [`Commit::ahead`]), in order. Blocking.
    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError>;

    /// Commits what a plugin finished (see [`Commit`]) and answers once it
    /// is durable.
    fn commit(&self, commit: Commit) -> Pending<Committed>;

    /// Moves `plugin`'s cursor to `seq` and answers once that is durable.
    fn commit_cursor(&self, tenant: &str, plugin: &str, seq: Seq) -> Pending<Committed> {
        self.commit(Commit {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            cursor: seq,
            ..Commit::default()
        })
    }

    /// The dead letters of `plugin`, oldest first. Blocking.
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError>;

    /// The plugins of `tenant` that have dead letters. Blocking.
    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError>;

    /// Deletes `plugin`'s dead letter of the event at `seq`; answers whether
    /// there was one.
    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Pending<bool>;

    /// Asks for `plugin`'s dead letter of the event at `seq` to be delivered
    /// again, to the plugin's current version; answers whether there was
    /// one. A running host's consumer of the plugin takes the request: the
    /// dead letter is deleted when the event is handled, and gets the new
    /// attempts appended when it fails again.
    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Pending<bool>;

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

    /// Whether the log can be written now. Not blocking.
    fn health(&self) -> LogHealth {
        LogHealth::default()
    }

    /// Records a plugin's quarantine, or with `lift`, ends the quarantine
    /// of `tenant`/`plugin`; answers whether there was one to end.
    fn set_quarantine(&self, change: QuarantineChange) -> Pending<bool>;

    /// The quarantines recorded now, by tenant and plugin. Blocking.
    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError>;

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
    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Pending<Pruned>;
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

/// What a [`EventLog::prune`] did.
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

/// Why a replay was refused; nothing was moved.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `from` is neither a position nor an RFC 3339 time.
    #[error("--from {0:?} is neither a position nor an RFC 3339 time")]
    BadFrom(String),
    /// No event of the tenant was appended at or after the time.
    #[error("tenant {tenant} has no event appended at or after {from}")]
    NothingSince {
        /// The tenant.
        tenant: String,
        /// The time asked for.
        from: String,
    },
    /// The position lies past the end of the log: the events appended
    /// before it would be skipped.
    #[error("position {first} is past the end of the log (its last event is at {head})")]
    PastTheEnd {
        /// The position asked for.
        first: Seq,
        /// The newest event's.
        head: Seq,
    },
    /// The plugin has never consumed this log.
    #[error("{tenant}/{plugin} has no cursor: it has never consumed this log")]
    NoCursor {
        /// The tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a replay did: the cursor before, and where delivery resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The plugin's cursor before.
    pub before: Seq,
    /// The first position delivered again.
    pub first: Seq,
}

/// Moves `plugin`'s cursor so that it is delivered its tenant's events
/// again from `from`: a position, or an RFC 3339 time (the first event
/// appended at or after it). A running host picks it up within a second.
/// Blocking.
pub fn replay(
    log: &dyn EventLog,
    tenant: &str,
    plugin: &str,
    from: &str,
) -> Result<Replayed, ReplayError> {
    let first = match from.parse::<u64>() {
        Ok(seq) => seq.max(1),
        Err(_) => {
            let time =
                time::OffsetDateTime::parse(from, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| ReplayError::BadFrom(from.to_owned()))?;
            let at_ms = i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            log.first_since(tenant, at_ms)?
                .ok_or_else(|| ReplayError::NothingSince {
                    tenant: tenant.to_owned(),
                    from: from.to_owned(),
                })?
        }
    };
    let head = log.head()?;
    if first > head + 1 {
        return Err(ReplayError::PastTheEnd { first, head });
    }
    let before = log
        .cursor(tenant, plugin)?
        .ok_or_else(|| ReplayError::NoCursor {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
        })?;
    log.commit_cursor(tenant, plugin, first - 1).wait()?;
    Ok(Replayed { before, first })
}

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Each group commit reaches the disk (fsync) before it is answered:
    /// nothing answered is lost, even to a power cut. The default.
    #[default]
    Fsync,
    /// Commits are answered once the OS has them: they survive a crash of
    /// the host, not of the machine. For benchmarks and tests.
    Os,
}

/// The settings of a [`SqliteLog`].
#[derive(Debug, Clone)]
pub struct SqliteLogConfig {
    /// How durable a commit is (default [`Durability::Fsync`]).
    pub durability: Durability,
    /// How long an appended (tenant, source, id) makes a second append of
    /// it a duplicate (default 24 hours).
    pub duplicate_window: Duration,
    /// The most requests grouped into one transaction (default 4096).
    pub max_group: usize,
    /// While the log cannot be written, how often the writer probes whether
    /// it can again (default 1 s; at least 10 ms): it writes
    /// `probe_bytes` to a file in the data directory, syncs and deletes
    /// it, then commits a one-row transaction to the log. When both
    /// succeed, [`LogHealth::writable`] is true again.
    pub probe_interval: Duration,
    /// The bytes the probe writes to the data directory (default 2 MiB,
    /// more than one event of the largest size): a disk with less room
    /// than this free stays not writable.
    pub probe_bytes: u64,
    /// Every tenant's dead-letter quota, unless `tenant_dead_letters`
    /// names the tenant (default 100,000 dead letters and 1 GiB).
    pub dead_letters: DeadLetterQuota,
    /// Dead-letter quotas of particular tenants, by tenant.
    pub tenant_dead_letters: std::collections::HashMap<String, DeadLetterQuota>,
}

impl Default for SqliteLogConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            duplicate_window: Duration::from_secs(24 * 60 * 60),
            max_group: 4096,
            probe_interval: Duration::from_secs(1),
            probe_bytes: 2 * 1024 * 1024,
            dead_letters: DeadLetterQuota::default(),
            tenant_dead_letters: std::collections::HashMap::new(),
        }
    }
}

/// Milliseconds since the Unix epoch, as the log stamps its records.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Counters of a [`SqliteLog`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Events stored.
    pub appended: u64,
    /// Appended events found to be duplicates, not stored again.
    pub duplicates: u64,
    /// Transactions committed; fewer than the requests when they grouped.
    pub commits: u64,
    /// Requests (appends and cursor moves) answered.
    pub requests: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    duplicates: AtomicU64,
    commits: AtomicU64,
    requests: AtomicU64,
}

/// What the writer thread keeps up to date for the log's readers.
#[derive(Default)]
struct Shared {
    counters: Counters,
    health: std::sync::Mutex<LogHealth>,
    /// The dead letters of each plugin, counted once at open (and again
    /// when another process changed the file), then kept by the writer.
    dead_letters: std::sync::Mutex<DeadLetterUsage>,
}

/// The dead letters of each (tenant, plugin) that has any: how many, and
/// their bytes.
type DeadLetterUsage = std::collections::BTreeMap<(String, String), (u64, u64)>;

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, LogHealth> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dead_letters(&self) -> std::sync::MutexGuard<'_, DeadLetterUsage> {
        self.dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a write succeeded (`None`) or failed; logs the changes.
    fn wrote(&self, path: &Path, error: Option<String>) {
        let mut health = self.health();
        let writable = error.is_none();
        if health.writable != writable {
            health.since_ms = now_ms();
            if writable {
                tracing::info!(log = %path.display(), "the event log is writable again");
            } else {
                tracing::error!(
                    log = %path.display(),
                    "the event log cannot be written; probing it until it can: {}",
                    error.as_deref().unwrap_or_default()
                );
            }
            metrics::gauge!("plugbus_log_writable").set(if writable { 1.0 } else { 0.0 });
        }
        if !writable {
            metrics::counter!("plugbus_log_write_errors_total").increment(1);
        }
        health.writable = writable;
        health.error = error;
    }
}

/// The dead letters of each plugin and their bytes, in one grouped query
/// (`octet_length` reads the sizes, not the values).
fn count_dead_letters(conn: &Connection) -> Result<DeadLetterUsage, rusqlite::Error> {
    let mut statement = conn.prepare(
        "SELECT tenant, plugin, COUNT(*), SUM(octet_length(body) + octet_length(attempts))
         FROM dead_letters GROUP BY tenant, plugin",
    )?;
    let rows = statement.query_map([], |row| {
        let number = |i: usize| row.get::<_, i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
        Ok((
            (row.get::<_, String>(0)?, row.get::<_, String>(1)?),
            (number(2)?, number(3)?),
        ))
    })?;
    rows.collect()
}

/// Dead letters and bytes added (or, negative, removed) per plugin by a
/// transaction, applied to [`Shared::dead_letters`] once it committed.
type DeadLetterChanges = std::collections::BTreeMap<(String, String), (i64, i64)>;

/// A write for the writer thread.
enum Write {
    Append {
        events: Vec<Event>,
        /// Each event's JSON, made by the caller: the writer thread is the
        /// log's bottleneck, so it does nothing another thread can do.
        bodies: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
    Commit {
        commit: Commit,
        /// The JSON of the emitted events, made by the caller.
        bodies: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Result<Committed, LogError>>,
    },
    Discard {
        tenant: String,
        plugin: String,
        seq: Seq,
        reply: tokio::sync::oneshot::Sender<Result<bool, LogError>>,
    },
    State {
        tenant: String,
        plugin: String,
        writes: Vec<StateWrite>,
        reply: tokio::sync::oneshot::Sender<Result<(), LogError>>,
    },
    Redrive {
        tenant: String,
        plugin: String,
        seq: Seq,
        reply: tokio::sync::oneshot::Sender<Result<bool, LogError>>,
    },
    Quarantine {
        change: QuarantineChange,
        reply: tokio::sync::oneshot::Sender<Result<bool, LogError>>,
    },
    Prune {
        retention: Retention,
        live: Vec<(String, String)>,
        reply: tokio::sync::oneshot::Sender<Result<Pruned, LogError>>,
    },
}

impl Write {
    /// Answers the write with `error`.
    fn fail(self, error: LogError) {
        let _ = match self {
            Self::Append { reply, .. } => reply.send(Err(error)).map_err(drop),
            Self::Commit { reply, .. } => reply.send(Err(error)).map_err(drop),
            Self::Discard { reply, .. } => reply.send(Err(error)).map_err(drop),
            Self::State { reply, .. } => reply.send(Err(error)).map_err(drop),
            Self::Redrive { reply, .. } | Self::Quarantine { reply, .. } => {
                reply.send(Err(error)).map_err(drop)
            }
            Self::Prune { reply, .. } => reply.send(Err(error)).map_err(drop),
        };
    }
}

/// The embedded log: one SQLite file, `events.db`, in the data directory.
pub struct SqliteLog {
    path: PathBuf,
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: std::sync::Mutex<Connection>,
    shared: Arc<Shared>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    appended_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant, seq);
CREATE TABLE IF NOT EXISTS ingest_keys (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, source, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    attempts TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tenant, plugin, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redrives (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantines (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ahead (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, plugin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
";

impl SqliteLog {
    /// Opens (or creates) the log in `data_dir`, which is created private
    /// to the host's user when missing.
    pub fn open(data_dir: &Path, config: SqliteLogConfig) -> Result<Self, LogError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join("events.db");
        let store = |e: rusqlite::Error| LogError::Store {
            path: path.clone(),
            reason: e.to_string(),
        };
        let writer_conn = Connection::open(&path).map_err(store)?;
        // Another process (an operator's `plugbus dlq` or `replay`) may hold
        // the write lock for a moment.
        writer_conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(store)?;
        writer_conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(store)?;
        let synchronous = match config.durability {
            Durability::Fsync => "FULL",
            Durability::Os => "OFF",
        };
        writer_conn
            .pragma_update(None, "synchronous", synchronous)
            .map_err(store)?;
        writer_conn.execute_batch(SCHEMA).map_err(store)?;
        let shared = Arc::new(Shared::default());
        *shared.dead_letters() = count_dead_letters(&writer_conn).map_err(store)?;
        let data_version = data_version(&writer_conn).map_err(store)?;
        let reader = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(store)?;
        reader
            .busy_timeout(Duration::from_secs(10))
            .map_err(store)?;

        metrics::gauge!("plugbus_log_writable").set(1.0);
        let (writes, queue) = mpsc::channel();
        let writer = Writer {
            conn: writer_conn,
            path: path.clone(),
            config,
            shared: shared.clone(),
            commits_since_prune: 0,
            data_version,
            looked: std::time::Instant::now(),
            probed: std::time::Instant::now(),
            identity: file_identity(&path),
        };
        let writer = std::thread::Builder::new()
            .name("plugbus-log-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| LogError::Store {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            path,
            writes: Some(writes),
            writer: Some(writer),
            reader: std::sync::Mutex::new(reader),
            shared,
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's counters.
    pub fn stats(&self) -> LogStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = &self.shared.counters;
        LogStats {
            appended: get(&counters.appended),
            duplicates: get(&counters.duplicates),
            commits: get(&counters.commits),
            requests: get(&counters.requests),
        }
    }

    fn send<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, LogError>>) -> Write,
    ) -> Pending<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Some(writes) = &self.writes {
            // A send fails only when the writer is gone; the dropped reply
            // then answers `Closed`.
            let _ = writes.send(make(reply));
        }
        Pending(answer)
    }

    fn store_error(&self, e: rusqlite::Error) -> LogError {
        LogError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Parses a stored event's JSON; a row that does not parse is corrupt.
    fn stored_event(&self, seq: Seq, body: &str) -> Result<Event, LogError> {
        Event::from_json(body).map_err(|e| LogError::Corrupt {
            path: self.path.clone(),
            seq,
            reason: e.to_string(),
        })
    }

    /// Dead letters selected by `sql` (seq, body, attempts) for a plugin.
    fn query_dead_letters(
        &self,
        sql: &str,
        tenant: &str,
        plugin: &str,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let conn = self.reader();
        let mut statement = conn.prepare_cached(sql).map_err(|e| self.store_error(e))?;
        let rows = statement
            .query_map(params![tenant, plugin], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.store_error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body, attempts) = row.map_err(|e| self.store_error(e))?;
            let seq = seq as Seq;
            let event = self.stored_event(seq, &body)?;
            let attempts = serde_json::from_str(&attempts).map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                seq,
                reason: format!("attempts: {e}"),
            })?;
            out.push(DeadLetter {
                seq,
                event,
                attempts,
            });
        }
        Ok(out)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventLog for SqliteLog {
    fn append(&self, events: Vec<Event>) -> Pending<Vec<Appended>> {
        let bodies = events.iter().map(Event::to_json_string).collect();
        self.send(|reply| Write::Append {
            events,
            bodies,
            reply,
        })
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(
                "SELECT seq, appended_at_ms, body FROM events
                 WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(|e| self.store_error(e))?;
        let events = i64::try_from(limit.events).unwrap_or(i64::MAX);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        // Rows are stepped one at a time: the read stops at the byte bound
        // without loading the rest.
        let mut rows = statement
            .query(params![tenant, after, events])
            .map_err(|e| self.store_error(e))?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while let Some(row) = rows.next().map_err(|e| self.store_error(e))? {
            let size = row
                .get_ref(2)
                .map(|v| v.as_bytes().map_or(0, <[u8]>::len))
                .map_err(|e| self.store_error(e))?;
            let size = u64::try_from(size).unwrap_or(u64::MAX);
            let first = out.is_empty() && limit.first_always;
            if !first && bytes.saturating_add(size) > limit.bytes {
                break;
            }
            let seq = row.get::<_, i64>(0).map_err(|e| self.store_error(e))? as Seq;
            let appended_at_ms = row.get::<_, i64>(1).map_err(|e| self.store_error(e))?;
            let body = row.get_ref(2).map_err(|e| self.store_error(e))?;
            let body = body.as_str().map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                seq,
                reason: e.to_string(),
            })?;
            let event = self.stored_event(seq, body)?;
            bytes = bytes.saturating_add(size);
            out.push(StoredEvent {
                seq,
                appended_at_ms,
                event,
                bytes: size,
            });
        }
        Ok(out)
    }

    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader()
            .prepare_cached(
                "SELECT COUNT(*) FROM
                 (SELECT 1 FROM events WHERE tenant = ?1 AND seq > ?2 LIMIT ?3)",
            )
            .and_then(|mut s| {
                s.query_row(params![tenant, after, limit], |row| row.get::<_, i64>(0))
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.store_error(e))
    }

    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        self.reader()
            .query_row(
                "SELECT seq FROM cursors WHERE tenant = ?1 AND plugin = ?2",
                params![tenant, plugin],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|seq| seq.map(|s| s as Seq))
            .map_err(|e| self.store_error(e))
    }

    fn commit(&self, commit: Commit) -> Pending<Committed> {
        let bodies = commit.emitted.iter().map(Event::to_json_string).collect();
        self.send(|reply| Write::Commit {
            commit,
            bodies,
            reply,
        })
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached("SELECT seq FROM ahead WHERE tenant = ?1 AND plugin = ?2 ORDER BY seq")
            .map_err(|e| self.store_error(e))?;
        let rows = statement
            .query_map(params![tenant, plugin], |row| row.get::<_, i64>(0))
            .map_err(|e| self.store_error(e))?;
        rows.map(|seq| seq.map(|s| s as Seq))
            .collect::<Result<_, _>>()
            .map_err(|e| self.store_error(e))
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(
                "SELECT DISTINCT plugin FROM dead_letters WHERE tenant = ?1 ORDER BY plugin",
            )
            .map_err(|e| self.store_error(e))?;
        let rows = statement
            .query_map(params![tenant], |row| row.get::<_, String>(0))
            .map_err(|e| self.store_error(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.store_error(e))
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Pending<bool> {
        self.send(|reply| Write::Discard {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            seq,
            reply,
        })
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        self.reader()
            .query_row(
                "SELECT MIN(seq) FROM events WHERE tenant = ?1 AND appended_at_ms >= ?2",
                params![tenant, at_ms],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|seq| seq.map(|s| s as Seq))
            .map_err(|e| self.store_error(e))
    }

    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        self.query_dead_letters(
            "SELECT seq, body, attempts FROM dead_letters
             WHERE tenant = ?1 AND plugin = ?2 ORDER BY seq",
            tenant,
            plugin,
        )
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Pending<bool> {
        self.send(|reply| Write::Redrive {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            seq,
            reply,
        })
    }

    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Pending<Pruned> {
        self.send(|reply| Write::Prune {
            retention,
            live,
            reply,
        })
    }

    fn set_quarantine(&self, change: QuarantineChange) -> Pending<bool> {
        self.send(|reply| Write::Quarantine { change, reply })
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(
                "SELECT tenant, plugin, version, since_ms, until_ms FROM quarantines
                 ORDER BY tenant, plugin",
            )
            .map_err(|e| self.store_error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Quarantine {
                    tenant: row.get(0)?,
                    plugin: row.get(1)?,
                    version: row.get(2)?,
                    since_ms: row.get(3)?,
                    until_ms: row.get(4)?,
                })
            })
            .map_err(|e| self.store_error(e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.store_error(e))
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_dead_letters(
            &format!(
                "SELECT d.seq, d.body, d.attempts FROM redrives r
                 JOIN dead_letters d ON d.tenant = r.tenant AND d.plugin = r.plugin AND d.seq = r.seq
                 WHERE r.tenant = ?1 AND r.plugin = ?2 ORDER BY r.seq LIMIT {limit}"
            ),
            tenant,
            plugin,
        )
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.shared
            .dead_letters()
            .iter()
            .map(|(key, (count, _))| (key.clone(), *count))
            .collect()
    }

    fn health(&self) -> LogHealth {
        self.shared.health().clone()
    }

    fn head(&self) -> Result<Seq, LogError> {
        self.reader()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|s| s as Seq)
            .map_err(|e| self.store_error(e))
    }
}

impl StateStore for SqliteLog {
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.reader()
            .prepare_cached(
                "SELECT value FROM state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![tenant, plugin, key], |row| row.get::<_, Vec<u8>>(0))
                    .optional()
            })
            .map_err(|e| StateError(self.store_error(e).to_string()))
    }

    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.send(|reply| Write::State {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            writes: writes.to_vec(),
            reply,
        })
        .wait()
        .map_err(|e| StateError(e.to_string()))
    }
}

impl Drop for SqliteLog {
    /// Closes the log: the writer commits what is queued and stops.
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: groups waiting writes into one transaction each.
struct Writer {
    conn: Connection,
    path: PathBuf,
    config: SqliteLogConfig,
    shared: Arc<Shared>,
    commits_since_prune: u32,
    /// The file's `data_version` when the dead letters were last counted:
    /// it changes when another process (`plugbus dlq`) commits.
    data_version: i64,
    /// When `data_version` was last looked at.
    looked: std::time::Instant,
    /// When the log was last probed while not writable.
    probed: std::time::Instant,
    /// The file the log opened, as (device, inode): writes into a file
    /// that was removed or replaced since would be lost.
    identity: Option<(u64, u64)>,
}

/// The (device, inode) of the file at `path`, when it exists.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Some((0, 0))
    }
}

/// The file's `PRAGMA data_version` as `conn` sees it.
fn data_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// What one write of a group produced, answered after the commit.
enum Done {
    Append(Vec<Appended>),
    Commit(Committed),
    Discard(bool),
    State,
    /// Whether the row the write was about existed.
    Found(bool),
    Prune(Pruned),
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Write>) {
        let tick = self.config.probe_interval.max(Duration::from_millis(10));
        loop {
            match queue.recv_timeout(tick) {
                Ok(first) => {
                    let mut group = vec![first];
                    while group.len() < self.config.max_group {
                        match queue.try_recv() {
                            Ok(write) => group.push(write),
                            Err(_) => break,
                        }
                    }
                    // A panic fails this group's writes (their callers hear
                    // `Closed`; the transaction rolled back), not the log.
                    let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.commit(group);
                    }));
                    if let Err(panic) = committed {
                        let message =
                            format!("the log writer panicked: {}", panic_message(&*panic));
                        self.shared.wrote(&self.path, Some(message));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.housekeeping();
        }
    }

    /// Between groups: counts the dead letters again when another process
    /// changed the file (looked at once a second), and while the log is
    /// not writable, probes it every `probe_interval`.
    fn housekeeping(&mut self) {
        if self.looked.elapsed() >= Duration::from_secs(1) {
            self.looked = std::time::Instant::now();
            if let Ok(version) = data_version(&self.conn)
                && version != self.data_version
                && let Ok(depths) = count_dead_letters(&self.conn)
            {
                self.data_version = version;
                *self.shared.dead_letters() = depths;
            }
        }
        if !self.shared.health().writable && self.probed.elapsed() >= self.config.probe_interval {
            self.probed = std::time::Instant::now();
            if self.probe().is_ok() {
                self.shared.wrote(&self.path, None);
            }
        }
    }

    /// Whether the log can be written: `probe_bytes` written to a file in
    /// the data directory and synced, then a one-row transaction.
    fn probe(&mut self) -> Result<(), String> {
        use std::io::Write as _;
        if let Some(reason) = self.moved() {
            return Err(reason);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = dir.join(".plugbus-write-probe");
        let written = (|| {
            let mut out = std::fs::File::create(&file)?;
            let chunk = [0u8; 64 * 1024];
            let mut left = self.config.probe_bytes;
            while left > 0 {
                let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                out.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            out.sync_all()
        })();
        let _ = std::fs::remove_file(&file);
        written.map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        self.conn
            .execute(
                "INSERT INTO probes (id, at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                params![now_ms()],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Why the log's file can no longer be written, if it was removed or
    /// replaced since the log opened it (its data directory deleted, say):
    /// what it stored would be lost. Only a restart on the data directory
    /// ends this.
    fn moved(&self) -> Option<String> {
        (file_identity(&self.path) != self.identity).then(|| {
            format!(
                "the log's file {} was removed or replaced while in use; restart the host on its data directory",
                self.path.display()
            )
        })
    }

    /// Commits a group, counts it, then answers each write: the counters
    /// already include a write when its caller hears back.
    fn commit(&mut self, group: Vec<Write>) {
        if let Some(reason) = self.moved() {
            self.shared.wrote(&self.path, Some(reason.clone()));
            self.shared
                .counters
                .requests
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for write in group {
                write.fail(LogError::Store {
                    path: self.path.clone(),
                    reason: reason.clone(),
                });
            }
            return;
        }
        let mut changes = DeadLetterChanges::new();
        let result = self.apply(&group, &mut changes);
        self.shared
            .wrote(&self.path, result.as_ref().err().map(ToString::to_string));
        if result.is_ok() && !changes.is_empty() {
            let mut usage = self.shared.dead_letters();
            for (key, (count, bytes)) in changes {
                let used = usage.entry(key.clone()).or_insert((0, 0));
                used.0 = used.0.saturating_add_signed(count);
                used.1 = used.1.saturating_add_signed(bytes);
                if used.0 == 0 {
                    usage.remove(&key);
                }
            }
        }
        if let Ok(done) = &result {
            let answers = done.iter().filter_map(|d| match d {
                Done::Append(answer) => Some(answer),
                Done::Commit(_)
                | Done::Discard(_)
                | Done::State
                | Done::Found(_)
                | Done::Prune(_) => None,
            });
            let (stored, repeated) =
                answers.flatten().fold(
                    (0, 0),
                    |(s, r), a| if a.duplicate { (s, r + 1) } else { (s + 1, r) },
                );
            let counters = &self.shared.counters;
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.appended.fetch_add(stored, Ordering::Relaxed);
            counters.duplicates.fetch_add(repeated, Ordering::Relaxed);
        }
        self.shared
            .counters
            .requests
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        match result {
            Ok(done) => {
                for (write, done) in group.into_iter().zip(done) {
                    match (write, done) {
                        (Write::Append { reply, .. }, Done::Append(answer)) => {
                            let _ = reply.send(Ok(answer));
                        }
                        (Write::Commit { reply, commit, .. }, Done::Commit(committed)) => {
                            self.refused(&commit, &committed.refused_dead_letters);
                            let _ = reply.send(Ok(committed));
                        }
                        (Write::Discard { reply, .. }, Done::Discard(found)) => {
                            let _ = reply.send(Ok(found));
                        }
                        (Write::State { reply, .. }, Done::State) => {
                            let _ = reply.send(Ok(()));
                        }
                        (
                            Write::Redrive { reply, .. } | Write::Quarantine { reply, .. },
                            Done::Found(found),
                        ) => {
                            let _ = reply.send(Ok(found));
                        }
                        (Write::Prune { reply, .. }, Done::Prune(pruned)) => {
                            let _ = reply.send(Ok(pruned));
                        }
                        // `apply` answers each write with its own kind; a
                        // mismatch is a bug, answered as a closed log.
                        (write, _) => write.fail(LogError::Closed),
                    }
                }
            }
            Err(e) => {
                tracing::error!(log = %self.path.display(), "event log commit failed: {e}");
                for write in group {
                    write.fail(self.error(&e));
                }
            }
        }
    }

    /// Logs and counts the dead letters of `commit` that its tenant's
    /// quota refused.
    fn refused(&self, commit: &Commit, refused: &[Seq]) {
        if refused.is_empty() {
            return;
        }
        let quota = self
            .config
            .tenant_dead_letters
            .get(&commit.tenant)
            .unwrap_or(&self.config.dead_letters);
        tracing::warn!(
            tenant = %commit.tenant,
            plugin = %commit.plugin,
            seqs = ?refused,
            "events given up without a dead letter: the tenant has reached its dead-letter quota ({} dead letters, {} bytes)",
            quota.max_count,
            quota.max_bytes
        );
        metrics::counter!(
            "plugbus_dead_letters_refused_total",
            "tenant" => commit.tenant.clone(),
            "plugin" => commit.plugin.clone()
        )
        .increment(refused.len() as u64);
    }

    fn error(&self, e: &rusqlite::Error) -> LogError {
        LogError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Applies a group in one transaction: all of it is durable, or none.
    fn apply(
        &mut self,
        group: &[Write],
        changes: &mut DeadLetterChanges,
    ) -> Result<Vec<Done>, rusqlite::Error> {
        let now = now_ms();
        let window_ms = i64::try_from(self.config.duplicate_window.as_millis()).unwrap_or(i64::MAX);
        let prune = self.commits_since_prune >= 1024;
        let tx = self.conn.transaction()?;
        let mut done = Vec::with_capacity(group.len());
        {
            let mut find_key = tx.prepare_cached(
                "SELECT seq, at_ms FROM ingest_keys WHERE tenant = ?1 AND source = ?2 AND id = ?3",
            )?;
            let mut put_key = tx.prepare_cached(
                "INSERT INTO ingest_keys (tenant, source, id, seq, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, source, id) DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms",
            )?;
            let mut claim_key = tx.prepare_cached(
                "INSERT INTO ingest_keys (tenant, source, id, seq, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, source, id) DO NOTHING",
            )?;
            let mut drop_event = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
            let mut put_event = tx.prepare_cached(
                "INSERT INTO events (tenant, appended_at_ms, body) VALUES (?1, ?2, ?3)",
            )?;
            let mut put_dead = tx.prepare_cached(
                "INSERT INTO dead_letters (tenant, plugin, seq, body, attempts, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant, plugin, seq) DO UPDATE SET
                     attempts = excluded.attempts, at_ms = excluded.at_ms",
            )?;
            // A dead letter's bytes: its event and attempts as stored.
            let mut drop_dead = tx.prepare_cached(
                "DELETE FROM dead_letters WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3
                 RETURNING octet_length(body) + octet_length(attempts)",
            )?;
            let mut find_dead = tx.prepare_cached(
                "SELECT octet_length(body) + octet_length(attempts) FROM dead_letters
                 WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3",
            )?;
            let shared = self.shared.clone();
            let quotas = &self.config;
            // The dead letters of `tenant` and their bytes, as of this
            // transaction.
            let used = |changes: &DeadLetterChanges, tenant: &str| {
                let committed = shared.dead_letters();
                let plugins = committed
                    .range((tenant.to_owned(), String::new())..)
                    .take_while(|((t, _), _)| t == tenant);
                let (mut count, mut bytes) = plugins.fold((0i64, 0i64), |(c, b), (_, (n, s))| {
                    (
                        c.saturating_add(i64::try_from(*n).unwrap_or(i64::MAX)),
                        b.saturating_add(i64::try_from(*s).unwrap_or(i64::MAX)),
                    )
                });
                for (_, (n, s)) in changes
                    .range((tenant.to_owned(), String::new())..)
                    .take_while(|((t, _), _)| t == tenant)
                {
                    count = count.saturating_add(*n);
                    bytes = bytes.saturating_add(*s);
                }
                (
                    u64::try_from(count).unwrap_or(0),
                    u64::try_from(bytes).unwrap_or(0),
                )
            };
            let count = |changes: &mut DeadLetterChanges,
                         tenant: &str,
                         plugin: &str,
                         number: i64,
                         bytes: i64| {
                let change = changes
                    .entry((tenant.to_owned(), plugin.to_owned()))
                    .or_insert((0, 0));
                change.0 = change.0.saturating_add(number);
                change.1 = change.1.saturating_add(bytes);
            };
            let mut drop_dead_letter = |changes: &mut DeadLetterChanges,
                                        tenant: &str,
                                        plugin: &str,
                                        seq: i64|
             -> Result<bool, rusqlite::Error> {
                let size = drop_dead
                    .query_row(params![tenant, plugin, seq], |row| row.get::<_, i64>(0))
                    .optional()?;
                if let Some(size) = size {
                    count(changes, tenant, plugin, -1, -size);
                }
                Ok(size.is_some())
            };
            let mut drop_redrive = tx.prepare_cached(
                "DELETE FROM redrives WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3",
            )?;
            let mut put_ahead = tx.prepare_cached(
                "INSERT INTO ahead (tenant, plugin, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, plugin, seq) DO NOTHING",
            )?;
            let mut drop_ahead = tx.prepare_cached(
                "DELETE FROM ahead WHERE tenant = ?1 AND plugin = ?2 AND seq <= ?3",
            )?;
            let mut move_cursor = tx.prepare_cached(
                "UPDATE cursors SET seq = ?3 WHERE tenant = ?1 AND plugin = ?2 AND seq = ?4",
            )?;
            let mut put_state = tx.prepare_cached(
                "INSERT INTO state (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
            )?;
            let mut drop_state = tx.prepare_cached(
                "DELETE FROM state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
            )?;
            let mut write_state = |tenant: &str, plugin: &str, writes: &[StateWrite]| {
                for write in writes {
                    match &write.value {
                        Some(value) => {
                            put_state.execute(params![tenant, plugin, write.key, value])?
                        }
                        None => drop_state.execute(params![tenant, plugin, write.key])?,
                    };
                }
                Ok::<(), rusqlite::Error>(())
            };
            let mut put_cursor = tx.prepare_cached(
                "INSERT INTO cursors (tenant, plugin, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, plugin) DO UPDATE SET seq = excluded.seq",
            )?;
            for write in group {
                match write {
                    Write::Append { events, bodies, .. } => {
                        let mut answer = Vec::with_capacity(events.len());
                        for (event, body) in events.iter().zip(bodies) {
                            // The common case, a new event, takes two
                            // statements: the event, then its key.
                            put_event.execute(params![event.tenant(), now, body])?;
                            let seq = tx.last_insert_rowid();
                            let key = params![event.tenant(), event.source(), event.id()];
                            if claim_key.execute(params![
                                event.tenant(),
                                event.source(),
                                event.id(),
                                seq,
                                now
                            ])? == 0
                            {
                                let (earlier, at) = find_key.query_row(key, |row| {
                                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                                })?;
                                if now.saturating_sub(at) < window_ms {
                                    drop_event.execute(params![seq])?;
                                    answer.push(Appended {
                                        seq: earlier as Seq,
                                        duplicate: true,
                                    });
                                    continue;
                                }
                                put_key.execute(params![
                                    event.tenant(),
                                    event.source(),
                                    event.id(),
                                    seq,
                                    now
                                ])?;
                            }
                            answer.push(Appended {
                                seq: seq as Seq,
                                duplicate: false,
                            });
                        }
                        done.push(Done::Append(answer));
                    }
                    Write::Commit { commit, bodies, .. } => {
                        let mut seqs = Vec::with_capacity(commit.emitted.len());
                        for (event, body) in commit.emitted.iter().zip(bodies) {
                            put_event.execute(params![event.tenant(), now, body])?;
                            seqs.push(tx.last_insert_rowid() as Seq);
                        }
                        write_state(&commit.tenant, &commit.plugin, &commit.state)?;
                        for seq in &commit.redriven {
                            let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                            drop_dead_letter(changes, &commit.tenant, &commit.plugin, seq)?;
                            drop_redrive.execute(params![commit.tenant, commit.plugin, seq])?;
                        }
                        let quota = quotas
                            .tenant_dead_letters
                            .get(&commit.tenant)
                            .unwrap_or(&quotas.dead_letters);
                        let mut refused_dead_letters = Vec::new();
                        for dead in &commit.dead_letters {
                            let body = dead.event.to_json_string();
                            let attempts = serde_json::to_string(&dead.attempts).map_err(|e| {
                                rusqlite::Error::ToSqlConversionFailure(Box::new(e))
                            })?;
                            let seq = i64::try_from(dead.seq).unwrap_or(i64::MAX);
                            let size =
                                i64::try_from(body.len() + attempts.len()).unwrap_or(i64::MAX);
                            let before = find_dead
                                .query_row(params![commit.tenant, commit.plugin, seq], |row| {
                                    row.get::<_, i64>(0)
                                })
                                .optional()?;
                            match before {
                                // Stored again after a failed redrive: kept.
                                Some(before) => {
                                    count(
                                        changes,
                                        &commit.tenant,
                                        &commit.plugin,
                                        0,
                                        size - before,
                                    );
                                }
                                None => {
                                    let (number, bytes) = used(changes, &commit.tenant);
                                    if number >= quota.max_count
                                        || bytes.saturating_add(size.unsigned_abs())
                                            > quota.max_bytes
                                    {
                                        refused_dead_letters.push(dead.seq);
                                        continue;
                                    }
                                    count(changes, &commit.tenant, &commit.plugin, 1, size);
                                }
                            }
                            put_dead.execute(params![
                                commit.tenant,
                                commit.plugin,
                                seq,
                                body,
                                attempts,
                                now
                            ])?;
                            // A redriven event that failed again is done
                            // being redriven.
                            drop_redrive.execute(params![commit.tenant, commit.plugin, seq])?;
                        }
                        let cursor = i64::try_from(commit.cursor).unwrap_or(i64::MAX);
                        let cursor_moved = match commit.expected {
                            None => {
                                put_cursor.execute(params![
                                    commit.tenant,
                                    commit.plugin,
                                    cursor
                                ])?;
                                true
                            }
                            Some(expected) => {
                                let expected = i64::try_from(expected).unwrap_or(i64::MAX);
                                move_cursor.execute(params![
                                    commit.tenant,
                                    commit.plugin,
                                    cursor,
                                    expected
                                ])? == 1
                            }
                        };
                        if commit.expected.is_none() {
                            // Moved by force (an operator's replay): what
                            // was finished ahead is to be delivered again.
                            drop_ahead.execute(params![commit.tenant, commit.plugin, i64::MAX])?;
                        } else if cursor_moved {
                            for seq in &commit.ahead {
                                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                                put_ahead.execute(params![commit.tenant, commit.plugin, seq])?;
                            }
                            drop_ahead.execute(params![commit.tenant, commit.plugin, cursor])?;
                        }
                        done.push(Done::Commit(Committed {
                            emitted: seqs,
                            cursor_moved,
                            refused_dead_letters,
                        }));
                    }
                    Write::Discard {
                        tenant,
                        plugin,
                        seq,
                        ..
                    } => {
                        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                        let deleted = drop_dead_letter(changes, tenant, plugin, seq)?;
                        drop_redrive.execute(params![tenant, plugin, seq])?;
                        done.push(Done::Discard(deleted));
                    }
                    Write::Redrive {
                        tenant,
                        plugin,
                        seq,
                        ..
                    } => {
                        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                        let found = tx.execute(
                            "INSERT INTO redrives (tenant, plugin, seq, at_ms)
                             SELECT tenant, plugin, seq, ?4 FROM dead_letters
                             WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3
                             ON CONFLICT (tenant, plugin, seq) DO UPDATE SET at_ms = excluded.at_ms",
                            params![tenant, plugin, seq, now],
                        )?;
                        done.push(Done::Found(found == 1));
                    }
                    Write::Quarantine { change, .. } => {
                        let changed = match change {
                            QuarantineChange::Begin(q) => tx.execute(
                                "INSERT INTO quarantines (tenant, plugin, version, since_ms, until_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5)
                                 ON CONFLICT (tenant, plugin) DO UPDATE SET version = excluded.version,
                                     since_ms = excluded.since_ms, until_ms = excluded.until_ms",
                                params![q.tenant, q.plugin, q.version, q.since_ms, q.until_ms],
                            )?,
                            QuarantineChange::Lift { tenant, plugin } => tx.execute(
                                "DELETE FROM quarantines WHERE tenant = ?1 AND plugin = ?2",
                                params![tenant, plugin],
                            )?,
                        };
                        done.push(Done::Found(changed == 1));
                    }
                    Write::Prune {
                        retention, live, ..
                    } => {
                        done.push(Done::Prune(apply_retention(&tx, now, retention, live)?));
                    }
                    Write::State {
                        tenant,
                        plugin,
                        writes,
                        ..
                    } => {
                        write_state(tenant, plugin, writes)?;
                        done.push(Done::State);
                    }
                }
            }
            if prune {
                tx.execute(
                    "DELETE FROM ingest_keys WHERE at_ms < ?1",
                    params![now.saturating_sub(window_ms)],
                )?;
            }
        }
        tx.commit()?;
        self.commits_since_prune = if prune {
            0
        } else {
            self.commits_since_prune + 1
        };
        Ok(done)
    }
}

/// Deletes what `retention` no longer keeps, within the writer's
/// transaction: see [`EventLog::prune`].
fn apply_retention(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    retention: &Retention,
    live: &[(String, String)],
) -> Result<Pruned, rusqlite::Error> {
    // The highest position each tenant with live plugins may lose: the
    // lowest of their cursors (0 for a plugin without one yet).
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS ceilings (tenant TEXT PRIMARY KEY, seq INTEGER NOT NULL);
         DELETE FROM ceilings;",
    )?;
    {
        let mut ceiling = tx.prepare_cached(
            "INSERT INTO ceilings (tenant, seq)
             VALUES (?1, COALESCE((SELECT seq FROM cursors WHERE tenant = ?1 AND plugin = ?2), 0))
             ON CONFLICT (tenant) DO UPDATE SET seq = MIN(seq, excluded.seq)",
        )?;
        for (tenant, plugin) in live {
            ceiling.execute(params![tenant, plugin])?;
        }
    }
    const ELIGIBLE: &str = "seq <= COALESCE((SELECT c.seq FROM ceilings c WHERE c.tenant = events.tenant), 9223372036854775807)";
    let mut pruned = Pruned::default();
    if let Some(age) = retention.max_age {
        let cutoff = now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        pruned.deleted += tx.execute(
            &format!("DELETE FROM events WHERE appended_at_ms < ?1 AND {ELIGIBLE}"),
            params![cutoff],
        )? as u64;
    }
    if let Some(max_bytes) = retention.max_bytes {
        let used = |tx: &rusqlite::Transaction<'_>| -> Result<u64, rusqlite::Error> {
            tx.query_row(
                "SELECT (p.page_count - f.freelist_count) * s.page_size
                 FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|b| u64::try_from(b).unwrap_or(0))
        };
        let oldest = format!(
            "DELETE FROM events WHERE seq IN
             (SELECT seq FROM events WHERE {ELIGIBLE} ORDER BY seq LIMIT ?1)"
        );
        // Small steps first, so that little more than needed goes; larger
        // ones while far over.
        let mut step = 16i64;
        while used(tx)? > max_bytes {
            let deleted = tx.execute(&oldest, params![step])?;
            if deleted == 0 {
                pruned.held_back = true;
                break;
            }
            pruned.deleted += deleted as u64;
            step = (step * 2).min(4096);
        }
    }
    Ok(pruned)
}

/// Creates `dir` (and its parents) when missing, private to this user.
fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    let error = |reason: String| LogError::DataDir {
        path: dir.to_owned(),
        reason,
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| error(e.to_string()))?;
    }
    if !dir.is_dir() {
        return Err(error("not a directory".into()));
    }
    Ok(())
}
