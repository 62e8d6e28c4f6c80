//! The crate-internal steps of a commit (`store_dead_letters`,
//! `drop_redriven`) against a real nats-server: what the commit protocol
//! relies on, tested without it.

use std::collections::HashMap;

use plugbus_core::event::Event;
use plugbus_log::{DeadLetter, DeadLetterQuota, DeadLetterStore, FailedAttempt, LogError, Seq};
use plugbus_nats_server::NatsServer;

use super::{drop_redriven, store_dead_letters};
use crate::{NatsLog, NatsLogConfig};

fn event(tenant: &str, seq: Seq) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": format!("e-{seq:03}"),
        "source": "/pos/store-12",
        "type": "order.placed",
        "tenant": tenant,
        "partitionkey": "order-1",
        "data": { "total": 12 },
    }))
    .expect("a valid event")
}

fn attempt(message: &str) -> FailedAttempt {
    FailedAttempt {
        kind: plugbus_core::FailureKind::HandlerPermanent,
        message: message.into(),
        fuel: 1,
        plugin_version: "v1".into(),
        at_ms: 7,
    }
}

fn dead_letter(tenant: &str, seq: Seq) -> DeadLetter {
    DeadLetter {
        seq,
        event: event(tenant, seq),
        attempts: vec![attempt("no")],
    }
}

/// Its size for a quota: its event and attempts as stored.
fn size(dead: &DeadLetter) -> u64 {
    let attempts = serde_json::to_string(&dead.attempts).expect("attempts");
    (dead.event.to_json_string().len() + attempts.len()) as u64
}

fn open(server: &NatsServer, config: NatsLogConfig) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        ..config
    })
    .expect("open the log")
}

/// Runs `store_dead_letters` as the commit protocol does.
fn store(log: &NatsLog, tenant: &str, plugin: &str, letters: &[DeadLetter]) -> Vec<Seq> {
    let (inner, tenant, plugin, letters) = (
        log.inner.clone(),
        tenant.to_owned(),
        plugin.to_owned(),
        letters.to_vec(),
    );
    log.inner
        .bridge
        .block(async move { store_dead_letters(&inner, &tenant, &plugin, &letters).await })
        .expect("store the dead letters")
}

fn drop_handled(log: &NatsLog, tenant: &str, plugin: &str, seqs: &[Seq]) {
    let (inner, tenant, plugin, seqs) = (
        log.inner.clone(),
        tenant.to_owned(),
        plugin.to_owned(),
        seqs.to_vec(),
    );
    log.inner
        .bridge
        .block(async move { drop_redriven(&inner, &tenant, &plugin, &seqs).await })
        .expect("drop the redriven");
}

fn depth(log: &NatsLog, tenant: &str, plugin: &str) -> Option<u64> {
    log.dead_letter_depths()
        .get(&(tenant.to_owned(), plugin.to_owned()))
        .copied()
}

fn seqs(letters: &[DeadLetter]) -> Vec<Seq> {
    letters.iter().map(|d| d.seq).collect()
}

#[test]
fn dead_letters_are_stored_read_redriven_and_dropped() {
    let server = NatsServer::start();
    let log = open(&server, NatsLogConfig::default());
    let letters = [3, 1, 2].map(|seq| dead_letter("acme", seq));
    assert!(store(&log, "acme", "saga", &letters).is_empty());
    assert!(store(&log, "acme", "audit", &[dead_letter("acme", 9)]).is_empty());

    let read = log.dead_letters("acme", "saga").expect("read");
    assert_eq!(seqs(&read), [1, 2, 3], "oldest first");
    assert_eq!(read[0], dead_letter("acme", 1), "read back whole");
    assert_eq!(
        log.dead_letter_plugins("acme").expect("plugins"),
        ["audit", "saga"]
    );
    assert!(
        log.dead_letter_plugins("globex")
            .expect("plugins")
            .is_empty()
    );
    assert_eq!(depth(&log, "acme", "saga"), Some(3));

    // Stored again (a commit applied twice): nothing changes.
    assert!(store(&log, "acme", "saga", &letters).is_empty());
    assert_eq!(log.dead_letters("acme", "saga").expect("read"), read);
    assert_eq!(depth(&log, "acme", "saga"), Some(3));

    // Redrive requests.
    assert!(
        log.redrives("acme", "saga", 10)
            .expect("redrives")
            .is_empty()
    );
    assert!(
        log.request_redrive("acme", "saga", 3)
            .wait()
            .expect("request")
    );
    assert!(
        log.request_redrive("acme", "saga", 2)
            .wait()
            .expect("request")
    );
    assert!(
        !log.request_redrive("acme", "saga", 4)
            .wait()
            .expect("request")
    );
    assert!(
        !log.request_redrive("acme", "other", 3)
            .wait()
            .expect("request")
    );
    assert_eq!(
        seqs(&log.redrives("acme", "saga", 10).expect("redrives")),
        [2, 3]
    );
    assert_eq!(
        seqs(&log.redrives("acme", "saga", 1).expect("redrives")),
        [2]
    );
    assert!(
        log.redrives("acme", "audit", 10)
            .expect("redrives")
            .is_empty()
    );
    assert_eq!(
        log.dead_letters("acme", "saga").expect("read"),
        read,
        "a request changes no dead letter"
    );

    // 3 fails again: kept with its whole history, done being redriven.
    let mut again = dead_letter("acme", 3);
    again.attempts.push(attempt("still no"));
    assert!(store(&log, "acme", "saga", &[again.clone()]).is_empty());
    assert_eq!(
        seqs(&log.redrives("acme", "saga", 10).expect("redrives")),
        [2]
    );
    assert_eq!(log.dead_letters("acme", "saga").expect("read")[2], again);

    // 2 is handled: dropped, twice over (idempotent).
    drop_handled(&log, "acme", "saga", &[2]);
    drop_handled(&log, "acme", "saga", &[2, 5]);
    assert_eq!(
        seqs(&log.dead_letters("acme", "saga").expect("read")),
        [1, 3]
    );
    assert!(
        log.redrives("acme", "saga", 10)
            .expect("redrives")
            .is_empty()
    );
    assert_eq!(depth(&log, "acme", "saga"), Some(2));

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
    assert!(
        log.discard_dead_letter("acme", "saga", 3)
            .wait()
            .expect("discard")
    );
    assert!(log.dead_letters("acme", "saga").expect("read").is_empty());
    assert_eq!(depth(&log, "acme", "saga"), None);
    assert_eq!(log.dead_letter_plugins("acme").expect("plugins"), ["audit"]);

    // A dead letter stored after it was discarded is a new one.
    assert!(store(&log, "acme", "saga", &[dead_letter("acme", 1)]).is_empty());
    assert_eq!(depth(&log, "acme", "saga"), Some(1));
}

#[test]
fn a_tenant_keeps_at_most_its_quota_of_dead_letters() {
    let server = NatsServer::start();
    let log = open(
        &server,
        NatsLogConfig {
            dead_letters: DeadLetterQuota {
                max_count: 2,
                max_bytes: u64::MAX,
            },
            tenant_dead_letters: HashMap::from([(
                "globex".to_owned(),
                DeadLetterQuota {
                    max_count: 4,
                    max_bytes: u64::MAX,
                },
            )]),
            ..NatsLogConfig::default()
        },
    );
    // The quota counts the tenant's plugins together.
    assert!(store(&log, "acme", "saga", &[dead_letter("acme", 1)]).is_empty());
    assert_eq!(
        store(
            &log,
            "acme",
            "audit",
            &[2, 3, 4].map(|seq| dead_letter("acme", seq))
        ),
        [3, 4],
        "the refused are answered"
    );
    assert_eq!(seqs(&log.dead_letters("acme", "audit").expect("read")), [2]);
    // Another tenant has its own quota.
    assert!(
        store(
            &log,
            "globex",
            "saga",
            &[1, 2, 3, 4].map(|seq| dead_letter("globex", seq))
        )
        .is_empty()
    );
    assert_eq!(
        store(&log, "globex", "saga", &[dead_letter("globex", 5)]),
        [5]
    );
    assert!(store(&log, "initech", "saga", &[dead_letter("initech", 1)]).is_empty());

    // A redriven dead letter that fails again is kept beyond the quota.
    assert!(
        log.request_redrive("acme", "saga", 1)
            .wait()
            .expect("request")
    );
    let mut again = dead_letter("acme", 1);
    again.attempts.push(attempt("still no"));
    assert!(store(&log, "acme", "saga", &[again.clone()]).is_empty());
    assert_eq!(log.dead_letters("acme", "saga").expect("read"), [again]);

    // Discarding makes room.
    assert!(
        log.discard_dead_letter("acme", "audit", 2)
            .wait()
            .expect("discard")
    );
    assert!(store(&log, "acme", "audit", &[dead_letter("acme", 3)]).is_empty());
    assert_eq!(store(&log, "acme", "audit", &[dead_letter("acme", 4)]), [4]);
}

#[test]
fn a_tenant_keeps_at_most_its_quota_of_bytes() {
    let server = NatsServer::start();
    let one = size(&dead_letter("acme", 1));
    let log = open(
        &server,
        NatsLogConfig {
            dead_letters: DeadLetterQuota {
                max_count: 100,
                max_bytes: 2 * one + one / 2,
            },
            tenant_dead_letters: HashMap::from([(
                "globex".to_owned(),
                DeadLetterQuota {
                    max_count: 100,
                    max_bytes: 3 * one + 10,
                },
            )]),
            ..NatsLogConfig::default()
        },
    );
    assert_eq!(
        store(
            &log,
            "acme",
            "saga",
            &[1, 2, 3].map(|seq| dead_letter("acme", seq))
        ),
        [3]
    );
    assert!(
        store(
            &log,
            "globex",
            "saga",
            &[1, 2, 3].map(|seq| dead_letter("globex", seq))
        )
        .is_empty()
    );
    // A bigger history of a stored dead letter is kept all the same.
    let mut again = dead_letter("acme", 2);
    again
        .attempts
        .extend((0..20).map(|_| attempt("a long way down")));
    assert!(size(&again) > one);
    assert!(store(&log, "acme", "saga", &[again]).is_empty());
    // And counts: dropping the small one leaves no room for another.
    drop_handled(&log, "acme", "saga", &[1]);
    assert_eq!(store(&log, "acme", "saga", &[dead_letter("acme", 4)]), [4]);
    drop_handled(&log, "acme", "saga", &[2]);
    assert!(store(&log, "acme", "saga", &[dead_letter("acme", 4)]).is_empty());
}

#[test]
fn a_second_log_counts_the_first_ones_dead_letters_in_its_quota() {
    let server = NatsServer::start();
    let config = NatsLogConfig {
        dead_letters: DeadLetterQuota {
            max_count: 3,
            max_bytes: u64::MAX,
        },
        ..NatsLogConfig::default()
    };
    let first = open(&server, config.clone());
    assert!(
        store(
            &first,
            "acme",
            "saga",
            &[1, 2].map(|seq| dead_letter("acme", seq))
        )
        .is_empty()
    );
    let second = open(&server, config);
    assert_eq!(depth(&second, "acme", "saga"), Some(2), "known at open");
    assert_eq!(
        store(
            &second,
            "acme",
            "audit",
            &[3, 4].map(|seq| dead_letter("acme", seq))
        ),
        [4]
    );
}

#[test]
fn a_write_to_an_unreachable_server_fails_and_is_noted() {
    let mut server = NatsServer::start();
    let log = open(
        &server,
        NatsLogConfig {
            request_timeout: std::time::Duration::from_millis(500),
            ..NatsLogConfig::default()
        },
    );
    server.kill();
    let err = log
        .discard_dead_letter("acme", "saga", 1)
        .wait()
        .expect_err("no server");
    assert!(matches!(err, LogError::Backend { .. }), "{err}");
    assert!(!log.inner.health().writable);
}
