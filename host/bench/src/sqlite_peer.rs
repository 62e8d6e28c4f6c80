//! `plugbus-bench bench-sqlite-peer`: the same events published and consumed
//! through SQLite by a minimal program, with no plugbus in between: the floor
//! of what the embedded store allows on this machine.
//!
//! One producer thread inserts the events `bench --durable` publishes (their
//! CloudEvents JSON, 256-byte payloads) into a table like the log's events
//! table, a transaction per batch; one consumer thread, on its own
//! connection, reads the rows after its cursor in batches, decodes each body,
//! and writes its cursor in a transaction per batch read. WAL mode with
//! `synchronous=FULL` (each commit reaches the disk, as the log's group
//! commits do with fsync on). The events count once the consumer's cursor
//! has reached the last one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

/// Arguments of `plugbus-bench bench-sqlite-peer`.
#[derive(clap::Args)]
pub struct PeerArgs {
    /// Events of the batched row.
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) events: u64,

    /// Events of the single row (one insert transaction per event, one
    /// fsync each: far slower).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) single_events: u64,

    /// Events per insert transaction of the batched row.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) batch: u64,

    /// Rows the consumer reads at most per read (and per cursor write).
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) read_batch: u64,

    /// Bytes of JSON payload per event.
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(..=(plugbus::event::MAX_DATA_BYTES as u64)))]
    pub(crate) payload: u64,

    /// Which rows to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,batched"
    )]
    pub(crate) mode: Vec<Mode>,

    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How the producer inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One event per insert transaction.
    Single,
    /// --batch events per insert transaction.
    Batched,
}

/// The figures of one row.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PeerRow {
    pub(crate) mode: Mode,
    pub(crate) events: u64,
    /// Events per insert transaction.
    pub(crate) batch: u64,
    pub(crate) events_per_s: f64,
    /// Of the whole process (producer and consumer).
    pub(crate) cpu_us_per_event: f64,
}

/// Runs the rows and prints them.
pub async fn run(args: PeerArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut rows = Vec::new();
    for &mode in &args.mode {
        let (events, batch) = match mode {
            Mode::Single => (args.single_events, 1),
            Mode::Batched => (args.events, args.batch),
        };
        let (read_batch, payload) = (args.read_batch, args.payload as usize);
        let row =
            tokio::task::spawn_blocking(move || measure(mode, events, batch, read_batch, payload))
                .await
                .context("the SQLite peer's task failed")?
                .with_context(|| format!("the SQLite peer, {mode:?}"))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        }
        rows.push(row);
    }
    if !args.json {
        println!(
            "SQLite alone (WAL, synchronous=FULL), one producer and one consumer reading up to {} rows per read, {}-byte payloads\n\n| inserts | events | events/s | CPU µs/event |\n|---|---:|---:|---:|",
            args.read_batch, args.payload
        );
        for r in &rows {
            println!(
                "| {} | {} | {:.0} | {:.1} |",
                match r.mode {
                    Mode::Single => "1 event per transaction".to_owned(),
                    Mode::Batched => format!("{} events per transaction", r.batch),
                },
                r.events,
                r.events_per_s,
                r.cpu_us_per_event
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

const SCHEMA: &str = "
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant, seq);
CREATE TABLE cursors (
    tenant TEXT NOT NULL,
    consumer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, consumer)
) WITHOUT ROWID;
";

const TENANT: &str = "tenant-0000";

/// A connection to the file at `path` as the log opens its own.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// What the consumer decodes of each body: what a handler's dispatch
/// needs to route it, the rest skipped.
#[derive(Deserialize)]
struct Routed {
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
}

/// One row: a fresh file, the producer and the consumer until the consumer
/// is past every event.
fn measure(
    mode: Mode,
    events: u64,
    batch: u64,
    read_batch: u64,
    payload: usize,
) -> anyhow::Result<PeerRow> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = dir.path().join("peer.sqlite");
    let setup = connect(&path)?;
    setup.execute_batch(SCHEMA)?;
    setup.execute(
        "INSERT INTO cursors (tenant, consumer, seq) VALUES (?1, 'consumer', 0)",
        [TENANT],
    )?;
    drop(setup);
    // The bodies are made before the clock starts, as a publisher's
    // events arrive already serialised.
    let bodies: Vec<(String, String, String)> = (0..events)
        .map(|i| {
            let event = crate::bench::event(TENANT, i, payload);
            (
                event.id().to_owned(),
                event.source().to_owned(),
                event.to_json_string(),
            )
        })
        .collect();
    let last = Arc::new(AtomicI64::new(0));

    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    let wall = Instant::now();
    let consumer = {
        let (path, last) = (path.clone(), last.clone());
        std::thread::spawn(move || consume(&path, events, read_batch, &last))
    };
    let produced = produce(&path, &bodies, batch, &last);
    let consumed = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    let wall = wall.elapsed();
    let cpu = cpu
        .try_elapsed()
        .context("cannot read the process's CPU time")?;
    produced.context("the producer failed")?;
    consumed.context("the consumer failed")?;
    Ok(PeerRow {
        mode,
        events,
        batch,
        events_per_s: events as f64 / wall.as_secs_f64().max(f64::EPSILON),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events as f64,
    })
}

/// Inserts `bodies` in transactions of `batch`, publishing the last
/// sequence number written for the consumer.
fn produce(
    path: &Path,
    bodies: &[(String, String, String)],
    batch: u64,
    last: &AtomicI64,
) -> anyhow::Result<()> {
    let mut conn = connect(path)?;
    for chunk in bodies.chunks(batch as usize) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (tenant, id, source, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (id, source, body) in chunk {
                insert.execute(params![TENANT, id, source, body])?;
            }
        }
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        last.store(seq, Ordering::Release);
    }
    Ok(())
}

/// Reads the rows after the cursor, up to `read_batch` at a time, until it
/// has consumed `events`; decodes each and writes the cursor after each
/// read. Waits a little when there is nothing new.
fn consume(path: &Path, events: u64, read_batch: u64, last: &AtomicI64) -> anyhow::Result<()> {
    let mut conn = connect(path)?;
    let mut cursor: i64 = 0;
    let mut consumed = 0u64;
    let mut decoded = 0usize;
    while consumed < events {
        if last.load(Ordering::Acquire) <= cursor {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        let mut read = 0u64;
        {
            let mut select = conn.prepare_cached(
                "SELECT seq, body FROM events WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows = select.query(params![TENANT, cursor, read_batch as i64])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                // One producer: the sequence numbers have no gaps.
                if seq != cursor + 1 {
                    bail!("read event {seq} after {cursor}");
                }
                let body = row.get_ref(1)?.as_str()?;
                let event: Routed = serde_json::from_str(body)
                    .with_context(|| format!("event {seq} does not decode"))?;
                decoded += event.id.len() + event.source.len() + event.ty.len();
                cursor = seq;
                read += 1;
            }
        }
        if read == 0 {
            continue;
        }
        consumed += read;
        let tx = conn.transaction()?;
        tx.prepare_cached(
            "UPDATE cursors SET seq = ?1 WHERE tenant = ?2 AND consumer = 'consumer'",
        )?
        .execute(params![cursor, TENANT])?;
        tx.commit()?;
    }
    if decoded == 0 {
        bail!("the consumer decoded nothing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_reads_every_event_in_order() {
        for mode in [Mode::Single, Mode::Batched] {
            let row = measure(
                mode,
                250,
                if mode == Mode::Single { 1 } else { 64 },
                100,
                256,
            )
            .expect("the peer runs");
            assert_eq!(row.events, 250);
            assert!(row.events_per_s > 0.0);
        }
    }
}
