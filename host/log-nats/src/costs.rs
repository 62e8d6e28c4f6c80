//! What reading one plugin's records costs while other tenants keep many:
//! the bytes the log's client receives for a state page or a plugin's dead
//! letters stay those of the plugin's own records, whatever its neighbours
//! hold (counted by the client, against a real nats-server).

use std::sync::atomic::Ordering;

use plugbus_core::event::Event;
use plugbus_core::state::{StateStore as _, StateWrite};
use plugbus_log::{
    DeadLetter, DeadLetterQuota, DeadLetterStore as _, FailedAttempt, InspectStore as _, Seq,
    StateQuery,
};
use plugbus_nats_server::NatsServer;

use crate::{NatsLog, NatsLogConfig};

/// How many records the big neighbour keeps.
const NEIGHBOUR_RECORDS: usize = 1_500;

fn open(server: &NatsServer) -> NatsLog {
    NatsLog::open(NatsLogConfig {
        servers: vec![server.url()],
        dead_letters: DeadLetterQuota {
            max_count: u64::MAX,
            max_bytes: u64::MAX,
        },
        ..NatsLogConfig::default()
    })
    .expect("open the log")
}

/// (bytes, messages) the log's client has received, and messages sent.
fn traffic(log: &NatsLog) -> (u64, u64, u64) {
    let stats = log.inner.client.statistics();
    (
        stats.in_bytes.load(Ordering::SeqCst),
        stats.in_messages.load(Ordering::SeqCst),
        stats.out_messages.load(Ordering::SeqCst),
    )
}

/// What `read` makes the client receive and send: (bytes in, messages
/// in, messages out).
fn cost<T>(log: &NatsLog, read: impl FnOnce() -> T) -> (T, (u64, u64, u64)) {
    let before = traffic(log);
    let out = read();
    let after = traffic(log);
    (
        out,
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
    )
}

fn set(key: String) -> StateWrite {
    StateWrite {
        key,
        value: Some(b"v".to_vec()),
    }
}

#[test]
fn a_state_page_lists_only_the_plugins_own_keys() {
    let server = NatsServer::start();
    let log = open(&server);
    let theirs: Vec<StateWrite> = (0..NEIGHBOUR_RECORDS)
        .map(|i| set(format!("customer-{i:06}-with-a-long-name")))
        .collect();
    log.apply("globex", "saga", &theirs)
        .expect("the neighbour's state");
    // A plugin of the same tenant whose name starts like ours, too.
    log.apply("acme", "saga2", &theirs[..100])
        .expect("a namesake's state");
    let ours: Vec<StateWrite> = (0..5).map(|i| set(format!("order-{i}"))).collect();
    log.apply("acme", "saga", &ours).expect("our state");

    let query = StateQuery {
        prefix: String::new(),
        after: None,
        limit: 2,
        max_bytes: u64::MAX,
    };
    let (page, (bytes, _, _)) = cost(&log, || log.state_entries("acme", "saga", &query));
    let page = page.expect("a page");
    let keys: Vec<&str> = page.items.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["order-0", "order-1"]);
    // Listing the neighbour's keys would be some 60 bytes each.
    assert!(
        bytes < 16 * 1024,
        "a page of 2 of 5 keys received {bytes} bytes"
    );
    assert!(page.more);
    let next = StateQuery {
        after: Some("order-1".to_owned()),
        ..query
    };
    let (page, (bytes, _, _)) = cost(&log, || log.state_entries("acme", "saga", &next));
    let keys: Vec<String> = page
        .expect("the next page")
        .items
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["order-2", "order-3"]);
    assert!(bytes < 16 * 1024, "the next page received {bytes} bytes");
}

fn dead_letter(tenant: &str, seq: Seq) -> DeadLetter {
    DeadLetter {
        seq,
        event: Event::from_json_value(serde_json::json!({
            "specversion": "1.0",
            "id": format!("e-{seq:05}"),
            "source": "/pos/store-12",
            "type": "order.placed",
            "tenant": tenant,
            "data": { "total": 12, "note": "x".repeat(200) },
        }))
        .expect("a valid event"),
        attempts: vec![FailedAttempt {
            kind: plugbus_core::FailureKind::HandlerPermanent,
            message: "no".into(),
            fuel: 1,
            plugin_version: "v1".into(),
            at_ms: 7,
        }],
    }
}

fn store(log: &NatsLog, tenant: &str, plugin: &str, letters: Vec<DeadLetter>) {
    let (inner, tenant, plugin) = (log.inner.clone(), tenant.to_owned(), plugin.to_owned());
    let refused = log
        .inner
        .bridge
        .block(async move {
            crate::letters::store_dead_letters(&inner, &tenant, &plugin, &letters).await
        })
        .expect("store the dead letters");
    assert!(refused.is_empty());
}

#[test]
fn a_plugins_dead_letters_are_read_without_the_other_tenants() {
    let server = NatsServer::start();
    let log = open(&server);
    store(
        &log,
        "globex",
        "saga",
        (1..=NEIGHBOUR_RECORDS as Seq)
            .map(|seq| dead_letter("globex", seq))
            .collect(),
    );
    store(
        &log,
        "acme",
        "saga2",
        (1..=100).map(|seq| dead_letter("acme", seq)).collect(),
    );
    store(
        &log,
        "acme",
        "saga",
        [7, 3, 5].map(|seq| dead_letter("acme", seq)).to_vec(),
    );
    // Wait for the watcher to have delivered every record, so that what
    // is counted below is the reads alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let watched = log.inner.letter_state.watched();
        let (_, (bytes, _, _)) = cost(&log, || {
            std::thread::sleep(std::time::Duration::from_millis(50))
        });
        if watched >= (NEIGHBOUR_RECORDS + 103) as u64 && bytes == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher lags");
    }

    let (read, (bytes, _, _)) = cost(&log, || log.dead_letters("acme", "saga"));
    let seqs: Vec<Seq> = read.expect("read").iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [3, 5, 7], "oldest first");
    let one = dead_letter("acme", 1).event.to_json_string().len() as u64;
    assert!(
        bytes < 10 * one + 8 * 1024,
        "3 dead letters of {one} bytes each received {bytes} bytes"
    );

    // The plugins and the redrive requests come from what the watcher
    // knows: no request at all.
    let (plugins, (_, _, sent)) = cost(&log, || log.dead_letter_plugins("acme"));
    assert_eq!(plugins.expect("plugins"), ["saga", "saga2"]);
    assert_eq!(sent, 0, "listing the plugins sent {sent} messages");
    let (redrives, (_, _, sent)) = cost(&log, || log.redrives("acme", "saga", 10));
    assert!(redrives.expect("redrives").is_empty());
    assert_eq!(sent, 0, "no redrive requested, yet {sent} messages sent");
    assert!(
        log.request_redrive("acme", "saga", 5)
            .wait()
            .expect("request")
    );
    let (redrives, (bytes, _, _)) = cost(&log, || log.redrives("acme", "saga", 10));
    let seqs: Vec<Seq> = redrives.expect("redrives").iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [5]);
    assert!(
        bytes < 4 * one + 8 * 1024,
        "one redrive received {bytes} bytes"
    );
}
