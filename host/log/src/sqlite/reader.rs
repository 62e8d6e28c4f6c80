//! The log's reads: a bounded pool of read-only connections beside the
//! writer's, so that reads never wait for a group commit (WAL mode lets
//! them run alongside) and several readers (the consumers of many plugins)
//! read at once rather than one after another.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    DeadLetter, LogError, Page, Quarantine, ReadLimit, Seq, StateEntry, StateQuery, StoredEvent,
};
use plugbus_core::event::Event;

/// Read-only connections to the log's file: at most `size`, opened as
/// they are needed (the first at open) and kept.
pub(super) struct Reader {
    path: PathBuf,
    size: usize,
    pool: Mutex<Pool>,
    /// Signalled when a connection is given back.
    returned: Condvar,
}

/// The connections not in use, and how many are open in all.
struct Pool {
    idle: Vec<Connection>,
    open: usize,
}

/// A connection taken from the pool; given back when dropped.
pub(super) struct Conn<'a> {
    reader: &'a Reader,
    conn: Option<Connection>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Taken out only by `drop`.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.reader.pool().idle.push(conn);
            self.reader.returned.notify_one();
        }
    }
}

/// Opens a read-only connection to the file at `path`.
fn open_read_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    super::stable_plans(&conn)?;
    Ok(conn)
}

impl Reader {
    /// Opens a pool of up to `size` (at least 1) read-only connections to
    /// the file at `path`, which exists; the first is opened now.
    pub fn open(path: &Path, size: usize) -> Result<Self, rusqlite::Error> {
        let first = open_read_connection(path)?;
        Ok(Self {
            path: path.to_owned(),
            size: size.max(1),
            pool: Mutex::new(Pool {
                idle: vec![first],
                open: 1,
            }),
            returned: Condvar::new(),
        })
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection: an idle one, else a new one while fewer than `size`
    /// are open, else the first one given back.
    fn conn(&self) -> Result<Conn<'_>, LogError> {
        let mut pool = self.pool();
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(Conn {
                    reader: self,
                    conn: Some(conn),
                });
            }
            if pool.open < self.size {
                pool.open += 1;
                drop(pool);
                return match open_read_connection(&self.path) {
                    Ok(conn) => Ok(Conn {
                        reader: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        // The place is free again: a reader waiting for
                        // one may open it.
                        self.returned.notify_one();
                        Err(self.store_error(e))
                    }
                };
            }
            pool = self
                .returned
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn store_error(&self, e: rusqlite::Error) -> LogError {
        LogError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, seq: Seq, reason: impl ToString) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            seq,
            reason: reason.to_string(),
        }
    }

    /// Parses a stored event's JSON; a row that does not parse is corrupt.
    fn stored_event(&self, seq: Seq, body: &str) -> Result<Event, LogError> {
        Event::from_json(body).map_err(|e| self.corrupt(seq, e))
    }

    /// See [`EventStore::read_bounded`](crate::EventStore::read_bounded).
    pub fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let conn = self.conn()?;
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
            out.push(self.stored_row(row, size)?);
            bytes = bytes.saturating_add(size);
        }
        Ok(out)
    }

    /// One row of `events` (seq, appended_at_ms, body) of `size` bytes.
    fn stored_row(&self, row: &rusqlite::Row<'_>, size: u64) -> Result<StoredEvent, LogError> {
        let seq = row.get::<_, i64>(0).map_err(|e| self.store_error(e))? as Seq;
        let appended_at_ms = row.get::<_, i64>(1).map_err(|e| self.store_error(e))?;
        let body = row.get_ref(2).map_err(|e| self.store_error(e))?;
        let body = body.as_str().map_err(|e| self.corrupt(seq, e))?;
        Ok(StoredEvent {
            seq,
            appended_at_ms,
            event: self.stored_event(seq, body)?,
            bytes: size,
        })
    }

    /// See [`EventStore::count_after`](crate::EventStore::count_after).
    pub fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()?
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

    /// See [`EventStore::first_since`](crate::EventStore::first_since).
    pub fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        self.conn()?
            .query_row(
                "SELECT MIN(seq) FROM events WHERE tenant = ?1 AND appended_at_ms >= ?2",
                params![tenant, at_ms],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|seq| seq.map(|s| s as Seq))
            .map_err(|e| self.store_error(e))
    }

    /// See [`EventStore::head`](crate::EventStore::head).
    pub fn head(&self) -> Result<Seq, LogError> {
        self.conn()?
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|s| s as Seq)
            .map_err(|e| self.store_error(e))
    }

    /// See [`CursorStore::cursor`](crate::CursorStore::cursor).
    pub fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        self.conn()?
            .query_row(
                "SELECT seq FROM cursors WHERE tenant = ?1 AND plugin = ?2",
                params![tenant, plugin],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|seq| seq.map(|s| s as Seq))
            .map_err(|e| self.store_error(e))
    }

    /// See [`CursorStore::ahead`](crate::CursorStore::ahead).
    pub fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        let conn = self.conn()?;
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

    /// See [`DeadLetterStore::dead_letters`](crate::DeadLetterStore::dead_letters).
    pub fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        self.query_dead_letters(
            "SELECT seq, body, attempts FROM dead_letters
             WHERE tenant = ?1 AND plugin = ?2 ORDER BY seq",
            tenant,
            plugin,
        )
    }

    /// See [`DeadLetterStore::redrives`](crate::DeadLetterStore::redrives).
    pub fn redrives(
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

    /// Dead letters selected by `sql` (seq, body, attempts) for a plugin.
    fn query_dead_letters(
        &self,
        sql: &str,
        tenant: &str,
        plugin: &str,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let conn = self.conn()?;
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
            out.push(DeadLetter {
                seq,
                event: self.stored_event(seq, &body)?,
                attempts: serde_json::from_str(&attempts)
                    .map_err(|e| self.corrupt(seq, format!("attempts: {e}")))?,
            });
        }
        Ok(out)
    }

    /// See [`DeadLetterStore::dead_letter_plugins`](crate::DeadLetterStore::dead_letter_plugins).
    pub fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        let conn = self.conn()?;
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

    /// See [`QuarantineStore::quarantines`](crate::QuarantineStore::quarantines).
    pub fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        let conn = self.conn()?;
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

    /// The value of `key` in the state of `plugin` of `tenant`.
    pub fn state(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, LogError> {
        self.conn()?
            .prepare_cached(
                "SELECT value FROM state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![tenant, plugin, key], |row| row.get::<_, Vec<u8>>(0))
                    .optional()
            })
            .map_err(|e| self.store_error(e))
    }

    /// See [`InspectStore::state_entries`](crate::InspectStore::state_entries).
    pub fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        // The keys with the prefix are those from it (or after `after`,
        // when that is further) up to the prefix followed by the byte 0xFF,
        // which no UTF-8 text holds: one range of the primary key.
        let (lower, from) = match &query.after {
            Some(after) if after.as_str() >= query.prefix.as_str() => (">", after.as_str()),
            _ => (">=", query.prefix.as_str()),
        };
        let sql = format!(
            "SELECT key, value FROM state
             WHERE tenant = ?1 AND plugin = ?2 AND key {lower} ?3
                 AND key < (?4 || CAST(X'FF' AS TEXT))
             ORDER BY key LIMIT ?5"
        );
        let conn = self.conn()?;
        let mut statement = conn.prepare_cached(&sql).map_err(|e| self.store_error(e))?;
        let rows = statement
            .query(params![
                tenant,
                plugin,
                from,
                query.prefix,
                sql_limit(query.limit)
            ])
            .map_err(|e| self.store_error(e))?;
        let limit = ReadLimit {
            events: query.limit,
            bytes: query.max_bytes,
            first_always: true,
        };
        self.page(rows, limit, |row| {
            let key: String = row.get(0).map_err(|e| self.store_error(e))?;
            let value: Vec<u8> = row.get(1).map_err(|e| self.store_error(e))?;
            let size = (key.len() + value.len()) as u64;
            Ok((StateEntry { key, value }, size))
        })
    }

    /// See [`InspectStore::emitted`](crate::InspectStore::emitted).
    pub fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        let conn = self.conn()?;
        // Through the partial index events_by_emitter.
        let mut statement = conn
            .prepare_cached(
                "SELECT seq, appended_at_ms, body FROM events
                 WHERE tenant = ?1 AND emitted_by = ?2 AND seq < ?3
                 ORDER BY seq DESC LIMIT ?4",
            )
            .map_err(|e| self.store_error(e))?;
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = statement
            .query(params![tenant, plugin, before, sql_limit(limit.events)])
            .map_err(|e| self.store_error(e))?;
        self.page(rows, limit, |row| {
            let size = row
                .get_ref(2)
                .map(|v| v.as_bytes().map_or(0, <[u8]>::len))
                .map_err(|e| self.store_error(e))?;
            let size = u64::try_from(size).unwrap_or(u64::MAX);
            Ok((self.stored_row(row, size)?, size))
        })
    }

    /// The items of `rows` (asked for one more than `limit.events`) that
    /// fit in `limit`, each made by `item` with its size, and whether more
    /// were left.
    fn page<T>(
        &self,
        mut rows: rusqlite::Rows<'_>,
        limit: ReadLimit,
        mut item: impl FnMut(&rusqlite::Row<'_>) -> Result<(T, u64), LogError>,
    ) -> Result<Page<T>, LogError> {
        let mut items = Vec::new();
        let mut bytes = 0u64;
        while let Some(row) = rows.next().map_err(|e| self.store_error(e))? {
            if items.len() >= limit.events {
                return Ok(Page { items, more: true });
            }
            let (made, size) = item(row)?;
            let first = items.is_empty() && limit.first_always;
            if !first && bytes.saturating_add(size) > limit.bytes {
                return Ok(Page { items, more: true });
            }
            bytes = bytes.saturating_add(size);
            items.push(made);
        }
        Ok(Page { items, more: false })
    }
}

/// A page's `LIMIT`: one row more than it holds, to tell whether more
/// follow.
fn sql_limit(items: usize) -> i64 {
    i64::try_from(items).map_or(i64::MAX, |n| n.saturating_add(1))
}
