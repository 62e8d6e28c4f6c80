//! What callers get when the NATS log fails: a [`LogError::Backend`]
//! whose source is the NATS client's own error, or the log's typed
//! [`BackendError`] / [`ProgressError`] for its own conditions; never a
//! cause flattened into text.

use std::time::Duration;

use plugbus_log::{DeadLetterStore, LeaseKey, LeaseStore, LeaseTerms, LogError};
use plugbus_log_nats::{BackendError, NatsLog, NatsLogConfig, ProgressError};
use plugbus_nats_server::NatsServer;

const TERMS: LeaseTerms = LeaseTerms {
    ttl: Duration::from_secs(600),
    margin: Duration::from_secs(1),
};

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        request_timeout: Duration::from_millis(500),
        ..NatsLogConfig::default()
    })
    .expect("open the log")
}

/// The source of a [`LogError::Backend`].
fn source(err: &LogError) -> &(dyn std::error::Error + Send + Sync + 'static) {
    match err {
        LogError::Backend { source, .. } => source.as_ref(),
        other => panic!("not a backend error: {other:?}"),
    }
}

#[test]
fn the_logs_own_conditions_are_typed_sources() {
    let server = NatsServer::start();
    let log = open(&server);
    let err = log
        .register("web.1", TERMS)
        .wait()
        .expect_err("a dot is no key");
    assert!(
        matches!(
            source(&err).downcast_ref::<BackendError>(),
            Some(BackendError::HostId { host }) if host == "web.1"
        ),
        "{err:?}"
    );
}

#[test]
fn a_failed_request_keeps_the_clients_error() {
    let mut server = NatsServer::start();
    let log = open(&server);
    server.kill();
    let err = log
        .discard_dead_letter("acme", "saga", 1)
        .wait()
        .expect_err("no server");
    assert!(
        source(&err)
            .downcast_ref::<async_nats::jetstream::kv::EntryError>()
            .is_some(),
        "{err:?}"
    );
    let err = log
        .acquire(&LeaseKey::new("acme", "saga"), "host-a", TERMS)
        .wait()
        .expect_err("no server");
    assert!(
        source(&err)
            .downcast_ref::<async_nats::jetstream::kv::EntryError>()
            .is_some(),
        "{err:?}"
    );
}

/// A commit that kept losing the race for its records is a
/// [`LogError::Backend`] whose source callers can match (contention
/// itself cannot be made on purpose here: this pins the type callers
/// match on).
#[test]
fn contention_is_matchable() {
    let err = LogError::Backend {
        backend: "nats test".into(),
        operation: "write plugbus_cursors/acme.saga".into(),
        source: Box::new(ProgressError::Contended {
            key: "acme.saga".into(),
            tries: 10,
        }),
    };
    assert!(matches!(
        source(&err).downcast_ref::<ProgressError>(),
        Some(ProgressError::Contended { tries: 10, .. })
    ));
}
