//! The embedded log's tail cache: reads right behind the head are answered
//! from memory, and never with an event the log deleted, nor past one it
//! holds (retention, the cache's lower edge, eviction, another process's
//! writes).

use std::time::Duration;

use plugbus_core::event::Event;
use plugbus_log::{
    Commit, CursorStore as _, EventStore as _, LogStats, Retention, SqliteLog, SqliteLogConfig,
    TailCacheLimits,
};

fn event(tenant: &str, id: &str) -> Event {
    Event::builder(tenant, id, "/orders", "order.placed")
        .build()
        .expect("an event")
}

fn open(dir: &std::path::Path, events: usize) -> SqliteLog {
    SqliteLog::open(
        dir,
        SqliteLogConfig {
            tail_cache: TailCacheLimits {
                events,
                bytes: 1024 * 1024,
            },
            ..SqliteLogConfig::default()
        },
    )
    .expect("open")
}

/// Appends `n` events of `tenant` with ids `<prefix>-<i>`; answers their
/// positions.
fn append(log: &SqliteLog, tenant: &str, prefix: &str, n: usize) -> Vec<u64> {
    log.append(
        (0..n)
            .map(|i| event(tenant, &format!("{prefix}-{i}")))
            .collect(),
    )
    .wait()
    .expect("append")
    .iter()
    .map(|a| a.seq)
    .collect()
}

fn read(log: &SqliteLog, tenant: &str, after: u64) -> Vec<u64> {
    log.read(tenant, after, 1000)
        .expect("read")
        .iter()
        .map(|s| s.seq)
        .collect()
}

/// How many reads the cache answered and how many went to SQLite since
/// `before`.
fn since(log: &SqliteLog, before: LogStats) -> (u64, u64) {
    let now = log.stats();
    (
        now.tail_hits - before.tail_hits,
        now.tail_misses - before.tail_misses,
    )
}

#[test]
fn a_consumer_right_behind_the_head_reads_the_cache_and_gets_what_sqlite_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 1000);
    let a = append(&log, "acme", "a", 5);
    let b = append(&log, "globex", "b", 3);
    let emitted = log
        .commit(Commit {
            tenant: "acme".into(),
            plugin: "saga".into(),
            cursor: a[1],
            emitted: vec![event("acme", "x-1"), event("globex", "x-2")],
            ..Commit::default()
        })
        .wait()
        .expect("commit")
        .emitted;
    let before = log.stats();
    let cached = log.read("acme", a[1], 1000).expect("read");
    let mut expected = a[2..].to_vec();
    expected.push(emitted[0]);
    assert_eq!(cached.iter().map(|s| s.seq).collect::<Vec<_>>(), expected);
    assert_eq!(
        read(&log, "globex", 0),
        [b.clone(), vec![emitted[1]]].concat()
    );
    assert_eq!(log.count_after("acme", a[4], 10).expect("count"), 1);
    assert_eq!(since(&log, before), (3, 0), "all from the cache");
    // The same events, parsed, as SQLite has them (read from a log opened
    // afresh, whose cache knows nothing yet).
    drop(log);
    let log = open(dir.path(), 1000);
    let before = log.stats();
    let stored = log.read("acme", a[1], 1000).expect("read");
    assert_eq!(
        since(&log, before),
        (0, 1),
        "a new log's cache knows nothing"
    );
    assert_eq!(stored, cached);
}

#[test]
fn a_consumer_reading_from_the_cache_across_a_retention_deletion_gets_no_deleted_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 1000);
    let seqs = append(&log, "acme", "a", 10);
    // A consumer at the 5th event reads the rest from the cache.
    let before = log.stats();
    assert_eq!(read(&log, "acme", seqs[4]), seqs[5..].to_vec());
    assert_eq!(since(&log, before), (1, 0));
    // The plugin finished up to the 7th: retention deletes up to there.
    log.commit_cursor("acme", "saga", seqs[6])
        .wait()
        .expect("cursor");
    std::thread::sleep(Duration::from_millis(5));
    let pruned = log
        .prune(
            Retention {
                max_age: Some(Duration::from_millis(1)),
                max_bytes: None,
            },
            vec![("acme".into(), "saga".into())],
        )
        .wait()
        .expect("prune");
    assert_eq!(pruned.deleted, 7);
    // Reads from before, at and after the deletion's edge: never a
    // deleted event, never a gap.
    for after in [0, seqs[4], seqs[6], seqs[7]] {
        let expected: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| *s > after.max(seqs[6]))
            .collect();
        assert_eq!(read(&log, "acme", after), expected, "after {after}");
    }
    // New events are read from the cache again.
    let more = append(&log, "acme", "b", 3);
    let before = log.stats();
    assert_eq!(read(&log, "acme", seqs[9]), more);
    assert_eq!(since(&log, before), (1, 0));
    // Across the deletion's edge: from SQLite, whole.
    assert_eq!(read(&log, "acme", 0), [seqs[7..].to_vec(), more].concat());
}

#[test]
fn a_read_spanning_the_lower_edge_goes_to_sqlite_and_comes_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 5);
    let a = append(&log, "acme", "a", 4);
    let b = append(&log, "globex", "b", 4);
    // The cache holds the newest 5 (a[3], b[0..4]): its lower edge is a[2].
    let before = log.stats();
    assert_eq!(read(&log, "acme", a[2]), vec![a[3]]);
    assert_eq!(read(&log, "globex", a[2]), b.clone());
    assert_eq!(since(&log, before), (2, 0));
    let before = log.stats();
    assert_eq!(read(&log, "acme", a[1]), a[2..].to_vec());
    assert_eq!(read(&log, "acme", 0), a.clone());
    assert_eq!(log.count_after("acme", 0, 10).expect("count"), 4);
    assert_eq!(since(&log, before), (0, 3), "from before the edge: SQLite");
}

#[test]
fn an_evicted_event_is_a_cache_miss_read_from_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 4);
    let first = append(&log, "acme", "a", 3);
    let before = log.stats();
    assert_eq!(read(&log, "acme", 0), first);
    assert_eq!(since(&log, before), (1, 0));
    // Six more push the first three out.
    let second = append(&log, "acme", "b", 6);
    let before = log.stats();
    assert_eq!(read(&log, "acme", 0), [first, second.clone()].concat());
    assert_eq!(since(&log, before), (0, 1));
    assert_eq!(read(&log, "acme", second[1]), second[2..].to_vec());
    assert_eq!(since(&log, before), (1, 1));
}

#[test]
fn events_another_process_wrote_are_not_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 1000);
    let first = append(&log, "acme", "a", 2);
    assert_eq!(read(&log, "acme", 0), first);
    // Another process appends to the file (as `plugbus` commands beside a
    // running host may): this log's writer did not see it.
    let other = {
        let conn = rusqlite::Connection::open(dir.path().join("events.db")).expect("sqlite");
        conn.busy_timeout(Duration::from_secs(10)).expect("timeout");
        conn.execute(
            "INSERT INTO events (tenant, appended_at_ms, body) VALUES ('acme', 1, ?1)",
            [event("acme", "other").to_json_string()],
        )
        .expect("insert");
        conn.last_insert_rowid() as u64
    };
    // Once this log writes again, its reads include the other event.
    let next = append(&log, "acme", "c", 1);
    assert_eq!(read(&log, "acme", first[1]), vec![other, next[0]]);
    assert_eq!(read(&log, "acme", 0), [first, vec![other], next].concat());
}

#[test]
fn a_cache_turned_off_leaves_every_read_to_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), 0);
    let seqs = append(&log, "acme", "a", 3);
    let before = log.stats();
    assert_eq!(read(&log, "acme", seqs[0]), seqs[1..].to_vec());
    assert_eq!(since(&log, before), (0, 1));
}
