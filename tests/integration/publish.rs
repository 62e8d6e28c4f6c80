//! `Host::publish` hands deliveries to per-plugin drainer threads that
//! linger on an empty queue, and a publish gets one completion for the
//! deliveries it queued together. Neither may lose a delivery, give a
//! publisher another's report, or reorder a key.

use std::time::Duration;

use plugbus::{Host, HostConfig};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, host_with};

/// Keys published in parallel; the events of one key one after the other.
const KEYS: usize = 12;
/// Events per key.
const PER_KEY: u64 = 150;
/// The `sequence` plugins every event reaches.
const PLUGINS: [&str; 3] = ["a", "b", "c"];

/// A host with three `sequence` plugins on tenant `shop`.
fn host(config: HostConfig) -> (Host, PluginsDir) {
    let dir = PluginsDir::new();
    for name in PLUGINS {
        dir.add(
            "shop",
            name,
            artifacts::FIXTURE_SEQUENCE,
            Some("subscribe = [\"seq.*\"]\n[config]\nemit = \"false\"\n"),
        );
    }
    let (host, report) = host_with(config, &dir);
    assert!(report.errors.is_empty(), "{report:#?}");
    (host, dir)
}

/// The `sequence` event number `n` of `key`.
fn numbered(key: usize, n: u64) -> plugbus::Event {
    event(
        "shop",
        "seq.next",
        &format!("k{key}-{n}"),
        serde_json::json!({}),
    )
    .to_builder()
    .data(n.to_string())
    .datacontenttype("text/plain".to_owned())
    .extension("partitionkey", format!("k{key}"))
    .build()
    .expect("a valid event")
}

/// The number the plugin stored under `key`, if any.
fn stored(host: &Host, plugin: &str, key: &str) -> Option<u64> {
    let bytes = host
        .state_store()
        .get("shop", plugin, key)
        .expect("the in-memory state")?;
    let text = String::from_utf8(bytes).expect("UTF-8");
    Some(text.trim().parse().expect("a number"))
}

/// Publishes every key's events in order, the keys in parallel, with
/// pauses now and then longer than a linger (so that drainers end and
/// start again) and shorter (so that lingering ones are woken); checks
/// each report, then each plugin's own record of every key.
async fn publish_all(host: &Host) {
    let keys = (0..KEYS).map(|key| async move {
        for n in 1..=PER_KEY {
            let published = numbered(key, n);
            // A lost wake-up would leave the publish waiting for ever.
            let report =
                tokio::time::timeout(Duration::from_secs(60), host.publish(published.clone()))
                    .await
                    .expect("the publish completes")
                    .expect("published");
            // One delivery per plugin, in the plugins' order, each of this
            // event: no report went to another publisher, none is missing.
            let deliveries: Vec<_> = report
                .deliveries
                .iter()
                .map(|d| (d.plugin.as_str(), d.event_id.as_str()))
                .collect();
            let expected: Vec<_> = PLUGINS.iter().map(|p| (*p, published.id())).collect();
            assert_eq!(deliveries, expected);
            for delivery in &report.deliveries {
                assert!(delivery.outcome.is_handled(), "{delivery:#?}");
            }
            match (n + key as u64) % 40 {
                0 => tokio::time::sleep(Duration::from_millis(5)).await,
                13 => tokio::time::sleep(Duration::from_micros(300)).await,
                _ => {}
            }
        }
    });
    futures::future::join_all(keys).await;
    for plugin in PLUGINS {
        for key in 0..KEYS {
            let key = format!("k{key}");
            assert_eq!(
                stored(host, plugin, &format!("seen/{key}")),
                Some(PER_KEY),
                "{plugin} {key}"
            );
            assert_eq!(
                stored(host, plugin, &format!("last/{key}")),
                Some(PER_KEY),
                "{plugin} {key}"
            );
            assert_eq!(
                stored(host, plugin, &format!("disorder/{key}")),
                None,
                "{plugin} {key}: {:?}",
                host.state_store()
                    .get("shop", plugin, &format!("disorder-first/{key}"))
            );
        }
    }
    let stats = host.stats();
    assert_eq!(
        stats.deliveries_ok,
        KEYS as u64 * PER_KEY * PLUGINS.len() as u64
    );
}

/// With the default lingering drainers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_drainers_lose_and_reorder_nothing() {
    let (host, _dir) = host(HostConfig::default());
    publish_all(&host).await;
}

/// With one lingering thread for the whole host, so that most drainers
/// find no place and end at once while another lingers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainers_past_the_lingering_bound_lose_and_reorder_nothing() {
    let (host, _dir) = host(HostConfig {
        max_lingering_drainers: 1,
        plugin_concurrency: 1,
        ..HostConfig::default()
    });
    publish_all(&host).await;
}

/// Without lingering: a drainer ends as soon as its queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainers_that_never_linger_lose_and_reorder_nothing() {
    let (host, _dir) = host(HostConfig {
        drainer_linger: Duration::ZERO,
        ..HostConfig::default()
    });
    publish_all(&host).await;
}
