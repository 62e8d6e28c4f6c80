//! The embedded log's checkpointer thread: what the writer commits reaches
//! the database file without the writer checkpointing itself.

use std::time::{Duration, Instant};

use plugbus_core::event::Event;
use plugbus_log::{EventStore as _, SqliteLog, SqliteLogConfig};

#[test]
fn committed_pages_reach_the_database_file_off_the_writer_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(dir.path(), SqliteLogConfig::default()).expect("open");
    let file = dir.path().join("events.db");
    let before = std::fs::metadata(&file).expect("file").len();
    let payload = "x".repeat(1000);
    for batch in 0..20 {
        let events: Vec<Event> = (0..100)
            .map(|i| {
                Event::builder("acme", format!("e-{batch}-{i}"), "/orders", "order.placed")
                    .extension("pad", payload.clone())
                    .build()
                    .expect("an event")
            })
            .collect();
        log.append(events).wait().expect("append");
    }
    // About 2 MB were committed to the write-ahead log, far below the
    // writer's own checkpoint (64 MB): only the checkpointer copies them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&file).expect("file").len() < before + 1_000_000 {
        assert!(Instant::now() < deadline, "the file never grew");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(log.read("acme", 0, 5000).expect("read").len(), 2000);
}
