//! One test per fixture. `for_each_fixture!` makes the build fail when a
//! fixture crate has no test function of its name here.

use plugbus::{FailureKind, HostConfig, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_for, host_with, kind, to_plugin};

macro_rules! assert_fixture_has_test {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
artifacts::for_each_fixture!(assert_fixture_has_test);

/// Runs `events` of type `fixture.test` through `fixture` (in tenant
/// `chaos`, beside a healthy audit-log subscribed to everything) while a
/// second tenant's audit-log gets events of its own, and checks that every
/// fixture delivery failed with `expected` and every healthy delivery was
/// handled.
fn assert_isolated_failure(fixture: &str, manifest: &str, expected: FailureKind) {
    let dir = PluginsDir::new();
    dir.add("chaos", "fixture", fixture, Some(manifest));
    dir.add("chaos", "healthy", artifacts::AUDIT_LOG, None);
    dir.add("bystander", "audit", artifacts::AUDIT_LOG, None);
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let runtime = runtime();
    runtime.block_on(async {
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
    });
    let stats = host.stats();
    assert_eq!(stats.failures_of(expected), 3);
    assert_eq!(stats.deliveries_ok, 6);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn spin() {
    // With ample fuel the wall clock stops it...
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 100\nfuel = 1_000_000_000_000",
        FailureKind::Timeout,
    );
    // ...and with ample time, the fuel.
    assert_isolated_failure(
        artifacts::FIXTURE_SPIN,
        "subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 60_000\nfuel = 5_000_000",
        FailureKind::FuelExhausted,
    );
}

#[test]
fn grow_memory() {
    assert_isolated_failure(
        artifacts::FIXTURE_GROW_MEMORY,
        "subscribe = [\"fixture.*\"]\n[limits]\nmemory_mib = 16",
        FailureKind::MemoryLimit,
    );
}

#[test]
fn recurse() {
    assert_isolated_failure(
        artifacts::FIXTURE_RECURSE,
        "subscribe = [\"fixture.*\"]",
        FailureKind::StackOverflow,
    );
}

#[test]
fn panic() {
    assert_isolated_failure(
        artifacts::FIXTURE_PANIC,
        "subscribe = [\"fixture.*\"]",
        FailureKind::Trap,
    );
    // The message tells a panic (with its text) from a bare `unreachable`.
    let dir = PluginsDir::new();
    dir.add("chaos", "panic", artifacts::FIXTURE_PANIC, None);
    let (host, _) = host_for(&dir);
    let runtime = runtime();
    let panicked = runtime
        .block_on(host.publish(event(
            "chaos",
            "fixture.panic",
            "p-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    let failure = panicked.deliveries[0]
        .outcome
        .failure()
        .expect("a failure")
        .clone();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.starts_with("panic: "), "{failure:?}");
    assert!(
        failure.message.contains("fixture panic on p-1"),
        "{failure:?}"
    );
    let unreachable = runtime
        .block_on(host.publish(event(
            "chaos",
            "fixture.unreachable",
            "u-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    let failure = unreachable.deliveries[0]
        .outcome
        .failure()
        .expect("a failure")
        .clone();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.starts_with("unreachable"), "{failure:?}");
    // Each trap discarded its instance; the next event got a fresh one.
    let stats = host.stats();
    assert_eq!(stats.instances_discarded, 2);
    assert_eq!(stats.instances_created, 2);
}

#[test]
fn handler_error() {
    assert_isolated_failure(
        artifacts::FIXTURE_HANDLER_ERROR,
        "subscribe = [\"fixture.*\"]",
        FailureKind::HandlerPermanent,
    );
    let dir = PluginsDir::new();
    dir.add("chaos", "errors", artifacts::FIXTURE_HANDLER_ERROR, None);
    let (host, _) = host_for(&dir);
    let runtime = runtime();
    let report = runtime
        .block_on(host.publish(event(
            "chaos",
            "fixture.fail.retryable",
            "r-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    let failure = report.deliveries[0].outcome.failure().expect("a failure");
    assert_eq!(failure.kind, FailureKind::HandlerRetryable);
    assert!(failure.message.contains("r-1"), "{failure:?}");
    let report = runtime
        .block_on(host.publish(event(
            "chaos",
            "fixture.fail.permanent",
            "p-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    let failure = report.deliveries[0].outcome.failure().expect("a failure");
    assert_eq!(failure.kind, FailureKind::HandlerPermanent);
    // A handler error is not a trap: the instance is kept and reused.
    let stats = host.stats();
    assert_eq!(stats.instances_created, 1);
    assert_eq!(stats.instances_discarded, 0);
}

#[test]
fn storm() {
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
    let report = runtime()
        .block_on(host.publish(event(
            "chaos",
            "storm.go",
            "root",
            serde_json::json!({"n": 1}),
        )))
        .expect("valid event");
    // The root event at depth 0 and one emitted event at each depth 1..=5.
    let deliveries = &report.deliveries;
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
    let last = deliveries[5]
        .outcome
        .failure()
        .expect("the emit past the limit fails");
    assert_eq!(last.kind, FailureKind::HandlerPermanent);
    assert!(last.message.contains("chain depth limit of 5"), "{last:?}");
    let stats = host.stats();
    assert_eq!(stats.emits_refused_chain_depth, 1);
    assert_eq!(stats.emits_accepted, 5);
}

#[test]
fn sandbox_probe() {
    let dir = PluginsDir::new();
    dir.add("chaos", "probe", artifacts::FIXTURE_SANDBOX_PROBE, None);
    let (host, _) = host_for(&dir);
    // The fixture fails with "sandbox escape" if it could read a file, list a
    // directory, see an environment variable or argument, or open a socket.
    let report = runtime()
        .block_on(host.publish(event(
            "chaos",
            "fixture.sandbox_probe",
            "s-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    assert_eq!(report.deliveries.len(), 1);
    assert_eq!(
        report.deliveries[0].outcome,
        Outcome::Handled,
        "{:#?}",
        report.deliveries
    );
}

#[test]
fn flood() {
    let dir = PluginsDir::new();
    dir.add("chaos", "flood", artifacts::FIXTURE_FLOOD, None);
    let (host, _) = host_for(&dir);
    let runtime = runtime();
    for i in 0..2 {
        let report = runtime
            .block_on(host.publish(event(
                "chaos",
                "fixture.flood",
                &format!("f-{i}"),
                serde_json::json!({}),
            )))
            .expect("valid event");
        assert_eq!(
            report.deliveries[0].outcome,
            Outcome::Handled,
            "{:#?}",
            report.deliveries
        );
    }
    // 4 MiB of stdout per event, of which the host keeps 64 KiB per delivery.
    let kept = 64 * 1024;
    let dropped = host.stats().output_bytes_dropped;
    assert!(dropped >= 2 * (4 * 1024 * 1024 - kept), "dropped {dropped}");
    assert!(dropped <= 2 * 4 * 1024 * 1024 + 4096, "dropped {dropped}");
}

#[test]
fn noop() {
    let dir = PluginsDir::new();
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    let (host, _) = host_for(&dir);
    let runtime = runtime();
    for i in 0..5 {
        let report = runtime
            .block_on(host.publish(event(
                "t",
                "order.created",
                &format!("n-{i}"),
                serde_json::json!({}),
            )))
            .expect("valid event");
        let d = &report.deliveries[0];
        assert_eq!(d.outcome, Outcome::Handled);
        assert!(d.fuel > 0, "fuel is accounted");
        assert_eq!(d.plugin_version.len(), 12);
    }
    // One instance served all five events.
    assert_eq!(host.stats().instances_created, 1);
}

#[test]
fn wrong_world() {
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
    // The other plugin of the tenant still loaded.
    let names: Vec<_> = host.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["noop"]);
}

#[test]
fn plain_bindgen() {
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
    let report = runtime()
        .block_on(host.publish(event(
            "acme-pos",
            "order.created",
            "o-1",
            serde_json::json!({}),
        )))
        .expect("valid event");
    let d = &report.deliveries;
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
