//! Retention in the writer's transaction: the events a [`Retention`] no
//! longer keeps are deleted, never one a live plugin has not finished with.

use rusqlite::{Connection, params};

use crate::{Pruned, Retention};

/// The condition on `events` that keeps what a live plugin has not
/// finished with: at or below its tenant's ceiling (see [`ceilings`]).
const ELIGIBLE: &str = "seq <= COALESCE((SELECT c.seq FROM ceilings c WHERE c.tenant = events.tenant), 9223372036854775807)";

/// What a [`prune`] did, and whether it kept ingest keys apart.
pub(super) struct Pruning {
    pub pruned: Pruned,
    /// Keys of deleted events within the duplicate window were kept in
    /// `ingest_keys`.
    pub keys_kept: bool,
}

/// Deletes what `retention` no longer keeps: see
/// [`EventStore::prune`](crate::EventStore::prune). The ingest keys of the
/// deleted events appended within the duplicate window (`window_ms`) are
/// kept in `ingest_keys`, so that they still refuse duplicates.
pub(super) fn prune(
    tx: &Connection,
    now: i64,
    window_ms: i64,
    retention: &Retention,
    live: &[(String, String)],
) -> Result<Pruning, rusqlite::Error> {
    ceilings(tx, live)?;
    let mut pruning = Pruning {
        pruned: Pruned::default(),
        keys_kept: false,
    };
    let recent = now.saturating_sub(window_ms);
    if let Some(age) = retention.max_age {
        let cutoff = now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let (deleted, kept) = prune_older_than(tx, cutoff, recent)?;
        pruning.pruned.deleted += deleted;
        pruning.keys_kept |= kept;
    }
    if let Some(max_bytes) = retention.max_bytes {
        let (deleted, held_back, kept) = prune_to_size(tx, max_bytes, recent)?;
        pruning.pruned.deleted += deleted;
        pruning.pruned.held_back = held_back;
        pruning.keys_kept |= kept;
    }
    Ok(pruning)
}

/// Copies into `ingest_keys` the keys of the events `which` (a condition
/// on `events`, with `?1` bound to `value`) appended at or after `recent`:
/// they are about to be deleted, and must still refuse duplicates within
/// the window. The source and id are read from the stored JSON (a row
/// that does not hold them, changed by hand, is skipped); answers whether
/// any was copied.
fn keep_keys(
    tx: &Connection,
    which: &str,
    value: i64,
    recent: i64,
) -> Result<bool, rusqlite::Error> {
    let kept = tx.prepare_cached(&format!(
        "INSERT INTO ingest_keys (tenant, source, id, seq, at_ms)
         SELECT tenant, json_extract(body, '$.source'), json_extract(body, '$.id'), seq, appended_at_ms
         FROM events WHERE {which} AND dedupe IS NOT NULL AND appended_at_ms >= ?2
             AND json_valid(body) AND json_type(body, '$.source') = 'text'
             AND json_type(body, '$.id') = 'text'
         ON CONFLICT (tenant, source, id) DO UPDATE SET seq = excluded.seq, at_ms = excluded.at_ms"
    ))?
    .execute(params![value, recent])?;
    Ok(kept > 0)
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

/// Deletes the eligible events appended before `cutoff_ms`, keeping the
/// keys of those appended at or after `recent`; answers how many went and
/// whether keys were kept.
fn prune_older_than(
    tx: &Connection,
    cutoff_ms: i64,
    recent: i64,
) -> Result<(u64, bool), rusqlite::Error> {
    let which = format!("appended_at_ms < ?1 AND {ELIGIBLE}");
    let kept = cutoff_ms > recent && keep_keys(tx, &which, cutoff_ms, recent)?;
    let deleted = tx.execute(
        &format!("DELETE FROM events WHERE {which}"),
        params![cutoff_ms],
    )?;
    Ok((deleted as u64, kept))
}

/// Deletes the oldest eligible events while the file uses more than
/// `max_bytes`, keeping the keys of those appended at or after `recent`;
/// answers how many went, whether it is still over because the rest are
/// not eligible, and whether keys were kept.
fn prune_to_size(
    tx: &Connection,
    max_bytes: u64,
    recent: i64,
) -> Result<(u64, bool, bool), rusqlite::Error> {
    let which = format!("seq IN (SELECT seq FROM events WHERE {ELIGIBLE} ORDER BY seq LIMIT ?1)");
    let oldest = format!("DELETE FROM events WHERE {which}");
    let mut deleted = 0;
    let mut kept = false;
    // Small steps first, so that little more than needed goes; larger ones
    // while far over.
    let mut step = 16i64;
    while bytes_in_use(tx)? > max_bytes {
        // The same rows as the deletion's, in the same transaction.
        kept |= keep_keys(tx, &which, step, recent)?;
        let gone = tx.execute(&oldest, params![step])?;
        if gone == 0 {
            return Ok((deleted, true, kept));
        }
        deleted += gone as u64;
        step = (step * 2).min(4096);
    }
    Ok((deleted, false, kept))
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
