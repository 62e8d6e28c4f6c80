//! The writer thread: it takes whatever requests are waiting, applies them
//! in one transaction (one fsync for the group), then answers each.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteLogConfig;
use super::shared::{DeadLetterChanges, Shared, count_dead_letters};
use super::tail::TailCache;
use crate::{
    Appended, Commit, Committed, DeadLetter, LogError, Pruned, QuarantineChange, ReplySender,
    Retention, Seq, StoredEvent, now_ms,
};
use plugbus_core::event::Event;
use plugbus_core::state::StateWrite;

/// A write for the writer thread, with the sender of its reply.
pub(super) enum Request {
    Append {
        events: Vec<Event>,
        /// Each event's JSON, made by the caller: the writer thread is the
        /// log's bottleneck, so it does nothing another thread can do.
        bodies: Vec<String>,
        /// Each event's ingest key ([`ingest_key`](super::ingest_key)),
        /// made by the caller.
        keys: Vec<Vec<u8>>,
        reply: ReplySender<Vec<Appended>>,
    },
    Commit {
        commit: Commit,
        /// The JSON of the emitted events, made by the caller.
        bodies: Vec<String>,
        reply: ReplySender<Committed>,
    },
    Discard {
        tenant: String,
        plugin: String,
        seq: Seq,
        reply: ReplySender<bool>,
    },
    State {
        tenant: String,
        plugin: String,
        writes: Vec<StateWrite>,
        reply: ReplySender<()>,
    },
    Redrive {
        tenant: String,
        plugin: String,
        seq: Seq,
        reply: ReplySender<bool>,
    },
    Quarantine {
        change: QuarantineChange,
        reply: ReplySender<bool>,
    },
    Prune {
        retention: Retention,
        live: Vec<(String, String)>,
        reply: ReplySender<Pruned>,
    },
}

impl Request {
    /// Answers the request with `error`.
    fn fail(self, error: LogError) {
        match self {
            Self::Append { reply, .. } => reply.send(Err(error)),
            Self::Commit { reply, .. } => reply.send(Err(error)),
            Self::State { reply, .. } => reply.send(Err(error)),
            Self::Discard { reply, .. }
            | Self::Redrive { reply, .. }
            | Self::Quarantine { reply, .. } => reply.send(Err(error)),
            Self::Prune { reply, .. } => reply.send(Err(error)),
        }
    }

    /// Answers the request with what applying it produced.
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (Self::Append { reply, .. }, Outcome::Appended(appended)) => reply.send(Ok(appended)),
            (Self::Commit { reply, .. }, Outcome::Committed(committed)) => {
                reply.send(Ok(committed));
            }
            (Self::State { reply, .. }, Outcome::State) => reply.send(Ok(())),
            (
                Self::Discard { reply, .. }
                | Self::Redrive { reply, .. }
                | Self::Quarantine { reply, .. },
                Outcome::Found(found),
            ) => reply.send(Ok(found)),
            (Self::Prune { reply, .. }, Outcome::Pruned(pruned)) => reply.send(Ok(pruned)),
            // A request is applied into an outcome of its own kind; a
            // mismatch is a bug, answered as a closed log.
            (request, _) => request.fail(LogError::Closed),
        }
    }
}

/// What applying one request of a group produced, answered once the
/// group committed.
enum Outcome {
    Appended(Vec<Appended>),
    Committed(Committed),
    State,
    /// Whether the row the request was about existed.
    Found(bool),
    Pruned(Pruned),
}

/// The writer thread's connection and bookkeeping.
pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    config: SqliteLogConfig,
    shared: Arc<Shared>,
    commits_since_prune: u32,
    /// The file's `data_version` when the dead letters were last counted:
    /// it changes when another process (`plugbus dlq`) commits.
    data_version: i64,
    /// When `data_version` was last looked at.
    looked: Instant,
    /// When the log was last probed while not writable.
    probed: Instant,
    /// The file the log opened, as (device, inode): writes into a file
    /// that was removed or replaced since would be lost.
    identity: Option<(u64, u64)>,
    /// Until when (milliseconds since the Unix epoch) a key in
    /// `ingest_keys` may still be within the duplicate window, so that an
    /// append must look there too: its newest key's time plus the window,
    /// found at open and when another process changed the file, and
    /// moved on when retention keeps the keys of the events it deletes.
    keys_apart_until: i64,
    /// The tail cache the writer fills.
    tail: Arc<TailCache>,
    /// The file's `data_version` when the tail cache was last reset or
    /// found up to date: another process's commit changes it, and the
    /// cache then starts over.
    tail_version: i64,
}

/// What a committed group did to the events, for the tail cache.
struct Written {
    /// The log's newest position after the group.
    head: Seq,
    /// Whether the group deleted events (retention): the cache starts
    /// over after it.
    deleted: bool,
}

/// How many group commits pass between two deletions of the ingest keys
/// older than the duplicate window.
const COMMITS_PER_KEY_PRUNE: u32 = 1024;

impl Writer {
    /// The writer of the log at `path`, on `conn` (its schema created).
    pub fn new(
        conn: Connection,
        path: PathBuf,
        config: SqliteLogConfig,
        shared: Arc<Shared>,
        tail: Arc<TailCache>,
    ) -> Result<Self, rusqlite::Error> {
        let data_version = data_version(&conn)?;
        let keys_apart_until = keys_apart_until(&conn, &config)?;
        Ok(Self {
            keys_apart_until,
            tail,
            tail_version: data_version,
            identity: file_identity(&path),
            conn,
            path,
            config,
            shared,
            commits_since_prune: 0,
            data_version,
            looked: Instant::now(),
            probed: Instant::now(),
        })
    }

    /// Commits groups of requests from `queue` until every sender is gone.
    pub fn run(mut self, queue: mpsc::Receiver<Request>) {
        let tick = self.config.probe_interval.max(Duration::from_millis(10));
        loop {
            match queue.recv_timeout(tick) {
                Ok(first) => {
                    let group = self.group(first, &queue);
                    self.commit_guarded(group);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.housekeeping();
        }
    }

    /// `first` and whatever else waits, up to `max_group` requests.
    fn group(&self, first: Request, queue: &mpsc::Receiver<Request>) -> Vec<Request> {
        let mut group = vec![first];
        while group.len() < self.config.max_group {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        group
    }

    /// Commits a group; a panic fails the group's requests (their callers
    /// hear `Closed`; the transaction rolled back), not the log.
    fn commit_guarded(&mut self, group: Vec<Request>) {
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit(group);
        }));
        if let Err(panic) = committed {
            // What the rolled-back group left in the cache's view is not
            // known: it starts over with the next group.
            self.tail.invalidate();
            let message = format!("the log writer panicked: {}", panic_message(&*panic));
            self.shared.wrote(&self.path, Some(message));
        }
    }

    /// Between groups: counts the dead letters again when another process
    /// changed the file (looked at once a second), and while the log is
    /// not writable, probes it every `probe_interval`.
    fn housekeeping(&mut self) {
        if self.looked.elapsed() >= Duration::from_secs(1) {
            self.looked = Instant::now();
            self.recount_dead_letters();
            // Another process wrote to the file: the tail cache may miss
            // its events, or hold events it deleted. It starts over
            // with the next group.
            if data_version(&self.conn).ok() != Some(self.tail_version) {
                self.tail.invalidate();
            }
        }
        if !self.shared.health().writable && self.probed.elapsed() >= self.config.probe_interval {
            self.probed = Instant::now();
            if self.probe().is_ok() {
                self.shared.wrote(&self.path, None);
            }
        }
    }

    /// Counts the dead letters again if another process committed since
    /// they were last counted.
    fn recount_dead_letters(&mut self) {
        if let Ok(version) = data_version(&self.conn)
            && version != self.data_version
            && let Ok(depths) = count_dead_letters(&self.conn)
            && let Ok(until) = keys_apart_until(&self.conn, &self.config)
        {
            self.data_version = version;
            *self.shared.dead_letters() = depths;
            self.keys_apart_until = until;
        }
    }

    /// Whether the log can be written: `probe_bytes` written to a file in
    /// the data directory and synced, then a one-row transaction.
    fn probe(&mut self) -> Result<(), String> {
        if let Some(reason) = self.moved() {
            return Err(reason);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = dir.join(".plugbus-write-probe");
        let written = write_probe_file(&file, self.config.probe_bytes);
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

    /// Commits a group, counts it, then answers each request: the counters
    /// already include a request when its caller hears back.
    fn commit(&mut self, group: Vec<Request>) {
        if let Some(reason) = self.moved() {
            self.shared.wrote(&self.path, Some(reason.clone()));
            self.count_requests(group.len());
            for request in group {
                request.fail(LogError::Store {
                    path: self.path.clone(),
                    reason: reason.clone(),
                });
            }
            return;
        }
        let now = now_ms();
        let result = self.apply(&group, now);
        self.shared
            .wrote(&self.path, result.as_ref().err().map(ToString::to_string));
        if let Ok((outcomes, changes, _)) = &result {
            self.shared.add_dead_letters(changes);
            self.count_commit(outcomes);
        }
        self.count_requests(group.len());
        match result {
            Ok((outcomes, _, written)) => {
                let mut group = group;
                if written.deleted {
                    self.tail.reset(written.head);
                } else {
                    self.tail
                        .publish(appended_events(&mut group, &outcomes, now), written.head);
                }
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    if let (Request::Commit { commit, .. }, Outcome::Committed(committed)) =
                        (&request, &outcome)
                    {
                        self.refused(commit, &committed.refused_dead_letters);
                    }
                    request.answer(outcome);
                }
            }
            Err(e) => {
                // Whether the commit reached the file is not known: the
                // tail cache starts over with the next group.
                self.tail.invalidate();
                tracing::error!(log = %self.path.display(), "event log commit failed: {e}");
                for request in group {
                    request.fail(self.error(&e));
                }
            }
        }
    }

    fn count_requests(&self, requests: usize) {
        self.shared
            .counters
            .requests
            .fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// Counts a committed transaction and the events its appends stored
    /// or found to be duplicates.
    fn count_commit(&self, outcomes: &[Outcome]) {
        let appended = outcomes.iter().filter_map(|outcome| match outcome {
            Outcome::Appended(appended) => Some(appended),
            Outcome::Committed(_) | Outcome::State | Outcome::Found(_) | Outcome::Pruned(_) => None,
        });
        let (stored, repeated) =
            appended.flatten().fold(
                (0, 0),
                |(s, r), a| {
                    if a.duplicate { (s, r + 1) } else { (s + 1, r) }
                },
            );
        let counters = &self.shared.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters.appended.fetch_add(stored, Ordering::Relaxed);
        counters.duplicates.fetch_add(repeated, Ordering::Relaxed);
    }

    /// Logs and counts the dead letters of `commit` that its tenant's
    /// quota refused.
    fn refused(&self, commit: &Commit, refused: &[Seq]) {
        if refused.is_empty() {
            return;
        }
        let quota = self.config.quota(&commit.tenant);
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
    /// Answers each request's outcome and what the group changed in the
    /// dead letters.
    fn apply(
        &mut self,
        group: &[Request],
        now: i64,
    ) -> Result<(Vec<Outcome>, DeadLetterChanges, Written), rusqlite::Error> {
        let forget_keys = self.commits_since_prune >= COMMITS_PER_KEY_PRUNE;
        // Immediate: the write lock is held from here, so that what the
        // file holds cannot change under the tail cache's check below.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = data_version(&tx)?;
        if version != self.tail_version || !self.tail.valid() {
            // Started (again) at the head as it is now: what the cache
            // knows from here on is what this writer appends.
            self.tail.reset(head(&tx)?);
            self.tail_version = version;
        }
        let window_ms = window_ms(&self.config);
        let mut group_tx = GroupTx {
            tx: &tx,
            now,
            window_ms,
            keys_apart: now < self.keys_apart_until,
            keys_kept: false,
            deleted: false,
            config: &self.config,
            shared: &self.shared,
            changes: DeadLetterChanges::new(),
            insert_event: tx.prepare_cached(
                "INSERT INTO events (tenant, appended_at_ms, body, emitted_by) VALUES (?1, ?2, ?3, ?4)",
            )?,
            insert_keyed: tx.prepare_cached(
                "INSERT INTO events (tenant, appended_at_ms, body, dedupe) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?,
        };
        let outcomes = group
            .iter()
            .map(|request| group_tx.apply(request))
            .collect::<Result<Vec<_>, _>>()?;
        if forget_keys {
            group_tx.forget_ingest_keys()?;
        }
        let changes = std::mem::take(&mut group_tx.changes);
        let keys_kept = group_tx.keys_kept;
        let deleted = group_tx.deleted;
        drop(group_tx);
        let written = Written {
            head: head(&tx)?,
            deleted,
        };
        if deleted {
            // No reader may take a deleted event from the cache once the
            // deletion is visible: forgotten before it commits.
            self.tail.invalidate();
        }
        tx.commit()?;
        if keys_kept {
            // Retention kept keys of events it deleted, none newer than
            // now.
            self.keys_apart_until = self.keys_apart_until.max(now.saturating_add(window_ms));
        }
        self.commits_since_prune = if forget_keys {
            0
        } else {
            self.commits_since_prune + 1
        };
        Ok((outcomes, changes, written))
    }
}

/// The events a committed group stored, with their positions, in position
/// order, taken out of its requests for the tail cache: the appended
/// events that were not duplicates, and the commits' emitted events.
fn appended_events(
    group: &mut [Request],
    outcomes: &[Outcome],
    now: i64,
) -> Vec<(String, StoredEvent)> {
    let mut out = Vec::new();
    let mut stored = |event: Event, body: &String, seq: Seq| {
        out.push((
            event.tenant().to_owned(),
            StoredEvent {
                seq,
                appended_at_ms: now,
                bytes: body.len() as u64,
                event,
            },
        ));
    };
    for (request, outcome) in group.iter_mut().zip(outcomes) {
        match (request, outcome) {
            (Request::Append { events, bodies, .. }, Outcome::Appended(appended)) => {
                for ((event, body), appended) in std::mem::take(events)
                    .into_iter()
                    .zip(bodies.iter())
                    .zip(appended)
                {
                    if !appended.duplicate {
                        stored(event, body, appended.seq);
                    }
                }
            }
            (Request::Commit { commit, bodies, .. }, Outcome::Committed(committed)) => {
                for ((event, body), seq) in std::mem::take(&mut commit.emitted)
                    .into_iter()
                    .zip(bodies.iter())
                    .zip(&committed.emitted)
                {
                    stored(event, body, *seq);
                }
            }
            _ => {}
        }
    }
    // In the order of the inserts already; sorted all the same, so that
    // the cache is never handed a position out of order.
    out.sort_by_key(|(_, stored)| stored.seq);
    out
}

/// One group's transaction, and what it has changed so far in the dead
/// letters (applied to [`Shared`] once it commits).
struct GroupTx<'a> {
    tx: &'a Connection,
    /// The time the group's records are stamped with.
    now: i64,
    /// The duplicate window, in milliseconds.
    window_ms: i64,
    /// Whether `ingest_keys` may hold a key within the window: an append
    /// must look there too.
    keys_apart: bool,
    /// Whether retention moved keys into `ingest_keys` in this group.
    keys_kept: bool,
    /// Whether retention deleted events in this group.
    deleted: bool,
    config: &'a SqliteLogConfig,
    shared: &'a Shared,
    changes: DeadLetterChanges,
    /// The statements of the common cases, a new event emitted or
    /// published, prepared once for the group.
    insert_event: rusqlite::CachedStatement<'a>,
    insert_keyed: rusqlite::CachedStatement<'a>,
}

/// A position as SQLite stores it.
fn sql_seq(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl GroupTx<'_> {
    fn apply(&mut self, request: &Request) -> Result<Outcome, rusqlite::Error> {
        Ok(match request {
            Request::Append {
                events,
                bodies,
                keys,
                ..
            } => Outcome::Appended(self.append(events, bodies, keys)?),
            Request::Commit { commit, bodies, .. } => {
                Outcome::Committed(self.commit(commit, bodies)?)
            }
            Request::Discard {
                tenant,
                plugin,
                seq,
                ..
            } => Outcome::Found(self.discard(tenant, plugin, sql_seq(*seq))?),
            Request::Redrive {
                tenant,
                plugin,
                seq,
                ..
            } => Outcome::Found(self.request_redrive(tenant, plugin, sql_seq(*seq))?),
            Request::Quarantine { change, .. } => Outcome::Found(self.quarantine(change)?),
            Request::Prune {
                retention, live, ..
            } => {
                let pruned =
                    super::retention::prune(self.tx, self.now, self.window_ms, retention, live)?;
                self.keys_kept |= pruned.keys_kept;
                // The keys just kept apart count for the rest of this
                // group too: an append after the deletion in the same
                // transaction must find them.
                self.keys_apart |= pruned.keys_kept;
                self.deleted |= pruned.pruned.deleted > 0;
                Outcome::Pruned(pruned.pruned)
            }
            Request::State {
                tenant,
                plugin,
                writes,
                ..
            } => {
                self.write_state(tenant, plugin, writes)?;
                Outcome::State
            }
        })
    }

    fn append(
        &mut self,
        events: &[Event],
        bodies: &[String],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Appended>, rusqlite::Error> {
        events
            .iter()
            .zip(bodies)
            .zip(keys)
            .map(|((event, body), key)| self.append_one(event, body, key))
            .collect()
    }

    /// Stores one event unless its key was appended within the duplicate
    /// window. The common case, a new event, is one insert: the event with
    /// its key, under the unique index `events_by_dedupe`; a duplicate is
    /// that insert's conflict. Keys kept apart from their events
    /// (`ingest_keys`) are looked at only while one may be in the window.
    fn append_one(
        &mut self,
        event: &Event,
        body: &str,
        key: &[u8],
    ) -> Result<Appended, rusqlite::Error> {
        let tenant = event.tenant();
        if self
            .insert_keyed
            .execute(params![tenant, self.now, body, key])?
            == 0
        {
            // The key is on a stored event: a duplicate within the
            // window; else that event gives its key up to this copy.
            let (earlier, at) = self
                .tx
                .prepare_cached("SELECT seq, appended_at_ms FROM events WHERE dedupe = ?1")?
                .query_row(params![key], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?;
            if self.now.saturating_sub(at) < self.window_ms {
                return Ok(Appended {
                    seq: earlier as Seq,
                    duplicate: true,
                });
            }
            self.tx
                .prepare_cached("UPDATE events SET dedupe = NULL WHERE seq = ?1")?
                .execute(params![earlier])?;
            self.insert_keyed
                .execute(params![tenant, self.now, body, key])?;
        }
        let seq = self.tx.last_insert_rowid();
        if self.keys_apart
            && let Some(earlier) = self.key_apart(event)?
        {
            self.tx
                .prepare_cached("DELETE FROM events WHERE seq = ?1")?
                .execute(params![seq])?;
            return Ok(Appended {
                seq: earlier,
                duplicate: true,
            });
        }
        Ok(Appended {
            seq: seq as Seq,
            duplicate: false,
        })
    }

    /// The position of the earlier copy of `event` whose key is kept in
    /// `ingest_keys` within the duplicate window, if there is one.
    fn key_apart(&self, event: &Event) -> Result<Option<Seq>, rusqlite::Error> {
        let found = self
            .tx
            .prepare_cached(
                "SELECT seq, at_ms FROM ingest_keys WHERE tenant = ?1 AND source = ?2 AND id = ?3",
            )?
            .query_row(params![event.tenant(), event.source(), event.id()], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?;
        Ok(found
            .filter(|&(_, at)| self.now.saturating_sub(at) < self.window_ms)
            .map(|(seq, _)| seq as Seq))
    }

    /// Stores an event, emitted by the plugin `emitted_by` of its tenant
    /// (`None`: published); answers its position.
    fn put_event(
        &mut self,
        event: &Event,
        body: &str,
        emitted_by: Option<&str>,
    ) -> Result<i64, rusqlite::Error> {
        self.insert_event
            .execute(params![event.tenant(), self.now, body, emitted_by])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Commits what a plugin finished: see [`Commit`].
    fn commit(&mut self, commit: &Commit, bodies: &[String]) -> Result<Committed, rusqlite::Error> {
        let emitted = commit
            .emitted
            .iter()
            .zip(bodies)
            .map(|(event, body)| {
                // A plugin emits into its own tenant; an event of another
                // tenant is not recorded as this plugin's.
                let emitter = (event.tenant() == commit.tenant).then_some(commit.plugin.as_str());
                self.put_event(event, body, emitter).map(|seq| seq as Seq)
            })
            .collect::<Result<_, _>>()?;
        self.write_state(&commit.tenant, &commit.plugin, &commit.state)?;
        for seq in &commit.redriven {
            self.drop_redriven(&commit.tenant, &commit.plugin, sql_seq(*seq))?;
        }
        let refused_dead_letters = self.store_dead_letters(commit)?;
        let cursor_moved = self.move_cursor(commit)?;
        Ok(Committed {
            emitted,
            cursor_moved,
            refused_dead_letters,
        })
    }

    /// Applies `writes`, in order, to the state of `plugin` of `tenant`.
    fn write_state(
        &self,
        tenant: &str,
        plugin: &str,
        writes: &[StateWrite],
    ) -> Result<(), rusqlite::Error> {
        for write in writes {
            match &write.value {
                Some(value) => self
                    .tx
                    .prepare_cached(
                        "INSERT INTO state (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![tenant, plugin, write.key, value])?,
                None => self
                    .tx
                    .prepare_cached(
                        "DELETE FROM state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                    )?
                    .execute(params![tenant, plugin, write.key])?,
            };
        }
        Ok(())
    }

    /// Stores the commit's dead letters its tenant's quota admits; answers
    /// the positions of those it refused.
    fn store_dead_letters(&mut self, commit: &Commit) -> Result<Vec<Seq>, rusqlite::Error> {
        let mut refused = Vec::new();
        for dead in &commit.dead_letters {
            if !self.store_dead_letter(&commit.tenant, &commit.plugin, dead)? {
                refused.push(dead.seq);
            }
        }
        Ok(refused)
    }

    /// Stores one dead letter, unless it is new and its tenant's quota is
    /// reached; answers whether it was stored. One stored again after a
    /// failed redrive is always kept, and is done being redriven.
    fn store_dead_letter(
        &mut self,
        tenant: &str,
        plugin: &str,
        dead: &DeadLetter,
    ) -> Result<bool, rusqlite::Error> {
        let body = dead.event.to_json_string();
        let attempts = serde_json::to_string(&dead.attempts)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let seq = sql_seq(dead.seq);
        let size = i64::try_from(body.len() + attempts.len()).unwrap_or(i64::MAX);
        let before = self
            .tx
            .prepare_cached(
                "SELECT octet_length(body) + octet_length(attempts) FROM dead_letters
                 WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3",
            )?
            .query_row(params![tenant, plugin, seq], |row| row.get::<_, i64>(0))
            .optional()?;
        match before {
            Some(before) => self.count(tenant, plugin, 0, size - before),
            None => {
                let (count, bytes) = self.used(tenant);
                if !self
                    .config
                    .quota(tenant)
                    .admits(count, bytes, size.unsigned_abs())
                {
                    return Ok(false);
                }
                self.count(tenant, plugin, 1, size);
            }
        }
        self.tx
            .prepare_cached(
                "INSERT INTO dead_letters (tenant, plugin, seq, body, attempts, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant, plugin, seq) DO UPDATE SET
                     attempts = excluded.attempts, at_ms = excluded.at_ms",
            )?
            .execute(params![tenant, plugin, seq, body, attempts, self.now])?;
        self.drop_redrive_request(tenant, plugin, seq)?;
        Ok(true)
    }

    /// Moves the commit's cursor (unless it was moved by someone else
    /// since, see [`Commit::expected`]) and keeps its records of what was
    /// finished ahead; answers whether the cursor moved.
    fn move_cursor(&self, commit: &Commit) -> Result<bool, rusqlite::Error> {
        let (tenant, plugin) = (&commit.tenant, &commit.plugin);
        let cursor = sql_seq(commit.cursor);
        let Some(expected) = commit.expected else {
            self.tx
                .prepare_cached(
                    "INSERT INTO cursors (tenant, plugin, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, plugin) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![tenant, plugin, cursor])?;
            // Moved by force (an operator's replay): what was finished
            // ahead is to be delivered again.
            self.drop_ahead(tenant, plugin, i64::MAX)?;
            return Ok(true);
        };
        let moved = self
            .tx
            .prepare_cached(
                "UPDATE cursors SET seq = ?3 WHERE tenant = ?1 AND plugin = ?2 AND seq = ?4",
            )?
            .execute(params![tenant, plugin, cursor, sql_seq(expected)])?
            == 1;
        if moved {
            let mut put_ahead = self.tx.prepare_cached(
                "INSERT INTO ahead (tenant, plugin, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, plugin, seq) DO NOTHING",
            )?;
            for seq in &commit.ahead {
                put_ahead.execute(params![tenant, plugin, sql_seq(*seq)])?;
            }
            self.drop_ahead(tenant, plugin, cursor)?;
        }
        Ok(moved)
    }

    /// Deletes the records of events finished ahead at or before `upto`.
    fn drop_ahead(&self, tenant: &str, plugin: &str, upto: i64) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached("DELETE FROM ahead WHERE tenant = ?1 AND plugin = ?2 AND seq <= ?3")?
            .execute(params![tenant, plugin, upto])?;
        Ok(())
    }

    /// Deletes a dead letter that was redriven and handled.
    fn drop_redriven(
        &mut self,
        tenant: &str,
        plugin: &str,
        seq: i64,
    ) -> Result<(), rusqlite::Error> {
        self.drop_dead_letter(tenant, plugin, seq)?;
        self.drop_redrive_request(tenant, plugin, seq)
    }

    /// Deletes an operator's dead letter; answers whether there was one.
    fn discard(&mut self, tenant: &str, plugin: &str, seq: i64) -> Result<bool, rusqlite::Error> {
        let deleted = self.drop_dead_letter(tenant, plugin, seq)?;
        self.drop_redrive_request(tenant, plugin, seq)?;
        Ok(deleted)
    }

    /// Deletes a dead letter and counts its bytes out; answers whether
    /// there was one.
    fn drop_dead_letter(
        &mut self,
        tenant: &str,
        plugin: &str,
        seq: i64,
    ) -> Result<bool, rusqlite::Error> {
        let size = self
            .tx
            .prepare_cached(
                "DELETE FROM dead_letters WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3
                 RETURNING octet_length(body) + octet_length(attempts)",
            )?
            .query_row(params![tenant, plugin, seq], |row| row.get::<_, i64>(0))
            .optional()?;
        if let Some(size) = size {
            self.count(tenant, plugin, -1, -size);
        }
        Ok(size.is_some())
    }

    fn drop_redrive_request(
        &self,
        tenant: &str,
        plugin: &str,
        seq: i64,
    ) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached("DELETE FROM redrives WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3")?
            .execute(params![tenant, plugin, seq])?;
        Ok(())
    }

    /// Records an operator's request to redrive a dead letter; answers
    /// whether there is one.
    fn request_redrive(
        &self,
        tenant: &str,
        plugin: &str,
        seq: i64,
    ) -> Result<bool, rusqlite::Error> {
        let found = self.tx.execute(
            "INSERT INTO redrives (tenant, plugin, seq, at_ms)
             SELECT tenant, plugin, seq, ?4 FROM dead_letters
             WHERE tenant = ?1 AND plugin = ?2 AND seq = ?3
             ON CONFLICT (tenant, plugin, seq) DO UPDATE SET at_ms = excluded.at_ms",
            params![tenant, plugin, seq, self.now],
        )?;
        Ok(found == 1)
    }

    /// Records or lifts a quarantine; answers whether a row changed.
    fn quarantine(&self, change: &QuarantineChange) -> Result<bool, rusqlite::Error> {
        let changed = match change {
            QuarantineChange::Begin(q) => self.tx.execute(
                "INSERT INTO quarantines (tenant, plugin, version, since_ms, until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, plugin) DO UPDATE SET version = excluded.version,
                     since_ms = excluded.since_ms, until_ms = excluded.until_ms",
                params![q.tenant, q.plugin, q.version, q.since_ms, q.until_ms],
            )?,
            QuarantineChange::Lift { tenant, plugin } => self.tx.execute(
                "DELETE FROM quarantines WHERE tenant = ?1 AND plugin = ?2",
                params![tenant, plugin],
            )?,
        };
        Ok(changed == 1)
    }

    /// Deletes the ingest keys older than the duplicate window.
    fn forget_ingest_keys(&self) -> Result<(), rusqlite::Error> {
        self.tx.execute(
            "DELETE FROM ingest_keys WHERE at_ms < ?1",
            params![self.now.saturating_sub(self.window_ms)],
        )?;
        Ok(())
    }

    /// The dead letters of `tenant` and their bytes, as of this
    /// transaction.
    fn used(&self, tenant: &str) -> (u64, u64) {
        let usage = self.shared.dead_letters();
        let committed = super::shared::of_tenant(&usage, tenant).map(|(n, b)| {
            (
                i64::try_from(*n).unwrap_or(i64::MAX),
                i64::try_from(*b).unwrap_or(i64::MAX),
            )
        });
        let changed = super::shared::of_tenant(&self.changes, tenant).copied();
        let (count, bytes) = committed
            .chain(changed)
            .fold((0i64, 0i64), |(c, b), (n, s)| {
                (c.saturating_add(n), b.saturating_add(s))
            });
        (
            u64::try_from(count).unwrap_or(0),
            u64::try_from(bytes).unwrap_or(0),
        )
    }

    /// Counts `number` dead letters of `bytes` added (negative: removed)
    /// for `plugin` of `tenant`.
    fn count(&mut self, tenant: &str, plugin: &str, number: i64, bytes: i64) {
        let change = self
            .changes
            .entry((tenant.to_owned(), plugin.to_owned()))
            .or_insert((0, 0));
        change.0 = change.0.saturating_add(number);
        change.1 = change.1.saturating_add(bytes);
    }
}

/// Writes `bytes` zeros to `file` and syncs it.
fn write_probe_file(file: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::fs::File::create(file)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.sync_all()
}

/// The (device, inode) of the file at `path`, when it exists.
pub(super) fn file_identity(path: &Path) -> Option<(u64, u64)> {
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

/// The duplicate window, in milliseconds.
fn window_ms(config: &SqliteLogConfig) -> i64 {
    i64::try_from(config.duplicate_window.as_millis()).unwrap_or(i64::MAX)
}

/// Until when a key in `ingest_keys` may be within the duplicate window:
/// its newest key's time plus the window (`i64::MIN` when it is empty).
fn keys_apart_until(conn: &Connection, config: &SqliteLogConfig) -> Result<i64, rusqlite::Error> {
    let newest: Option<i64> =
        conn.query_row("SELECT MAX(at_ms) FROM ingest_keys", [], |row| row.get(0))?;
    Ok(newest.map_or(i64::MIN, |at| at.saturating_add(window_ms(config))))
}

/// The newest position the log has given (0 for a new log): what
/// AUTOINCREMENT counts from, whether or not that event is still there.
fn head(conn: &Connection) -> Result<Seq, rusqlite::Error> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.map_or(0, |s| Seq::try_from(s).unwrap_or(0)))
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
