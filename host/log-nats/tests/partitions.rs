//! Partitions of a tenant's events on the NATS log, against a real
//! nats-server: each event goes to the partition of its key, a partition
//! reads and counts only its own events while the tenant's reads see all
//! of them in order, cursors and commits are per (plugin, partition), and
//! a log opens only with the partition count its stream was made with.

use plugbus_core::event::Event;
use plugbus_log::{Commit, CursorStore, EventStore, LogError, ReadLimit, partition_of};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn open_with(server: &NatsServer, partitions: u32) -> std::result::Result<NatsLog, LogError> {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        partitions,
        ..NatsLogConfig::default()
    })
}

fn keyed(id: &str, key: &str) -> Event {
    Event::builder("acme", id, "/test", "t")
        .extension("partitionkey", key)
        .build()
        .expect("a valid event")
}

fn ids(events: &[plugbus_log::StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id().to_owned()).collect()
}

#[test]
fn each_event_goes_to_its_partition_and_a_partition_reads_only_its_own() -> Result {
    let server = NatsServer::start();
    let log = open_with(&server, 4)?;
    assert_eq!(log.partitions(), 4);
    let events: Vec<Event> = (0..40)
        .map(|i| keyed(&format!("e{i}"), &format!("k{}", i % 8)))
        .collect();
    log.append(events.clone()).wait()?;

    // The tenant's reads see every partition, in publish order.
    let all = log.read("acme", 0, 100)?;
    assert_eq!(ids(&all), ids_of(&events));
    assert_eq!(log.count_after("acme", 0, 100)?, 40);

    let mut used = 0;
    let mut seen = 0;
    for partition in 0..4 {
        let expected: Vec<String> = events
            .iter()
            .filter(|e| partition_of(e, 4) == partition)
            .map(|e| e.id().to_owned())
            .collect();
        let got = log.read_partition("acme", partition, 0, ReadLimit::events(100))?;
        assert_eq!(ids(&got), expected, "partition {partition}");
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            log.count_partition_after("acme", partition, 0, 100)?,
            expected.len() as u64
        );
        // After its first event, one fewer.
        if let Some(first) = got.first() {
            used += 1;
            assert_eq!(
                log.count_partition_after("acme", partition, first.seq, 100)?,
                expected.len() as u64 - 1
            );
            let rest = log.read_partition("acme", partition, first.seq, ReadLimit::events(100))?;
            assert_eq!(ids(&rest), expected[1..]);
        }
        seen += expected.len();
    }
    assert_eq!(seen, 40);
    assert!(used >= 2, "eight keys over four partitions use several");
    // Another tenant's partitions are apart.
    assert!(
        log.read_partition("globex", 0, 0, ReadLimit::events(10))?
            .is_empty()
    );
    Ok(())
}

fn ids_of(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id().to_owned()).collect()
}

#[test]
fn cursors_and_commits_are_per_partition() -> Result {
    let server = NatsServer::start();
    let log = open_with(&server, 3)?;
    assert_eq!(log.cursor("acme", "p")?, None);
    let commit = |partition, cursor| Commit {
        tenant: "acme".into(),
        plugin: "p".into(),
        partition,
        cursor,
        ..Commit::default()
    };
    log.commit(commit(1, 5)).wait()?;
    assert_eq!(log.partition_cursor("acme", "p", 1)?, Some(5));
    assert_eq!(log.partition_cursor("acme", "p", 0)?, None);
    // The plugin's cursor: the lowest of the partitions that have one.
    assert_eq!(log.cursor("acme", "p")?, Some(5));
    log.commit(commit(0, 3)).wait()?;
    assert_eq!(log.cursor("acme", "p")?, Some(3));
    log.commit(Commit {
        ahead: vec![9],
        expected: Some(3),
        ..commit(0, 4)
    })
    .wait()?;
    assert_eq!(log.partition_ahead("acme", "p", 0)?, [9]);
    assert!(log.partition_ahead("acme", "p", 1)?.is_empty());

    // Two partitions' first commits with effects both emit: each
    // partition numbers its own commits, and the emits stay apart.
    log.commit(Commit {
        emitted: vec![keyed("out-0", "x")],
        expected: Some(4),
        ..commit(0, 4)
    })
    .wait()?;
    log.commit(Commit {
        emitted: vec![keyed("out-1", "y")],
        expected: Some(5),
        ..commit(1, 5)
    })
    .wait()?;
    let all = ids(&log.read("acme", 0, 10)?);
    assert_eq!(all, ["out-0", "out-1"]);

    // An operator's move (replay) moves every partition.
    let moved = log.commit_cursor("acme", "p", 1).wait()?;
    assert!(moved.cursor_moved);
    for partition in 0..3 {
        assert_eq!(log.partition_cursor("acme", "p", partition)?, Some(1));
        assert!(log.partition_ahead("acme", "p", partition)?.is_empty());
    }
    assert_eq!(log.cursor("acme", "p")?, Some(1));
    // Seen the same by a fresh log.
    drop(log);
    let log = open_with(&server, 3)?;
    assert_eq!(log.partition_cursor("acme", "p", 2)?, Some(1));
    Ok(())
}

#[test]
fn a_log_opens_only_with_the_partition_count_it_was_made_with() -> Result {
    let server = NatsServer::start();
    let made = open_with(&server, 4)?;
    made.append(vec![keyed("e1", "k")]).wait()?;
    drop(made);
    let error = open_with(&server, 2).expect_err("another partition count");
    let text = error.to_string();
    assert!(text.contains("log.nats.partitions"), "{text}");
    assert!(text.contains('2') && text.contains('4'), "{text}");
    let error = open_with(&server, 1).expect_err("the default");
    assert!(matches!(error, LogError::Backend { .. }), "{error}");
    // The same count opens, and finds the events.
    let again = open_with(&server, 4)?;
    assert_eq!(again.read("acme", 0, 10)?.len(), 1);
    // Another prefix is another log, with its own count.
    let other = NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        prefix: plugbus_log_nats::Prefix::new("other")?,
        ..NatsLogConfig::default()
    })?;
    assert_eq!(other.partitions(), 1);
    Ok(())
}
