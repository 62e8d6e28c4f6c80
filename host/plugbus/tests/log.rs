//! The event log's contract, run against every implementation — the
//! embedded [`SqliteLog`], the NATS JetStream [`NatsLog`] (each test on a
//! nats-server of its own) and the in-memory [`MemoryLog`] — in the
//! modules `sqlite`, `nats` and `memory`: positions, duplicates within the window,
//! per-tenant reads, cursors and what was finished ahead, plugin state
//! committed with the cursor, dead letters and their quotas, redrives,
//! quarantines and retention by age.
//!
//! Then what a log kept outside the process does, for the embedded log
//! and NATS (modules `sqlite_reopened`, `nats_reopened`): what one opening
//! wrote, another reads, and dead letters another process adds are
//! counted.
//!
//! Below them, what only the embedded log does: its statistics, group
//! commit, retention by the file's size, and clear errors for a bad data
//! directory or a corrupted file (all of its file).

use std::time::Duration;

use plugbus::Event;
use plugbus::log::{
    Commit, CursorStore, DeadLetter, DeadLetterQuota, Durability, EventLog, EventStore,
    FailedAttempt, LogError, MemoryLog, MemoryLogConfig, Quarantine, QuarantineChange, ReadLimit,
    Retention, SqliteLog, SqliteLogConfig,
};
use plugbus::log_nats::{NatsLog, NatsLogConfig};
use plugbus::state::StateWrite;
use plugbus_nats_server::NatsServer;

fn event(tenant: &str, id: &str, ty: &str) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": ty,
        "subject": "order-1",
        "tenant": tenant,
        "partitionkey": "order-1",
        "data": { "total": 12 },
    }))
    .expect("a valid event")
}

fn open(dir: &std::path::Path) -> SqliteLog {
    SqliteLog::open(dir, SqliteLogConfig::default()).expect("open the log")
}

/// A new, empty log for a contract test, and where it keeps its data (a
/// directory, or a nats-server), dropped after it.
struct Opened {
    log: Box<dyn EventLog>,
    _place: Option<Place>,
}

/// Where a log is kept, to open it (again) from: a data directory for the
/// embedded log, a nats-server of the test's own for NATS.
enum Place {
    Sqlite(tempfile::TempDir),
    Nats(NatsServer),
}

impl Place {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    fn nats() -> Self {
        Self::Nats(NatsServer::start())
    }

    /// Opens the log kept here, as a new process would.
    fn open(&self, config: MemoryLogConfig) -> Box<dyn EventLog> {
        match self {
            Self::Sqlite(dir) => Box::new(
                SqliteLog::open(
                    dir.path(),
                    SqliteLogConfig {
                        duplicate_window: config.duplicate_window,
                        dead_letters: config.dead_letters,
                        tenant_dead_letters: config.tenant_dead_letters,
                        ..SqliteLogConfig::default()
                    },
                )
                .expect("open the log"),
            ),
            Self::Nats(server) => Box::new(
                NatsLog::open(NatsLogConfig {
                    servers: vec![server.url()],
                    duplicate_window: config.duplicate_window,
                    dead_letters: config.dead_letters,
                    tenant_dead_letters: config.tenant_dead_letters,
                    ..NatsLogConfig::default()
                })
                .expect("open the log"),
            ),
        }
    }
}

impl std::ops::Deref for Opened {
    type Target = dyn EventLog;

    fn deref(&self) -> &Self::Target {
        &*self.log
    }
}

/// Opens a log of one implementation with the given settings.
type Open = dyn Fn(MemoryLogConfig) -> Opened;

fn sqlite(config: MemoryLogConfig) -> Opened {
    let place = Place::sqlite();
    Opened {
        log: place.open(config),
        _place: Some(place),
    }
}

fn nats(config: MemoryLogConfig) -> Opened {
    let place = Place::nats();
    Opened {
        log: place.open(config),
        _place: Some(place),
    }
}

fn memory(config: MemoryLogConfig) -> Opened {
    Opened {
        log: Box::new(MemoryLog::with_config(config)),
        _place: None,
    }
}

/// Runs each contract test against every implementation.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $test() {
                super::$test(&super::sqlite);
            })*
        }
        mod nats {
            $(#[test]
            fn $test() {
                super::$test(&super::nats);
            })*
        }
        mod memory {
            $(#[test]
            fn $test() {
                super::$test(&super::memory);
            })*
        }
    };
}

contract!(
    appended_events_are_read_back_by_tenant_in_order,
    the_same_tenant_source_and_id_is_stored_once_within_the_window,
    a_repeat_is_stored_again_without_a_window,
    cursors_are_per_plugin,
    a_commit_with_an_expected_cursor_keeps_what_was_finished_ahead,
    state_commits_with_the_cursor,
    emitted_events_are_appended_with_the_commit,
    retention_by_age_keeps_what_a_live_plugin_has_not_handled,
    first_since_finds_the_first_event_appended_at_or_after_a_time,
    count_after_counts_a_tenants_events_up_to_a_limit,
    a_read_stops_at_its_byte_bound,
    redrives_are_read_a_few_at_a_time,
    a_dead_letter_redriven_or_stored_again_is_done_being_redriven,
    dead_letter_depths_are_kept_as_they_change,
    a_tenants_dead_letters_stop_at_its_quota_in_number,
    a_tenants_dead_letters_stop_at_its_quota_in_bytes,
    quarantines_are_recorded_and_lifted,
    state_is_listed_in_key_order_by_prefix_a_page_at_a_time,
    emits_are_listed_per_plugin_newest_first,
);

fn attempt() -> FailedAttempt {
    FailedAttempt {
        kind: plugbus::FailureKind::HandlerPermanent,
        message: "no".into(),
        fuel: 1,
        plugin_version: "v1".into(),
        at_ms: 0,
    }
}

/// The dead letter of the event `e-{seq:03}` of `tenant`.
fn dead_letter(tenant: &str, seq: u64) -> DeadLetter {
    DeadLetter {
        seq,
        event: event(tenant, &format!("e-{seq:03}"), "order.placed"),
        attempts: vec![attempt()],
    }
}

/// Commits dead letters of `seqs` for `plugin` of `tenant`; answers the
/// refused ones.
fn give_up(log: &dyn EventLog, tenant: &str, plugin: &str, seqs: &[u64]) -> Vec<u64> {
    log.commit(Commit {
        tenant: tenant.into(),
        plugin: plugin.into(),
        dead_letters: seqs.iter().map(|&seq| dead_letter(tenant, seq)).collect(),
        ..Commit::default()
    })
    .wait()
    .expect("commit")
    .refused_dead_letters
}

fn seqs(events: &[plugbus::log::StoredEvent]) -> Vec<u64> {
    events.iter().map(|s| s.seq).collect()
}

fn set(key: &str, value: &str) -> StateWrite {
    StateWrite {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
    }
}

fn appended_events_are_read_back_by_tenant_in_order(open: &Open) {
    let log = open(MemoryLogConfig::default());
    assert_eq!(log.head().expect("head"), 0, "empty");
    let events = vec![
        event("acme", "e-1", "order.placed"),
        event("acme", "e-2", "payment.completed"),
        event("globex", "e-1", "order.placed"),
    ];
    let appended = log.append(events.clone()).wait().expect("append");
    let positions: Vec<_> = appended.iter().map(|a| a.seq).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert!(appended.iter().all(|a| !a.duplicate));
    assert_eq!(log.head().expect("head"), 3);
    let acme = log.read("acme", 0, 10).expect("read");
    assert_eq!(seqs(&acme), [1, 2]);
    assert_eq!(acme[0].event, events[0]);
    assert_eq!(acme[1].event, events[1]);
    assert!(acme[0].appended_at_ms > 0);
    // After a position, and up to a limit; only the tenant's own events.
    assert_eq!(seqs(&log.read("acme", 1, 10).expect("read")), [2]);
    assert_eq!(log.read("acme", 0, 1).expect("read").len(), 1);
    assert!(log.read("acme", 2, 10).expect("read").is_empty());
    assert!(log.read("initech", 0, 10).expect("read").is_empty());
    let globex = log.read("globex", 0, 10).expect("read");
    assert_eq!(seqs(&globex), [3]);
    assert_eq!(globex[0].event.tenant(), "globex");
    let more = log
        .append(vec![event("acme", "e-3", "order.placed")])
        .wait()
        .expect("append");
    assert_eq!(more[0].seq, 4);
}

fn the_same_tenant_source_and_id_is_stored_once_within_the_window(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let first = log
        .append(vec![event("acme", "e-1", "order.placed")])
        .wait()
        .expect("append");
    // Again, alone and inside a batch with a new event; and the same id in
    // another tenant, which is another event.
    let again = log
        .append(vec![
            event("acme", "e-1", "order.placed"),
            event("acme", "e-2", "order.placed"),
            event("globex", "e-1", "order.placed"),
            event("acme", "e-2", "order.placed"),
        ])
        .wait()
        .expect("append");
    assert!(again[0].duplicate);
    assert_eq!(again[0].seq, first[0].seq);
    assert!(!again[1].duplicate);
    assert!(!again[2].duplicate);
    assert!(
        again[3].duplicate,
        "a repeat within one batch is a duplicate too"
    );
    assert_eq!(again[3].seq, again[1].seq);
    assert_eq!(log.read("acme", 0, 10).expect("read").len(), 2);
    assert_eq!(log.read("globex", 0, 10).expect("read").len(), 1);
    // Positions are never reused (the embedded log leaves a gap where it
    // refused a duplicate; JetStream does not number a duplicate at all).
    let next = log
        .append(vec![event("acme", "e-3", "order.placed")])
        .wait()
        .expect("append");
    let highest = first.iter().chain(&again).map(|a| a.seq).max();
    assert!(Some(next[0].seq) > highest, "{next:?} after {highest:?}");
}

fn a_repeat_is_stored_again_without_a_window(open: &Open) {
    let log = open(MemoryLogConfig {
        duplicate_window: Duration::ZERO,
        ..MemoryLogConfig::default()
    });
    let e = event("acme", "e-1", "order.placed");
    log.append(vec![e.clone()]).wait().expect("append");
    let again = log.append(vec![e]).wait().expect("append");
    assert!(!again[0].duplicate);
    assert!(again[0].seq > 1);
    assert_eq!(log.read("acme", 0, 10).expect("read").len(), 2);
}

fn cursors_are_per_plugin(open: &Open) {
    let log = open(MemoryLogConfig::default());
    assert_eq!(log.cursor("acme", "order-saga").expect("cursor"), None);
    for (plugin, seq) in [("order-saga", 7), ("audit-log", 3), ("order-saga", 9)] {
        let committed = log
            .commit_cursor("acme", plugin, seq)
            .wait()
            .expect("commit");
        assert!(committed.cursor_moved);
    }
    assert_eq!(log.cursor("acme", "order-saga").expect("cursor"), Some(9));
    assert_eq!(log.cursor("acme", "audit-log").expect("cursor"), Some(3));
    assert_eq!(log.cursor("globex", "order-saga").expect("cursor"), None);
}

fn a_commit_with_an_expected_cursor_keeps_what_was_finished_ahead(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let commit = |cursor, expected, ahead: &[u64]| {
        log.commit(Commit {
            tenant: "acme".into(),
            plugin: "saga".into(),
            cursor,
            expected,
            ahead: ahead.to_vec(),
            ..Commit::default()
        })
        .wait()
        .expect("commit")
    };
    // Without a cursor yet, an expected one is not there: nothing moves.
    assert!(!commit(2, Some(0), &[4]).cursor_moved);
    assert_eq!(log.cursor("acme", "saga").expect("cursor"), None);
    log.commit_cursor("acme", "saga", 0).wait().expect("commit");
    assert!(commit(2, Some(0), &[4, 6]).cursor_moved);
    assert_eq!(log.ahead("acme", "saga").expect("ahead"), [4, 6]);
    // The records the cursor passes are dropped.
    assert!(commit(5, Some(2), &[7]).cursor_moved);
    assert_eq!(log.ahead("acme", "saga").expect("ahead"), [6, 7]);
    // Moved by someone else meanwhile: the cursor and the records stay.
    assert!(!commit(9, Some(2), &[10]).cursor_moved);
    assert_eq!(log.cursor("acme", "saga").expect("cursor"), Some(5));
    assert_eq!(log.ahead("acme", "saga").expect("ahead"), [6, 7]);
    // Moved by force (a replay): what was finished ahead goes again.
    log.commit_cursor("acme", "saga", 1).wait().expect("commit");
    assert!(log.ahead("acme", "saga").expect("ahead").is_empty());
    assert!(log.ahead("acme", "other").expect("ahead").is_empty());
}

fn state_commits_with_the_cursor(open: &Open) {
    let log = open(MemoryLogConfig::default());
    log.append(vec![event("acme", "e-1", "order.placed")])
        .wait()
        .expect("append");
    log.commit(Commit {
        tenant: "acme".into(),
        plugin: "saga".into(),
        cursor: 1,
        state: vec![set("order/1", "placed"), set("tmp", "x")],
        ..Commit::default()
    })
    .wait()
    .expect("commit");
    assert_eq!(log.cursor("acme", "saga").expect("cursor"), Some(1));
    assert_eq!(
        log.get("acme", "saga", "order/1").expect("get"),
        Some(b"placed".to_vec())
    );
    // Writes outside a commit (the in-memory paths) apply in order.
    log.apply(
        "acme",
        "saga",
        &[
            set("order/1", "paid"),
            StateWrite {
                key: "tmp".into(),
                value: None,
            },
        ],
    )
    .expect("apply");
    assert_eq!(
        log.get("acme", "saga", "order/1").expect("get"),
        Some(b"paid".to_vec())
    );
    assert_eq!(log.get("acme", "saga", "tmp").expect("get"), None);
    // Scoped to tenant and plugin.
    assert_eq!(log.get("acme", "other", "order/1").expect("get"), None);
    assert_eq!(log.get("globex", "saga", "order/1").expect("get"), None);
}

fn emitted_events_are_appended_with_the_commit(open: &Open) {
    let log = open(MemoryLogConfig::default());
    log.append(vec![event("acme", "e-1", "order.placed")])
        .wait()
        .expect("append");
    let committed = log
        .commit(Commit {
            tenant: "acme".into(),
            plugin: "saga".into(),
            cursor: 1,
            emitted: vec![
                event("acme", "x-1", "invoice.sent"),
                event("globex", "x-2", "invoice.sent"),
            ],
            ..Commit::default()
        })
        .wait()
        .expect("commit");
    assert_eq!(committed.emitted, [2, 3]);
    assert!(committed.cursor_moved);
    assert!(committed.refused_dead_letters.is_empty());
    assert_eq!(seqs(&log.read("acme", 0, 10).expect("read")), [1, 2]);
    assert_eq!(
        log.read("globex", 0, 10).expect("read")[0].event.id(),
        "x-2"
    );
}

fn retention_by_age_keeps_what_a_live_plugin_has_not_handled(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let acme: Vec<_> = (1..=6)
        .map(|i| event("acme", &format!("a-{i}"), "order.placed"))
        .collect();
    log.append(acme).wait().expect("append");
    log.append(vec![
        event("globex", "g-1", "order.placed"),
        event("globex", "g-2", "order.placed"),
    ])
    .wait()
    .expect("append");
    for (plugin, seq) in [("fast", 5), ("slow", 3), ("removed", 0)] {
        log.commit_cursor("acme", plugin, seq)
            .wait()
            .expect("cursor");
    }
    // Every event is older than a zero age once a millisecond has passed.
    std::thread::sleep(Duration::from_millis(5));
    let live = vec![
        ("acme".to_owned(), "fast".to_owned()),
        ("acme".to_owned(), "slow".to_owned()),
    ];
    let everything_old = Retention {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let pruned = log
        .prune(everything_old, live.clone())
        .wait()
        .expect("prune");
    // acme loses what its slowest live plugin handled (1..=3); the cursor
    // of a plugin that is no longer loaded holds nothing back. globex has
    // no live plugin: its events go.
    assert_eq!(pruned.deleted, 5);
    assert!(!pruned.held_back);
    assert_eq!(seqs(&log.read("acme", 0, 100).expect("read")), [4, 5, 6]);
    assert!(log.read("globex", 0, 100).expect("read").is_empty());
    // Positions are never reused.
    let appended = log
        .append(vec![event("globex", "g-3", "order.placed")])
        .wait()
        .expect("append");
    assert_eq!(appended[0].seq, 9);
    // No bound, nothing deleted.
    let pruned = log.prune(Retention::default(), live).wait().expect("prune");
    assert_eq!(pruned.deleted, 0);
}

fn first_since_finds_the_first_event_appended_at_or_after_a_time(open: &Open) {
    let log = open(MemoryLogConfig::default());
    log.append(vec![event("acme", "e-1", "order.placed")])
        .wait()
        .expect("append");
    std::thread::sleep(Duration::from_millis(20));
    let between = plugbus::log::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    log.append(vec![
        event("globex", "g-1", "order.placed"),
        event("acme", "e-2", "order.placed"),
    ])
    .wait()
    .expect("append");
    assert_eq!(log.first_since("acme", 0).expect("query"), Some(1));
    assert_eq!(log.first_since("acme", between).expect("query"), Some(3));
    assert_eq!(log.first_since("globex", between).expect("query"), Some(2));
    assert_eq!(
        log.first_since("acme", plugbus::log::now_ms() + 60_000)
            .expect("query"),
        None
    );
}

fn count_after_counts_a_tenants_events_up_to_a_limit(open: &Open) {
    let log = open(MemoryLogConfig::default());
    log.append(vec![
        event("acme", "e-1", "order.placed"),
        event("globex", "g-1", "order.placed"),
        event("acme", "e-2", "order.placed"),
        event("acme", "e-3", "order.placed"),
    ])
    .wait()
    .expect("append");
    assert_eq!(log.count_after("acme", 0, 100).expect("count"), 3);
    assert_eq!(log.count_after("acme", 1, 100).expect("count"), 2);
    assert_eq!(
        log.count_after("acme", 0, 2).expect("count"),
        2,
        "the limit"
    );
    assert_eq!(log.count_after("globex", 2, 100).expect("count"), 0);
}

fn a_read_stops_at_its_byte_bound(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let events: Vec<_> = (0..5)
        .map(|i| event("acme", &format!("e-{i}"), "order.placed"))
        .collect();
    log.append(events).wait().expect("append");
    let all = log.read("acme", 0, 10).expect("read");
    let size = all[0].bytes;
    assert!(all.iter().all(|s| s.bytes == size), "one size");
    // The stored size is the event's JSON.
    assert_eq!(size, all[0].event.to_json_string().len() as u64);
    let read = |bytes: u64, first_always: bool| {
        log.read_bounded(
            "acme",
            0,
            ReadLimit {
                events: 10,
                bytes,
                first_always,
            },
        )
        .expect("read")
        .len()
    };
    // Exactly three events' bytes: three; one byte less: two.
    assert_eq!(read(3 * size, false), 3);
    assert_eq!(read(3 * size - 1, false), 2);
    // Less than one event: none when strict, one when asked for.
    assert_eq!(read(size - 1, false), 0);
    assert_eq!(read(size - 1, true), 1);
    assert_eq!(read(0, true), 1);
    // The event bound still holds.
    assert_eq!(log.read("acme", 0, 2).expect("read").len(), 2);
}

fn redrives_are_read_a_few_at_a_time(open: &Open) {
    let log = open(MemoryLogConfig::default());
    give_up(&*log, "acme", "saga", &[1, 2, 3]);
    for seq in 1..=3 {
        assert!(
            log.request_redrive("acme", "saga", seq)
                .wait()
                .expect("redrive")
        );
    }
    // No dead letter, no request.
    assert!(
        !log.request_redrive("acme", "saga", 4)
            .wait()
            .expect("redrive")
    );
    let seqs = |limit| -> Vec<u64> {
        log.redrives("acme", "saga", limit)
            .expect("read")
            .iter()
            .map(|d| d.seq)
            .collect()
    };
    assert_eq!(seqs(2), [1, 2]);
    assert_eq!(seqs(10), [1, 2, 3]);
    assert!(log.redrives("acme", "other", 10).expect("read").is_empty());
    let letters = log.dead_letters("acme", "saga").expect("read");
    assert_eq!(letters[0], dead_letter("acme", 1));
}

fn a_dead_letter_redriven_or_stored_again_is_done_being_redriven(open: &Open) {
    let log = open(MemoryLogConfig::default());
    give_up(&*log, "acme", "saga", &[1, 2, 3]);
    for seq in 1..=3 {
        log.request_redrive("acme", "saga", seq)
            .wait()
            .expect("redrive");
    }
    // 1 was handled, 2 failed again (its attempts grow), 3 was discarded.
    let mut again = dead_letter("acme", 2);
    again.attempts.push(attempt());
    log.commit(Commit {
        tenant: "acme".into(),
        plugin: "saga".into(),
        redriven: vec![1],
        dead_letters: vec![again.clone()],
        ..Commit::default()
    })
    .wait()
    .expect("commit");
    assert!(
        log.discard_dead_letter("acme", "saga", 3)
            .wait()
            .expect("discard")
    );
    assert!(log.redrives("acme", "saga", 10).expect("read").is_empty());
    assert_eq!(log.dead_letters("acme", "saga").expect("read"), [again]);
    assert_eq!(log.dead_letter_plugins("acme").expect("plugins"), ["saga"]);
    assert!(
        log.dead_letter_plugins("globex")
            .expect("plugins")
            .is_empty()
    );
}

fn dead_letter_depths_are_kept_as_they_change(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let depth = |plugin: &str| {
        log.dead_letter_depths()
            .get(&("acme".to_owned(), plugin.to_owned()))
            .copied()
    };
    assert!(log.dead_letter_depths().is_empty());
    give_up(&*log, "acme", "saga", &[1, 2, 3]);
    give_up(&*log, "acme", "audit", &[1]);
    assert_eq!(depth("saga"), Some(3));
    // A dead letter stored again (a redrive that failed again) is one.
    give_up(&*log, "acme", "saga", &[3]);
    assert_eq!(depth("saga"), Some(3));
    // Discarded, and redriven successfully.
    assert!(
        log.discard_dead_letter("acme", "saga", 1)
            .wait()
            .expect("discard")
    );
    assert!(
        !log.discard_dead_letter("acme", "saga", 1)
            .wait()
            .expect("discard")
    );
    log.commit(Commit {
        tenant: "acme".into(),
        plugin: "saga".into(),
        redriven: vec![2],
        ..Commit::default()
    })
    .wait()
    .expect("commit");
    assert_eq!(depth("saga"), Some(1));
    assert!(
        log.discard_dead_letter("acme", "audit", 1)
            .wait()
            .expect("discard")
    );
    assert_eq!(depth("audit"), None);
    assert_eq!(log.dead_letter_depths().len(), 1);
}

fn a_tenants_dead_letters_stop_at_its_quota_in_number(open: &Open) {
    let log = open(MemoryLogConfig {
        dead_letters: DeadLetterQuota {
            max_count: 3,
            ..DeadLetterQuota::default()
        },
        ..MemoryLogConfig::default()
    });
    // Three fit, over two plugins; the fourth is refused, whichever plugin.
    assert!(give_up(&*log, "acme", "saga", &[1, 2]).is_empty());
    assert_eq!(give_up(&*log, "acme", "audit", &[3, 4]), [4]);
    assert_eq!(give_up(&*log, "acme", "saga", &[5]), [5]);
    assert_eq!(log.dead_letters("acme", "saga").expect("read").len(), 2);
    assert_eq!(log.dead_letters("acme", "audit").expect("read").len(), 1);
    // Another tenant has its own quota.
    assert!(give_up(&*log, "globex", "saga", &[6, 7, 8]).is_empty());
    // One stored again (a redrive that failed again) is kept at the quota.
    assert!(give_up(&*log, "acme", "saga", &[1]).is_empty());
    // Discarding one makes room for one.
    assert!(
        log.discard_dead_letter("acme", "saga", 1)
            .wait()
            .expect("discard")
    );
    assert!(give_up(&*log, "acme", "saga", &[9]).is_empty());
    assert_eq!(give_up(&*log, "acme", "saga", &[10]), [10]);
}

/// The bytes of a dead letter as both logs count them: its event's and
/// its attempts' JSON.
fn dead_letter_bytes(dead: &DeadLetter) -> u64 {
    let attempts = serde_json::to_string(&dead.attempts).expect("attempts");
    (dead.event.to_json_string().len() + attempts.len()) as u64
}

fn a_tenants_dead_letters_stop_at_its_quota_in_bytes(open: &Open) {
    // The ids are of one length: every dead letter is of one size.
    let size = dead_letter_bytes(&dead_letter("acme", 1));
    // Room for exactly two, then one byte short of two.
    for (max_bytes, kept) in [(2 * size, 2), (2 * size - 1, 1)] {
        let log = open(MemoryLogConfig {
            dead_letters: DeadLetterQuota {
                max_bytes,
                ..DeadLetterQuota::default()
            },
            ..MemoryLogConfig::default()
        });
        let refused = give_up(&*log, "acme", "saga", &[1, 2, 3]);
        assert_eq!(refused.len(), 3 - kept, "{refused:?}");
        assert_eq!(give_up(&*log, "acme", "saga", &[4]), [4]);
    }
    // A tenant of its own.
    let log = open(MemoryLogConfig {
        tenant_dead_letters: [(
            "acme".to_owned(),
            DeadLetterQuota {
                max_count: 1,
                max_bytes: u64::MAX,
            },
        )]
        .into(),
        ..MemoryLogConfig::default()
    });
    assert_eq!(give_up(&*log, "acme", "saga", &[1, 2]), [2]);
    assert!(give_up(&*log, "globex", "saga", &[1, 2]).is_empty());
}

fn quarantines_are_recorded_and_lifted(open: &Open) {
    let log = open(MemoryLogConfig::default());
    let quarantine = |tenant: &str, plugin: &str, version: &str| Quarantine {
        tenant: tenant.into(),
        plugin: plugin.into(),
        version: version.into(),
        since_ms: 1_000,
        until_ms: 2_000,
    };
    assert!(log.quarantines().expect("read").is_empty());
    for q in [
        quarantine("globex", "saga", "v1"),
        quarantine("acme", "saga", "v1"),
        quarantine("acme", "saga", "v2"),
    ] {
        assert!(
            log.set_quarantine(QuarantineChange::Begin(q))
                .wait()
                .expect("record")
        );
    }
    // One per plugin, the latest; by tenant and plugin.
    assert_eq!(
        log.quarantines().expect("read"),
        [
            quarantine("acme", "saga", "v2"),
            quarantine("globex", "saga", "v1")
        ]
    );
    let lift = |tenant: &str| QuarantineChange::Lift {
        tenant: tenant.into(),
        plugin: "saga".into(),
    };
    assert!(log.set_quarantine(lift("acme")).wait().expect("lift"));
    assert!(!log.set_quarantine(lift("acme")).wait().expect("lift"));
    assert_eq!(
        log.quarantines().expect("read"),
        [quarantine("globex", "saga", "v1")]
    );
}

#[tokio::test]
async fn appends_can_be_awaited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SqliteLogConfig {
        durability: Durability::Os,
        ..SqliteLogConfig::default()
    };
    let sqlite = SqliteLog::open(dir.path(), config).expect("open");
    let memory = MemoryLog::new();
    for log in [&sqlite as &dyn EventLog, &memory] {
        let appended = log
            .append(vec![event("acme", "e-1", "order.placed")])
            .await
            .expect("append");
        assert_eq!(appended[0].seq, 1);
        log.commit_cursor("acme", "p", 1).await.expect("commit");
    }
}

#[tokio::test]
async fn blocking_reads_run_off_the_async_task() {
    let log: std::sync::Arc<dyn EventLog> = std::sync::Arc::new(MemoryLog::new());
    log.append(vec![event("acme", "e-1", "order.placed")])
        .await
        .expect("append");
    let read = plugbus::log::blocking(&log, |log| log.read("acme", 0, 10))
        .await
        .expect("read");
    assert_eq!(seqs(&read), [1]);
    // A read that panicked answers a closed log.
    let panicked: Result<(), LogError> =
        plugbus::log::blocking(&log, |_| panic!("a read that panics")).await;
    assert!(matches!(panicked, Err(LogError::Closed)), "{panicked:?}");
}

// What only the embedded log does: its statistics (`SqliteLog::stats`),
// its file (the bytes a dead letter takes in it, group commit, a data
// directory that is a file, a corrupted row, retention by the file's size)
// and its migrations. NATS keeps none of these.

#[test]
fn duplicates_are_counted_apart_from_stored_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let e = event("acme", "e-1", "order.placed");
    log.append(vec![e.clone(), e.clone()])
        .wait()
        .expect("append");
    log.append(vec![e]).wait().expect("append");
    let stats = log.stats();
    assert_eq!((stats.appended, stats.duplicates), (1, 2));
}

// What a log kept outside the process does, the embedded log and NATS
// alike: another opening (another process) reads what one wrote.

/// Runs each test of a log kept outside the process against the embedded
/// log and NATS.
macro_rules! reopened {
    ($($test:ident),* $(,)?) => {
        mod sqlite_reopened {
            $(#[test]
            fn $test() {
                super::$test(&super::Place::sqlite());
            })*
        }
        mod nats_reopened {
            $(#[test]
            fn $test() {
                super::$test(&super::Place::nats());
            })*
        }
    };
}

reopened!(
    dead_letters_are_counted_again_when_the_log_opens_or_another_process_changes_them,
    appended_events_survive_a_reopen_in_order,
    cursors_are_durable_and_per_plugin,
    state_commits_with_the_cursor_and_survives_a_reopen,
);

fn reopen(place: &Place) -> Box<dyn EventLog> {
    place.open(MemoryLogConfig::default())
}

fn dead_letters_are_counted_again_when_the_log_opens_or_another_process_changes_them(
    place: &Place,
) {
    let depth = |log: &dyn EventLog| {
        log.dead_letter_depths()
            .get(&("acme".to_owned(), "saga".to_owned()))
            .copied()
    };
    {
        let log = reopen(place);
        give_up(&*log, "acme", "saga", &[1, 2]);
    }
    // Counted once when the log opens.
    let log = reopen(place);
    assert_eq!(depth(&*log), Some(2));
    // Another process's changes (an operator's `plugbus dlq`) show within
    // a few seconds, without a write of this one.
    let other = reopen(place);
    give_up(&*other, "acme", "saga", &[7]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while depth(&*log) != Some(3) {
        assert!(std::time::Instant::now() < deadline, "never counted again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dead_letter_quotas_are_counted_again_when_the_log_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = dead_letter_bytes(&dead_letter("acme", 1));
    let open_with = |quota| {
        SqliteLog::open(
            dir.path(),
            SqliteLogConfig {
                dead_letters: quota,
                ..SqliteLogConfig::default()
            },
        )
        .expect("open the log")
    };
    let by_number = DeadLetterQuota {
        max_count: 2,
        ..DeadLetterQuota::default()
    };
    let log = open_with(by_number);
    assert_eq!(give_up(&log, "acme", "saga", &[1, 2, 3]), [3]);
    drop(log);
    let log = open_with(by_number);
    assert_eq!(give_up(&log, "acme", "audit", &[4]), [4]);
    drop(log);
    // The bytes too: two stored take the room of two.
    let by_bytes = DeadLetterQuota {
        max_bytes: 2 * size,
        ..DeadLetterQuota::default()
    };
    let log = open_with(by_bytes);
    assert_eq!(give_up(&log, "acme", "audit", &[5]), [5]);
    // The bytes counted are what the file stores.
    drop(log);
    let db = rusqlite::Connection::open(dir.path().join("events.db")).expect("sqlite");
    let stored: i64 = db
        .query_row(
            "SELECT octet_length(body) + octet_length(attempts) FROM dead_letters WHERE seq = 1",
            [],
            |row| row.get(0),
        )
        .expect("size");
    assert_eq!(u64::try_from(stored).expect("a size"), size);
}

fn appended_events_survive_a_reopen_in_order(place: &Place) {
    let events = vec![
        event("acme", "e-1", "order.placed"),
        event("acme", "e-2", "payment.completed"),
        event("globex", "e-1", "order.placed"),
    ];
    {
        let log = reopen(place);
        let appended = log.append(events.clone()).wait().expect("append");
        let seqs: Vec<_> = appended.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(appended.iter().all(|a| !a.duplicate));
    }
    let log = reopen(place);
    assert_eq!(log.head().expect("head"), 3);
    let acme = log.read("acme", 0, 10).expect("read");
    assert_eq!(acme.len(), 2);
    assert_eq!(acme[0].seq, 1);
    assert_eq!(acme[0].event, events[0]);
    assert_eq!(acme[1].event, events[1]);
    assert!(acme[0].appended_at_ms > 0);
    // After a position, and up to a limit; only the tenant's own events.
    assert_eq!(log.read("acme", 1, 10).expect("read")[0].seq, 2);
    assert_eq!(log.read("acme", 0, 1).expect("read").len(), 1);
    assert!(log.read("acme", 2, 10).expect("read").is_empty());
    let globex = log.read("globex", 0, 10).expect("read");
    assert_eq!(globex.len(), 1);
    assert_eq!(globex[0].event.tenant(), "globex");
    // New appends continue after the old ones.
    let more = log
        .append(vec![event("acme", "e-3", "order.placed")])
        .wait()
        .expect("append");
    assert_eq!(more[0].seq, 4);
}

fn cursors_are_durable_and_per_plugin(place: &Place) {
    {
        let log = reopen(place);
        assert_eq!(log.cursor("acme", "order-saga").expect("cursor"), None);
        log.commit_cursor("acme", "order-saga", 7)
            .wait()
            .expect("commit");
        log.commit_cursor("acme", "audit-log", 3)
            .wait()
            .expect("commit");
        log.commit_cursor("acme", "order-saga", 9)
            .wait()
            .expect("commit");
    }
    let log = reopen(place);
    assert_eq!(log.cursor("acme", "order-saga").expect("cursor"), Some(9));
    assert_eq!(log.cursor("acme", "audit-log").expect("cursor"), Some(3));
    assert_eq!(log.cursor("globex", "order-saga").expect("cursor"), None);
}

#[test]
fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    std::thread::scope(|scope| {
        for t in 0..8 {
            let log = &log;
            scope.spawn(move || {
                for i in 0..50 {
                    let e = event("acme", &format!("e-{t}-{i}"), "order.placed");
                    let appended = log.append(vec![e]).wait().expect("append");
                    assert!(!appended[0].duplicate);
                }
            });
        }
    });
    let stats = log.stats();
    assert_eq!(stats.appended, 400);
    assert_eq!(stats.requests, 400);
    // Eight writers waiting on fsync: their appends group into fewer
    // transactions than requests.
    assert!(stats.commits < stats.requests, "{stats:?}");
    assert_eq!(log.read("acme", 0, 1000).expect("read").len(), 400);
}

#[test]
fn a_data_directory_that_is_a_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, "not a directory").expect("write");
    let Err(err) = SqliteLog::open(&file, SqliteLogConfig::default()) else {
        panic!("a file is not a data directory");
    };
    assert!(matches!(err, LogError::DataDir { .. }), "{err}");
    assert!(err.to_string().contains("data"), "{err}");
}

#[test]
fn a_corrupted_event_is_an_error_naming_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = open(dir.path());
        log.append(vec![
            event("acme", "e-1", "order.placed"),
            event("acme", "e-2", "order.placed"),
        ])
        .wait()
        .expect("append");
    }
    let db = rusqlite::Connection::open(dir.path().join("events.db")).expect("sqlite");
    db.execute(
        "UPDATE events SET body = '{\"not\": \"an event\"}' WHERE seq = 2",
        [],
    )
    .expect("corrupt");
    drop(db);
    let log = open(dir.path());
    let err = log.read("acme", 0, 10).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { seq: 2, .. }), "{err}");
    // The events before it still read.
    assert_eq!(log.read("acme", 0, 1).expect("read").len(), 1);
}

fn state_commits_with_the_cursor_and_survives_a_reopen(place: &Place) {
    let set = |key: &str, value: &str| StateWrite {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
    };
    {
        let log = reopen(place);
        log.append(vec![event("acme", "e-1", "order.placed")])
            .wait()
            .expect("append");
        log.commit(Commit {
            tenant: "acme".into(),
            plugin: "saga".into(),
            cursor: 1,
            state: vec![set("order/1", "placed"), set("tmp", "x")],
            ..Commit::default()
        })
        .wait()
        .expect("commit");
        // Writes outside a commit (the in-memory paths) apply in order.
        log.apply(
            "acme",
            "saga",
            &[
                set("order/1", "paid"),
                StateWrite {
                    key: "tmp".into(),
                    value: None,
                },
            ],
        )
        .expect("apply");
    }
    let log = reopen(place);
    assert_eq!(log.cursor("acme", "saga").expect("cursor"), Some(1));
    assert_eq!(
        log.get("acme", "saga", "order/1").expect("get"),
        Some(b"paid".to_vec())
    );
    assert_eq!(log.get("acme", "saga", "tmp").expect("get"), None);
    // Scoped to tenant and plugin.
    assert_eq!(log.get("acme", "other", "order/1").expect("get"), None);
    assert_eq!(log.get("globex", "saga", "order/1").expect("get"), None);
}

#[test]
fn retention_by_size_deletes_the_oldest_handled_events() {
    use plugbus::log::Retention;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let big = "x".repeat(4096);
    let events: Vec<_> = (1..=200)
        .map(|i| {
            event("acme", &format!("a-{i}"), "order.placed")
                .to_builder()
                .data(big.clone())
                .build()
                .expect("a valid event")
        })
        .collect();
    log.append(events).wait().expect("append");
    log.commit_cursor("acme", "audit", 150)
        .wait()
        .expect("cursor");
    let live = vec![("acme".to_owned(), "audit".to_owned())];
    let small = Retention {
        max_age: None,
        max_bytes: Some(256 * 1024),
    };
    let pruned = log.prune(small, live.clone()).wait().expect("prune");
    // It would have to delete unhandled events to get under 256 KiB: it
    // deletes every handled one and says it is held back.
    assert_eq!(pruned.deleted, 150);
    assert!(pruned.held_back);
    let first = log.read("acme", 0, 1).expect("read")[0].seq;
    assert_eq!(first, 151);

    // With room for about 40 events, only the oldest handled ones go.
    log.append(
        (201..=260)
            .map(|i| event("acme", &format!("a-{i}"), "order.placed"))
            .collect(),
    )
    .wait()
    .expect("append");
    log.commit_cursor("acme", "audit", 260)
        .wait()
        .expect("cursor");
    let roomy = Retention {
        max_age: None,
        max_bytes: Some(200 * 1024),
    };
    let pruned = log.prune(roomy, live).wait().expect("prune");
    assert!(!pruned.held_back);
    assert!(pruned.deleted > 0 && pruned.deleted < 50, "{pruned:?}");
    let left = log.read("acme", 0, 1000).expect("read");
    assert_eq!(left.last().map(|s| s.seq), Some(260), "the newest stay");
    assert_eq!(left[0].seq, 151 + pruned.deleted, "the oldest went first");
}

/// The keys of a page of state.
fn keys(page: &plugbus::log::Page<plugbus::log::StateEntry>) -> Vec<&str> {
    page.items.iter().map(|e| e.key.as_str()).collect()
}

fn state_is_listed_in_key_order_by_prefix_a_page_at_a_time(open: &Open) {
    use plugbus::log::StateQuery;
    let log = open(MemoryLogConfig::default());
    // "b\u{10ffff}z" sorts after every other key with the prefix "b": the
    // end of the prefix's range must still hold it.
    let writes = ["c", "b/2", "a", "é", "b/3", "b/1", "b\u{10ffff}z", "gone"]
        .map(|k| set(k, &format!("v-{k}")));
    log.commit(Commit {
        tenant: "acme".into(),
        plugin: "saga".into(),
        cursor: 0,
        state: writes.to_vec(),
        ..Commit::default()
    })
    .wait()
    .expect("commit");
    log.apply(
        "acme",
        "saga",
        &[StateWrite {
            key: "gone".into(),
            value: None,
        }],
    )
    .expect("delete");
    // Other plugins and tenants with the same keys are not listed.
    log.apply("acme", "other", &[set("b/9", "x")])
        .expect("apply");
    log.apply("globex", "saga", &[set("b/9", "x")])
        .expect("apply");
    let query = |prefix: &str, after: Option<&str>, limit: usize| StateQuery {
        prefix: prefix.into(),
        after: after.map(str::to_owned),
        limit,
        max_bytes: u64::MAX,
    };

    let all = log
        .state_entries("acme", "saga", &query("", None, 100))
        .expect("list");
    assert_eq!(
        keys(&all),
        ["a", "b/1", "b/2", "b/3", "b\u{10ffff}z", "c", "é"],
        "by the keys' UTF-8 bytes"
    );
    assert!(!all.more);
    assert_eq!(all.items[0].value, b"v-a");

    let b = log
        .state_entries("acme", "saga", &query("b", None, 100))
        .expect("list");
    assert_eq!(keys(&b), ["b/1", "b/2", "b/3", "b\u{10ffff}z"]);

    let first = log
        .state_entries("acme", "saga", &query("b/", None, 2))
        .expect("list");
    assert_eq!((keys(&first), first.more), (vec!["b/1", "b/2"], true));
    let next = log
        .state_entries("acme", "saga", &query("b/", Some("b/2"), 2))
        .expect("list");
    assert_eq!((keys(&next), next.more), (vec!["b/3"], false));
    // An `after` before the prefix starts at the prefix.
    let early = log
        .state_entries("acme", "saga", &query("b/", Some("a"), 1))
        .expect("list");
    assert_eq!((keys(&early), early.more), (vec!["b/1"], true));
    let none = log
        .state_entries("acme", "saga", &query("zz", None, 10))
        .expect("list");
    assert_eq!((none.items.len(), none.more), (0, false));
    let nobody = log
        .state_entries("acme", "nobody", &query("", None, 10))
        .expect("list");
    assert!(nobody.items.is_empty());

    // The byte bound ends a page early, but never before its first entry.
    let tight = StateQuery {
        max_bytes: 1,
        ..query("", None, 100)
    };
    let page = log.state_entries("acme", "saga", &tight).expect("list");
    assert_eq!((keys(&page), page.more), (vec!["a"], true));
    let roomy = StateQuery {
        // "a" + "v-a" and "b/1" + "v-b/1": 4 + 8 bytes.
        max_bytes: 12,
        ..query("", None, 100)
    };
    let page = log.state_entries("acme", "saga", &roomy).expect("list");
    assert_eq!((keys(&page), page.more), (vec!["a", "b/1"], true));
}

fn emits_are_listed_per_plugin_newest_first(open: &Open) {
    let log = open(MemoryLogConfig::default());
    log.append(vec![event("acme", "e-1", "order.placed")])
        .wait()
        .expect("append");
    let commit = |plugin: &str, emitted: Vec<Event>| {
        log.commit(Commit {
            tenant: "acme".into(),
            plugin: plugin.into(),
            cursor: 1,
            emitted,
            ..Commit::default()
        })
        .wait()
        .expect("commit")
        .emitted
    };
    let first = commit("saga", vec![event("acme", "x-1", "payment.requested")]);
    let audit = commit("audit", vec![event("acme", "y-1", "audit.seen")]);
    let second = commit(
        "saga",
        vec![
            event("acme", "x-2", "payment.requested"),
            // Not into its own tenant: not listed as the plugin's.
            event("globex", "x-3", "payment.requested"),
        ],
    );
    let ids = |page: &plugbus::log::Page<plugbus::log::StoredEvent>| -> Vec<String> {
        page.items.iter().map(|s| s.event.id().to_owned()).collect()
    };

    let saga = log
        .emitted("acme", "saga", None, ReadLimit::events(10))
        .expect("emitted");
    assert_eq!(ids(&saga), ["x-2", "x-1"], "newest first");
    assert_eq!(seqs(&saga.items), [second[0], first[0]]);
    assert!(!saga.more);
    assert_eq!(saga.items[0].event.ty(), "payment.requested");

    let newest = log
        .emitted("acme", "saga", None, ReadLimit::events(1))
        .expect("emitted");
    assert_eq!((ids(&newest), newest.more), (vec!["x-2".to_owned()], true));
    let older = log
        .emitted(
            "acme",
            "saga",
            Some(newest.items[0].seq),
            ReadLimit::events(1),
        )
        .expect("emitted");
    assert_eq!((ids(&older), older.more), (vec!["x-1".to_owned()], false));

    let page = log
        .emitted("acme", "audit", None, ReadLimit::events(10))
        .expect("emitted");
    assert_eq!(seqs(&page.items), audit);
    for (tenant, plugin) in [("globex", "saga"), ("acme", "nobody")] {
        let page = log
            .emitted(tenant, plugin, None, ReadLimit::events(10))
            .expect("emitted");
        assert!(page.items.is_empty(), "{tenant}/{plugin}: {page:?}");
    }
    // The byte bound ends a page early, but never before its first event.
    let tight = ReadLimit {
        events: 10,
        bytes: 1,
        first_always: true,
    };
    let page = log.emitted("acme", "saga", None, tight).expect("emitted");
    assert_eq!((ids(&page), page.more), (vec!["x-2".to_owned()], true));
}

/// A data directory written before the log recorded who emitted an event
/// opens: its events read as before (found by nobody as an emit), and
/// what is emitted from then on is found, through the emitters' index.
#[test]
fn a_log_from_before_emitters_were_recorded_opens_and_records_them() {
    use plugbus::log::InspectStore as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let old = event("acme", "e-1", "order.placed");
    {
        // The table as the earlier schema made it.
        let conn = rusqlite::Connection::open(dir.path().join("events.db")).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 tenant TEXT NOT NULL,
                 appended_at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX events_by_tenant ON events (tenant, seq);",
        )
        .expect("the old table");
        conn.execute(
            "INSERT INTO events (tenant, appended_at_ms, body) VALUES ('acme', 1, ?1)",
            [old.to_json_string()],
        )
        .expect("an old event");
    }
    let log = open(dir.path());
    assert_eq!(log.read("acme", 0, 10).expect("read")[0].event, old);
    let committed = log
        .commit(Commit {
            tenant: "acme".into(),
            plugin: "saga".into(),
            cursor: 1,
            emitted: vec![event("acme", "x-1", "payment.requested")],
            ..Commit::default()
        })
        .wait()
        .expect("commit");
    let page = log
        .emitted("acme", "saga", None, ReadLimit::events(10))
        .expect("emitted");
    assert_eq!(seqs(&page.items), committed.emitted);
    drop(log);

    // Opened again, nothing is migrated twice; the query uses the index.
    let log = open(dir.path());
    assert_eq!(log.read("acme", 0, 10).expect("read").len(), 2);
    drop(log);
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).expect("sqlite");
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT seq, appended_at_ms, body FROM events
             WHERE tenant = ?1 AND emitted_by = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4",
        )
        .expect("explain")
        .query_map(rusqlite::params!["acme", "saga", i64::MAX, 10], |row| {
            row.get::<_, String>(3)
        })
        .expect("plan")
        .collect::<Result<_, _>>()
        .expect("plan rows");
    assert!(
        plan.iter().any(|step| step.contains("events_by_emitter")),
        "{plan:?}"
    );
}
