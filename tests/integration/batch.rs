//! Batches through `handle-batch` give every event the outcome it gets
//! alone through `handle`: its own fuel, memory and time limits, its own
//! failure kind, its emitted events, its place in the order.

use std::sync::Arc;

use plugbus::{Delivery, Event, FailureKind, HostConfig, Outcome, Plugin};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_with, kind};

/// Each event's fuel: enough for `mix.burn` of a few hundred thousand
/// rounds, far too little for `mix.spin`.
const FUEL: u64 = 20_000_000;

fn manifest(fuel: u64, timeout_ms: u64) -> String {
    format!(
        "subscribe = [\"mix.*\"]\n[limits]\nfuel = {fuel}\ntimeout_ms = {timeout_ms}\nmemory_mib = 16\n"
    )
}

/// A host (one delivery thread per plugin, so that queued events batch)
/// with the `mixed` fixture as `tenant/mixed` under `manifest`.
fn mixed_plugin(manifest: &str) -> (plugbus::Host, Arc<Plugin>, PluginsDir) {
    let dir = PluginsDir::new();
    dir.add("shop", "mixed", artifacts::FIXTURE_MIXED, Some(manifest));
    let config = HostConfig {
        plugin_concurrency: 1,
        // `mixed` runs with ample fuel (above the default ceiling) too.
        max_limits: plugbus::Limits {
            fuel: u64::MAX,
            ..plugbus::Limits::DEFAULT_CEILINGS
        },
        ..HostConfig::default()
    };
    let (host, report) = host_with(config, &dir);
    assert!(report.errors.is_empty(), "{report:#?}");
    let plugin = host.plugin("shop", "mixed").expect("the plugin is loaded");
    (host, plugin, dir)
}

fn mix(ty: &str, id: usize, data: &str) -> Event {
    event("shop", ty, &format!("{ty}-{id}"), serde_json::json!({}))
        .to_builder()
        .data(data)
        .datacontenttype("text/plain".to_owned())
        .build()
        .expect("a valid event")
}

/// What must be equal between a delivery alone and in a batch.
fn essence(d: &Delivery) -> (String, Outcome, Vec<String>) {
    (
        d.event_id.clone(),
        d.outcome.clone(),
        d.emitted.iter().map(|e| e.ty.clone()).collect(),
    )
}

/// Every kind of outcome in one stream, several times over and in a
/// mixed order, so that failures sit at the start, middle and end of
/// batches, next to each other and between successes.
fn stream(burn_rounds: u64) -> Vec<Event> {
    let pattern = [
        "mix.ok",
        "mix.emit",
        "mix.spin",
        "mix.ok",
        "mix.retryable",
        "mix.emit-then-fail",
        "mix.burn",
        "mix.grow",
        "mix.emit",
        "mix.permanent",
        "mix.recurse",
        "mix.burn",
        "mix.panic",
        "mix.panic",
        "mix.ok",
        "mix.unknown",
    ];
    (0..3)
        .flat_map(|round| pattern.iter().map(move |ty| (round, *ty)))
        .enumerate()
        .map(|(i, (_, ty))| mix(ty, i, &burn_rounds.to_string()))
        .collect()
}

/// The expected failure kind of each type, given the manifest.
fn expected(ty: &str, spin: FailureKind) -> Option<FailureKind> {
    match ty {
        "mix.ok" | "mix.emit" | "mix.burn" => None,
        "mix.spin" => Some(spin),
        "mix.retryable" | "mix.emit-then-fail" => Some(FailureKind::HandlerRetryable),
        "mix.permanent" | "mix.unknown" => Some(FailureKind::HandlerPermanent),
        "mix.grow" => Some(FailureKind::MemoryLimit),
        "mix.recurse" => Some(FailureKind::StackOverflow),
        "mix.panic" => Some(FailureKind::Trap),
        other => panic!("no expectation for {other}"),
    }
}

/// The fixture's test: the same stream, alone and in batches, under a fuel
/// limit and under a time limit, ends the same way event by event.
#[test]
pub fn mixed() {
    for (manifest, spin) in [
        (manifest(FUEL, 30_000), FailureKind::FuelExhausted),
        (manifest(u64::MAX / 4, 200), FailureKind::Timeout),
    ] {
        let (host, plugin, _dir) = mixed_plugin(&manifest);
        assert!(plugin.batching(), "the SDK's plugins export handle-batch");
        let events = stream(1_000);

        let alone: Vec<Delivery> = events
            .iter()
            .map(|e| plugin.deliver(e).expect("a valid event").0)
            .collect();
        let before = host.stats();
        let batched: Vec<Delivery> = plugin
            .deliver_batch(&events)
            .expect("valid events")
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let after = host.stats();

        assert_eq!(alone.len(), events.len());
        assert_eq!(batched.len(), events.len());
        for ((event, a), b) in events.iter().zip(&alone).zip(&batched) {
            assert_eq!(essence(a), essence(b), "{} alone and batched", event.id());
            assert_eq!(kind(b), expected(event.ty(), spin), "{b:#?}");
            assert_eq!(b.plugin_version, plugin.version());
            if kind(b) == Some(FailureKind::FuelExhausted) {
                assert_eq!(b.fuel, FUEL, "the event had a full tank of its own");
            }
        }
        // The successes around the failures went through handle-batch, in
        // batches that each failure ended.
        let batch_calls = after.batch_calls - before.batch_calls;
        let batched_deliveries = after.batched_deliveries - before.batched_deliveries;
        assert!(batch_calls >= 2, "{after:#?}");
        assert!(
            batched_deliveries >= 20,
            "{batched_deliveries} of {} events went through handle-batch",
            events.len()
        );
        // The events emitted by a handled delivery are kept, those of a
        // failed one dropped, in both ways.
        let emitted: usize = batched.iter().map(|d| d.emitted.len()).sum();
        assert_eq!(emitted, 6);
    }
}

/// Fuel is per event, not per batch: a batch of events that each burn
/// well over half of the fuel limit is handled whole.
#[test]
fn each_event_of_a_batch_gets_its_own_fuel() {
    let (host, plugin, _dir) = mixed_plugin(&manifest(FUEL, 30_000));
    // How much fuel 100,000 rounds take, to size each event at ~60%.
    let probe = plugin
        .deliver(&mix("mix.burn", 0, "100000"))
        .expect("valid")
        .0;
    assert!(probe.outcome.is_handled(), "{probe:#?}");
    let rounds = 100_000 * (FUEL * 6 / 10) / probe.fuel;
    let events: Vec<_> = (1..=10)
        .map(|i| mix("mix.burn", i, &rounds.to_string()))
        .collect();
    let before = host.stats().batched_deliveries;
    let reports = plugin.deliver_batch(&events).expect("valid");
    assert_eq!(host.stats().batched_deliveries - before, 10);
    let total: u64 = reports.iter().map(|(d, _)| d.fuel).sum();
    for (d, _) in &reports {
        assert!(d.outcome.is_handled(), "{d:#?}");
        assert!(d.fuel > FUEL / 2 && d.fuel < FUEL, "{} of {FUEL}", d.fuel);
    }
    assert!(total > 5 * FUEL, "the batch used {total} fuel in all");
}

/// Under load the host batches whatever is queued for the plugin: every
/// published event is delivered once, with its own outcome, and the
/// emitted events are routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_batched_without_changing_outcomes() {
    let (host, _plugin, _dir) = mixed_plugin(&manifest(FUEL, 30_000));
    let types = ["mix.ok", "mix.emit", "mix.permanent", "mix.ok", "mix.panic"];
    let events: Vec<_> = (0..500)
        .map(|i| mix(types[i % types.len()], i, ""))
        .collect();
    let reports = futures::future::join_all(events.iter().map(|e| host.publish(e.clone()))).await;
    for (event, report) in events.iter().zip(reports) {
        let deliveries = report.expect("a valid event").deliveries;
        // `mix.emit` events are delivered, and so is what they emitted
        // (type `mix.emitted`, which the fixture does not know).
        let own: Vec<_> = deliveries
            .iter()
            .filter(|d| d.event_id == event.id())
            .collect();
        assert_eq!(own.len(), 1, "{deliveries:#?}");
        assert_eq!(
            kind(own[0]),
            expected(event.ty(), FailureKind::FuelExhausted),
            "{:#?}",
            own[0]
        );
        if event.ty() == "mix.emit" {
            assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
            assert_eq!(kind(&deliveries[1]), Some(FailureKind::HandlerPermanent));
        }
    }
    let stats = host.stats();
    // 200 `mix.ok` and 100 `mix.emit`; 100 `mix.permanent` and the 100
    // emitted `mix.emitted`, a type the fixture does not know.
    assert_eq!(stats.deliveries_ok, 300);
    assert_eq!(stats.failures_of(FailureKind::Trap), 100);
    assert_eq!(stats.failures_of(FailureKind::HandlerPermanent), 200);
    assert!(stats.batched_deliveries > 0, "{stats:#?}");
}

/// A plugin that exports only `handle` keeps working: its events go one by
/// one.
#[test]
fn a_plugin_without_handle_batch_gets_events_one_by_one() {
    let dir = PluginsDir::new();
    dir.add("shop", "plain", artifacts::FIXTURE_PLAIN_BINDGEN, None);
    let (host, report) = host_with(HostConfig::default(), &dir);
    assert!(report.errors.is_empty(), "{report:#?}");
    let plugin = host.plugin("shop", "plain").expect("loaded");
    assert!(!plugin.batching());
    let events: Vec<_> = (0..5).map(|i| mix("mix.ok", i, "")).collect();
    let reports = plugin.deliver_batch(&events).expect("valid");
    assert_eq!(reports.len(), 5);
    for ((d, emitted), e) in reports.iter().zip(&events) {
        assert!(d.outcome.is_handled(), "{d:#?}");
        assert_eq!(d.event_id, e.id());
        assert_eq!(emitted.len(), 1);
    }
    assert_eq!(host.stats().batch_calls, 0);
}

/// `max_batch_events = 1` turns batching off.
#[test]
fn batching_can_be_turned_off() {
    let dir = PluginsDir::new();
    dir.add(
        "shop",
        "mixed",
        artifacts::FIXTURE_MIXED,
        Some(&manifest(FUEL, 30_000)),
    );
    let config = HostConfig {
        max_batch_events: 1,
        ..HostConfig::default()
    };
    let (host, _) = host_with(config, &dir);
    let plugin = host.plugin("shop", "mixed").expect("loaded");
    assert!(!plugin.batching());
    let events: Vec<_> = (0..4).map(|i| mix("mix.ok", i, "")).collect();
    let reports = plugin.deliver_batch(&events).expect("valid");
    assert!(reports.iter().all(|(d, _)| d.outcome.is_handled()));
    assert_eq!(host.stats().batch_calls, 0);
}

/// A batch with an event of another tenant is refused whole.
#[test]
fn a_batch_with_a_foreign_event_is_refused_whole() {
    let (host, plugin, _dir) = mixed_plugin(&manifest(FUEL, 30_000));
    let foreign = mix("mix.ok", 2, "")
        .to_builder()
        .tenant("other")
        .build()
        .expect("a valid event");
    let events = vec![mix("mix.ok", 1, ""), foreign];
    let err = plugin.deliver_batch(&events).unwrap_err();
    assert!(
        matches!(err, plugbus::DeliverError::WrongTenant { .. }),
        "{err}"
    );
    assert_eq!(host.stats().deliveries_ok, 0);
}

/// A host with `config` and the `hostile` fixture as `chaos/emitter` in
/// mode `big-emit` with more `[config]` lines: a batching plugin whose
/// events each emit the same event several times.
fn emitter(config: HostConfig, extra: &str) -> (plugbus::Host, Arc<Plugin>, PluginsDir) {
    let dir = PluginsDir::new();
    let manifest = format!(
        "subscribe = [\"hostile.*\"]\n[limits]\nmemory_mib = 64\ntimeout_ms = 30_000\n[config]\nmode = \"big-emit\"\nsize = \"1000\"\n{extra}\n"
    );
    dir.add(
        "chaos",
        "emitter",
        artifacts::FIXTURE_HOSTILE,
        Some(&manifest),
    );
    let (host, report) = host_with(config, &dir);
    assert!(report.errors.is_empty(), "{report:#?}");
    let plugin = host.plugin("chaos", "emitter").expect("loaded");
    assert!(plugin.batching(), "the SDK's plugins export handle-batch");
    (host, plugin, dir)
}

fn big_emits(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            event(
                "chaos",
                "hostile.big-emit",
                &format!("b-{i}"),
                serde_json::json!({}),
            )
        })
        .collect()
}

/// The bytes of each event the `emitter` emits, as the host counts them.
fn emitted_size() -> usize {
    let (_host, plugin, _dir) = emitter(HostConfig::default(), "count = \"1\"");
    let (delivery, emitted) = plugin.deliver(&big_emits(1)[0]).expect("valid");
    assert!(delivery.outcome.is_handled(), "{delivery:#?}");
    plugbus::batch::event_bytes(&emitted[0])
}

/// An emit past the batch commit budget is refused, with the limit named,
/// and counted; at the budget it is accepted. A budget below one
/// delivery's limits makes each commit one delivery, which it bounds.
#[test]
fn a_batch_commit_is_bounded_in_bytes() {
    let size = emitted_size();
    let run = |commit: usize| {
        let config = HostConfig {
            max_batch_commit_bytes: commit,
            plugin_concurrency: 1,
            ..HostConfig::default()
        };
        let (host, plugin, _dir) = emitter(config, "count = \"4\"\nstrict = \"true\"");
        let reports = plugin.deliver_batch(&big_emits(4)).expect("valid");
        (reports, host.stats())
    };
    let (reports, stats) = run(4 * size);
    for (delivery, emitted) in &reports {
        assert!(delivery.outcome.is_handled(), "{delivery:#?}");
        assert_eq!(emitted.len(), 4);
    }
    assert_eq!(stats.emits_refused_commit, 0);
    assert!(stats.batched_deliveries >= 3, "{stats:#?}");

    let (reports, stats) = run(4 * size - 1);
    assert_eq!(reports.len(), 4);
    for (delivery, emitted) in &reports {
        let failure = delivery.outcome.failure().expect("refused");
        assert_eq!(failure.kind, FailureKind::HandlerPermanent);
        assert!(
            failure.message.contains(&format!(
                "limit of {} bytes of emitted events and state writes per batch commit",
                4 * size - 1
            )),
            "{failure:?}"
        );
        assert!(emitted.is_empty());
    }
    assert_eq!(stats.emits_refused_commit, 4);
    assert_eq!(stats.emits_accepted, 4 * 3);
    assert!(stats.batched_deliveries >= 3, "{stats:#?}");
}

/// A batch ends early when its pending commit has no room for one more
/// delivery at its limits, so that a well-behaved plugin is never refused
/// for being batched: the rest of its events go into the next batch.
#[test]
fn a_full_commit_ends_the_batch_early() {
    let size = emitted_size();
    let run = |commit: usize| {
        let config = HostConfig {
            // One event per delivery, and no state: a delivery adds at
            // most `size` bytes to its commit.
            max_emit_bytes_per_delivery: size,
            max_state_bytes_per_delivery: 0,
            max_batch_commit_bytes: commit,
            plugin_concurrency: 1,
            ..HostConfig::default()
        };
        let (host, plugin, _dir) = emitter(config, "count = \"2\"");
        let reports = plugin.deliver_batch(&big_emits(7)).expect("valid");
        for (delivery, emitted) in &reports {
            assert!(delivery.outcome.is_handled(), "{delivery:#?}");
            assert_eq!(emitted.len(), 1);
        }
        let stats = host.stats();
        assert_eq!(stats.emits_refused_bytes, 7, "the second emit of each");
        assert_eq!(stats.emits_refused_commit, 0, "never refused for batching");
        assert_eq!(stats.deliveries_ok, 7);
        stats.batch_calls
    };
    // Commits of three events: two batches of three, the last alone.
    assert_eq!(run(3 * size), 2);
    // One byte less: commits of two: three batches of two, the last alone.
    assert_eq!(run(3 * size - 1), 3);
}
