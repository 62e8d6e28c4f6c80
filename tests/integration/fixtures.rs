//! One test per fixture. `for_each_fixture!` makes the build fail when a
//! fixture crate has no test function of its name here.

use plugbus::{FailureKind, HostConfig, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, failure, host_for, host_with, kind, publish, to_plugin};

// The `mixed` fixture's test lives with the other batch tests.
use crate::batch::mixed;

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
    // With ample fuel the wall clock stops it...
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 100\nfuel = 1_000_000_000_000",
        FailureKind::Timeout,
    )
    .await;
    // ...and with ample time, the fuel.
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 60_000\nfuel = 5_000_000",
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
        let mut e = event("t", "bench.payload", "c-1", serde_json::json!({}));
        e.data = vec![b'x'; len];
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
    let mut empty = event("t", "bench.payload", "c-2", serde_json::json!({}));
    empty.data.clear();
    let (delivery, _) = plugin.deliver(&empty).expect("deliverable");
    assert_eq!(kind(&delivery), Some(FailureKind::HandlerPermanent));
}
