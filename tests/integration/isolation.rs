//! Tenants, plugins and the host do not hurt one another.

use std::future::Future;
use std::time::Duration;

use plugbus::{FailureKind, HostConfig, LoadError, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{
    PluginsDir, event, failure, host_for, host_with, kind, publish, stock_changed,
};

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
    let (host, _) = host_with(ample_fuel(), &dir);
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
    // An invalid event cannot be made, so it never reaches a host.
    let good = event("acme-pos", "order.created", "1", serde_json::json!({}));
    let err = good
        .to_builder()
        .time("yesterday".to_owned())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("'time'"), "{err}");
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
    // An invalid event cannot be made, so it never reaches a plugin.
    let err = event("acme-pos", "order.created", "a-1", serde_json::json!({}))
        .to_builder()
        .source("")
        .build()
        .unwrap_err();
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

/// The manifest of a `sleeper` plugin subscribed to `sleeper.*`, in `mode`,
/// with more `[config]` lines and `[limits]`.
fn sleeper_manifest(mode: &str, config: &str, limits: &str) -> String {
    format!(
        "subscribe = [\"sleeper.*\"]\n[limits]\n{limits}\n[config]\nmode = \"{mode}\"\n{config}\n"
    )
}

/// Runs `test` on a runtime of its own and fails when it has not ended
/// within `bound`. The runtime is then left behind, not waited for, so that
/// a guest still blocked in a host call fails the test instead of hanging
/// it.
fn bounded<F: Future>(bound: Duration, what: &str, test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let ended = runtime.block_on(async { tokio::time::timeout(bound, test).await });
    runtime.shutdown_background();
    ended.unwrap_or_else(|_| panic!("{what} did not end within {bound:?}"))
}

/// Wide enough for any machine, far below the guests' ten-minute sleeps.
const DID_NOT_HANG: Duration = Duration::from_secs(20);

/// A guest that sleeps for ten minutes (blocked in
/// `wasi:io/poll.[method]pollable.block`) is woken at its 100 ms deadline
/// and fails as `timeout`; its instance is discarded and the plugin's next
/// event is handled by a fresh one.
#[test]
pub(crate) fn sleeper() {
    bounded(DID_NOT_HANG, "a delivery to a sleeping guest", async {
        let dir = PluginsDir::new();
        dir.add(
            "chaos",
            "sleeper",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest("sleep", "", "timeout_ms = 100")),
        );
        let (host, report) = host_for(&dir);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let deliveries = publish(&host, "chaos", "sleeper.test", "s-1").await;
        let failure = failure(&deliveries[0]);
        assert_eq!(failure.kind, FailureKind::Timeout, "{failure:?}");
        assert!(
            failure.message.contains("pollable.block") && failure.message.contains("100 ms"),
            "the message names the host call and the limit: {}",
            failure.message
        );
        assert_eq!(host.stats().instances_discarded, 1);
        let next = publish(&host, "chaos", "sleeper.ok", "s-2").await;
        assert_eq!(next[0].outcome, Outcome::Handled);
    });
}

/// The same for a guest waiting through `wasi:io/poll.poll` on a clock
/// subscription.
#[test]
fn a_guest_blocked_in_poll_is_stopped_at_its_deadline() {
    bounded(DID_NOT_HANG, "a delivery to a polling guest", async {
        let dir = PluginsDir::new();
        dir.add(
            "chaos",
            "poller",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest("poll", "", "timeout_ms = 100")),
        );
        let (host, _) = host_for(&dir);
        let deliveries = publish(&host, "chaos", "sleeper.test", "p-1").await;
        let failure = failure(&deliveries[0]);
        assert_eq!(failure.kind, FailureKind::Timeout, "{failure:?}");
        assert!(
            failure.message.contains("wasi:io/poll.poll"),
            "{}",
            failure.message
        );
        let next = publish(&host, "chaos", "sleeper.ok", "p-2").await;
        assert_eq!(next[0].outcome, Outcome::Handled);
    });
}

/// Sleeping and polling within the time limit, and reading stdin (empty),
/// are not disturbed: the bounded host calls return what WASI's return.
#[test]
fn host_calls_that_end_in_time_are_not_disturbed() {
    bounded(DID_NOT_HANG, "short sleeps", async {
        let dir = PluginsDir::new();
        for (name, mode) in [("sleep", "sleep"), ("poll", "poll"), ("stdin", "stdin")] {
            dir.add(
                "calm",
                name,
                artifacts::FIXTURE_SLEEPER,
                Some(&sleeper_manifest(
                    mode,
                    "millis = \"20\"",
                    "timeout_ms = 10000",
                )),
            );
        }
        let (host, _) = host_for(&dir);
        let deliveries = publish(&host, "calm", "sleeper.test", "c-1").await;
        assert_eq!(deliveries.len(), 3);
        for d in &deliveries {
            assert_eq!(d.outcome, Outcome::Handled, "{d:#?}");
        }
    });
}

/// Each event of a batch (`handle-batch`) gets the whole time limit for
/// its host calls: four sleeps of 300 ms under a 1 s limit are handled,
/// though together they take longer than one limit.
#[test]
fn each_event_of_a_batch_has_its_own_deadline_in_host_calls() {
    bounded(DID_NOT_HANG, "a batch of sleeps", async {
        let dir = PluginsDir::new();
        dir.add(
            "calm",
            "sleeper",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest(
                "sleep",
                "millis = \"300\"",
                "timeout_ms = 1000",
            )),
        );
        let (host, _) = host_for(&dir);
        let plugin = host.plugin("calm", "sleeper").expect("loaded");
        assert!(plugin.batching(), "the SDK exports handle-batch");
        let events: Vec<_> = (0..4)
            .map(|i| {
                event(
                    "calm",
                    "sleeper.test",
                    &format!("b-{i}"),
                    serde_json::json!({}),
                )
            })
            .collect();
        let reports = tokio::task::spawn_blocking(move || plugin.deliver_batch(&events))
            .await
            .expect("the delivering thread")
            .expect("valid events");
        assert_eq!(reports.len(), 4);
        for (delivery, _) in &reports {
            assert_eq!(delivery.outcome, Outcome::Handled, "{delivery:#?}");
        }
        assert_eq!(host.stats().batched_deliveries, 4);
    });
}

/// A loop that calls a cheap host function (`config-get`) is still
/// bounded: by fuel, or by the deadline when fuel is plentiful.
#[test]
fn a_loop_calling_a_cheap_host_function_is_bounded() {
    bounded(DID_NOT_HANG, "host-call loops", async {
        let dir = PluginsDir::new();
        dir.add(
            "chaos",
            "by-fuel",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest(
                "host-loop",
                "",
                "fuel = 5_000_000\ntimeout_ms = 30000",
            )),
        );
        dir.add(
            "chaos",
            "by-time",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest(
                "host-loop",
                "",
                "fuel = 10_000_000_000\ntimeout_ms = 100",
            )),
        );
        let (host, _) = host_with(ample_fuel(), &dir);
        let deliveries = publish(&host, "chaos", "sleeper.test", "l-1").await;
        let kinds: Vec<_> = deliveries
            .iter()
            .map(|d| (d.plugin.as_str(), kind(d)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("by-fuel", Some(FailureKind::FuelExhausted)),
                ("by-time", Some(FailureKind::Timeout)),
            ]
        );
    });
}

/// Host resources created without end (clock subscriptions never
/// dropped: the instance's handle table and the host's resource table
/// grow) stop at wasmtime's handle limit, as a trap, long before the time
/// limit.
#[test]
fn growing_the_host_tables_without_end_is_bounded() {
    bounded(DID_NOT_HANG, "table growth", async {
        let dir = PluginsDir::new();
        dir.add(
            "chaos",
            "tables",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest(
                "table-grow",
                "",
                "fuel = 10_000_000_000\ntimeout_ms = 15000",
            )),
        );
        // Fuel past the default ceiling: the tables, not the fuel, must
        // stop it.
        let (host, _) = host_with(ample_fuel(), &dir);
        let deliveries = publish(&host, "chaos", "sleeper.test", "t-1").await;
        let failure = failure(&deliveries[0]);
        assert_eq!(failure.kind, FailureKind::Trap, "{failure:?}");
        assert!(failure.message.contains("handle"), "{}", failure.message);
        let next = publish(&host, "chaos", "sleeper.ok", "t-2").await;
        assert_eq!(next[0].outcome, Outcome::Handled);
    });
}

/// Copying 8 MiB at a time without end (`memory.copy`, one unit of fuel
/// each) is stopped by the deadline.
#[test]
fn a_large_memory_copy_loop_is_bounded() {
    bounded(DID_NOT_HANG, "memory copies", async {
        let dir = PluginsDir::new();
        dir.add(
            "chaos",
            "copier",
            artifacts::FIXTURE_SLEEPER,
            Some(&sleeper_manifest(
                "memory-copy",
                "",
                "fuel = 10_000_000_000\ntimeout_ms = 100",
            )),
        );
        let (host, _) = host_with(ample_fuel(), &dir);
        let deliveries = publish(&host, "chaos", "sleeper.test", "m-1").await;
        assert_eq!(kind(&deliveries[0]), Some(FailureKind::Timeout));
    });
}

/// With a fresh instance per event and a pool of two instance slots, eight
/// deliveries at once (four threads) wait for slots: backpressure, not
/// failures.
#[test]
fn pool_exhaustion_in_fresh_instance_mode_is_backpressure() {
    bounded(
        Duration::from_secs(60),
        "deliveries beyond the pool",
        async {
            let dir = PluginsDir::new();
            dir.add(
                "t",
                "sleeper",
                artifacts::FIXTURE_SLEEPER,
                Some(&sleeper_manifest(
                    "sleep",
                    "millis = \"200\"",
                    "timeout_ms = 10000",
                )),
            );
            let config = HostConfig {
                plugin_concurrency: 4,
                ..HostConfig::fresh_instances(2)
            };
            let (host, report) = host_with(config, &dir);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            let publishes = (0..8).map(|i| {
                let host = &host;
                async move { publish(host, "t", "sleeper.test", &format!("x-{i}")).await }
            });
            let reports = futures::future::join_all(publishes).await;
            for deliveries in &reports {
                assert_eq!(
                    deliveries[0].outcome,
                    Outcome::Handled,
                    "{:#?}",
                    deliveries[0]
                );
            }
            // The check at load, then one instance per event.
            assert_eq!(host.stats().instances_created, 1 + 8);
        },
    );
}

/// A reused instance is recycled after `recycle_after_events` events: the
/// Nth event is the last it handles, the N+1st gets a fresh instance.
#[tokio::test]
async fn instances_are_recycled_after_n_events() {
    let dir = PluginsDir::new();
    dir.add("t", "noop", artifacts::FIXTURE_NOOP, None);
    let config = HostConfig {
        recycle_after_events: 3,
        plugin_concurrency: 1,
        ..HostConfig::default()
    };
    let (host, _) = host_with(config, &dir);
    let plugin = host.plugin("t", "noop").expect("loaded");
    for i in 0..2 {
        publish(&host, "t", "order.created", &format!("r-{i}")).await;
    }
    assert_eq!(
        (host.stats().instances_created, plugin.instances_recycled()),
        (1, 0)
    );
    assert_eq!(plugin.idle_instances(), 1);
    publish(&host, "t", "order.created", "r-2").await;
    assert_eq!(
        (host.stats().instances_created, plugin.instances_recycled()),
        (1, 1)
    );
    assert_eq!(
        plugin.idle_instances(),
        0,
        "the recycled instance was dropped"
    );
    let fourth = publish(&host, "t", "order.created", "r-3").await;
    assert_eq!(fourth[0].outcome, Outcome::Handled);
    assert_eq!(
        (host.stats().instances_created, plugin.instances_recycled()),
        (2, 1)
    );
    assert_eq!(
        host.stats().instances_discarded,
        0,
        "recycling is not a failure"
    );
}

/// A plugin that leaks 512 KiB per event under a 32 MiB limit fails with
/// `memory_limit` after some dozens of events, unless its instance is
/// recycled once its memory stays above the high-water mark (75%, three
/// deliveries in a row): then every event is handled.
#[tokio::test]
async fn a_slowly_leaking_instance_is_recycled_before_its_limit() {
    let dir = PluginsDir::new();
    dir.add(
        "t",
        "leak",
        artifacts::FIXTURE_SLEEPER,
        Some(&sleeper_manifest(
            "leak",
            "leak_kib = \"512\"",
            "memory_mib = 32",
        )),
    );
    let run = |recycle_memory_percent: u8| {
        let config = HostConfig {
            recycle_after_events: 0,
            recycle_memory_percent,
            plugin_concurrency: 1,
            ..HostConfig::default()
        };
        host_with(config, &dir).0
    };
    // Without the rule, the leak reaches the limit.
    let host = run(0);
    let mut failed = None;
    for i in 0..100 {
        let deliveries = publish(&host, "t", "sleeper.test", &format!("a-{i}")).await;
        if let Some(kind) = kind(&deliveries[0]) {
            failed = Some(kind);
            break;
        }
    }
    assert_eq!(failed, Some(FailureKind::MemoryLimit));

    let host = run(75);
    for i in 0..100 {
        let deliveries = publish(&host, "t", "sleeper.test", &format!("b-{i}")).await;
        assert_eq!(deliveries[0].outcome, Outcome::Handled, "event {i}");
    }
    let plugin = host.plugin("t", "leak").expect("loaded");
    assert!(
        plugin.instances_recycled() >= 2,
        "{}",
        plugin.instances_recycled()
    );
    assert_eq!(host.stats().instances_discarded, 0);
}

/// [`Plugin::deliver`](plugbus::Plugin::deliver) on a thread of no tokio
/// runtime (WASI then uses a runtime of its own): a guest blocked in a host
/// call is stopped at its deadline there too.
#[test]
fn a_guest_blocked_outside_any_runtime_is_stopped_at_its_deadline() {
    let dir = PluginsDir::new();
    dir.add(
        "chaos",
        "sleeper",
        artifacts::FIXTURE_SLEEPER,
        Some(&sleeper_manifest("sleep", "", "timeout_ms = 100")),
    );
    let (host, _) = host_for(&dir);
    let plugin = host.plugin("chaos", "sleeper").expect("loaded");
    let (delivered, delivery) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sleepy = event("chaos", "sleeper.test", "n-1", serde_json::json!({}));
        let _ = delivered.send(plugin.deliver(&sleepy).map(|(d, _)| d));
    });
    let delivery = delivery
        .recv_timeout(DID_NOT_HANG)
        .expect("the delivery ended within the bound")
        .expect("a valid event");
    assert_eq!(kind(&delivery), Some(FailureKind::Timeout), "{delivery:#?}");
}

/// The durable bus's shutdown waits for the batch each consumer is
/// delivering; a guest blocked in a host call ends it at its deadline.
#[test]
fn a_blocked_guest_does_not_hold_the_durable_shutdown() {
    use plugbus::durable::{DurableBus, DurableConfig};
    use plugbus::log::{SqliteLog, SqliteLogConfig};

    let dir = PluginsDir::new();
    dir.add(
        "chaos",
        "sleeper",
        artifacts::FIXTURE_SLEEPER,
        Some(&sleeper_manifest("sleep", "", "timeout_ms = 1500")),
    );
    let data = tempfile::tempdir().expect("tempdir");
    bounded(DID_NOT_HANG, "the durable bus's shutdown", async {
        let (host, _) = host_for(&dir);
        let host = std::sync::Arc::new(host);
        let log = SqliteLog::open(data.path(), SqliteLogConfig::default()).expect("log");
        let bus = DurableBus::start(host, std::sync::Arc::new(log), DurableConfig::default())
            .await
            .expect("start the bus");
        bus.publish(vec![event(
            "chaos",
            "sleeper.test",
            "d-1",
            serde_json::json!({}),
        )])
        .await
        .expect("publish");
        // Let the consumer start the delivery and the guest block.
        tokio::time::sleep(Duration::from_millis(300)).await;
        bus.shutdown().await;
    });
}

/// A host whose fuel ceiling lets a manifest ask for any fuel, for the
/// plugins that only their clock or their memory may stop.
fn ample_fuel() -> HostConfig {
    HostConfig {
        max_limits: plugbus::Limits {
            fuel: u64::MAX,
            ..plugbus::Limits::DEFAULT_CEILINGS
        },
        ..HostConfig::default()
    }
}
