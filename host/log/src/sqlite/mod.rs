//! The embedded log: SQLite in WAL mode, in one file (`events.db`) of the
//! data directory. Reads go through their own read-only connection
//! ([`reader`]); every write goes to one writer thread ([`writer`]) that
//! groups whatever requests are waiting into one transaction, so that
//! durability costs one fsync per group rather than per request.
//! Retention runs in the writer's transaction too ([`retention`]); a
//! thread of its own copies the write-ahead log into the file
//! ([`checkpoint`]). Once
//! a group is durable, the writer hands its appended events, parsed, to
//! the tail cache ([`tail`]), which answers the consumers reading right
//! behind the head without SQLite. The
//! tables are in `schema.sql`; an operator can open the file with
//! `sqlite3`: each event is stored as its CloudEvents JSON.

mod checkpoint;
mod reader;
mod retention;
mod shared;
mod tail;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::Connection;

use self::checkpoint::Checkpointer;
use self::reader::Reader;
use self::shared::{Shared, count_dead_letters};
use self::tail::TailCache;
pub use self::tail::TailCacheLimits;
use self::writer::{Request, Writer};
use super::{
    Appended, Commit, Committed, CursorStore, DeadLetter, DeadLetterDepths, DeadLetterQuota,
    DeadLetterStore, EventStore, InspectStore, LogError, LogHealth, Page, Pruned, Quarantine,
    QuarantineChange, QuarantineStore, ReadLimit, Reply, ReplySender, Retention, Seq, StateEntry,
    StateQuery, StoredEvent,
};
use plugbus_core::event::Event;
use plugbus_core::state::{StateError, StateStore, StateWrite};

/// The tables of the log's file, created when missing.
const SCHEMA: &str = include_str!("schema.sql");

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
    /// The most read-only connections the log opens (at least 1): the
    /// consumers of many plugins read at once through them. Opened as they
    /// are needed and kept; a read finding them all in use waits for one.
    /// Default: twice the CPUs the process may use, from 4 to 32
    /// ([`default_read_connections`]).
    pub read_connections: usize,
    /// The bounds of the tail cache: the most recently appended events,
    /// kept parsed so that consumers reading right behind the head do not
    /// read SQLite (default 65,536 events and 64 MiB of their JSON, across
    /// tenants; either 0 turns it off). The oldest go first when it is full.
    pub tail_cache: TailCacheLimits,
}

/// The default of [`SqliteLogConfig::read_connections`]: twice the CPUs
/// the process may use (reads wait on the disk now and then), at least 4
/// and at most 32.
pub fn default_read_connections() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .saturating_mul(2)
        .clamp(4, 32)
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
            read_connections: default_read_connections(),
            tail_cache: TailCacheLimits::default(),
        }
    }
}

impl SqliteLogConfig {
    /// The dead-letter quota of `tenant`.
    fn quota(&self, tenant: &str) -> &DeadLetterQuota {
        self.tenant_dead_letters
            .get(tenant)
            .unwrap_or(&self.dead_letters)
    }
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
    /// Reads of events (and counts of them) the tail cache answered.
    pub tail_hits: u64,
    /// Reads of events (and counts of them) that went to SQLite.
    pub tail_misses: u64,
}

/// The embedded log: one SQLite file, `events.db`, in the data directory.
pub struct SqliteLog {
    path: PathBuf,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Reader,
    shared: Arc<Shared>,
    tail: Arc<TailCache>,
    /// Dropped to stop the checkpointer.
    stop_checkpoints: Option<mpsc::Sender<()>>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

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
        let conn = open_writer_connection(&path, config.durability).map_err(store)?;
        let shared = Arc::new(Shared::default());
        *shared.dead_letters() = count_dead_letters(&conn).map_err(store)?;
        let reader = Reader::open(&path, config.read_connections).map_err(store)?;
        let tail = Arc::new(TailCache::new(config.tail_cache));
        let writer =
            Writer::new(conn, path.clone(), config, shared.clone(), tail.clone()).map_err(store)?;

        metrics::gauge!("plugbus_log_writable").set(1.0);
        let (requests, queue) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("plugbus-log-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| LogError::Store {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let checkpointer = Checkpointer::open(&path, shared.clone()).map_err(store)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("plugbus-log-checkpoint".into())
            .spawn(move || checkpointer.run(&stop))
            .map_err(|e| LogError::Store {
                path: path.clone(),
                reason: format!("cannot start the checkpointer thread: {e}"),
            })?;
        Ok(Self {
            path,
            requests: Some(requests),
            writer: Some(writer),
            reader,
            shared,
            tail,
            stop_checkpoints: Some(stop_checkpoints),
            checkpointer: Some(checkpointer),
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
            tail_hits: get(&counters.tail_hits),
            tail_misses: get(&counters.tail_misses),
        }
    }

    /// Sends a request to the writer thread; its reply answers once the
    /// request's group committed.
    fn send<T>(&self, make: impl FnOnce(ReplySender<T>) -> Request) -> Reply<T> {
        let (reply, answer) = Reply::channel();
        if let Some(requests) = &self.requests {
            // A send fails only when the writer is gone; the dropped reply
            // then answers `Closed`.
            let _ = requests.send(make(reply));
        }
        answer
    }

    /// Counts one read (or count) of events as answered by the tail cache
    /// (`hit`) or by SQLite, in [`LogStats`] and in
    /// `plugbus_log_tail_reads_total{result}`.
    fn count_tail_read(&self, hit: bool) {
        let counters = &self.shared.counters;
        let (counter, result) = if hit {
            (&counters.tail_hits, "hit")
        } else {
            (&counters.tail_misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("plugbus_log_tail_reads_total", "result" => result).increment(1);
    }
}

/// The writer's connection to the file at `path`, in WAL mode, with the
/// schema created.
fn open_writer_connection(
    path: &Path,
    durability: Durability,
) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    // Another process (an operator's `plugbus dlq` or `replay`) may hold
    // the write lock for a moment.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "OFF",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    // The checkpointer thread checkpoints; the writer only past a
    // backstop (see `checkpoint`).
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        checkpoint::WRITER_BACKSTOP_PAGES,
    )?;
    stable_plans(&conn)?;
    migrate(&conn, path)?;
    conn.execute_batch(SCHEMA)?;
    // Room for every statement the writer prepares, so that none is
    // compiled again between groups.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Keeps each prepared statement's plan whatever values are bound to it
/// (SQLite's query planner stability guarantee). Without it, SQLite
/// prepares a statement again, parsing and planning its SQL, whenever a
/// value bound to its `LIMIT` changes (and, where the file has statistics,
/// a value compared with an indexed column): the consumers' reads, whose
/// limits change from one read to the next, spent most of their time
/// there. The plans the log's statements get do not depend on the values.
fn stable_plans(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

/// Brings the tables of a file written by an earlier version up to
/// `schema.sql`, before it runs (its indexes name the new columns), in one
/// transaction: a crash leaves the file as it was or wholly migrated.
/// A column added since is added, empty (NULL) in the rows already there:
/// `events.emitted_by`, and `events.dedupe` with its unique index (the
/// keys of the events already stored stay in `ingest_keys`, where the
/// writer keeps looking while they are within the duplicate window). A
/// new file has no tables yet and is left to `schema.sql`.
fn migrate(conn: &Connection, path: &Path) -> Result<(), rusqlite::Error> {
    let missing = |conn: &Connection| -> Result<Vec<&'static str>, rusqlite::Error> {
        let mut statement = conn.prepare("SELECT name FROM pragma_table_info('events')")?;
        let names = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        Ok(["emitted_by", "dedupe"]
            .into_iter()
            .filter(|column| !names.iter().any(|n| n == column))
            .collect())
    };
    if missing(conn)?.is_empty() {
        return Ok(());
    }
    // Adding a nullable column rewrites nothing: the rows keep their
    // pages, and read NULL for it; the new index starts empty (every row
    // is NULL, outside its WHERE). Checked again inside the write
    // transaction: another process (`plugbus dlq --data` beside a
    // starting host) may have migrated the file since.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let migrated = (|| {
        let columns = missing(conn)?;
        for column in &columns {
            match *column {
                "emitted_by" => {
                    conn.execute_batch("ALTER TABLE events ADD COLUMN emitted_by TEXT")?
                }
                _ => conn.execute_batch(
                    "ALTER TABLE events ADD COLUMN dedupe BLOB;
                     CREATE UNIQUE INDEX IF NOT EXISTS events_by_dedupe ON events (dedupe)
                         WHERE dedupe IS NOT NULL;",
                )?,
            }
        }
        Ok::<_, rusqlite::Error>(columns)
    })();
    match migrated {
        Ok(columns) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            if !columns.is_empty() {
                tracing::info!(
                    log = %path.display(),
                    "migrated the event log written by an earlier version: added the column(s) {} to events, empty in the events already stored; \
                     their ingest keys stay in ingest_keys and keep refusing duplicates until the duplicate window has passed",
                    columns.join(", ")
                );
            }
            Ok(())
        }
        Err(e) => {
            // The transaction's own failure adds nothing to `e`.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// An event's ingest key as `events.dedupe` stores it: its tenant,
/// source and id, each preceded by its length in 4 bytes big-endian (so
/// that no two triples run together into the same bytes). The key itself,
/// not a hash of it: exact, and its index keeps the order of (tenant,
/// source, id), so that a producer's successive ids land on the same few
/// index pages. A hash spread every group's keys over the whole index,
/// and each group commit wrote many more pages: half the insert rate with
/// one tenant, measured. Made by the caller, off the writer thread.
pub(super) fn ingest_key(event: &Event) -> Vec<u8> {
    let parts = [event.tenant(), event.source(), event.id()];
    let mut key = Vec::with_capacity(12 + parts.iter().map(|p| p.len()).sum::<usize>());
    for part in parts {
        key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

impl EventStore for SqliteLog {
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>> {
        let bodies = events.iter().map(Event::to_json_string).collect();
        let keys = events.iter().map(ingest_key).collect();
        self.send(|reply| Request::Append {
            events,
            bodies,
            keys,
            reply,
        })
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        if let Some(events) = self.tail.read(tenant, after, limit) {
            self.count_tail_read(true);
            return Ok(events);
        }
        self.count_tail_read(false);
        self.reader.read_bounded(tenant, after, limit)
    }

    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        if let Some(count) = self.tail.count_after(tenant, after, limit) {
            self.count_tail_read(true);
            return Ok(count);
        }
        self.count_tail_read(false);
        self.reader.count_after(tenant, after, limit)
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        self.reader.first_since(tenant, at_ms)
    }

    fn head(&self) -> Result<Seq, LogError> {
        self.reader.head()
    }

    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned> {
        self.send(|reply| Request::Prune {
            retention,
            live,
            reply,
        })
    }

    fn health(&self) -> LogHealth {
        self.shared.health().clone()
    }
}

impl CursorStore for SqliteLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        self.reader.cursor(tenant, plugin)
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        self.reader.ahead(tenant, plugin)
    }

    fn commit(&self, commit: Commit) -> Reply<Committed> {
        let bodies = commit.emitted.iter().map(Event::to_json_string).collect();
        self.send(|reply| Request::Commit {
            commit,
            bodies,
            reply,
        })
    }
}

impl DeadLetterStore for SqliteLog {
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        self.reader.dead_letters(tenant, plugin)
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        self.reader.dead_letter_plugins(tenant)
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        self.send(|reply| Request::Discard {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            seq,
            reply,
        })
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        self.send(|reply| Request::Redrive {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            seq,
            reply,
        })
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        self.reader.redrives(tenant, plugin, limit)
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.shared
            .dead_letters()
            .iter()
            .map(|(key, (count, _))| (key.clone(), *count))
            .collect()
    }
}

impl QuarantineStore for SqliteLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        self.send(|reply| Request::Quarantine { change, reply })
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        self.reader.quarantines()
    }
}

impl StateStore for SqliteLog {
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.reader
            .state(tenant, plugin, key)
            .map_err(StateError::store)
    }

    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.send(|reply| Request::State {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            writes: writes.to_vec(),
            reply,
        })
        .wait()
        .map_err(StateError::store)
    }
}

/// One `plugbus serve` delivers from a data directory (the operator's CLI
/// beside it only reads and asks for changes): every lease is its own, for
/// ever (the provided, trivial
/// [`LeaseStore`](crate::LeaseStore) methods); the commits' lease epochs
/// are ignored.
impl crate::LeaseStore for SqliteLog {}

impl InspectStore for SqliteLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        self.reader.state_entries(tenant, plugin, query)
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        self.reader.emitted(tenant, plugin, before, limit)
    }
}

impl Drop for SqliteLog {
    /// Closes the log: the writer commits what is queued and stops, then
    /// the checkpointer.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        drop(self.stop_checkpoints.take());
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.join();
        }
    }
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
