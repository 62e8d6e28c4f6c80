//! The dead-letter and quarantine roles through the log's interface,
//! against real nats-servers: several logs on one server see the same
//! dead letters (their depths kept by each log's watcher) and quarantines,
//! and a record that does not parse is a clear error naming its key.
//!
//! Dead letters are written here by hand, straight into the bucket with
//! async-nats, as another host's commit would write them (the commit
//! protocol's own use of the role is tested in the crate, `letters`).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use plugbus_log::{
    DeadLetterStore, FailedAttempt, LogError, Quarantine, QuarantineChange, QuarantineStore,
};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..NatsLogConfig::default()
    })
    .expect("open the log")
}

/// Writes records into a bucket with a client of its own.
struct Writer {
    runtime: tokio::runtime::Runtime,
    kv: jetstream::kv::Store,
}

impl Writer {
    /// Opens the bucket `plugbus_<role>` (a log made it).
    fn new(server: &NatsServer, role: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let url = server.url();
        let bucket = format!("plugbus_{role}");
        let kv = runtime.block_on(async move {
            let client = async_nats::connect(url).await.expect("connect");
            jetstream::new(client)
                .get_key_value(bucket)
                .await
                .expect("the bucket")
        });
        Self { runtime, kv }
    }

    fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        let value: Vec<u8> = value.into();
        self.runtime
            .block_on(self.kv.put(key, value.into()))
            .expect("put");
    }
}

/// A dead letter's record, as the log stores it.
fn record(seq: u64, redrive: bool) -> String {
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": format!("e-{seq:03}"),
        "source": "/pos/store-12",
        "type": "order.placed",
        "tenant": "acme",
        "data": { "total": 12 },
    });
    let attempts = vec![FailedAttempt {
        kind: plugbus_core::FailureKind::HandlerPermanent,
        message: "no".into(),
        fuel: 1,
        plugin_version: "v1".into(),
        at_ms: 7,
    }];
    serde_json::json!({ "event": event, "attempts": attempts, "redrive": redrive }).to_string()
}

fn depth(log: &NatsLog, plugin: &str) -> Option<u64> {
    log.dead_letter_depths()
        .get(&("acme".to_owned(), plugin.to_owned()))
        .copied()
}

/// Waits (a minute at most: the machine may be slow) until `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_log_sees_the_dead_letters_and_their_depths() {
    let server = NatsServer::start();
    let first = open(&server);
    assert!(first.dead_letter_depths().is_empty());
    let writer = Writer::new(&server, "dead_letters");
    for seq in [3, 1, 2] {
        writer.put(&format!("acme.saga.{seq}"), record(seq, false));
    }
    writer.put("acme.audit.9", record(9, true));

    // A log opened now knows every depth when it opens.
    let second = open(&server);
    assert_eq!(depth(&second, "saga"), Some(3));
    assert_eq!(depth(&second, "audit"), Some(1));
    assert_eq!(
        second.dead_letter_plugins("acme").expect("plugins"),
        ["audit", "saga"]
    );
    let read = second.dead_letters("acme", "saga").expect("read");
    assert_eq!(
        read.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "oldest first"
    );
    assert_eq!(read[0].event.id(), "e-001");
    assert_eq!(read[0].attempts[0].message, "no");

    // The first log follows what was written after it opened.
    eventually("the first log counts them", || {
        depth(&first, "saga") == Some(3) && depth(&first, "audit") == Some(1)
    });
    eventually("the first log sees the redrive request", || {
        first.redrives("acme", "audit", 10).expect("redrives").len() == 1
    });

    // One log's writes reach the other.
    assert!(
        first
            .discard_dead_letter("acme", "saga", 2)
            .wait()
            .expect("discard")
    );
    assert_eq!(depth(&first, "saga"), Some(2), "at once in the writer");
    eventually("the second log sees the discard", || {
        depth(&second, "saga") == Some(2)
    });
    assert!(
        first
            .request_redrive("acme", "saga", 3)
            .wait()
            .expect("request")
    );
    eventually("the second log sees the request", || {
        second
            .redrives("acme", "saga", 10)
            .expect("redrives")
            .iter()
            .map(|d| d.seq)
            .eq([3])
    });
    assert!(
        second
            .discard_dead_letter("acme", "audit", 9)
            .wait()
            .expect("discard")
    );
    eventually("the first log sees the plugin go", || {
        depth(&first, "audit").is_none()
            && first.dead_letter_plugins("acme").expect("plugins") == ["saga"]
    });
    assert!(
        !first
            .discard_dead_letter("acme", "audit", 9)
            .wait()
            .expect("discard")
    );
}

#[test]
fn nothing_to_discard_or_redrive_is_answered_false() {
    let server = NatsServer::start();
    let log = open(&server);
    assert!(log.dead_letters("acme", "saga").expect("read").is_empty());
    assert!(log.dead_letter_plugins("acme").expect("plugins").is_empty());
    assert!(
        !log.discard_dead_letter("acme", "saga", 1)
            .wait()
            .expect("discard")
    );
    assert!(
        !log.request_redrive("acme", "saga", 1)
            .wait()
            .expect("request")
    );
    assert!(
        log.redrives("acme", "saga", 10)
            .expect("redrives")
            .is_empty()
    );
}

#[test]
fn a_record_that_does_not_parse_is_an_error_naming_its_key() {
    let server = NatsServer::start();
    let log = open(&server);
    let writer = Writer::new(&server, "dead_letters");
    writer.put("acme.saga.1", record(1, false));
    writer.put("acme.saga.7", "not json");
    writer.put(
        "acme.other.2",
        r#"{"event": {"id": "no specversion"}, "attempts": [], "redrive": true}"#,
    );
    eventually("the log counts them", || {
        depth(&log, "saga") == Some(2) && depth(&log, "other") == Some(1)
    });
    for (plugin, key) in [("saga", "acme.saga.7"), ("other", "acme.other.2")] {
        let err = log.dead_letters("acme", plugin).expect_err("corrupt");
        assert!(
            matches!(&err, LogError::CorruptRecord { key: k, .. } if k == key),
            "{err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
    let err = log
        .request_redrive("acme", "saga", 7)
        .wait()
        .expect_err("corrupt");
    assert!(err.to_string().contains("acme.saga.7"), "{err}");
    let err = log.redrives("acme", "other", 10).expect_err("corrupt");
    assert!(err.to_string().contains("acme.other.2"), "{err}");
    // An operator can still discard it.
    assert!(
        log.discard_dead_letter("acme", "saga", 7)
            .wait()
            .expect("discard")
    );
    assert_eq!(log.dead_letters("acme", "saga").expect("read").len(), 1);
}

fn quarantine(plugin: &str, version: &str) -> Quarantine {
    Quarantine {
        tenant: "acme".into(),
        plugin: plugin.into(),
        version: version.into(),
        since_ms: 1_000,
        until_ms: 2_000,
    }
}

#[test]
fn quarantines_are_recorded_replaced_and_lifted_for_every_log() {
    let server = NatsServer::start();
    let first = open(&server);
    let second = open(&server);
    assert!(first.quarantines().expect("read").is_empty());
    for q in [quarantine("saga", "v1"), quarantine("audit", "v1")] {
        assert!(
            first
                .set_quarantine(QuarantineChange::Begin(q))
                .wait()
                .expect("begin")
        );
    }
    assert!(
        first
            .set_quarantine(QuarantineChange::Begin(quarantine("saga", "v2")))
            .wait()
            .expect("replace")
    );
    assert_eq!(
        second.quarantines().expect("read"),
        [quarantine("audit", "v1"), quarantine("saga", "v2")],
        "by tenant and plugin, the last record of each"
    );
    let lift = |plugin: &str| QuarantineChange::Lift {
        tenant: "acme".into(),
        plugin: plugin.into(),
    };
    assert!(second.set_quarantine(lift("saga")).wait().expect("lift"));
    assert!(!first.set_quarantine(lift("saga")).wait().expect("lift"));
    assert!(!first.set_quarantine(lift("nobody")).wait().expect("lift"));
    assert_eq!(
        first.quarantines().expect("read"),
        [quarantine("audit", "v1")]
    );
    // Quarantined again after a lift.
    assert!(
        second
            .set_quarantine(QuarantineChange::Begin(quarantine("saga", "v3")))
            .wait()
            .expect("begin")
    );
    assert_eq!(first.quarantines().expect("read").len(), 2);
}

#[test]
fn a_quarantine_that_does_not_parse_is_an_error_naming_its_key() {
    let server = NatsServer::start();
    let log = open(&server);
    Writer::new(&server, "quarantines").put("acme.saga", "{}");
    let err = log.quarantines().expect_err("corrupt");
    assert!(
        matches!(&err, LogError::CorruptRecord { key, .. } if key == "acme.saga"),
        "{err}"
    );
}

#[test]
fn the_depths_follow_the_bucket_across_a_server_restart() {
    let mut server = NatsServer::start();
    let log = open(&server);
    Writer::new(&server, "dead_letters").put("acme.saga.1", record(1, false));
    eventually("the log counts it", || depth(&log, "saga") == Some(1));
    server.restart();
    let writer = Writer::new(&server, "dead_letters");
    writer.put("acme.saga.2", record(2, false));
    writer.put("acme.audit.3", record(3, false));
    eventually("the log counts what was written after the restart", || {
        depth(&log, "saga") == Some(2) && depth(&log, "audit") == Some(1)
    });
}
