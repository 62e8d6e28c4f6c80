//! The events role of the NATS log against real nats-servers: positions,
//! duplicates (within a batch, across batches and across a reopen), reads
//! per tenant under every kind of [`ReadLimit`] (compared with the
//! reference [`MemoryLog`]), counts, positions by time, retention, a
//! corrupt message, and a server killed and restarted.

use std::time::Duration;

use plugbus_core::event::Event;
use plugbus_log::{EventStore, LogError, MemoryLog, ReadLimit, Retention, StoredEvent, now_ms};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

fn event(tenant: &str, id: &str) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": "order.placed",
        "subject": "order-1",
        "tenant": tenant,
        "partitionkey": "order-1",
        "data": { "total": 12, "note": "x".repeat(id.len() * 7) },
    }))
    .expect("a valid event")
}

fn config(server: &NatsServer) -> NatsLogConfig {
    NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    }
}

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(config(server)).expect("open the log")
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id().to_owned()).collect()
}

#[test]
fn positions_increase_and_duplicates_answer_the_first_copy() {
    let server = NatsServer::start();
    let log = open(&server);
    assert_eq!(log.head().expect("head"), 0, "an empty log's head");
    let first = log
        .append(vec![
            event("acme", "e-1"),
            event("beta", "e-1"),
            event("acme", "e-2"),
        ])
        .wait()
        .expect("append");
    assert!(first.iter().all(|a| !a.duplicate), "{first:?}");
    assert!(first.windows(2).all(|w| w[0].seq < w[1].seq), "{first:?}");
    assert_eq!(log.head().expect("head"), first[2].seq);

    // The same (tenant, source, id) again, beside a new one and a repeat
    // within the batch.
    let again = log
        .append(vec![
            event("acme", "e-2"),
            event("acme", "e-3"),
            event("acme", "e-3"),
            event("acme", "e-1"),
        ])
        .wait()
        .expect("append again");
    assert_eq!(again[0].seq, first[2].seq);
    assert!(again[0].duplicate);
    assert!(
        !again[1].duplicate && again[1].seq > first[2].seq,
        "{again:?}"
    );
    assert_eq!(again[2].seq, again[1].seq);
    assert!(again[2].duplicate, "a repeat within the batch");
    assert_eq!(again[3].seq, first[0].seq);
    assert!(again[3].duplicate);
    assert_eq!(
        ids(&log.read("acme", 0, 100).expect("read")),
        ["e-1", "e-2", "e-3"]
    );

    // Another process (a reopen) sees the same duplicate window.
    drop(log);
    let log = open(&server);
    let reopened = log
        .append(vec![event("beta", "e-1"), event("beta", "e-2")])
        .wait()
        .expect("append after a reopen");
    assert_eq!(reopened[0].seq, first[1].seq);
    assert!(reopened[0].duplicate);
    assert!(!reopened[1].duplicate);
    assert_eq!(
        ids(&log.read("beta", 0, 100).expect("read")),
        ["e-1", "e-2"]
    );
    assert!(log.health().writable);
}

#[test]
fn an_empty_append_answers_nothing() {
    let server = NatsServer::start();
    let log = open(&server);
    assert!(log.append(Vec::new()).wait().expect("append").is_empty());
    assert_eq!(log.head().expect("head"), 0);
}

#[test]
fn a_large_batch_is_stored_whole_and_in_order() {
    let server = NatsServer::start();
    let log = open(&server);
    // More than the client's 5,000 acknowledgements in flight.
    let events: Vec<Event> = (0..6_000)
        .map(|i| event("acme", &format!("e-{i}")))
        .collect();
    let appended = log.append(events.clone()).wait().expect("append");
    assert_eq!(appended.len(), 6_000);
    assert!(appended.windows(2).all(|w| w[0].seq < w[1].seq));
    let read = log.read("acme", 0, usize::MAX).expect("read");
    assert_eq!(read.len(), 6_000);
    for ((stored, appended), event) in read.iter().zip(&appended).zip(&events) {
        assert_eq!(stored.seq, appended.seq);
        assert_eq!(&stored.event, event);
    }
}

#[test]
fn reads_are_per_tenant_in_order_and_keep_every_read_limit() {
    let server = NatsServer::start();
    let log = open(&server);
    let reference = MemoryLog::new();
    // Interleaved tenants, events of different sizes.
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(event("acme", &format!("e-{}", "a".repeat(i % 7 + 1))));
        events.push(event("acme", &format!("f-{i}")));
        events.push(event("beta", &format!("g-{i}")));
    }
    let before = now_ms();
    let appended = log.append(events.clone()).wait().expect("append");
    let after_append = now_ms();
    reference.append(events).wait().expect("append");

    let all = log.read("acme", 0, usize::MAX).expect("read");
    let expected = reference.read("acme", 0, usize::MAX).expect("read");
    assert_eq!(ids(&all), ids(&expected));
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    for (stored, reference) in all.iter().zip(&expected) {
        assert_eq!(stored.event, reference.event);
        assert_eq!(stored.bytes, reference.bytes, "the same stored form");
        assert_eq!(stored.bytes, stored.event.to_json_string().len() as u64);
        assert!(
            stored.appended_at_ms >= before - 1000 && stored.appended_at_ms <= after_append + 1000,
            "{} not near {before}..{after_append}",
            stored.appended_at_ms
        );
    }
    assert!(
        appended.iter().filter(|a| !a.duplicate).count() < 120,
        "repeats of e-a…"
    );

    // Every limit from every position, by index into the tenant's events.
    let sizes: Vec<u64> = all.iter().map(|e| e.bytes).collect();
    let mut limits = vec![
        ReadLimit::events(0),
        ReadLimit::events(1),
        ReadLimit::events(5),
        ReadLimit::events(usize::MAX),
    ];
    for bytes in [
        0,
        1,
        sizes[0] - 1,
        sizes[0],
        sizes[0] + sizes[1],
        sizes[0] + sizes[1] - 1,
        5_000,
    ] {
        for first_always in [true, false] {
            for events in [3, 100] {
                limits.push(ReadLimit {
                    events,
                    bytes,
                    first_always,
                });
            }
        }
    }
    for start in [0, 1, 7, all.len() - 1, all.len()] {
        let (after, reference_after) = if start == 0 {
            (0, 0)
        } else {
            (all[start - 1].seq, expected[start - 1].seq)
        };
        for limit in &limits {
            let got = log.read_bounded("acme", after, *limit).expect("read");
            let want = reference
                .read_bounded("acme", reference_after, *limit)
                .expect("read");
            assert_eq!(ids(&got), ids(&want), "after #{start} with {limit:?}");
        }
    }
    assert!(log.read("nobody", 0, 10).expect("read").is_empty());
    let last = all.last().expect("events").seq;
    assert!(log.read("acme", last, 10).expect("read").is_empty());
}

#[test]
fn a_read_larger_than_one_batch_with_a_byte_bound_reads_every_event_that_fits() {
    let server = NatsServer::start();
    let log = open(&server);
    let events: Vec<Event> = (0..3_000)
        .map(|i| event("acme", &format!("e-{i:05}")))
        .collect();
    log.append(events).wait().expect("append");
    let all = log.read("acme", 0, usize::MAX).expect("read");
    assert_eq!(all.len(), 3_000);
    // A byte bound that ends in the third batch of the server's answers.
    let bound: u64 = all.iter().take(2_500).map(|e| e.bytes).sum();
    let limit = ReadLimit {
        events: 2_800,
        bytes: bound,
        first_always: false,
    };
    assert_eq!(
        log.read_bounded("acme", 0, limit).expect("read").len(),
        2_500
    );
    let limit = ReadLimit {
        bytes: bound - 1,
        ..limit
    };
    assert_eq!(
        log.read_bounded("acme", 0, limit).expect("read").len(),
        2_499
    );
}

#[test]
fn counts_positions_by_time_and_the_head() {
    let server = NatsServer::start();
    let log = open(&server);
    assert_eq!(log.count_after("acme", 0, 100).expect("count"), 0);
    assert_eq!(log.first_since("acme", 0).expect("first since"), None);
    let early = log
        .append((0..5).map(|i| event("acme", &format!("a-{i}"))).collect())
        .wait()
        .expect("append");
    log.append(vec![event("beta", "b-0")])
        .wait()
        .expect("append");
    let stored = log.read("acme", 0, 100).expect("read");

    assert_eq!(log.count_after("acme", 0, 100).expect("count"), 5);
    assert_eq!(
        log.count_after("acme", 0, 3).expect("count"),
        3,
        "at most the limit"
    );
    assert_eq!(log.count_after("acme", 0, 0).expect("count"), 0);
    assert_eq!(
        log.count_after("acme", early[1].seq, 100).expect("count"),
        3
    );
    assert_eq!(
        log.count_after("acme", early[4].seq, 100).expect("count"),
        0
    );
    assert_eq!(log.count_after("beta", 0, 100).expect("count"), 1);

    assert_eq!(
        log.first_since("acme", 0).expect("first"),
        Some(early[0].seq)
    );
    // The first event at or after an event's own time is that one or an
    // earlier one of the same millisecond.
    let third = &stored[2];
    let found = log
        .first_since("acme", third.appended_at_ms)
        .expect("first")
        .expect("an event");
    let same_ms = stored
        .iter()
        .find(|e| e.appended_at_ms >= third.appended_at_ms)
        .expect("one");
    assert_eq!(found, same_ms.seq);
    let latest = stored.iter().map(|e| e.appended_at_ms).max().expect("one");
    assert_eq!(log.first_since("acme", latest + 1).expect("first"), None);

    let head = log.head().expect("head");
    assert!(head > early[4].seq, "beta's event is the newest");
}

#[test]
fn a_message_that_is_not_an_event_is_corrupt_at_its_position() {
    let server = NatsServer::start();
    let log = open(&server);
    log.append(vec![event("acme", "e-1")])
        .wait()
        .expect("append");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let seq = runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.publish("plugbus.events.acme.0", "{\"not\": \"an event\"}".into())
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence
    });
    let err = log.read("acme", 0, 10).expect_err("a corrupt event");
    match err {
        LogError::Corrupt { seq: at, .. } => assert_eq!(at, seq),
        other => panic!("not corrupt: {other}"),
    }
    // The events before it still read.
    assert_eq!(log.read("acme", 0, 1).expect("read").len(), 1);
}

#[test]
fn prune_by_age_deletes_what_is_old_and_keeps_the_rest() {
    let server = NatsServer::start();
    let log = open(&server);
    let old = log
        .append(
            (0..10)
                .map(|i| event("acme", &format!("old-{i}")))
                .collect(),
        )
        .wait()
        .expect("append");
    log.append(vec![event("beta", "old-b")])
        .wait()
        .expect("append");
    // A retention of a day keeps everything.
    let day = Retention {
        max_age: Some(Duration::from_secs(86_400)),
        max_bytes: None,
    };
    let pruned = log.prune(day, Vec::new()).wait().expect("prune");
    assert_eq!(pruned.deleted, 0);

    // Newer events, well after the old ones.
    std::thread::sleep(Duration::from_millis(1_500));
    let new = log
        .append((0..3).map(|i| event("acme", &format!("new-{i}"))).collect())
        .wait()
        .expect("append");
    let newest_old = log.read("acme", 0, 10).expect("read")[9].appended_at_ms;
    let first_new = log.read("acme", old[9].seq, 1).expect("read")[0].appended_at_ms;
    assert!(first_new - newest_old >= 1_000, "{newest_old} {first_new}");
    // A cutoff halfway between: the old events (and beta's) go.
    let cutoff = newest_old + (first_new - newest_old) / 2;
    let age = Duration::from_millis(u64::try_from(now_ms() - cutoff).expect("past"));
    let pruned = log
        .prune(
            Retention {
                max_age: Some(age),
                max_bytes: None,
            },
            Vec::new(),
        )
        .wait()
        .expect("prune");
    assert_eq!(pruned.deleted, 11);
    assert!(!pruned.held_back);
    let left = log.read("acme", 0, 100).expect("read");
    assert_eq!(ids(&left), ["new-0", "new-1", "new-2"]);
    assert_eq!(left[0].seq, new[0].seq);
    assert!(log.read("beta", 0, 100).expect("read").is_empty());
    assert_eq!(log.count_after("acme", 0, 100).expect("count"), 3);
    assert_eq!(log.head().expect("head"), new[2].seq);

    // A retention of nothing deletes everything.
    let none = Retention {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    assert_eq!(
        log.prune(none, Vec::new()).wait().expect("prune").deleted,
        3
    );
    assert_eq!(log.head().expect("head"), 0);
    // New events still get new, higher positions.
    let later = log
        .append(vec![event("acme", "later")])
        .wait()
        .expect("append");
    assert!(later[0].seq > new[2].seq);
}

#[test]
fn prune_by_bytes_deletes_the_oldest_until_the_stream_fits() {
    let server = NatsServer::start();
    let log = open(&server);
    let mut events = Vec::new();
    for i in 0..300 {
        let tenant = if i % 3 == 0 { "beta" } else { "acme" };
        events.push(event(tenant, &format!("e-{i:04}")));
    }
    log.append(events).wait().expect("append");
    let acme = log.read("acme", 0, usize::MAX).expect("read");
    let beta = log.read("beta", 0, usize::MAX).expect("read");
    let total: u64 = acme.iter().chain(&beta).map(|e| e.bytes).sum();
    // About half of the payloads (the stream counts headers too).
    let pruned = log
        .prune(
            Retention {
                max_age: None,
                max_bytes: Some(total / 2),
            },
            Vec::new(),
        )
        .wait()
        .expect("prune");
    assert!(!pruned.held_back);
    assert!(pruned.deleted > 0 && pruned.deleted < 300, "{pruned:?}");
    // The oldest went, of both tenants: what is left is a suffix of each.
    let acme_left = log.read("acme", 0, usize::MAX).expect("read");
    let beta_left = log.read("beta", 0, usize::MAX).expect("read");
    assert_eq!(
        (acme.len() + beta.len()) as u64 - pruned.deleted,
        (acme_left.len() + beta_left.len()) as u64
    );
    assert_eq!(ids(&acme_left), ids(&acme[acme.len() - acme_left.len()..]));
    assert_eq!(ids(&beta_left), ids(&beta[beta.len() - beta_left.len()..]));
    let oldest_left = acme_left[0].seq.min(beta_left[0].seq);
    let newest_gone = acme
        .iter()
        .chain(&beta)
        .map(|e| e.seq)
        .filter(|s| *s < oldest_left)
        .max()
        .expect("some went");
    assert!(newest_gone < oldest_left);
}

#[test]
fn a_read_while_the_server_is_down_fails_in_time_and_nothing_is_lost_after_a_restart() {
    let mut server = NatsServer::start();
    let log = NatsLog::open(NatsLogConfig {
        request_timeout: Duration::from_millis(500),
        ..config(&server)
    })
    .expect("open");
    let events: Vec<Event> = (0..1_000)
        .map(|i| event("acme", &format!("e-{i}")))
        .collect();
    let appended = log.append(events).wait().expect("append");
    // SIGKILL: what JetStream acknowledged was written to its files (not
    // necessarily synced to the disk: the machine did not crash).
    server.kill();
    let err = log.read("acme", 0, 10).expect_err("the server is down");
    assert!(matches!(err, LogError::Backend { .. }), "{err}");
    let err = log
        .append(vec![event("acme", "while-down")])
        .wait()
        .expect_err("the server is down");
    assert!(matches!(err, LogError::Backend { .. }), "{err}");
    assert!(!log.health().writable);

    server.restart();
    // The client reconnects by itself; reads work again once it has.
    let mut read = Err(LogError::Closed);
    for _ in 0..100 {
        read = log.read("acme", 0, usize::MAX);
        if read.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = read.expect("read after the restart");
    // The append that failed may have been stored after all: the client
    // keeps a publish made while disconnected and sends it on reconnect.
    let (retried, acknowledged): (Vec<_>, Vec<_>) =
        read.iter().partition(|e| e.event.id() == "while-down");
    assert!(retried.len() <= 1, "{} copies", retried.len());
    assert_eq!(
        acknowledged.len(),
        1_000,
        "every acknowledged event survived"
    );
    assert_eq!(
        acknowledged.last().map(|e| e.seq),
        appended.last().map(|a| a.seq)
    );
    // Appended again, it is stored once.
    log.append(vec![event("acme", "while-down")])
        .wait()
        .expect("append after the restart");
    assert!(log.health().writable);
    let all = log.read("acme", 0, usize::MAX).expect("read");
    assert_eq!(all.len(), 1_001);
}

#[test]
fn prune_keeps_what_a_live_plugin_has_not_finished() {
    let server = NatsServer::start();
    let log = open(&server);
    let appended = log
        .append((0..6).map(|i| event("acme", &format!("e-{i}"))).collect())
        .wait()
        .expect("append");
    log.append(vec![event("beta", "b-1")])
        .wait()
        .expect("append");
    // The plugin `slow` of acme finished the first two events; `fast`
    // finished all; beta has no live plugin.
    put_records(
        &server,
        &[("slow", appended[1].seq), ("fast", appended[5].seq)].map(|(plugin, cursor)| {
            (
                "plugbus_cursors",
                format!("acme.{plugin}.0"),
                cursor_record(cursor),
            )
        }),
    );
    let none = Retention {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let live = vec![
        ("acme".to_owned(), "slow".to_owned()),
        ("acme".to_owned(), "fast".to_owned()),
    ];
    let pruned = log.prune(none, live.clone()).wait().expect("prune");
    assert_eq!(pruned.deleted, 3, "two of acme, beta's one");
    assert_eq!(
        ids(&log.read("acme", 0, 100).expect("read")),
        ["e-2", "e-3", "e-4", "e-5"]
    );
    // A live plugin without a cursor holds back everything of its tenant.
    let live = vec![("acme".to_owned(), "new".to_owned())];
    assert_eq!(log.prune(none, live).wait().expect("prune").deleted, 0);
    // By bytes: what is held back is said.
    let tiny = Retention {
        max_age: None,
        max_bytes: Some(1),
    };
    let pruned = log
        .prune(tiny, vec![("acme".to_owned(), "slow".to_owned())])
        .wait()
        .expect("prune");
    assert!(pruned.held_back);
    assert_eq!(pruned.deleted, 0);
}

#[test]
fn prune_on_a_shared_log_keeps_what_a_plugin_on_another_host_has_not_finished() {
    let server = NatsServer::start();
    let log = open(&server);
    let acme = log
        .append((0..4).map(|i| event("acme", &format!("e-{i}"))).collect())
        .wait()
        .expect("append");
    log.append((0..300).map(|i| event("beta", &format!("b-{i}"))).collect())
        .wait()
        .expect("append");
    // `elsewhere` runs on another host: it is not live here, but it holds
    // its lease there, and its cursor says it finished only acme's first
    // event. `gone` was unloaded two hours ago: its lease ran out then.
    let now = now_ms();
    let mut records = Vec::new();
    for (plugin, expires_ms) in [("elsewhere", now + 60_000), ("gone", now - 7_200_000)] {
        let key = format!("acme.{plugin}.0");
        records.push(("plugbus_cursors", key.clone(), cursor_record(acme[0].seq)));
        let lease = serde_json::json!({"holder": "host-y", "expires_ms": expires_ms, "epoch": 1});
        records.push(("plugbus_leases", key, lease));
    }
    put_records(&server, &records);
    let all = Retention {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let pruned = log.prune(all, Vec::new()).wait().expect("prune");
    assert_eq!(pruned.deleted, 301, "acme's first event and all of beta's");
    assert_eq!(
        ids(&log.read("acme", 0, 100).expect("read")),
        ["e-1", "e-2", "e-3"]
    );
    // By bytes, with the stream's first event held back and many events
    // after it: the loop ends, saying so.
    log.append(
        (300..600)
            .map(|i| event("beta", &format!("b-{i}")))
            .collect(),
    )
    .wait()
    .expect("append");
    let tiny = Retention {
        max_age: None,
        max_bytes: Some(1),
    };
    let pruned = log.prune(tiny, Vec::new()).wait().expect("prune");
    assert!(pruned.held_back);
    assert_eq!(pruned.deleted, 300, "beta's new events go");
    assert_eq!(log.read("acme", 0, 100).expect("read").len(), 3);
}

/// A cursor record as the progress role writes it.
fn cursor_record(cursor: u64) -> serde_json::Value {
    serde_json::json!({"cursor": cursor, "ahead": [], "applied": 0})
}

/// Writes `(bucket, key, record)`s with a client of its own, as another
/// host would.
fn put_records(server: &NatsServer, records: &[(&str, String, serde_json::Value)]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        for (bucket, key, record) in records {
            js.get_key_value(*bucket)
                .await
                .expect("bucket")
                .put(key.as_str(), record.to_string().into())
                .await
                .expect("put");
        }
    });
}
