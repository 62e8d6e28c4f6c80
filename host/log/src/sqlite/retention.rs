//! Retention in the writer's transaction: the events a [`Retention`] no
//! longer keeps are deleted, never one a live plugin has not finished with.

use rusqlite::{Connection, params};

use crate::{Pruned, Retention};

/// The condition on `events` that keeps what a live plugin has not
/// finished with: at or below its tenant's ceiling (see [`ceilings`]).
const ELIGIBLE: &str = "seq <= COALESCE((SELECT c.seq FROM ceilings c WHERE c.tenant = events.tenant), 9223372036854775807)";

/// Deletes what `retention` no longer keeps: see
/// [`EventStore::prune`](crate::EventStore::prune).
pub(super) fn prune(
    tx: &Connection,
    now: i64,
    retention: &Retention,
    live: &[(String, String)],
) -> Result<Pruned, rusqlite::Error> {
    ceilings(tx, live)?;
    let mut pruned = Pruned::default();
    if let Some(age) = retention.max_age {
        let cutoff = now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        pruned.deleted += prune_older_than(tx, cutoff)?;
    }
    if let Some(max_bytes) = retention.max_bytes {
        let (deleted, held_back) = prune_to_size(tx, max_bytes)?;
        pruned.deleted += deleted;
        pruned.held_back = held_back;
    }
    Ok(pruned)
}

/// Fills the temporary table `ceilings` with the highest position each
/// tenant with live plugins may lose: the lowest of their cursors (0 for a
/// plugin without one yet).
fn ceilings(tx: &Connection, live: &[(String, String)]) -> Result<(), rusqlite::Error> {
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS ceilings (tenant TEXT PRIMARY KEY, seq INTEGER NOT NULL);
         DELETE FROM ceilings;",
    )?;
    let mut ceiling = tx.prepare_cached(
        "INSERT INTO ceilings (tenant, seq)
         VALUES (?1, COALESCE((SELECT seq FROM cursors WHERE tenant = ?1 AND plugin = ?2), 0))
         ON CONFLICT (tenant) DO UPDATE SET seq = MIN(seq, excluded.seq)",
    )?;
    for (tenant, plugin) in live {
        ceiling.execute(params![tenant, plugin])?;
    }
    Ok(())
}

/// Deletes the eligible events appended before `cutoff_ms`.
fn prune_older_than(tx: &Connection, cutoff_ms: i64) -> Result<u64, rusqlite::Error> {
    let deleted = tx.execute(
        &format!("DELETE FROM events WHERE appended_at_ms < ?1 AND {ELIGIBLE}"),
        params![cutoff_ms],
    )?;
    Ok(deleted as u64)
}

/// Deletes the oldest eligible events while the file uses more than
/// `max_bytes`; answers how many went, and whether it is still over
/// because the rest are not eligible.
fn prune_to_size(tx: &Connection, max_bytes: u64) -> Result<(u64, bool), rusqlite::Error> {
    let oldest = format!(
        "DELETE FROM events WHERE seq IN
         (SELECT seq FROM events WHERE {ELIGIBLE} ORDER BY seq LIMIT ?1)"
    );
    let mut deleted = 0;
    // Small steps first, so that little more than needed goes; larger ones
    // while far over.
    let mut step = 16i64;
    while bytes_in_use(tx)? > max_bytes {
        let gone = tx.execute(&oldest, params![step])?;
        if gone == 0 {
            return Ok((deleted, true));
        }
        deleted += gone as u64;
        step = (step * 2).min(4096);
    }
    Ok((deleted, false))
}

/// The bytes of the file's pages in use: events, indexes, cursors, dead
/// letters and state, not the free pages SQLite will reuse.
fn bytes_in_use(tx: &Connection) -> Result<u64, rusqlite::Error> {
    tx.query_row(
        "SELECT (p.page_count - f.freelist_count) * s.page_size
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|b| u64::try_from(b).unwrap_or(0))
}
