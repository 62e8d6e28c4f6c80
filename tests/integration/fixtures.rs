//! One test per fixture. `for_each_fixture!` makes the build fail when a
//! fixture crate has no test function of its name here.

use plugbus::{FailureKind, HostConfig, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, failure, host_for, host_with, kind, publish, to_plugin};

// The `mixed` fixture's test lives with the other batch tests.
use crate::batch::mixed;
// The `http-probe` fixture's test lives with the other outbound tests.
use crate::outbound::http_probe;
// The `sleeper` fixture's test lives with the other isolation tests.
use crate::isolation::sleeper;
// The `secret-probe` fixture's test lives with the other secrets tests.
use crate::secrets::secret_probe;

macro_rules! assert_fixture_has_test {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
artifacts::for_each_fixture!(assert_fixture_has_test);

/// Runs three events of type `fixture.test` through `fixture` (in tenant
/// `chaos`, beside a healthy audit-log subscribed to everything) while a
/// second tenant's audit-log gets events of its own, and checks that every
/// fixture delivery failed with `expected` and every healthy delivery was
/// handled.
async fn assert_isolated_failure(fixture: &str, manifest: &str, expected: FailureKind) {
    let dir = PluginsDir::new();
    dir.add("chaos", "fixture", fixture, Some(manifest));
    dir.add("chaos", "healthy", artifacts::AUDIT_LOG, None);
    dir.add("bystander", "audit", artifacts::AUDIT_LOG, None);
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    {
        let mut tasks = Vec::new();
        for i in 0..3 {
            let chaos = event(
                "chaos",
                "fixture.test",
                &format!("chaos-{i}"),
                serde_json::json!({}),
            );
            let calm = event(
                "bystander",
                "order.created",
                &format!("calm-{i}"),
                serde_json::json!({"total": 12}),
            );
            tasks.push(host.publish(chaos));
            tasks.push(host.publish(calm));
        }
        // All publishes run at once: failing and healthy deliveries overlap.
        let reports = futures::future::join_all(tasks).await;
        let deliveries: Vec<_> = reports
            .into_iter()
            .flat_map(|r| r.expect("valid events").deliveries)
            .collect();
        let failed = to_plugin(&deliveries, "fixture");
        assert_eq!(failed.len(), 3, "{deliveries:#?}");
        for d in &failed {
            assert_eq!(kind(d), Some(expected), "{d:#?}");
        }
        let healthy = to_plugin(&deliveries, "healthy");
        let bystander = to_plugin(&deliveries, "audit");
        assert_eq!(healthy.len(), 3);
        assert_eq!(bystander.len(), 3);
        for d in healthy.iter().chain(&bystander) {
            assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
        }
    }
    let stats = host.stats();
    assert_eq!(stats.failures_of(expected), 3);
    assert_eq!(stats.deliveries_ok, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin() {
    // With ample fuel the wall clock stops it: the ceiling's 10^9 units
    // take an idle core about 100 ms, five times the 20 ms deadline...
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 20\nfuel = 1_000_000_000",
        FailureKind::Timeout,
    )
    .await;
    // ...and with ample time, the fuel.
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 30_000\nfuel = 5_000_000",
        FailureKind::FuelExhausted,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_memory() {
    assert_isolated_failure(
        artifacts::FIXTURE_GROW_MEMORY,
        "subscribe = [\"fixture.*\"]\n[limits]\nmemory_mib = 16",
        FailureKind::MemoryLimit,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurse() {
    assert_isolated_failure(
        artifacts::FIXTURE_RECURSE,
        "subscribe = [\"fixture.*\"]",
        FailureKind::StackOverflow,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic() {
    assert_isolated_failure(
        artifacts::FIXTURE_PANIC,
        "subscribe = [\"fixture.*\"]",
        FailureKind::Trap,
    )
    .await;
    // The message tells a panic (with its text) from a bare `unreachable`.
    let dir = PluginsDir::new();
    dir.add("chaos", "panic", artifacts::FIXTURE_PANIC, None);
    let (host, _) = host_for(&dir);
    let panicked = failure(&publish(&host, "chaos", "fixture.panic", "p-1").await[0]);
    assert_eq!(panicked.kind, FailureKind::Trap);
    assert!(panicked.message.starts_with("panic: "), "{panicked:?}");
    assert!(
        panicked.message.contains("fixture panic on p-1"),
        "{panicked:?}"
    );
    let unreachable = failure(&publish(&host, "chaos", "fixture.unreachable", "u-1").await[0]);
    assert_eq!(unreachable.kind, FailureKind::Trap);
    assert!(
        unreachable.message.starts_with("unreachable"),
        "{unreachable:?}"
    );
    // Each trap discarded its instance; the next event got a fresh one.
    let stats = host.stats();
    assert_eq!(stats.instances_discarded, 2);
    assert_eq!(stats.instances_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error() {
    assert_isolated_failure(
        artifacts::FIXTURE_HANDLER_ERROR,
        "subscribe = [\"fixture.*\"]",
        FailureKind::HandlerPermanent,
    )
    .await;
    let dir = PluginsDir::new();
    dir.add("chaos", "errors", artifacts::FIXTURE_HANDLER_ERROR, None);
    let (host, _) = host_for(&dir);
    let retry = failure(&publish(&host, "chaos", "fixture.fail.retryable", "r-1").await[0]);
    assert_eq!(retry.kind, FailureKind::HandlerRetryable);
    assert!(retry.message.contains("r-1"), "{retry:?}");
    let fail = failure(&publish(&host, "chaos", "fixture.fail.permanent", "p-1").await[0]);
    assert_eq!(fail.kind, FailureKind::HandlerPermanent);
    assert!(fail.message.contains("p-1"), "{fail:?}");
    // A handler error is not a trap: the instance is kept and reused.
    let stats = host.stats();
    assert_eq!(stats.instances_created, 1);
    assert_eq!(stats.instances_discarded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm() {
    let dir = PluginsDir::new();
    dir.add(
        "chaos",
        "storm",
        artifacts::FIXTURE_STORM,
        Some("subscribe = [\"storm.*\"]"),
    );
    let config = HostConfig {
        max_chain_depth: 5,
        ..HostConfig::default()
    };
    let (host, _) = host_with(config, &dir);
    // The root event at depth 0 and one emitted event at each depth 1..=5.
    let deliveries = publish(&host, "chaos", "storm.go", "root").await;
    assert_eq!(deliveries.len(), 6, "{deliveries:#?}");
    for d in &deliveries[..5] {
        assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
        assert_eq!(d.emitted.len(), 1);
    }
    // Each emitted event names its cause.
    for pair in deliveries.windows(2) {
        assert_eq!(
            pair[1].causation_id.as_deref(),
            Some(pair[0].event_id.as_str())
        );
    }
    let last = failure(&deliveries[5]);
    assert_eq!(last.kind, FailureKind::HandlerPermanent);
    assert!(last.message.contains("chain depth limit of 5"), "{last:?}");
    let stats = host.stats();
    assert_eq!(stats.emits_refused_chain_depth, 1);
    assert_eq!(stats.emits_accepted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_probe() {
    let dir = PluginsDir::new();
    dir.add("chaos", "probe", artifacts::FIXTURE_SANDBOX_PROBE, None);
    let (host, _) = host_for(&dir);
    // The fixture fails with "sandbox escape" if it could read a file, list a
    // directory, see an environment variable or argument, or open a socket.
    let deliveries = publish(&host, "chaos", "fixture.sandbox_probe", "s-1").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, Outcome::Handled, "{deliveries:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood() {
    let dir = PluginsDir::new();
    dir.add("chaos", "flood", artifacts::FIXTURE_FLOOD, None);
    let (host, _) = host_for(&dir);
    for i in 0..2 {
        let deliveries = publish(&host, "chaos", "fixture.flood", &format!("f-{i}")).await;
        assert_eq!(deliveries[0].outcome, Outcome::Handled, "{deliveries:#?}");
    }
    // 4 MiB of stdout per event, of which the host keeps 64 KiB per delivery.
    let kept = 64 * 1024;
    let dropped = host.stats().output_bytes_dropped;
    assert!(dropped >= 2 * (4 * 1024 * 1024 - kept), "dropped {dropped}");
    assert!(dropped <= 2 * 4 * 1024 * 1024 + 4096, "dropped {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop() {
    let dir = PluginsDir::new();
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    let (host, _) = host_for(&dir);
    for i in 0..5 {
        let deliveries = publish(&host, "t", "order.created", &format!("n-{i}")).await;
        let d = &deliveries[0];
        assert_eq!(d.outcome, Outcome::Handled);
        assert!(d.fuel > 0, "fuel is accounted");
        assert_eq!(d.plugin_version.len(), 12);
    }
    // One instance served all five events.
    assert_eq!(host.stats().instances_created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_world() {
    let dir = PluginsDir::new();
    let wrong = dir.add("chaos", "wrong", artifacts::FIXTURE_WRONG_WORLD, None);
    dir.add("chaos", "noop", artifacts::FIXTURE_NOOP, None);
    let (host, report) = host_for(&dir);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let error = &report.errors[0];
    assert!(
        matches!(error, plugbus::LoadError::WrongWorld { .. }),
        "{error}"
    );
    assert_eq!(error.path(), wrong);
    let message = error.to_string();
    assert!(
        message.contains("wrong.wasm") && message.contains("plugbus:plugin/handler"),
        "{message}"
    );
    // The other plugin of the tenant still loaded and runs.
    let names: Vec<_> = host.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["noop"]);
    let deliveries = publish(&host, "chaos", "order.created", "w-1").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, Outcome::Handled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bindgen() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "plain",
        artifacts::FIXTURE_PLAIN_BINDGEN,
        Some("subscribe = [\"order.*\"]\n[config]\ngreeting = \"hello\""),
    );
    dir.add(
        "acme-pos",
        "audit",
        artifacts::AUDIT_LOG,
        Some("subscribe = [\"plain.*\"]"),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let d = publish(&host, "acme-pos", "order.created", "o-1").await;
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].plugin, "plain");
    assert_eq!(d[0].outcome, Outcome::Handled, "{d:#?}");
    assert_eq!(d[0].emitted.len(), 1);
    assert_eq!(d[0].emitted[0].ty, "plain.seen");
    assert_eq!(d[0].emitted[0].subject.as_deref(), Some("hello"));
    assert_eq!(d[1].plugin, "audit");
    assert_eq!(d[1].event_type, "plain.seen");
    assert_eq!(d[1].causation_id.as_deref(), Some("o-1"));
    assert_eq!(d[1].outcome, Outcome::Handled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum() {
    let dir = PluginsDir::new();
    dir.add("t", "checksum", artifacts::FIXTURE_CHECKSUM, None);
    let (host, _) = host_for(&dir);
    let plugin = host.plugin("t", "checksum").expect("loaded");
    // Fuel follows the work: hashing 64 KiB costs far more than 64 bytes.
    let fuel_for = |len: usize| {
        let e = event("t", "bench.payload", "c-1", serde_json::json!({}))
            .to_builder()
            .data(vec![b'x'; len])
            .build()
            .expect("a valid event");
        let (delivery, _) = plugin.deliver(&e).expect("deliverable");
        assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
        delivery.fuel
    };
    let small = fuel_for(64);
    let large = fuel_for(64 * 1024);
    assert!(
        large > small * 100,
        "64 B cost {small} fuel, 64 KiB {large}"
    );
    // An empty payload is refused, permanently.
    let empty = event("t", "bench.payload", "c-2", serde_json::json!({}))
        .to_builder()
        .data(Vec::new())
        .build()
        .expect("a valid event");
    let (delivery, _) = plugin.deliver(&empty).expect("deliverable");
    assert_eq!(kind(&delivery), Some(FailureKind::HandlerPermanent));
}

/// The state count of `subject` in `plugin` of `tenant`, or 0.
fn count(host: &plugbus::Host, tenant: &str, plugin: &str, subject: &str) -> u64 {
    host.state_store()
        .get(tenant, plugin, &format!("count/{subject}"))
        .expect("the in-memory store answers")
        .map_or(0, |bytes| {
            serde_json::from_slice(&bytes).expect("the counter stores JSON numbers")
        })
}

fn counted(tenant: &str, ty: &str, id: &str, subject: &str) -> plugbus::Event {
    event(tenant, ty, id, serde_json::json!({}))
        .to_builder()
        .subject(subject.to_owned())
        .build()
        .expect("a valid event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter() {
    let dir = PluginsDir::new();
    let manifest = "subscribe = [\"count.*\"]";
    dir.add(
        "acme-pos",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some(manifest),
    );
    dir.add(
        "acme-pos",
        "twin",
        artifacts::FIXTURE_COUNTER,
        Some(manifest),
    );
    dir.add(
        "globex",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some(manifest),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // Only the handled events' writes are kept: a retryable error and a
    // panic after the write leave the count as it was, and drop the emit.
    let mut expected_kinds = Vec::new();
    for (i, ty) in ["count.ok", "count.fail", "count.trap", "count.ok"]
        .into_iter()
        .enumerate()
    {
        let report = host
            .publish(counted("acme-pos", ty, &format!("c-{i}"), "o-1"))
            .await
            .expect("a valid event");
        let d = to_plugin(&report.deliveries, "counter");
        assert_eq!(d.len(), 1, "{:#?}", report.deliveries);
        expected_kinds.push(kind(d[0]));
        if d[0].outcome.is_handled() {
            assert_eq!(d[0].emitted.len(), 1);
        } else {
            assert!(d[0].emitted.is_empty());
        }
    }
    assert_eq!(
        expected_kinds,
        [
            None,
            Some(FailureKind::HandlerRetryable),
            Some(FailureKind::Trap),
            None
        ]
    );
    assert_eq!(count(&host, "acme-pos", "counter", "o-1"), 2);
    // Scoped to the plugin and the tenant: the twin counted the same
    // events in its own state; the other tenant saw none.
    assert_eq!(count(&host, "acme-pos", "twin", "o-1"), 2);
    assert_eq!(count(&host, "globex", "counter", "o-1"), 0);

    // A write over the value limit is refused with a message naming it,
    // and nothing is stored.
    let report = host
        .publish(counted("acme-pos", "count.oversize", "big-1", "o-1"))
        .await
        .expect("a valid event");
    let d = to_plugin(&report.deliveries, "counter");
    let f = failure(d[0]);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert!(
        f.message.contains("\"big\"") && f.message.contains("limit"),
        "{f:?}"
    );
    assert!(
        host.state_store()
            .get("acme-pos", "counter", "big")
            .expect("answers")
            .is_none()
    );

    // A delete is a write like any other.
    host.publish(counted("acme-pos", "count.reset", "r-1", "o-1"))
        .await
        .expect("a valid event");
    assert_eq!(count(&host, "acme-pos", "counter", "o-1"), 0);
}

#[test]
fn counter_batches_see_the_writes_before_them() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "counter",
        artifacts::FIXTURE_COUNTER,
        Some("subscribe = [\"count.*\"]"),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plugin = host.plugin("acme-pos", "counter").expect("loaded");
    assert!(plugin.batching());
    let types = [
        "count.ok",
        "count.ok",
        "count.fail",
        "count.ok",
        "count.trap",
        "count.ok",
    ];
    let events: Vec<_> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| counted("acme-pos", ty, &format!("b-{i}"), "o-7"))
        .collect();
    let reports = plugin.deliver_batch(&events).expect("valid events");
    // Each handled event counted on top of the handled ones before it, in
    // the same batch; the failed ones' writes were never seen.
    let data: Vec<_> = reports
        .iter()
        .map(|(d, emitted)| {
            (
                d.outcome.is_handled(),
                emitted
                    .first()
                    .map(|e| String::from_utf8_lossy(e.data()).into_owned()),
            )
        })
        .collect();
    let handled = |n: &str| (true, Some(n.to_owned()));
    assert_eq!(
        data,
        [
            handled("1"),
            handled("2"),
            (false, None),
            handled("3"),
            (false, None),
            handled("4"),
        ]
    );
    assert_eq!(count(&host, "acme-pos", "counter", "o-7"), 4);
}

/// The `sequence` fixture's record of `key` in `plugin` of acme-pos:
/// (seen, last, disorder, the first disorder).
fn sequence_state(
    host: &plugbus::Host,
    plugin: &str,
    key: &str,
) -> (u64, u64, u64, Option<String>) {
    let store = host.state_store();
    let get = |name: &str| -> Option<serde_json::Value> {
        store
            .get("acme-pos", plugin, &format!("{name}/{key}"))
            .expect("the in-memory store answers")
            .map(|bytes| serde_json::from_slice(&bytes).expect("the fixture stores JSON"))
    };
    let number = |name: &str| get(name).map_or(0, |v| v.as_u64().expect("a count"));
    (
        number("seen"),
        number("last"),
        number("disorder"),
        get("disorder-first").map(|v| v.as_str().expect("a text").to_owned()),
    )
}

/// Event `n` of `key` (its subject) for the `sequence` fixture.
fn numbered(id: &str, key: &str, n: &str) -> plugbus::Event {
    event("acme-pos", "seq.next", id, serde_json::json!({}))
        .to_builder()
        .subject(key.to_owned())
        .data(n.as_bytes().to_vec())
        .build()
        .expect("a valid event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence() {
    let dir = PluginsDir::new();
    let manifest = "subscribe = [\"seq.*\"]";
    dir.add(
        "acme-pos",
        "sequence",
        artifacts::FIXTURE_SEQUENCE,
        Some(manifest),
    );
    dir.add(
        "acme-pos",
        "quiet",
        artifacts::FIXTURE_SEQUENCE,
        Some("subscribe = [\"seq.*\"]\n[config]\nemit = \"false\"\n"),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // In order: counted, no disorder, one `sequence.seen` per event (none
    // from the plugin told not to emit).
    for (i, n) in ["1", "2"].into_iter().enumerate() {
        let report = host
            .publish(numbered(&format!("a-{i}"), "a", n))
            .await
            .expect("a valid event");
        let d = to_plugin(&report.deliveries, "sequence");
        assert_eq!(d.len(), 1, "{:#?}", report.deliveries);
        assert!(d[0].outcome.is_handled(), "{:#?}", d[0]);
        assert_eq!(d[0].emitted.len(), 1);
        assert_eq!(d[0].emitted[0].ty, "sequence.seen");
        assert_eq!(d[0].emitted[0].subject.as_deref(), Some("a"));
        let quiet = to_plugin(&report.deliveries, "quiet");
        assert!(quiet[0].outcome.is_handled() && quiet[0].emitted.is_empty());
    }
    assert_eq!(sequence_state(&host, "sequence", "a"), (2, 2, 0, None));
    assert_eq!(sequence_state(&host, "quiet", "a"), (2, 2, 0, None));

    // A gap, a repeat and a step back are each recorded, the first by
    // name, and the plugin goes on from the newest.
    for (i, n) in ["4", "4", "3"].into_iter().enumerate() {
        let report = host
            .publish(numbered(&format!("a-bad-{i}"), "a", n))
            .await
            .expect("a valid event");
        assert!(report.deliveries.iter().all(|d| d.outcome.is_handled()));
    }
    assert_eq!(
        sequence_state(&host, "sequence", "a"),
        (5, 3, 3, Some("after 2 came 4".to_owned()))
    );

    // The partition key names the key when there is one; keys are apart.
    let keyed = numbered("b-0", "not-the-key", "1")
        .to_builder()
        .extension("partitionkey", "b")
        .build()
        .expect("a valid event");
    host.publish(keyed).await.expect("a valid event");
    assert_eq!(sequence_state(&host, "sequence", "b"), (1, 1, 0, None));
    assert_eq!(
        sequence_state(&host, "sequence", "not-the-key"),
        (0, 0, 0, None)
    );

    // Data that is not a number is refused for good, and nothing is kept.
    let report = host
        .publish(numbered("c-bad", "c", "one"))
        .await
        .expect("a valid event");
    let d = to_plugin(&report.deliveries, "sequence");
    assert_eq!(kind(d[0]), Some(FailureKind::HandlerPermanent));
    assert_eq!(sequence_state(&host, "sequence", "c"), (0, 0, 0, None));

    // In a batch, each event sees the writes of those before it.
    let plugin = host.plugin("acme-pos", "sequence").expect("loaded");
    assert!(plugin.batching());
    let events: Vec<_> = ["1", "2", "3"]
        .iter()
        .enumerate()
        .map(|(i, n)| numbered(&format!("d-{i}"), "d", n))
        .collect();
    let reports = plugin.deliver_batch(&events).expect("valid events");
    assert!(
        reports
            .iter()
            .all(|(d, emitted)| d.outcome.is_handled() && emitted.len() == 1)
    );
    assert_eq!(sequence_state(&host, "sequence", "d"), (3, 3, 0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wit_v0_1() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "legacy",
        artifacts::FIXTURE_WIT_V0_1,
        Some("subscribe = [\"order.*\", \"legacy.fail\"]"),
    );
    dir.add(
        "acme-pos",
        "audit",
        artifacts::AUDIT_LOG,
        Some("subscribe = [\"legacy.*\"]"),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let legacy = host.plugin("acme-pos", "legacy").expect("loaded");
    assert_eq!(legacy.wit_version(), "0.1.0");
    assert!(
        !legacy.batching(),
        "0.1.0 plugins get their events through handle"
    );
    assert_eq!(
        host.plugin("acme-pos", "audit")
            .expect("loaded")
            .wit_version(),
        "0.3.0"
    );

    // Its host functions work: it logs, and its emit reaches the audit log.
    let d = publish(&host, "acme-pos", "order.created", "o-1").await;
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].outcome, Outcome::Handled, "{d:#?}");
    assert_eq!(d[1].plugin, "audit");
    assert_eq!(d[1].event_type, "legacy.seen");
    assert_eq!(d[1].causation_id.as_deref(), Some("o-1"));
    // Its handler errors keep their kind.
    let d = publish(&host, "acme-pos", "legacy.fail", "f-1").await;
    let f = failure(to_plugin(&d, "legacy")[0]);
    assert_eq!(f.kind, FailureKind::HandlerRetryable);
    assert_eq!(f.message, "asked to fail");

    // Many events at once (which batch for a 0.2.0 plugin) all go through
    // `handle`: its `handle-batch` would trap.
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                "acme-pos",
                "order.created",
                &format!("m-{i}"),
                serde_json::json!({}),
            )
        })
        .collect();
    let reports = legacy.deliver_batch(&events).expect("valid events");
    assert!(
        reports.iter().all(|(d, _)| d.outcome.is_handled()),
        "{reports:#?}"
    );
}

/// The manifest of a `hostile` plugin in `mode`, subscribed to
/// `hostile.<mode>`, with more `[config]` lines. Its time limit is wide:
/// what is bounded here is bytes, on a machine that may be busy.
fn hostile_manifest(mode: &str, config: &str) -> String {
    format!(
        "subscribe = [\"hostile.{mode}\"]\n[limits]\nmemory_mib = 64\ntimeout_ms = 30_000\n[config]\nmode = \"{mode}\"\n{config}\n"
    )
}

/// A host with `config` and the `hostile` fixture as `chaos/<name>` for
/// each (name, manifest).
fn hostile_host(config: HostConfig, plugins: &[(&str, String)]) -> (plugbus::Host, PluginsDir) {
    let dir = PluginsDir::new();
    for (name, manifest) in plugins {
        dir.add("chaos", name, artifacts::FIXTURE_HOSTILE, Some(manifest));
    }
    let (host, report) = host_with(config, &dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (host, dir)
}

/// The text a failure message keeps before the truncation marker.
fn kept(message: &str) -> &str {
    message.split("… [").next().unwrap_or_default()
}

/// Each of the hostile modes that a host bounds in one delivery, beside a
/// well-behaved plugin of the same tenant and a plugin of another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile() {
    let dir = PluginsDir::new();
    for mode in ["ok", "big-error", "forge-chain", "big-state", "forge-log"] {
        dir.add(
            "chaos",
            mode,
            artifacts::FIXTURE_HOSTILE,
            Some(&hostile_manifest(mode, "")),
        );
    }
    dir.add("chaos", "healthy", artifacts::AUDIT_LOG, None);
    dir.add("bystander", "audit", artifacts::AUDIT_LOG, None);
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let ok = publish(&host, "chaos", "hostile.ok", "ok-1").await;
    assert!(ok.iter().all(|d| d.outcome.is_handled()), "{ok:#?}");

    // A 10 MiB error message is kept to 4 KiB, cut on a character
    // boundary, with a marker that says how much was left out.
    let big = publish(&host, "chaos", "hostile.big-error", "e-1").await;
    let f = failure(to_plugin(&big, "big-error")[0]);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert!(
        f.message.starts_with("big-error: €"),
        "{}",
        kept(&f.message)
    );
    assert!(kept(&f.message).len() <= 4096);
    assert!(kept(&f.message).len() > 4090);
    let left_out = 10 * 1024 * 1024 - kept(&f.message).len();
    assert!(
        f.message
            .ends_with(&format!("… [{left_out} bytes truncated]")),
        "{}",
        &f.message[4000..]
    );
    assert_eq!(host.stats().error_messages_truncated, 1);

    // The host's chain extensions are its own.
    let forged = publish(&host, "chaos", "hostile.forge-chain", "c-1").await;
    let f = failure(to_plugin(&forged, "forge-chain")[0]);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert!(
        f.message.contains("'chainbudget' is set by the host"),
        "{f:?}"
    );
    assert!(to_plugin(&forged, "forge-chain")[0].emitted.is_empty());
    assert_eq!(host.stats().emits_refused_invalid, 1);

    // State writes stop at the delivery's budget: what was kept fits, and
    // one more value would not have.
    let state = publish(&host, "chaos", "hostile.big-state", "s-1").await;
    assert!(state.iter().all(|d| d.outcome.is_handled()), "{state:#?}");
    let store = host.state_store();
    let mut stored = 0;
    let mut i = 0;
    while let Some(value) = store
        .get("chaos", "big-state", &format!("s-1/{i}"))
        .expect("the in-memory store answers")
    {
        stored += format!("s-1/{i}").len() + value.len();
        i += 1;
    }
    let limit = HostConfig::default().max_state_bytes_per_delivery;
    assert!(stored <= limit, "{stored} bytes stored");
    assert!(stored + format!("s-1/{i}").len() + 64 * 1024 > limit);
    assert_eq!(host.stats().state_writes_refused, 1);

    let forge = publish(&host, "chaos", "hostile.forge-log", "l-1").await;
    assert!(forge.iter().all(|d| d.outcome.is_handled()), "{forge:#?}");

    // The tenant's healthy plugin, and the other tenant, were unaffected.
    let calm = publish(&host, "bystander", "order.created", "calm-1").await;
    assert_eq!(calm.len(), 1);
    assert!(calm[0].outcome.is_handled());
    let stats = host.stats();
    assert_eq!(
        stats.failures_of(FailureKind::HandlerPermanent),
        2,
        "{stats:#?}"
    );
    // ok, big-state and forge-log, the healthy plugin on each of the five
    // events, and the bystander.
    assert_eq!(stats.deliveries_ok, 3 + 5 + 1, "{stats:#?}");
}

/// A guest's error message is kept whole at the limit, and cut one byte
/// over it.
#[test]
fn hostile_error_messages_are_cut_at_the_limit() {
    let (host, _dir) = hostile_host(
        HostConfig::default(),
        &[
            ("at", hostile_manifest("big-error", "size = \"4096\"")),
            ("over", hostile_manifest("big-error", "size = \"4097\"")),
        ],
    );
    let error = |plugin: &str| {
        let plugin = host.plugin("chaos", plugin).expect("loaded");
        let event = event("chaos", "hostile.big-error", "e-1", serde_json::json!({}));
        failure(&plugin.deliver(&event).expect("deliverable").0).message
    };
    let at = error("at");
    assert_eq!(at.len(), 4096);
    assert!(!at.contains("truncated"));
    // 4097 bytes, ending in a three-byte character: the cut at 4096 bytes
    // falls inside it, so the character goes whole.
    let over = error("over");
    assert_eq!(over, format!("{}… [3 bytes truncated]", &at[..4094]));
    assert_eq!(host.stats().error_messages_truncated, 1);
}

/// The bytes of the events one delivery emits are bounded: an emit that
/// brings them exactly to the limit is accepted, one byte over is refused
/// with the limit named, and counted.
#[test]
fn hostile_emits_are_bounded_in_bytes() {
    let manifest = hostile_manifest(
        "big-emit",
        "size = \"1000\"\ncount = \"4\"\nstrict = \"true\"",
    );
    let plugins = [("emitter", manifest)];
    let root = event("chaos", "hostile.big-emit", "b-1", serde_json::json!({}));
    let run = |budget: usize| {
        let config = HostConfig {
            max_emit_bytes_per_delivery: budget,
            ..HostConfig::default()
        };
        let (host, _dir) = hostile_host(config, &plugins);
        let plugin = host.plugin("chaos", "emitter").expect("loaded");
        let (delivery, emitted) = plugin.deliver(&root).expect("deliverable");
        (delivery, emitted, host.stats())
    };
    // Each event's size, as the host counts it.
    let (delivery, emitted, _) = run(usize::MAX);
    assert!(delivery.outcome.is_handled(), "{delivery:#?}");
    assert_eq!(emitted.len(), 4);
    let size = plugbus::batch::event_bytes(&emitted[0]);
    assert!(size > 1000, "{size}");
    assert!(
        emitted
            .iter()
            .all(|e| plugbus::batch::event_bytes(e) == size)
    );

    let (delivery, emitted, stats) = run(4 * size);
    assert!(delivery.outcome.is_handled(), "{delivery:#?}");
    assert_eq!(emitted.len(), 4);
    assert_eq!(stats.emits_refused_bytes, 0);

    let (delivery, emitted, stats) = run(4 * size - 1);
    let f = failure(&delivery);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert!(
        f.message.contains(&format!(
            "limit of {} bytes of emitted events per delivery",
            4 * size - 1
        )),
        "{f:?}"
    );
    assert!(emitted.is_empty());
    assert_eq!(stats.emits_accepted, 3);
    assert_eq!(stats.emits_refused_bytes, 1);
}

/// An emitted event larger than the event log stores (a NATS server's
/// `max_payload` less room for headers, given as `max_event_bytes`) is
/// refused to the plugin with the limit named, and counted: no commit
/// ever holds an event the log cannot store. The fixture fails at a
/// refused emit (`strict`), so the delivery fails permanently.
#[test]
fn an_emitted_event_larger_than_the_log_stores_is_refused() {
    let manifest = hostile_manifest(
        "big-emit",
        "size = \"1000\"\ncount = \"4\"\nstrict = \"true\"",
    );
    let plugins = [("emitter", manifest)];
    let root = event("chaos", "hostile.big-emit", "b-1", serde_json::json!({}));
    let run = |max_event_bytes: Option<usize>| {
        let config = HostConfig {
            max_event_bytes,
            ..HostConfig::default()
        };
        let (host, _dir) = hostile_host(config, &plugins);
        let plugin = host.plugin("chaos", "emitter").expect("loaded");
        let (delivery, emitted) = plugin.deliver(&root).expect("deliverable");
        (delivery, emitted, host.stats())
    };
    // Each event's stored form, its CloudEvents JSON.
    let (delivery, emitted, _) = run(None);
    assert!(delivery.outcome.is_handled(), "{delivery:#?}");
    let sizes: Vec<usize> = emitted.iter().map(|e| e.to_json_string().len()).collect();
    let (smallest, largest) = (sizes.iter().min(), sizes.iter().max());
    let (Some(&smallest), Some(&largest)) = (smallest, largest) else {
        panic!("no events emitted");
    };

    let (delivery, emitted, stats) = run(Some(largest));
    assert!(delivery.outcome.is_handled(), "{delivery:#?}");
    assert_eq!(emitted.len(), 4);
    assert_eq!(stats.emits_refused_bytes, 0);

    let (delivery, emitted, stats) = run(Some(smallest - 1));
    let f = failure(&delivery);
    assert_eq!(f.kind, FailureKind::HandlerPermanent);
    assert!(
        f.message.contains(&format!(
            "the event log stores events of at most {} bytes",
            smallest - 1
        )),
        "{f:?}"
    );
    assert!(emitted.is_empty());
    assert_eq!(stats.emits_accepted, 0);
    assert_eq!(stats.emits_refused_bytes, 1);
}

/// The flood: the same 1 MiB event emitted 100 times per event.
/// Under the default limits a delivery keeps at most 4 MiB of events, and
/// the rest is refused, not buffered.
#[test]
fn hostile_emit_floods_keep_at_most_the_budget() {
    let (host, _dir) = hostile_host(
        HostConfig::default(),
        &[("flood", hostile_manifest("big-emit", ""))],
    );
    let plugin = host.plugin("chaos", "flood").expect("loaded");
    let events: Vec<_> = (0..4)
        .map(|i| {
            event(
                "chaos",
                "hostile.big-emit",
                &format!("f-{i}"),
                serde_json::json!({}),
            )
        })
        .collect();
    let limit = HostConfig::default().max_emit_bytes_per_delivery;
    for (delivery, emitted) in plugin.deliver_batch(&events).expect("valid events") {
        assert!(delivery.outcome.is_handled(), "{delivery:#?}");
        let bytes: usize = emitted.iter().map(plugbus::batch::event_bytes).sum();
        assert!(bytes <= limit, "{bytes}");
        assert_eq!(emitted.len(), 3, "three events of 1 MiB and a little");
    }
    assert_eq!(host.stats().emits_refused_bytes, 4 * 97);
}

/// A plugin that emits ten copies of every event it handles, published
/// once: the whole chain emits no more than its budget, and the events of
/// each delivery carry their shares of what the chain has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_amplification_stays_within_the_chain_budget() {
    let config = HostConfig {
        max_events_per_chain: 100,
        ..HostConfig::default()
    };
    // `record-budget` stores the `chainbudget` of each event it sees.
    let (host, _dir) = hostile_host(
        config,
        &[
            ("amplify", hostile_manifest("amplify", "")),
            (
                "observer",
                "subscribe = [\"hostile.amplify\"]\n[config]\nmode = \"record-budget\"\n"
                    .to_owned(),
            ),
        ],
    );
    let deliveries = publish(&host, "chaos", "hostile.amplify", "root").await;
    let emitted: usize = deliveries.iter().map(|d| d.emitted.len()).sum();
    assert_eq!(emitted, 100, "the chain's budget, all of it");
    let stats = host.stats();
    assert_eq!(stats.emits_accepted, 100);
    assert!(stats.emits_refused_budget >= 10, "{stats:#?}");
    assert!(deliveries.iter().all(|d| d.outcome.is_handled()));

    // The root's ten children share the 90 events left after them.
    let root = deliveries
        .iter()
        .find(|d| d.event_id == "root" && d.plugin == "amplify")
        .expect("the root's delivery");
    assert_eq!(root.emitted.len(), 10);
    let store = host.state_store();
    let budget_of = |id: &str| -> Option<usize> {
        let value = store.get("chaos", "observer", id).expect("answers")?;
        String::from_utf8(value).ok()?.parse().ok()
    };
    assert_eq!(budget_of("root"), None, "a published event has none");
    let shares: Vec<_> = root.emitted.iter().map(|e| budget_of(&e.id)).collect();
    assert_eq!(shares, vec![Some(9); 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wit_v0_2() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "older",
        artifacts::FIXTURE_WIT_V0_2,
        Some("subscribe = [\"order.*\", \"v02.fail\"]"),
    );
    dir.add(
        "acme-pos",
        "audit",
        artifacts::AUDIT_LOG,
        Some("subscribe = [\"v02.*\"]"),
    );
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let older = host.plugin("acme-pos", "older").expect("loaded");
    assert_eq!(older.wit_version(), "0.2.0");
    assert!(older.batching(), "0.2.0 plugins are batched");
    assert_eq!(
        host.plugin("acme-pos", "audit")
            .expect("loaded")
            .wit_version(),
        "0.3.0"
    );

    // Its host functions work: it logs, reads and writes state, and its
    // emit reaches the audit log.
    let d = publish(&host, "acme-pos", "order.created", "o-1").await;
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].outcome, Outcome::Handled, "{d:#?}");
    assert_eq!(d[1].plugin, "audit");
    assert_eq!(d[1].event_type, "v02.seen");
    assert_eq!(d[1].causation_id.as_deref(), Some("o-1"));
    let count = || {
        host.state_store()
            .get("acme-pos", "older", "count")
            .expect("the in-memory store answers")
    };
    assert_eq!(count().as_deref(), Some(&b"1"[..]));
    // Its handler errors keep their kind.
    let d = publish(&host, "acme-pos", "v02.fail", "f-1").await;
    let f = failure(to_plugin(&d, "older")[0]);
    assert_eq!(f.kind, FailureKind::HandlerRetryable);
    assert_eq!(f.message, "asked to fail");

    // One event through `handle`, with its attempt.
    let (d, emitted) = older
        .deliver(&event(
            "acme-pos",
            "order.created",
            "h-1",
            serde_json::json!({}),
        ))
        .expect("a valid event");
    assert!(d.outcome.is_handled(), "{d:#?}");
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].data(), b"h-1/1/2/handle");

    // Many events at once go through `handle-batch`, each seeing the state
    // written by those before it.
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                "acme-pos",
                "order.created",
                &format!("m-{i}"),
                serde_json::json!({}),
            )
        })
        .collect();
    let reports = older.deliver_batch(&events).expect("valid events");
    assert_eq!(reports.len(), 20);
    for (i, (d, emitted)) in reports.iter().enumerate() {
        assert!(d.outcome.is_handled(), "{d:#?}");
        assert_eq!(emitted.len(), 1, "{d:#?}");
        let data = String::from_utf8_lossy(emitted[0].data()).into_owned();
        assert_eq!(data, format!("m-{i}/1/{}/batch", i + 3));
    }
    assert_eq!(count().as_deref(), Some(&b"22"[..]));
}
