//! The example plugins of the point-of-sale domain, end to end.

use plugbus::{Event, Outcome};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, host_for, stock_changed, to_plugin};

fn pos_dir() -> PluginsDir {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "low-stock-alert",
        artifacts::LOW_STOCK_ALERT,
        Some("subscribe = [\"inventory.stock_changed\"]\n[config]\nthreshold = \"10\""),
    );
    dir.add(
        "acme-pos",
        "audit-log",
        artifacts::AUDIT_LOG,
        Some("subscribe = [\"*\"]"),
    );
    dir
}

#[tokio::test]
async fn low_stock_alert_emits_and_the_chain_is_routed() {
    let dir = pos_dir();
    let (host, report) = host_for(&dir);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // Above the threshold: audited, nothing emitted.
    let report = host
        .publish(stock_changed("acme-pos", "evt-1", "sku-1", 50))
        .await
        .expect("valid event");
    assert_eq!(report.deliveries.len(), 2);
    assert!(
        report
            .deliveries
            .iter()
            .all(|d| d.outcome == Outcome::Handled)
    );
    assert!(report.deliveries.iter().all(|d| d.emitted.is_empty()));

    // At zero: low_stock and out_of_stock, each audited in turn.
    let report = host
        .publish(stock_changed("acme-pos", "evt-2", "sku-2", 0))
        .await
        .expect("valid event");
    let alert = to_plugin(&report.deliveries, "low-stock-alert");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0].outcome, Outcome::Handled, "{alert:#?}");
    let types: Vec<_> = alert[0].emitted.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(types, ["inventory.low_stock", "inventory.out_of_stock"]);
    assert!(
        alert[0]
            .emitted
            .iter()
            .all(|e| e.subject.as_deref() == Some("sku-2"))
    );

    let audited: Vec<_> = to_plugin(&report.deliveries, "audit-log")
        .into_iter()
        .filter(|d| d.causation_id.as_deref() == Some("evt-2"))
        .map(|d| d.event_type.as_str())
        .collect();
    assert_eq!(audited, ["inventory.low_stock", "inventory.out_of_stock"]);
    assert!(
        report
            .deliveries
            .iter()
            .all(|d| d.outcome == Outcome::Handled)
    );
}

#[tokio::test]
async fn a_bad_payload_is_a_permanent_failure_and_config_is_served() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "low-stock-alert",
        artifacts::LOW_STOCK_ALERT,
        Some("subscribe = [\"inventory.*\"]\n[config]\nthreshold = \"100\""),
    );
    let (host, _) = host_for(&dir);
    // 50 is above the default threshold of 10 but below the configured 100.
    let report = host
        .publish(stock_changed("acme-pos", "evt-1", "sku-1", 50))
        .await
        .expect("valid event");
    let types: Vec<_> = report.deliveries[0]
        .emitted
        .iter()
        .map(|e| e.ty.as_str())
        .collect();
    assert_eq!(types, ["inventory.low_stock"]);

    let bad = stock_changed("acme-pos", "evt-2", "sku-1", 1)
        .to_builder()
        .data(br#"{"sku": 12}"#.to_vec())
        .build()
        .expect("a valid envelope");
    let report = host.publish(bad).await.expect("valid envelope");
    let failure = report.deliveries[0].outcome.failure().expect("a failure");
    assert_eq!(failure.kind, plugbus::FailureKind::HandlerPermanent);
    assert!(
        failure.message.contains("inventory.stock_changed"),
        "{failure:?}"
    );
}

/// The host, not the plugin, sets an emitted event's id, source, time,
/// tenant and chain extensions; the correlation id is the root's id all
/// along a chain.
#[tokio::test]
async fn emitted_events_carry_the_hosts_attributes() {
    let dir = PluginsDir::new();
    dir.add(
        "acme-pos",
        "low-stock-alert",
        artifacts::LOW_STOCK_ALERT,
        Some("subscribe = [\"inventory.stock_changed\"]"),
    );
    dir.add(
        "acme-pos",
        "storm",
        artifacts::FIXTURE_STORM,
        Some("subscribe = [\"inventory.low_stock\"]"),
    );
    let (host, _) = host_for(&dir);
    let alert = host.plugin("acme-pos", "low-stock-alert").expect("loaded");
    let storm = host.plugin("acme-pos", "storm").expect("loaded");

    let root = stock_changed("acme-pos", "root-1", "sku-7", 3);
    let (delivery, emitted) = alert.deliver(&root).expect("deliverable");
    assert_eq!(delivery.outcome, Outcome::Handled);
    assert_eq!(emitted.len(), 1);
    let low = &emitted[0];
    assert_eq!(low.ty(), "inventory.low_stock");
    assert_eq!(low.tenant(), "acme-pos");
    assert_eq!(low.source(), "plugbus://acme-pos/low-stock-alert");
    assert_eq!(low.subject(), Some("sku-7"));
    assert_eq!(low.datacontenttype(), Some("application/json"));
    assert_eq!(delivery.emitted[0].id, low.id());
    assert_ne!(low.id(), root.id());
    let time = low.time().expect("the host sets the time");
    assert!(
        Event::from_json_value(low.to_json_value()).is_ok(),
        "{time} is RFC 3339"
    );
    assert_eq!(low.causation_id(), Some("root-1"));
    assert_eq!(low.correlation_id(), "root-1");
    assert_eq!(low.chain_depth(), 1);
    let payload: serde_json::Value = serde_json::from_slice(low.data()).expect("JSON payload");
    assert_eq!(
        payload,
        serde_json::json!({"sku": "sku-7", "quantity": 3, "threshold": 10})
    );

    // One level further: the cause is the parent, the correlation the root.
    let (_, grandchildren) = storm.deliver(low).expect("deliverable");
    assert_eq!(grandchildren.len(), 1);
    let next = &grandchildren[0];
    assert_eq!(next.source(), "plugbus://acme-pos/storm");
    assert_eq!(next.causation_id(), Some(low.id()));
    assert_eq!(next.correlation_id(), "root-1");
    assert_eq!(next.chain_depth(), 2);
}
