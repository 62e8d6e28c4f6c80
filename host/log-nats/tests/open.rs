//! Opening the log against a real nats-server: the stream and buckets
//! are made, and opening again finds them.

use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

#[test]
fn opens_twice_on_one_server() {
    let server = NatsServer::start();
    let config = NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    };
    let first = NatsLog::open(config.clone()).expect("open");
    assert_eq!(first.stream_name(), "plugbus_events");
    NatsLog::open(config).expect("open again");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let config = NatsLogConfig {
        servers: vec![format!(
            "nats://127.0.0.1:{}",
            plugbus_nats_server::free_port()
        )],
        connect_timeout: std::time::Duration::from_millis(500),
        ..NatsLogConfig::default()
    };
    let err = NatsLog::open(config).expect_err("nobody listens");
    let text = err.to_string();
    assert!(text.contains("connect"), "{text}");
}

/// Waits (a minute at most: the machine may be slow) until `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the wall clock has passed `ms`, so that a `since_ms` taken
/// now would differ from one taken before.
fn clock_past(ms: i64) {
    eventually("the clock moves on", || plugbus_log::now_ms() > ms + 1);
}

/// `since_ms` says when the log's current state began: it stays put while
/// the state lasts (writable, then disconnected), and moves when the state
/// changes.
#[test]
fn health_says_since_when_the_state_lasts() {
    use plugbus_log::EventStore as _;
    let mut server = NatsServer::start();
    let opened = plugbus_log::now_ms();
    let log = NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open");
    let healthy = log.health();
    assert!(healthy.writable, "{healthy:?}");
    assert!(healthy.since_ms >= opened, "{healthy:?}");
    clock_past(healthy.since_ms);
    assert_eq!(
        log.health().since_ms,
        healthy.since_ms,
        "writable since open"
    );

    let killed = plugbus_log::now_ms();
    server.kill();
    eventually("the log notices the server is gone", || {
        !log.health().writable
    });
    let down = log.health();
    assert!(down.since_ms >= killed, "{down:?}");
    assert!(
        down.error
            .as_deref()
            .is_some_and(|e| e.contains("not connected")),
        "{down:?}"
    );
    clock_past(down.since_ms);
    let still = log.health();
    assert!(!still.writable);
    assert_eq!(still.since_ms, down.since_ms, "disconnected since the kill");

    let restarted = plugbus_log::now_ms();
    server.restart();
    eventually("the log reconnects", || log.health().writable);
    let back = log.health();
    assert!(back.since_ms >= restarted, "{back:?}");
    clock_past(back.since_ms);
    assert_eq!(log.health().since_ms, back.since_ms, "writable again since");
}
