//! What the writer thread keeps up to date for the log's readers: its
//! counters, the log's health, and each plugin's dead letters.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;

use crate::{LogHealth, now_ms};

/// The dead letters of each (tenant, plugin) that has any: how many, and
/// their bytes.
pub(super) type DeadLetterUsage = BTreeMap<(String, String), (u64, u64)>;

/// Dead letters and bytes added (or, negative, removed) per plugin by a
/// transaction, applied to [`Shared::dead_letters`] once it committed.
pub(super) type DeadLetterChanges = BTreeMap<(String, String), (i64, i64)>;

/// The writer's counters, read by [`SqliteLog::stats`](super::SqliteLog::stats).
#[derive(Default)]
pub(super) struct Counters {
    pub appended: AtomicU64,
    pub duplicates: AtomicU64,
    pub commits: AtomicU64,
    pub requests: AtomicU64,
    pub tail_hits: AtomicU64,
    pub tail_misses: AtomicU64,
}

/// What the writer thread keeps up to date for the log's readers.
#[derive(Default)]
pub(super) struct Shared {
    pub counters: Counters,
    health: Mutex<LogHealth>,
    /// The dead letters of each plugin, counted once at open (and again
    /// when another process changed the file), then kept by the writer.
    dead_letters: Mutex<DeadLetterUsage>,
}

impl Shared {
    pub fn health(&self) -> MutexGuard<'_, LogHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn dead_letters(&self) -> MutexGuard<'_, DeadLetterUsage> {
        self.dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a committed transaction's changes to the dead letters.
    pub fn add_dead_letters(&self, changes: &DeadLetterChanges) {
        if changes.is_empty() {
            return;
        }
        let mut usage = self.dead_letters();
        for (key, (count, bytes)) in changes {
            let used = usage.entry(key.clone()).or_insert((0, 0));
            used.0 = used.0.saturating_add_signed(*count);
            used.1 = used.1.saturating_add_signed(*bytes);
            if used.0 == 0 {
                usage.remove(key);
            }
        }
    }

    /// Records that a write succeeded (`None`) or failed; logs the changes.
    pub fn wrote(&self, path: &Path, error: Option<String>) {
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

/// The values of `map` whose key is of `tenant`.
pub(super) fn of_tenant<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    tenant: &'a str,
) -> impl Iterator<Item = &'a V> + 'a {
    map.range((tenant.to_owned(), String::new())..)
        .take_while(move |((t, _), _)| t == tenant)
        .map(|(_, value)| value)
}

/// The dead letters of each plugin and their bytes, in one grouped query
/// (`octet_length` reads the sizes, not the values).
pub(super) fn count_dead_letters(conn: &Connection) -> Result<DeadLetterUsage, rusqlite::Error> {
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
