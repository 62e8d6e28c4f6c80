//! The host's memory across many failing events. This test runs in a
//! process of its own (a test target of its own): resident memory is a
//! process-wide figure, and other tests running beside it would move it.

use plugbus::FailureKind;
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_for, rss_bytes};

/// 1,000 failing events (traps that discard their instance, and limit hits)
/// leave the host's memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_across_1000_failing_events() {
    let dir = PluginsDir::new();
    dir.add(
        "chaos",
        "panic",
        artifacts::FIXTURE_PANIC,
        Some("subscribe = [\"fixture.*\"]"),
    );
    dir.add(
        "chaos",
        "grow",
        artifacts::FIXTURE_GROW_MEMORY,
        Some("subscribe = [\"fixture.*\"]\n[limits]\nmemory_mib = 8"),
    );
    let (host, _) = host_for(&dir);
    let publish_batch = |from: usize, to: usize| {
        let host = &host;
        async move {
            for i in from..to {
                let report = host
                    .publish(event(
                        "chaos",
                        "fixture.x",
                        &format!("x-{i}"),
                        serde_json::json!({}),
                    ))
                    .await
                    .expect("valid");
                assert!(report.deliveries.iter().all(|d| !d.outcome.is_handled()));
            }
        }
    };
    // Warm up allocator pools and code caches, then measure.
    publish_batch(0, 100).await;
    let before = rss_bytes();
    publish_batch(100, 1100).await;
    let after = rss_bytes();
    let stats = host.stats();
    assert_eq!(stats.failures_of(FailureKind::Trap), 1100);
    assert_eq!(stats.failures_of(FailureKind::MemoryLimit), 1100);
    assert_eq!(stats.instances_discarded, 2200);
    let growth = after.saturating_sub(before);
    assert!(
        growth < 64 * 1024 * 1024,
        "resident memory grew by {} MiB over 1,000 failing events",
        growth / (1024 * 1024)
    );
}
