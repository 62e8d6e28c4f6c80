//! Durable delivery through the event log: at least once, resumed after
//! a restart, retried with backoff, dead-lettered with every attempt, in
//! order per plugin, and emitted events routed through the log.
//!
//! Every test runs on both backends, with one body: the embedded SQLite
//! log (module `sqlite`) and NATS JetStream on a nats-server of the test's
//! own (module `nats`); see [`durable!`]. A restart is a new host and bus
//! on the same [`LogPlace`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugbus::durable::{DurableBus, DurableConfig, RetryPolicy};
use plugbus::log::{
    CursorStore, DeadLetterStore, EventLog, EventStore, MemoryLogConfig, QuarantineChange,
    QuarantineStore, ReadLimit, Reply,
};
use plugbus::{Event, FailureKind, Host, HostConfig};
use plugbus_artifacts as artifacts;
use plugbus_tests::{LogPlace, PluginsDir, event};

/// Runs each test body on both backends: `sqlite::<test>` and
/// `nats::<test>`.
macro_rules! durable {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $test() {
                plugbus_tests::run_on(plugbus_tests::Backend::Sqlite, |place| {
                    Box::pin(super::$test(place))
                });
            })*
        }
        mod nats {
            $(#[test]
            fn $test() {
                plugbus_tests::run_on(plugbus_tests::Backend::Nats, |place| {
                    Box::pin(super::$test(place))
                });
            })*
        }
    };
}

durable!(
    delivered_once_and_resumed_after_a_restart,
    failures_are_retried_then_dead_lettered_and_hold_back_later_events,
    a_plugin_without_a_cursor_starts_at_the_end_of_the_log,
    duplicates_and_invalid_events_are_refused_by_publish,
    the_manifest_sets_the_number_of_attempts,
    a_plugin_that_keeps_failing_is_quarantined_until_resumed_or_replaced,
    state_commits_with_the_cursor_and_attempts_reach_the_plugin,
    the_order_saga_keeps_its_state_across_restarts,
    a_redriven_dead_letter_goes_to_the_current_version,
    retention_deletes_only_handled_events,
    a_failing_event_holds_back_only_its_own_key,
    a_chain_budget_is_shared_among_the_plugins_it_reaches,
    the_read_ahead_stops_at_max_pending_bytes,
    the_read_ahead_stops_at_max_pending_events,
    events_larger_than_the_read_bounds_are_still_delivered,
    lag_and_dead_letters_are_counted_without_reading_the_log,
    waits_of_any_length_do_not_overflow,
    a_consumer_that_panics_is_restarted_from_its_cursor,
    a_retention_task_that_panics_is_restarted,
    events_past_the_dead_letter_quota_are_given_up_without_one,
);

const MIXED: &str = "subscribe = [\"mix.*\"]\n[limits]\nfuel = 20_000_000\n";

fn plugins() -> PluginsDir {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    dir.add("shop", "audit", artifacts::AUDIT_LOG, None);
    dir
}

fn config(max_attempts: u32) -> DurableConfig {
    DurableConfig {
        retry: RetryPolicy {
            max_attempts,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        },
        ..DurableConfig::default()
    }
}

/// A host on `dir` and a bus on the log kept in `place`.
async fn start(
    dir: &PluginsDir,
    place: &LogPlace,
    durable: DurableConfig,
) -> (Arc<Host>, DurableBus) {
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{report:#?}");
    let log = place.open().await;
    let bus = DurableBus::start(host.clone(), log, durable)
        .await
        .expect("start the bus");
    (host, bus)
}

fn mix(ty: &str, id: &str) -> Event {
    event("shop", ty, id, serde_json::json!({}))
}

/// Waits until `done` holds (the consumers work in the background).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn cursor(bus: &DurableBus, plugin: &str) -> u64 {
    bus.log()
        .cursor("shop", plugin)
        .expect("cursor")
        .unwrap_or(0)
}

async fn delivered_once_and_resumed_after_a_restart(place: &LogPlace) {
    let dir = plugins();
    {
        let (host, bus) = start(&dir, place, config(3)).await;
        let events: Vec<_> = (0..20).map(|i| mix("mix.ok", &format!("ok-{i}"))).collect();
        let appended = bus.publish(events).await.expect("publish");
        let head = appended.last().expect("appended").seq;
        until("both plugins are past the events", || {
            cursor(&bus, "mixed") >= head && cursor(&bus, "audit") >= head
        })
        .await;
        // 20 to `mixed`, 20 to `audit`.
        assert_eq!(host.stats().deliveries_ok, 40);
        bus.shutdown().await;
    }
    // A new host on the same log delivers only what comes after.
    let (host, bus) = start(&dir, place, config(3)).await;
    let appended = bus
        .publish(vec![mix("mix.emit", "emit-1")])
        .await
        .expect("publish");
    let published = appended[0].seq;
    // `mix.emit` emits `mix.emitted`, appended to the log with the cursor
    // and delivered in turn: to `audit` (handled) and `mixed` (an unknown
    // type, a permanent failure: a dead letter).
    until("the emitted event is dead-lettered by mixed", || {
        !bus.log()
            .dead_letters("shop", "mixed")
            .expect("dead letters")
            .is_empty()
    })
    .await;
    until("audit has handled the emitted event", || {
        cursor(&bus, "audit") > published
    })
    .await;
    let stats = host.stats();
    assert_eq!(stats.deliveries_ok, 3, "{stats:#?}");
    assert_eq!(stats.failures_of(FailureKind::HandlerPermanent), 1);
    let dead = bus
        .log()
        .dead_letters("shop", "mixed")
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.ty(), "mix.emitted");
    assert_eq!(dead[0].event.causation_id(), Some("emit-1"));
    assert_eq!(
        dead[0].attempts.len(),
        1,
        "a permanent failure is not retried"
    );
    bus.shutdown().await;
}

async fn failures_are_retried_then_dead_lettered_and_hold_back_later_events(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let (host, bus) = start(&dir, place, config(3)).await;
    // One key: each event waits until the one before it is handled or
    // dead-lettered.
    let keyed = |ty: &str, id: &str| {
        mix(ty, id)
            .to_builder()
            .subject("order-1".to_owned())
            .build()
            .expect("a valid event")
    };
    let appended = bus
        .publish(vec![
            keyed("mix.flaky", "flaky-1"),
            keyed("mix.retryable", "retry-1"),
            keyed("mix.panic", "panic-1"),
            keyed("mix.permanent", "permanent-1"),
            keyed("mix.ok", "ok-1"),
        ])
        .await
        .expect("publish");
    let last = appended.last().expect("appended").seq;
    until("mixed is past every event", || {
        cursor(&bus, "mixed") >= last
    })
    .await;

    let stats = host.stats();
    // flaky: 2 failures then handled; retryable: 3 attempts; panic: 3
    // traps; permanent: 1; ok: handled.
    assert_eq!(stats.deliveries_ok, 2, "{stats:#?}");
    assert_eq!(stats.failures_of(FailureKind::HandlerRetryable), 5);
    assert_eq!(stats.failures_of(FailureKind::Trap), 3);
    assert_eq!(stats.failures_of(FailureKind::HandlerPermanent), 1);

    let dead = bus
        .log()
        .dead_letters("shop", "mixed")
        .expect("dead letters");
    let ids: Vec<_> = dead.iter().map(|d| d.event.id()).collect();
    assert_eq!(ids, ["retry-1", "panic-1", "permanent-1"]);
    let kinds = |i: usize| dead[i].attempts.iter().map(|a| a.kind).collect::<Vec<_>>();
    assert_eq!(kinds(0), [FailureKind::HandlerRetryable; 3]);
    assert_eq!(kinds(1), [FailureKind::Trap; 3]);
    assert_eq!(kinds(2), [FailureKind::HandlerPermanent]);
    let version = host
        .plugin("shop", "mixed")
        .expect("loaded")
        .version()
        .to_owned();
    for attempt in dead.iter().flat_map(|d| &d.attempts) {
        assert_eq!(attempt.plugin_version, version);
        assert!(attempt.at_ms > 0);
    }
    assert!(dead[1].attempts[0].message.contains("panic-1"), "{dead:#?}");
    // Attempts are spaced by the backoff, in order.
    let at: Vec<_> = dead[0].attempts.iter().map(|a| a.at_ms).collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");
    bus.shutdown().await;
}

async fn a_plugin_without_a_cursor_starts_at_the_end_of_the_log(place: &LogPlace) {
    let dir = plugins();
    // ...unless its manifest says to start at the beginning.
    dir.add(
        "shop",
        "history",
        artifacts::AUDIT_LOG,
        Some("start = \"earliest\"\n"),
    );
    // Events in the log before any plugin consumed it.
    {
        let log = place.open().await;
        log.append(vec![mix("mix.ok", "old-1"), mix("mix.ok", "old-2")])
            .await
            .expect("append");
    }
    let (host, bus) = start(&dir, place, config(3)).await;
    let appended = bus
        .publish(vec![mix("mix.ok", "new-1")])
        .await
        .expect("publish");
    let seq = appended[0].seq;
    until("the plugins are past the new event", || {
        ["mixed", "audit", "history"]
            .iter()
            .all(|p| cursor(&bus, p) >= seq)
    })
    .await;
    // new-1 to each plugin, and old-1 and old-2 to `history`.
    assert_eq!(host.stats().deliveries_ok, 5);
    bus.shutdown().await;
}

async fn duplicates_and_invalid_events_are_refused_by_publish(place: &LogPlace) {
    let dir = plugins();
    let (_host, bus) = start(&dir, place, config(3)).await;
    let first = bus
        .publish(vec![mix("mix.ok", "dup-1")])
        .await
        .expect("publish");
    let again = bus
        .publish(vec![mix("mix.ok", "dup-1")])
        .await
        .expect("publish");
    assert!(!first[0].duplicate);
    assert!(again[0].duplicate);
    assert_eq!(again[0].seq, first[0].seq);

    // An invalid event cannot be made, so it never reaches the log.
    let err = mix("mix.ok", "bad-1")
        .to_builder()
        .time("yesterday".to_owned())
        .build()
        .expect_err("an invalid time");
    assert!(err.to_string().contains("time"), "{err}");
    assert_eq!(
        bus.log().head().expect("head"),
        first[0].seq,
        "nothing stored"
    );
    bus.shutdown().await;
}

async fn the_manifest_sets_the_number_of_attempts(place: &LogPlace) {
    let dir = PluginsDir::new();
    let manifest = format!("{MIXED}[retry]\nmax_attempts = 2\n");
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(&manifest));
    let (_host, bus) = start(&dir, place, config(4)).await;
    let appended = bus
        .publish(vec![mix("mix.retryable", "retry-1")])
        .await
        .expect("publish");
    until("mixed is past the event", || {
        cursor(&bus, "mixed") >= appended[0].seq
    })
    .await;
    let dead = bus
        .log()
        .dead_letters("shop", "mixed")
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attempts.len(),
        2,
        "the manifest's 2, not the host's 4"
    );
    bus.shutdown().await;
}

async fn a_plugin_that_keeps_failing_is_quarantined_until_resumed_or_replaced(place: &LogPlace) {
    let dir = PluginsDir::new();
    let manifest = format!("{MIXED}[retry]\nmax_attempts = 1\n");
    let wasm = dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(&manifest));
    let durable = DurableConfig {
        quarantine_after: 3,
        quarantine_for: Duration::from_secs(3600),
        ..config(1)
    };
    let (host, bus) = start(&dir, place, durable).await;
    let events: Vec<_> = (0..5)
        .map(|i| mix("mix.permanent", &format!("p-{i}")))
        .chain((0..5).map(|i| mix("mix.permanent", &format!("q-{i}"))))
        .collect();
    let appended = bus.publish(events).await.expect("publish");
    let last = appended.last().expect("appended").seq;

    until("the plugin is quarantined", || {
        !bus.quarantined().is_empty()
    })
    .await;
    let quarantine = bus.quarantined().remove(0);
    assert_eq!(
        (quarantine.tenant.as_str(), quarantine.plugin.as_str()),
        ("shop", "mixed")
    );
    assert!(quarantine.until_ms > quarantine.since_ms);
    // The plugin's status shows it.
    let status = bus
        .statuses()
        .into_iter()
        .find(|s| s.name == "mixed")
        .expect("a status");
    assert_eq!(status.quarantine.as_ref(), Some(&quarantine));
    assert_eq!(status.health, plugbus::Health::Active);
    // The log records it, for operators in other processes.
    until("the quarantine is recorded", || {
        bus.log().quarantines().expect("read") == [quarantine.clone()]
    })
    .await;
    // Three failed deliveries, then nothing while quarantined: the other
    // events wait in the log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.stats().failures_of(FailureKind::HandlerPermanent), 3);
    assert_eq!(cursor(&bus, "mixed"), appended[2].seq);

    // An operator lifts it from another process (`plugbus quarantine
    // resume` deletes the record): three more, and quarantined again.
    let lift = QuarantineChange::Lift {
        tenant: "shop".into(),
        plugin: "mixed".into(),
    };
    assert!(bus.log().set_quarantine(lift).await.expect("lift"));
    until("quarantined again", || {
        host.stats().failures_of(FailureKind::HandlerPermanent) == 6
            && !bus.quarantined().is_empty()
    })
    .await;

    // A new version ends the quarantine too (same code, another manifest);
    // it fails three times in turn and is quarantined under its version.
    std::fs::write(wasm.with_extension("toml"), format!("{manifest}# v2\n")).expect("manifest");
    host.refresh(dir.path()).await.expect("refresh");
    until("the new version is quarantined", || {
        bus.quarantined()
            .first()
            .is_some_and(|q| q.version != quarantine.version)
    })
    .await;
    assert_eq!(host.stats().failures_of(FailureKind::HandlerPermanent), 9);
    assert!(bus.resume("shop", "mixed"));
    until("every event is dead-lettered", || {
        cursor(&bus, "mixed") >= last
    })
    .await;
    assert_eq!(host.stats().failures_of(FailureKind::HandlerPermanent), 10);
    assert_eq!(
        bus.log()
            .dead_letters("shop", "mixed")
            .expect("dead letters")
            .len(),
        10
    );
    assert!(!bus.resume("shop", "mixed"), "no longer quarantined");
    assert!(bus.log().quarantines().expect("read").is_empty());
    assert!(bus.statuses().iter().all(|s| s.quarantine.is_none()));
    bus.shutdown().await;
}

/// Every event of `shop` in the log with type `ty`, in order.
fn logged(bus: &DurableBus, ty: &str) -> Vec<Event> {
    bus.log()
        .read("shop", 0, 100_000)
        .expect("read the log")
        .into_iter()
        .map(|s| s.event)
        .filter(|e| e.ty() == ty)
        .collect()
}

fn state(bus: &DurableBus, plugin: &str, key: &str) -> Option<serde_json::Value> {
    bus.log()
        .get("shop", plugin, key)
        .expect("read the state")
        .map(|bytes| serde_json::from_slice(&bytes).expect("JSON state"))
}

async fn state_commits_with_the_cursor_and_attempts_reach_the_plugin(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some("subscribe = [\"count.*\"]"),
    );
    let (host, bus) = start(&dir, place, config(4)).await;
    let with_subject = |ty: &str, id: &str, subject: &str, data: serde_json::Value| {
        event("shop", ty, id, data)
            .to_builder()
            .subject(subject.to_owned())
            .build()
            .expect("a valid event")
    };
    let appended = bus
        .publish(vec![
            with_subject("count.ok", "c-1", "s-1", serde_json::json!({})),
            // Fails on attempts 1 and 2, handled on attempt 3.
            with_subject("count.flaky", "c-2", "s-1", serde_json::json!(3)),
            // Fails on every attempt: dead-lettered after 4.
            with_subject("count.fail", "c-3", "s-2", serde_json::json!({})),
            with_subject("count.ok", "c-4", "s-1", serde_json::json!({})),
        ])
        .await
        .expect("publish");
    let head = appended.last().expect("appended").seq;
    until("counter is past the events", || {
        cursor(&bus, "counter") >= head
    })
    .await;

    // Each handled event counted once; the failed attempts' writes and
    // emits were never committed.
    assert_eq!(
        state(&bus, "counter", "count/s-1"),
        Some(serde_json::json!(3))
    );
    assert_eq!(state(&bus, "counter", "count/s-2"), None);
    let counts: Vec<_> = logged(&bus, "counter.counted")
        .iter()
        .map(|e| String::from_utf8_lossy(e.data()).into_owned())
        .collect();
    assert_eq!(counts, ["1", "2", "3"]);
    // The flaky event needed its third attempt: the attempt number reached
    // the plugin. Two of its attempts and all four of the other failed.
    assert_eq!(host.stats().failures_of(FailureKind::HandlerRetryable), 6);
    let dead = bus
        .log()
        .dead_letters("shop", "counter")
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id(), "c-3");
    assert_eq!(dead[0].attempts.len(), 4);
    bus.shutdown().await;
}

async fn the_order_saga_keeps_its_state_across_restarts(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "saga",
        artifacts::ORDER_SAGA,
        Some("subscribe = [\"order.placed\", \"payment.completed\", \"payment.failed\"]"),
    );
    let order = |id: &str, order_id: &str| {
        event(
            "shop",
            "order.placed",
            id,
            serde_json::json!({
                "order_id": order_id,
                "total_cents": 4200,
                "items": [{ "sku": "sku-1", "quantity": 1 }],
            }),
        )
    };
    let payment = |ty: &str, id: &str, order_id: &str| {
        event(
            "shop",
            ty,
            id,
            serde_json::json!({ "order_id": order_id, "reason": "declined" }),
        )
    };
    {
        let (_host, bus) = start(&dir, place, config(3)).await;
        let appended = bus
            .publish(vec![order("e-1", "o-1"), order("e-2", "o-2")])
            .await
            .expect("publish");
        let head = appended.last().expect("appended").seq;
        until("the saga has taken both orders", || {
            cursor(&bus, "saga") >= head
        })
        .await;
        bus.shutdown().await;
    }
    // A new process: the orders are known from state alone.
    let (_host, bus) = start(&dir, place, config(3)).await;
    let appended = bus
        .publish(vec![
            payment("payment.completed", "e-3", "o-1"),
            payment("payment.failed", "e-4", "o-2"),
            // Delivered again (a producer's retry with a new id): no effect.
            payment("payment.completed", "e-5", "o-1"),
        ])
        .await
        .expect("publish");
    let head = appended.last().expect("appended").seq;
    until("the saga has taken the payments", || {
        cursor(&bus, "saga") >= head
    })
    .await;
    let status = |order_id: &str| {
        state(&bus, "saga", &format!("order/{order_id}")).map(|o| o["status"].clone())
    };
    assert_eq!(status("o-1"), Some(serde_json::json!("paid")));
    assert_eq!(status("o-2"), Some(serde_json::json!("cancelled")));
    let subjects = |ty: &str| -> Vec<Option<String>> {
        logged(&bus, ty)
            .into_iter()
            .map(|e| e.subject().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        subjects("payment.requested"),
        [Some("o-1".to_owned()), Some("o-2".to_owned())]
    );
    assert_eq!(
        subjects("inventory.reserve_requested"),
        [Some("o-1".to_owned())]
    );
    assert_eq!(subjects("order.cancelled"), [Some("o-2".to_owned())]);
    assert!(
        bus.log()
            .dead_letters("shop", "saga")
            .expect("dead letters")
            .is_empty()
    );
    bus.shutdown().await;
}

async fn a_redriven_dead_letter_goes_to_the_current_version(place: &LogPlace) {
    let dir = PluginsDir::new();
    let manifest =
        |attempts: u32| format!("subscribe = [\"count.*\"]\n[retry]\nmax_attempts = {attempts}\n");
    dir.add(
        "shop",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some(&manifest(2)),
    );
    let (host, bus) = start(&dir, place, config(5)).await;
    // Handled only on its third attempt: with two allowed, a dead letter.
    let flaky = event("shop", "count.flaky", "f-1", serde_json::json!(3))
        .to_builder()
        .subject("s-1".to_owned())
        .build()
        .expect("a valid event");
    let appended = bus.publish(vec![flaky]).await.expect("publish");
    let seq = appended[0].seq;
    let dead_letters = || bus.log().dead_letters("shop", "counter").expect("read");
    until("the event is dead-lettered", || !dead_letters().is_empty()).await;
    let cursor_before = cursor(&bus, "counter");
    assert_eq!(cursor_before, seq);

    // Redriven to the same version: two more failures, appended.
    assert!(
        bus.log()
            .request_redrive("shop", "counter", seq)
            .await
            .expect("request")
    );
    until("the redrive failed again", || {
        dead_letters()
            .first()
            .is_some_and(|d| d.attempts.len() == 4)
    })
    .await;
    assert!(
        bus.log()
            .redrives("shop", "counter", 16)
            .expect("read")
            .is_empty()
    );

    // A new version allows three attempts: redriven, the event is handled
    // on its third, and its dead letter is gone with its effects stored.
    let version = host
        .plugin("shop", "counter")
        .expect("loaded")
        .version()
        .to_owned();
    std::fs::write(dir.path().join("shop/counter.toml"), manifest(3)).expect("manifest");
    host.refresh(dir.path()).await.expect("refresh");
    assert_ne!(
        host.plugin("shop", "counter").expect("loaded").version(),
        version
    );
    assert!(
        bus.log()
            .request_redrive("shop", "counter", seq)
            .await
            .expect("request")
    );
    until("the redriven event is handled", || {
        dead_letters().is_empty()
    })
    .await;
    assert_eq!(
        state(&bus, "counter", "count/s-1"),
        Some(serde_json::json!(1))
    );
    assert_eq!(logged(&bus, "counter.counted").len(), 1);
    // Only the redrive delivered it again: the cursor stayed past it.
    assert_eq!(host.stats().deliveries_ok, 1);
    assert!(cursor(&bus, "counter") >= cursor_before);
    // Nothing to redrive any more.
    assert!(
        !bus.log()
            .request_redrive("shop", "counter", seq)
            .await
            .expect("request")
    );
    bus.shutdown().await;
}

async fn retention_deletes_only_handled_events(place: &LogPlace) {
    let dir = PluginsDir::new();
    // `mixed` holds back what it has not handled: it is quarantined on its
    // first failure and handles nothing after it.
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let durable = DurableConfig {
        retention: plugbus::log::Retention {
            max_age: Some(Duration::ZERO),
            max_bytes: None,
        },
        retention_interval: Duration::from_secs(1),
        quarantine_after: 1,
        quarantine_for: Duration::from_secs(3600),
        ..config(1)
    };
    let (_host, bus) = start(&dir, place, durable).await;
    let appended = bus
        .publish(vec![
            mix("mix.ok", "ok-1"),
            mix("mix.ok", "ok-2"),
            mix("mix.retryable", "r-1"),
            mix("mix.ok", "ok-3"),
        ])
        .await
        .expect("publish");
    until("the plugin is quarantined", || {
        !bus.quarantined().is_empty()
    })
    .await;
    let read = || -> Vec<String> {
        bus.log()
            .read("shop", 0, 100)
            .expect("read")
            .into_iter()
            .map(|s| s.event.id().to_owned())
            .collect()
    };
    // r-1 was dead-lettered after its one attempt, then the plugin was
    // quarantined: everything up to r-1 is handled, ok-3 is not.
    until("retention deleted the handled events", || {
        read() == ["ok-3"]
    })
    .await;
    assert_eq!(cursor(&bus, "mixed"), appended[2].seq);
    // A later pass keeps what the plugin has not handled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(read(), ["ok-3"]);
    // The dead letter keeps its own copy of the event.
    let dead = bus
        .log()
        .dead_letters("shop", "mixed")
        .expect("dead letters");
    assert_eq!(dead[0].event.id(), "r-1");
    bus.shutdown().await;
}

async fn a_failing_event_holds_back_only_its_own_key(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some("subscribe = [\"count.*\"]\n[retry]\nmax_attempts = 3\n"),
    );
    let slow_retries = DurableConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(600),
        },
        ..DurableConfig::default()
    };
    let keyed = |ty: &str, id: &str, key: &str| {
        // The subject names the counter's state key; the partition key,
        // when there is one, decides the order.
        event("shop", ty, id, serde_json::json!({}))
            .to_builder()
            .extension("partitionkey", key)
            .subject(key.to_owned())
            .build()
            .expect("a valid event")
    };
    let count = |bus: &DurableBus, key: &str| {
        state(bus, "counter", &format!("count/{key}")).map_or(0, |v| v.as_u64().unwrap_or(0))
    };
    let (_host, bus) = start(&dir, place, slow_retries.clone()).await;
    let appended = bus
        .publish(vec![
            // Fails on every attempt: dead-lettered after three.
            keyed("count.fail", "a-1", "A"),
            // Waits for a-1, however long that takes.
            keyed("count.ok", "a-2", "A"),
            keyed("count.ok", "b-1", "B"),
            keyed("count.ok", "b-2", "B"),
            keyed("count.ok", "b-3", "B"),
        ])
        .await
        .expect("publish");
    let seq = |i: usize| appended[i].seq;
    until("the other key's events are handled", || {
        count(&bus, "B") == 3
    })
    .await;
    // A's events wait; the cursor stays before a-1, and the log knows
    // what was handled ahead of it.
    assert_eq!(count(&bus, "A"), 0);
    assert!(cursor(&bus, "counter") < seq(0));
    // B's three events, then the three events they emitted (which the
    // counter does not subscribe to), once the consumer has read those.
    let ahead = || bus.log().ahead("shop", "counter").expect("read");
    until("the events handled ahead are recorded", || {
        ahead().len() == 6
    })
    .await;
    assert_eq!(ahead()[..3], [seq(2), seq(3), seq(4)]);
    bus.shutdown().await;

    // A restart delivers none of B's events again, and A's in order.
    let (_host, bus) = start(&dir, place, slow_retries).await;
    until("every event is finished", || {
        cursor(&bus, "counter") >= seq(4)
    })
    .await;
    assert_eq!(count(&bus, "B"), 3, "B's events were not delivered again");
    assert_eq!(count(&bus, "A"), 1, "a-2 was handled, a-1 never");
    let dead = bus.log().dead_letters("shop", "counter").expect("read");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id(), "a-1");
    // a-2 was handled only after a-1 was given up: its emit comes last.
    let counted: Vec<_> = logged(&bus, "counter.counted")
        .into_iter()
        .map(|e| e.subject().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(counted, ["B", "B", "B", "A"]);
    assert!(bus.log().ahead("shop", "counter").expect("read").is_empty());
    bus.shutdown().await;
}

const STORM: &str = "subscribe = [\"storm.go\"]\n[retry]\nmax_attempts = 1\n";

/// A `storm.go` event whose chain may still cause `budget` events.
fn storm(id: &str, budget: u64) -> Event {
    event("shop", "storm.go", id, serde_json::json!({}))
        .to_builder()
        .subject(id.to_owned())
        .extension(plugbus::event::BUDGET_EXTENSION, budget.to_string())
        .build()
        .expect("a valid event")
}

/// Two plugins that each emit the event they handle, on a host whose
/// chains stop at depth 1 (the emitted events' own emits are refused).
async fn two_storms(
    place: &LogPlace,
) -> (
    PluginsDir,
    DurableBus,
    tokio::sync::broadcast::Receiver<plugbus::Delivery>,
) {
    let dir = PluginsDir::new();
    dir.add("shop", "storm-a", artifacts::FIXTURE_STORM, Some(STORM));
    dir.add("shop", "storm-b", artifacts::FIXTURE_STORM, Some(STORM));
    let host = Arc::new(
        Host::new(HostConfig {
            max_chain_depth: 1,
            ..HostConfig::default()
        })
        .expect("host"),
    );
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{report:#?}");
    let log = place.open().await;
    let (bus, deliveries) = DurableBus::start_observed(host, log, config(1))
        .await
        .expect("start the bus");
    (dir, bus, deliveries)
}

/// The deliveries of the event `id`, once there are `n` of them.
async fn deliveries_of(
    deliveries: &mut tokio::sync::broadcast::Receiver<plugbus::Delivery>,
    seen: &mut Vec<plugbus::Delivery>,
    id: &str,
    n: usize,
) -> Vec<plugbus::Delivery> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let of: Vec<_> = seen.iter().filter(|d| d.event_id == id).cloned().collect();
        if of.len() >= n {
            return of;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, deliveries.recv()).await {
            Ok(Ok(delivery)) => seen.push(delivery),
            other => panic!("waiting for {n} deliveries of {id}: {other:?}"),
        }
    }
}

async fn a_chain_budget_is_shared_among_the_plugins_it_reaches(place: &LogPlace) {
    let (_dir, bus, mut deliveries) = two_storms(place).await;
    let mut seen = Vec::new();
    // Two subscribers share a budget of 2: one emit each.
    bus.publish(vec![storm("two", 2)]).await.expect("publish");
    for delivery in deliveries_of(&mut deliveries, &mut seen, "two", 2).await {
        assert!(delivery.outcome.is_handled(), "{delivery:?}");
        assert_eq!(delivery.emitted.len(), 1);
    }
    // A budget of 1 shared by two is none each: both emits are refused,
    // where a budget per delivery would have allowed them.
    bus.publish(vec![storm("one", 1)]).await.expect("publish");
    for delivery in deliveries_of(&mut deliveries, &mut seen, "one", 2).await {
        let failure = delivery.outcome.failure().expect("refused");
        assert_eq!(failure.kind, FailureKind::HandlerPermanent, "{failure:?}");
        assert!(failure.message.contains("limit"), "{}", failure.message);
    }
    // Redriven, a dead letter gets the same share: refused again.
    let dead_letter = || {
        bus.log()
            .dead_letters("shop", "storm-a")
            .expect("read")
            .into_iter()
            .find(|d| d.event.id() == "one")
    };
    until("`one` is dead-lettered", || dead_letter().is_some()).await;
    let seq = dead_letter().expect("a dead letter").seq;
    assert!(
        bus.log()
            .request_redrive("shop", "storm-a", seq)
            .await
            .expect("request")
    );
    let redriven = deliveries_of(&mut deliveries, &mut seen, "one", 3).await;
    let again = redriven.last().expect("the redrive");
    assert_eq!(again.plugin, "storm-a");
    assert!(
        again
            .outcome
            .failure()
            .is_some_and(|f| f.message.contains("limit")),
        "{again:?}"
    );
    bus.shutdown().await;
}

/// A plugin that fails `mix.retryable` events for as long as the test
/// runs: the first holds back every later event of its subject.
const HOLDING: &str =
    "subscribe = [\"mix.*\"]\nstart = \"earliest\"\n[retry]\nmax_attempts = 100\n";

fn holding_config() -> DurableConfig {
    DurableConfig {
        retry: RetryPolicy {
            max_attempts: 100,
            base_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
        },
        quarantine_after: 0,
        ..DurableConfig::default()
    }
}

/// `n` `mix.retryable` events of one subject, of equal stored size.
fn held(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            mix("mix.retryable", &format!("h-{i:05}"))
                .to_builder()
                .subject("k".to_owned())
                .build()
                .expect("a valid event")
        })
        .collect()
}

/// Starts a bus on a log that holds `events` already, with `durable`,
/// for one `mixed` plugin that holds them back.
async fn holding(
    place: &LogPlace,
    space: &str,
    events: Vec<Event>,
    durable: impl FnOnce(u64) -> DurableConfig,
) -> (PluginsDir, DurableBus) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(HOLDING));
    let log = place.open_in(space, MemoryLogConfig::default()).await;
    log.append(events).await.expect("append");
    let sizes: std::collections::BTreeSet<u64> = log
        .read("shop", 0, usize::MAX)
        .expect("read")
        .iter()
        .map(|s| s.bytes)
        .collect();
    assert_eq!(sizes.len(), 1, "the events are of one size: {sizes:?}");
    let size = sizes.into_iter().next().unwrap_or_default();
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    host.load_dir(dir.path()).expect("load");
    let bus = DurableBus::start(host, log, durable(size))
        .await
        .expect("start");
    (dir, bus)
}

/// The backlog of `mixed` once it holds at least `events` events and has
/// had a few rounds to read more.
async fn held_back(bus: &DurableBus, events: u64) -> plugbus::durable::Backlog {
    let backlog = || {
        bus.backlogs()
            .into_iter()
            .find(|b| b.plugin == "mixed")
            .expect("a backlog")
    };
    until("the consumer holds events", || {
        backlog().pending_events >= events
    })
    .await;
    // The consumer reads again at least once a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    backlog()
}

async fn the_read_ahead_stops_at_max_pending_bytes(place: &LogPlace) {
    for holds in [3, 2] {
        // Room for `holds` events, and one byte short of the next.
        let space = format!("holds{holds}");
        let (_dir, bus) = holding(place, &space, held(10), |size| DurableConfig {
            max_pending_bytes: (holds + 1) * size - 1,
            ..holding_config()
        })
        .await;
        let size = bus.log().read("shop", 0, 1).expect("read")[0].bytes;
        let backlog = held_back(&bus, holds).await;
        assert_eq!(backlog.pending_events, holds, "{backlog:?}");
        assert_eq!(backlog.pending_bytes, holds * size);
        // The events it does not hold are still its lag.
        assert_eq!(backlog.lag, 10);
        bus.shutdown().await;
    }
    // Exactly at the bound: as many as fit.
    let (_dir, bus) = holding(place, "exact", held(10), |size| DurableConfig {
        max_pending_bytes: 3 * size,
        ..holding_config()
    })
    .await;
    assert_eq!(held_back(&bus, 3).await.pending_events, 3);
    bus.shutdown().await;
}

async fn the_read_ahead_stops_at_max_pending_events(place: &LogPlace) {
    let cap = plugbus::durable::MAX_PENDING as u64;
    // Reads of 1,024 events: the tenth would pass the bound by 240.
    let (_dir, bus) = holding(
        place,
        "main",
        held(plugbus::durable::MAX_PENDING + 50),
        |_| DurableConfig {
            read_batch: 1024,
            ..holding_config()
        },
    )
    .await;
    let backlog = held_back(&bus, cap).await;
    assert_eq!(backlog.pending_events, cap, "{backlog:?}");
    assert_eq!(backlog.lag, cap + 50);
    bus.shutdown().await;
}

async fn events_larger_than_the_read_bounds_are_still_delivered(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    // Bounds of one byte: every read brings one event, since the consumer
    // holds none when it reads.
    let durable = DurableConfig {
        max_pending_bytes: 1,
        max_read_bytes: 1,
        ..config(1)
    };
    let (host, bus) = start(&dir, place, durable).await;
    let events: Vec<_> = (0..5).map(|i| mix("mix.ok", &format!("ok-{i}"))).collect();
    let appended = bus.publish(events).await.expect("publish");
    let last = appended.last().expect("appended").seq;
    until("every event is handled", || cursor(&bus, "mixed") >= last).await;
    assert_eq!(host.stats().deliveries_ok, 5);
    bus.shutdown().await;
}

async fn lag_and_dead_letters_are_counted_without_reading_the_log(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let durable = DurableConfig {
        quarantine_after: 1,
        quarantine_for: Duration::from_secs(3600),
        ..config(1)
    };
    let (_host, bus) = start(&dir, place, durable).await;
    let lag = |bus: &DurableBus| {
        bus.backlogs()
            .into_iter()
            .find(|b| b.plugin == "mixed")
            .expect("a backlog")
            .lag
    };
    let scanned = |bus: &DurableBus| {
        let cursor = cursor(bus, "mixed");
        bus.log()
            .count_after("shop", cursor, u64::MAX)
            .expect("count")
    };
    assert_eq!(lag(&bus), 0);
    // A dead letter, then quarantine: the events after it wait.
    bus.publish(vec![mix("mix.permanent", "p-1")])
        .await
        .expect("publish");
    until("the plugin is quarantined", || {
        !bus.quarantined().is_empty()
    })
    .await;
    let key = ("shop".to_owned(), "mixed".to_owned());
    assert_eq!(bus.dead_letter_depths().get(&key), Some(&1));
    let events: Vec<_> = (0..4).map(|i| mix("mix.ok", &format!("ok-{i}"))).collect();
    bus.publish(events).await.expect("publish");
    assert_eq!(lag(&bus), 4);
    assert_eq!(scanned(&bus), 4);
    // Resumed, it catches up.
    assert!(bus.resume("shop", "mixed"));
    until("the plugin has caught up", || lag(&bus) == 0).await;
    until("its cursor is past the events", || scanned(&bus) == 0).await;
    // Discarded, the dead letter is no longer counted.
    let seq = bus.log().dead_letters("shop", "mixed").expect("read")[0].seq;
    assert!(
        bus.log()
            .discard_dead_letter("shop", "mixed", seq)
            .await
            .expect("discard")
    );
    assert_eq!(bus.dead_letter_depths().get(&key), None);
    bus.shutdown().await;
}

async fn waits_of_any_length_do_not_overflow(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let durable = DurableConfig {
        retry: RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
        },
        quarantine_after: 2,
        quarantine_for: Duration::from_secs(u64::MAX),
        retention_interval: Duration::MAX,
        ..DurableConfig::default()
    };
    let (host, bus) = start(&dir, place, durable).await;
    // A retry after `Duration::MAX`: the event waits, its key's later
    // events wait, the others are handled.
    let retried = mix("mix.retryable", "r-1")
        .to_builder()
        .subject("r".to_owned())
        .build()
        .expect("a valid event");
    bus.publish(vec![retried, mix("mix.ok", "ok-1")])
        .await
        .expect("publish");
    until("the other event is handled", || {
        host.stats().deliveries_ok == 1
    })
    .await;
    // A quarantine of u64::MAX seconds after two failures in a row, lifted
    // by an operator.
    bus.publish(vec![
        mix("mix.permanent", "p-1"),
        mix("mix.permanent", "p-2"),
    ])
    .await
    .expect("publish");
    until("the plugin is quarantined", || {
        !bus.quarantined().is_empty()
    })
    .await;
    // Recorded with an end that any reader can print.
    let quarantine = bus.quarantined().remove(0);
    let horizon = i64::try_from(plugbus::durable::MAX_WAIT.as_millis()).expect("fits");
    assert_eq!(quarantine.until_ms - quarantine.since_ms, horizon);
    assert!(bus.resume("shop", "mixed"));
    bus.publish(vec![mix("mix.ok", "ok-2")])
        .await
        .expect("publish");
    until("the consumer goes on after the quarantine", || {
        host.stats().deliveries_ok == 2
    })
    .await;
    assert!(bus.restarts().is_empty(), "{:?}", bus.restarts());
    bus.shutdown().await;
}

/// A log that panics on its first `read_panics` reads and `prune_panics`
/// prunes, then works: a real failure under the bus's tasks.
struct PanickyLog {
    log: Arc<dyn EventLog>,
    read_panics: std::sync::atomic::AtomicU32,
    prune_panics: std::sync::atomic::AtomicU32,
    prunes: std::sync::atomic::AtomicU32,
}

impl PanickyLog {
    fn new(log: Arc<dyn EventLog>, read_panics: u32, prune_panics: u32) -> Self {
        Self {
            log,
            read_panics: read_panics.into(),
            prune_panics: prune_panics.into(),
            prunes: 0.into(),
        }
    }

    /// True while `left` is above 0, counting it down.
    fn take(left: &std::sync::atomic::AtomicU32) -> bool {
        use std::sync::atomic::Ordering;
        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl plugbus::state::StateStore for PanickyLog {
    fn get(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, plugbus::state::StateError> {
        self.log.get(tenant, plugin, key)
    }

    fn apply(
        &self,
        tenant: &str,
        plugin: &str,
        writes: &[plugbus::state::StateWrite],
    ) -> Result<(), plugbus::state::StateError> {
        self.log.apply(tenant, plugin, writes)
    }
}

impl EventStore for PanickyLog {
    fn append(&self, events: Vec<Event>) -> Reply<Vec<plugbus::log::Appended>> {
        self.log.append(events)
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Vec<plugbus::log::StoredEvent>, plugbus::log::LogError> {
        if Self::take(&self.read_panics) {
            panic!("the log failed a read (a test's fault)");
        }
        self.log.read_bounded(tenant, after, limit)
    }

    fn count_after(
        &self,
        tenant: &str,
        after: u64,
        limit: u64,
    ) -> Result<u64, plugbus::log::LogError> {
        self.log.count_after(tenant, after, limit)
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<u64>, plugbus::log::LogError> {
        self.log.first_since(tenant, at_ms)
    }

    fn head(&self) -> Result<u64, plugbus::log::LogError> {
        self.log.head()
    }

    fn prune(
        &self,
        retention: plugbus::log::Retention,
        live: Vec<(String, String)>,
    ) -> Reply<plugbus::log::Pruned> {
        self.prunes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if Self::take(&self.prune_panics) {
            panic!("the log failed to prune (a test's fault)");
        }
        self.log.prune(retention, live)
    }
}

impl CursorStore for PanickyLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<u64>, plugbus::log::LogError> {
        self.log.cursor(tenant, plugin)
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<u64>, plugbus::log::LogError> {
        self.log.ahead(tenant, plugin)
    }

    fn commit(&self, commit: plugbus::log::Commit) -> Reply<plugbus::log::Committed> {
        self.log.commit(commit)
    }
}

impl DeadLetterStore for PanickyLog {
    fn dead_letters(
        &self,
        tenant: &str,
        plugin: &str,
    ) -> Result<Vec<plugbus::log::DeadLetter>, plugbus::log::LogError> {
        self.log.dead_letters(tenant, plugin)
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, plugbus::log::LogError> {
        self.log.dead_letter_plugins(tenant)
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: u64) -> Reply<bool> {
        self.log.discard_dead_letter(tenant, plugin, seq)
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: u64) -> Reply<bool> {
        self.log.request_redrive(tenant, plugin, seq)
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<plugbus::log::DeadLetter>, plugbus::log::LogError> {
        self.log.redrives(tenant, plugin, limit)
    }

    fn dead_letter_depths(&self) -> plugbus::log::DeadLetterDepths {
        self.log.dead_letter_depths()
    }
}

impl QuarantineStore for PanickyLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        self.log.set_quarantine(change)
    }

    fn quarantines(&self) -> Result<Vec<plugbus::log::Quarantine>, plugbus::log::LogError> {
        self.log.quarantines()
    }
}

impl plugbus::log::LeaseStore for PanickyLog {}

impl plugbus::log::InspectStore for PanickyLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &plugbus::log::StateQuery,
    ) -> Result<plugbus::log::Page<plugbus::log::StateEntry>, plugbus::log::LogError> {
        self.log.state_entries(tenant, plugin, query)
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<u64>,
        limit: ReadLimit,
    ) -> Result<plugbus::log::Page<plugbus::log::StoredEvent>, plugbus::log::LogError> {
        self.log.emitted(tenant, plugin, before, limit)
    }
}

async fn a_consumer_that_panics_is_restarted_from_its_cursor(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    host.load_dir(dir.path()).expect("load");
    // Its first two reads panic under the consumer.
    let log = Arc::new(PanickyLog::new(place.open().await, 2, 0));
    let bus = DurableBus::start(host.clone(), log, config(1))
        .await
        .expect("start");
    let appended = bus
        .publish(vec![mix("mix.ok", "ok-1")])
        .await
        .expect("publish");
    until("the event is handled by the restarted consumer", || {
        cursor(&bus, "mixed") >= appended[0].seq
    })
    .await;
    assert_eq!(host.stats().deliveries_ok, 1);
    let consumer = plugbus::durable::Task::Consumer {
        tenant: "shop".into(),
        plugin: "mixed".into(),
    };
    assert_eq!(
        bus.restarts().get(&consumer),
        Some(&2),
        "{:?}",
        bus.restarts()
    );
    bus.shutdown().await;
}

async fn a_retention_task_that_panics_is_restarted(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "audit", artifacts::AUDIT_LOG, None);
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    host.load_dir(dir.path()).expect("load");
    let log = Arc::new(PanickyLog::new(place.open().await, 0, 1));
    let durable = DurableConfig {
        retention_interval: Duration::from_secs(1),
        ..config(1)
    };
    let bus = DurableBus::start(host, log.clone(), durable)
        .await
        .expect("start");
    until("retention ran again after its panic", || {
        log.prunes.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(
        bus.restarts().get(&plugbus::durable::Task::Retention),
        Some(&1)
    );
    bus.shutdown().await;
}

async fn events_past_the_dead_letter_quota_are_given_up_without_one(place: &LogPlace) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(MIXED));
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    host.load_dir(dir.path()).expect("load");
    let log = place
        .open_with(MemoryLogConfig {
            dead_letters: plugbus::log::DeadLetterQuota {
                max_count: 2,
                ..plugbus::log::DeadLetterQuota::default()
            },
            ..MemoryLogConfig::default()
        })
        .await;
    let bus = DurableBus::start(host.clone(), log, config(1))
        .await
        .expect("start");
    let events = vec![
        mix("mix.permanent", "p-1"),
        mix("mix.permanent", "p-2"),
        mix("mix.permanent", "p-3"),
        mix("mix.ok", "ok-1"),
    ];
    let appended = bus.publish(events).await.expect("publish");
    let last = appended.last().expect("appended").seq;
    // The consumer goes on past the refused dead letter.
    until("every event is finished", || cursor(&bus, "mixed") >= last).await;
    assert_eq!(host.stats().deliveries_ok, 1);
    let kept: Vec<String> = bus
        .log()
        .dead_letters("shop", "mixed")
        .expect("read")
        .into_iter()
        .map(|d| d.event.id().to_owned())
        .collect();
    assert_eq!(kept, ["p-1", "p-2"]);
    let key = ("shop".to_owned(), "mixed".to_owned());
    assert_eq!(bus.dead_letter_depths().get(&key), Some(&2));
    bus.shutdown().await;
}
