//! The example plugins of the point-of-sale domain, end to end.

use plugbus::Outcome;
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

    let mut bad = stock_changed("acme-pos", "evt-2", "sku-1", 1);
    bad.data = br#"{"sku": 12}"#.to_vec();
    let report = host.publish(bad).await.expect("valid envelope");
    let failure = report.deliveries[0].outcome.failure().expect("a failure");
    assert_eq!(failure.kind, plugbus::FailureKind::HandlerPermanent);
    assert!(
        failure.message.contains("inventory.stock_changed"),
        "{failure:?}"
    );
}
