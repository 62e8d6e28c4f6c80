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
