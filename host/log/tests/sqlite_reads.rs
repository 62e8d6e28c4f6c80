//! The embedded log's pool of read connections: more readers than
//! connections all read, each getting the whole answer.

use plugbus_core::event::Event;
use plugbus_log::{EventStore as _, SqliteLog, SqliteLogConfig};

#[test]
fn more_readers_than_connections_all_read_whole_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(
        dir.path(),
        SqliteLogConfig {
            read_connections: 2,
            ..SqliteLogConfig::default()
        },
    )
    .expect("open");
    let events: Vec<Event> = (0..50)
        .map(|i| {
            Event::builder("acme", format!("e-{i}"), "/orders", "order.placed")
                .build()
                .expect("an event")
        })
        .collect();
    log.append(events.clone()).wait().expect("append");
    std::thread::scope(|scope| {
        for reader in 0..8u64 {
            let (log, events) = (&log, &events);
            scope.spawn(move || {
                for round in 0..50u64 {
                    let after = (reader + round) % 50;
                    let read = log.read("acme", after, 100).expect("read");
                    let got: Vec<&Event> = read.iter().map(|s| &s.event).collect();
                    let want: Vec<&Event> = events.iter().skip(after as usize).collect();
                    assert_eq!(got, want);
                    assert_eq!(
                        log.count_after("acme", after, 100).expect("count"),
                        50 - after
                    );
                }
            });
        }
    });
}
