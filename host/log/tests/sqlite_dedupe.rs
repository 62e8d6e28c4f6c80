//! The embedded log's duplicate detection across its file formats: a data
//! directory written by the version before `events.dedupe` (its tables
//! made by hand from that version's `schema.sql`, kept as a fixture) opens,
//! reads back and keeps refusing duplicates of what it holds; and the keys
//! of events that retention deletes keep refusing duplicates within the
//! window.

use std::time::Duration;

use plugbus_core::event::Event;
use plugbus_log::{EventStore as _, Retention, SqliteLog, SqliteLogConfig};

/// The tables as the version before `events.dedupe` made them (commit
/// 0da191f).
const OLD_SCHEMA: &str = include_str!("fixtures/schema-0da191f.sql");

fn event(tenant: &str, id: &str) -> Event {
    Event::builder(tenant, id, "/orders", "order.placed")
        .build()
        .expect("an event")
}

fn now_ms() -> i64 {
    plugbus_log::now_ms()
}

/// Writes `events` into a new file at `path` as the earlier version's
/// writer did: each event, then its ingest key, in one transaction.
fn write_old_log(path: &std::path::Path, events: &[Event]) {
    let mut conn = rusqlite::Connection::open(path).expect("sqlite");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch(OLD_SCHEMA).expect("the old tables");
    let tx = conn.transaction().expect("transaction");
    let at = now_ms();
    for event in events {
        tx.execute(
            "INSERT INTO events (tenant, appended_at_ms, body, emitted_by) VALUES (?1, ?2, ?3, NULL)",
            rusqlite::params![event.tenant(), at, event.to_json_string()],
        )
        .expect("an old event");
        let seq = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO ingest_keys (tenant, source, id, seq, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![event.tenant(), event.source(), event.id(), seq, at],
        )
        .expect("its key");
    }
    tx.commit().expect("commit");
}

fn columns(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).expect("sqlite");
    conn.prepare("SELECT name FROM pragma_table_info('events')")
        .expect("columns")
        .query_map([], |row| row.get::<_, String>(0))
        .expect("columns")
        .collect::<Result<_, _>>()
        .expect("columns")
}

#[test]
fn a_log_from_before_dedupe_keys_in_events_opens_and_keeps_refusing_its_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    let old = [
        event("acme", "o-1"),
        event("acme", "o-2"),
        event("globex", "o-1"),
    ];
    write_old_log(&path, &old);
    assert!(!columns(&path).iter().any(|c| c == "dedupe"));

    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("open");
    assert!(columns(&path).iter().any(|c| c == "dedupe"), "migrated");
    // The old events read back, in order.
    let acme = log.read("acme", 0, 10).expect("read");
    assert_eq!(
        acme.iter()
            .map(|s| (s.seq, s.event.clone()))
            .collect::<Vec<_>>(),
        vec![(1, old[0].clone()), (2, old[1].clone())]
    );
    assert_eq!(log.read("globex", 0, 10).expect("read")[0].seq, 3);

    // A duplicate of an old event is refused, naming the old position;
    // a new event is stored, and then its own duplicate is refused.
    let appended = log
        .append(vec![
            event("acme", "o-2"),
            event("acme", "n-1"),
            event("globex", "o-1"),
            event("acme", "n-1"),
        ])
        .wait()
        .expect("append");
    assert!(appended[0].duplicate);
    assert_eq!(appended[0].seq, 2);
    assert!(!appended[1].duplicate);
    assert!(appended[2].duplicate);
    assert_eq!(appended[2].seq, 3);
    assert!(appended[3].duplicate, "a repeat within one request");
    assert_eq!(appended[3].seq, appended[1].seq);
    let new_seq = appended[1].seq;
    assert_eq!(
        log.read("acme", 0, 10)
            .expect("read")
            .iter()
            .map(|s| s.seq)
            .collect::<Vec<_>>(),
        vec![1, 2, new_seq]
    );
    drop(log);

    // Opened again: nothing is migrated twice, and both the old and the
    // new keys still refuse duplicates.
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("reopen");
    let again = log
        .append(vec![event("acme", "o-1"), event("acme", "n-1")])
        .wait()
        .expect("append");
    assert_eq!(
        again
            .iter()
            .map(|a| (a.seq, a.duplicate))
            .collect::<Vec<_>>(),
        vec![(1, true), (new_seq, true)]
    );
    assert_eq!(log.read("acme", 0, 10).expect("read").len(), 3);
}

#[test]
fn a_migration_is_one_transaction() {
    // A migration that fails half-way (here: the index's name is taken,
    // so creating it fails after the column was added) leaves the file as
    // it was, as a crash at that point would.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    write_old_log(&path, &[event("acme", "o-1")]);
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE events_by_dedupe (x INTEGER);", // takes the index's name
        )
        .expect("block the index");
    }
    assert!(SqliteLog::open(dir.path(), SqliteLogConfig::default()).is_err());
    assert!(
        !columns(&path).iter().any(|c| c == "dedupe"),
        "nothing of a failed migration stays"
    );
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch("DROP TABLE events_by_dedupe;")
            .expect("unblock");
    }
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("open");
    assert!(
        log.append(vec![event("acme", "o-1")])
            .wait()
            .expect("append")[0]
            .duplicate
    );
}

#[test]
fn the_keys_of_events_retention_deleted_still_refuse_duplicates_within_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("open");
    let first = log
        .append(vec![event("acme", "e-1"), event("acme", "e-2")])
        .wait()
        .expect("append");
    std::thread::sleep(Duration::from_millis(5));
    // Every event is older than a millisecond, and no plugin is live.
    let pruned = log
        .prune(
            Retention {
                max_age: Some(Duration::from_millis(1)),
                max_bytes: None,
            },
            Vec::new(),
        )
        .wait()
        .expect("prune");
    assert_eq!(pruned.deleted, 2);
    assert!(log.read("acme", 0, 10).expect("read").is_empty());
    let again = log
        .append(vec![event("acme", "e-1"), event("acme", "e-3")])
        .wait()
        .expect("append");
    assert!(again[0].duplicate, "the deleted event's key is kept");
    assert_eq!(again[0].seq, first[0].seq);
    assert!(!again[1].duplicate);
    drop(log);
    // Across a reopen too.
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("reopen");
    assert!(
        log.append(vec![event("acme", "e-2")])
            .wait()
            .expect("append")[0]
            .duplicate
    );

    // Retention by size keeps them the same way.
    let many: Vec<Event> = (0..200)
        .map(|i| event("globex", &format!("g-{i}")))
        .collect();
    log.append(many.clone()).wait().expect("append");
    let pruned = log
        .prune(
            Retention {
                max_age: None,
                max_bytes: Some(1),
            },
            Vec::new(),
        )
        .wait()
        .expect("prune");
    assert!(pruned.deleted >= 200);
    let repeated = log.append(many).wait().expect("append");
    assert!(repeated.iter().all(|a| a.duplicate));
}

#[test]
fn a_duplicate_in_the_same_group_as_the_retention_that_deleted_its_first_copy_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("open");
    let first = log
        .append(vec![event("acme", "e-1")])
        .wait()
        .expect("append");
    std::thread::sleep(Duration::from_millis(5));
    // A large append keeps the writer busy while the retention run and
    // the duplicate queue up behind it, so that they share one group, the
    // deletion first.
    let filler: Vec<Event> = (0..5000)
        .map(|i| event("globex", &format!("g-{i}")))
        .collect();
    let busy = log.append(filler);
    let pruned = log.prune(
        Retention {
            max_age: Some(Duration::from_millis(1)),
            max_bytes: None,
        },
        Vec::new(),
    );
    let again = log.append(vec![event("acme", "e-1")]);
    busy.wait().expect("append");
    assert!(pruned.wait().expect("prune").deleted >= 1);
    let again = again.wait().expect("append");
    assert!(again[0].duplicate, "stored twice within the window");
    assert_eq!(again[0].seq, first[0].seq);
}

#[test]
fn a_key_past_the_window_is_taken_over_by_its_new_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SqliteLogConfig {
        duplicate_window: Duration::from_millis(50),
        ..SqliteLogConfig::default()
    };
    let log = SqliteLog::open(dir.path(), config).expect("open");
    let first = log
        .append(vec![event("acme", "e-1")])
        .wait()
        .expect("append");
    std::thread::sleep(Duration::from_millis(60));
    let second = log
        .append(vec![event("acme", "e-1")])
        .wait()
        .expect("append");
    assert!(!second[0].duplicate, "past the window it is stored again");
    assert!(second[0].seq > first[0].seq);
    // Within the window of the new copy, a repeat names the new copy.
    let third = log
        .append(vec![event("acme", "e-1")])
        .wait()
        .expect("append");
    assert!(third[0].duplicate);
    assert_eq!(third[0].seq, second[0].seq);
    assert_eq!(log.read("acme", 0, 10).expect("read").len(), 2);
}
