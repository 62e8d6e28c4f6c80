//! Tenants, plugins and the host do not hurt one another.

use std::time::Duration;

use plugbus::{FailureKind, HostConfig, LoadError, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_for, host_with, kind, publish, stock_changed};

#[tokio::test]
async fn events_reach_only_their_tenants_subscribed_plugins() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "orders",
        artifacts::FIXTURE_NOOP,
        Some("subscribe = [\"order.*\"]"),
    );
    dir.add(
        "acme-pos",
        "created",
        artifacts::FIXTURE_NOOP,
        Some("subscribe = [\"order.created\"]"),
    );
    dir.add(
        "acme-pos",
        "stock",
        artifacts::FIXTURE_NOOP,
        Some("subscribe = [\"inventory.*\"]"),
    );
    dir.add("acme-pos", "all", artifacts::FIXTURE_NOOP, None);
    dir.add("globex", "all", artifacts::FIXTURE_NOOP, None);
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let reached = |report: plugbus::PublishReport| -> Vec<String> {
        report
            .deliveries
            .iter()
            .map(|d| format!("{}/{}", d.tenant, d.plugin))
            .collect()
    };
    let paid = host
        .publish(event("acme-pos", "order.paid", "1", serde_json::json!({})))
        .await
        .expect("valid");
    assert_eq!(reached(paid), ["acme-pos/all", "acme-pos/orders"]);
    let created = host
        .publish(event(
            "acme-pos",
            "order.created",
            "2",
            serde_json::json!({}),
        ))
        .await
        .expect("valid");
    assert_eq!(
        reached(created),
        ["acme-pos/all", "acme-pos/created", "acme-pos/orders"]
    );
    let globex = host
        .publish(event("globex", "order.created", "3", serde_json::json!({})))
        .await
        .expect("valid");
    assert_eq!(reached(globex), ["globex/all"]);
    let nobody = host
        .publish(event(
            "initech",
            "order.created",
            "4",
            serde_json::json!({}),
        ))
        .await
        .expect("valid");
    assert!(nobody.deliveries.is_empty());
}

#[tokio::test]
async fn emitted_events_stay_in_the_emitters_tenant() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "low-stock-alert",
        artifacts::LOW_STOCK_ALERT,
        Some("subscribe = [\"inventory.stock_changed\"]"),
    );
    dir.add("globex", "audit", artifacts::AUDIT_LOG, None);
    let (host, _) = host_for(&dir);
    let report = host
        .publish(stock_changed("acme-pos", "e-1", "sku-9", 0))
        .await
        .expect("valid");
    assert_eq!(report.deliveries.len(), 1, "{:#?}", report.deliveries);
    assert_eq!(report.deliveries[0].emitted.len(), 2);
}

/// On a runtime with a single thread, a plugin spinning until its time
/// limit must not hold up other plugins' events: deliveries run on blocking
/// threads, never on the runtime's own.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_plugin_does_not_delay_others() {
    let dir = PluginsDir::new();
    dir.add(
        "chaos",
        "spin",
        artifacts::FIXTURE_SPIN,
        Some("subscribe = [\"fixture.*\"]\n[limits]\ntimeout_ms = 5000\nfuel = 1_000_000_000_000"),
    );
    dir.add("calm", "noop", artifacts::FIXTURE_NOOP, None);
    // Ample fuel, above the default ceiling, so that only the clock stops it.
    let config = HostConfig {
        max_limits: plugbus::Limits {
            fuel: u64::MAX,
            ..plugbus::Limits::DEFAULT_CEILINGS
        },
        ..HostConfig::default()
    };
    let (host, _) = host_with(config, &dir);
    let host = std::sync::Arc::new(host);
    let spinning = {
        let host = host.clone();
        tokio::spawn(async move {
            host.publish(event(
                "chaos",
                "fixture.spin",
                "spin-1",
                serde_json::json!({}),
            ))
            .await
        })
    };
    // Let the spinning delivery start.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..50 {
        let report = host
            .publish(event(
                "calm",
                "order.created",
                &format!("c-{i}"),
                serde_json::json!({}),
            ))
            .await
            .expect("valid");
        assert_eq!(report.deliveries[0].outcome, Outcome::Handled);
    }
    assert!(
        !spinning.is_finished(),
        "50 healthy events were handled while the spinning plugin still ran"
    );
    let report = spinning.await.expect("task").expect("valid");
    assert_eq!(kind(&report.deliveries[0]), Some(FailureKind::Timeout));
}

#[tokio::test]
async fn fresh_instance_mode_with_the_pooling_allocator() {
    let dir = PluginsDir::new();
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    dir.add(
        "t",
        "panic",
        artifacts::FIXTURE_PANIC,
        Some("subscribe = [\"fixture.*\"]"),
    );
    let (host, report) = host_with(HostConfig::fresh_instances(16), &dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for i in 0..20 {
        let deliveries = publish(&host, "t", "fixture.x", &format!("f-{i}")).await;
        let kinds: Vec<_> = deliveries.iter().map(kind).collect();
        assert_eq!(kinds, [None, Some(FailureKind::Trap)]);
    }
    // Each plugin was instantiated once at load, as a check, then every
    // event had an instance of its own.
    assert_eq!(host.stats().instances_created, 2 + 40);
    assert_eq!(
        host.plugin("t", "noop").expect("loaded").idle_instances(),
        0
    );
}

#[tokio::test]
async fn invalid_events_are_refused_with_the_attribute_named() {
    let host = plugbus::Host::new(HostConfig::default()).expect("host");
    let mut bad = event("acme-pos", "order.created", "1", serde_json::json!({}));
    bad.time = Some("yesterday".into());
    let err = host.publish(bad).await.unwrap_err();
    assert!(err.to_string().contains("'time'"), "{err}");
    assert_eq!(host.stats().events_refused, 1);
}

/// A memory limit below what the component needs at start is found at load,
/// when the plugin is instantiated once under its limits: the plugin is
/// refused with the reason, and the others run on.
#[tokio::test]
async fn a_limit_below_the_initial_memory_is_refused_at_load() {
    let dir = PluginsDir::new();
    dir.add(
        "t",
        "tiny",
        artifacts::FIXTURE_NOOP,
        Some("[limits]\nmemory_mib = 1"),
    );
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    let (host, report) = host_for(&dir);
    let [error] = report.errors.as_slice() else {
        panic!("one refusal expected: {:?}", report.errors);
    };
    assert!(
        matches!(error, LoadError::Instantiate { reason, .. }
            if reason.starts_with("instantiation failed: memory limit exceeded")),
        "{error}"
    );
    assert!(error.to_string().contains("tiny.wasm"), "{error}");
    let deliveries = publish(&host, "t", "order.created", "m-1").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, Outcome::Handled);
    let status = host
        .statuses()
        .into_iter()
        .find(|s| s.name == "tiny")
        .expect("a status for the refused plugin");
    assert_eq!(status.health, plugbus::Health::FailedToLoad);
    assert_eq!(status.version, None);
}

/// Delivering directly to a plugin cannot cross tenants either.
#[tokio::test]
async fn a_plugin_refuses_another_tenants_event() {
    let dir = PluginsDir::new();
    dir.add("acme-pos", "noop", artifacts::FIXTURE_NOOP, None);
    let (host, _) = host_for(&dir);
    let plugin = host.plugin("acme-pos", "noop").expect("loaded");
    let foreign = event("globex", "order.created", "g-1", serde_json::json!({}));
    let err = plugin.deliver(&foreign).unwrap_err();
    assert!(
        matches!(err, plugbus::DeliverError::WrongTenant { .. }),
        "{err}"
    );
    let mut invalid = event("acme-pos", "order.created", "a-1", serde_json::json!({}));
    invalid.source.clear();
    let err = plugin.deliver(&invalid).unwrap_err();
    assert!(err.to_string().contains("'source'"), "{err}");
    assert_eq!(host.stats().deliveries_ok, 0);
}

/// Deliveries beyond a plugin's concurrency wait in its queue rather than
/// taking threads and instances of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_concurrency_bounds_its_threads_and_instances() {
    let dir = PluginsDir::new();
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    let config = HostConfig {
        plugin_concurrency: 2,
        ..HostConfig::default()
    };
    let (host, _) = host_with(config, &dir);
    let publishes = (0..200).map(|i| {
        let host = &host;
        async move { publish(host, "t", "order.created", &format!("q-{i}")).await }
    });
    let reports = futures::future::join_all(publishes).await;
    assert!(
        reports
            .iter()
            .all(|d| d.len() == 1 && d[0].outcome == Outcome::Handled)
    );
    let stats = host.stats();
    assert_eq!(stats.deliveries_ok, 200);
    assert!(
        (1..=2).contains(&stats.instances_created),
        "{} instances for a concurrency of 2",
        stats.instances_created
    );
}
