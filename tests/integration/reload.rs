//! Hot reload: plugins swap atomically when their files change, while
//! events flow, and a broken version never replaces a working one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use plugbus::cache::CompileSource;
use plugbus::{Delivery, Health, Host, HostConfig, HostError, ReloadEvent};
use plugbus_artifacts as artifacts;
use plugbus_tests::{PluginsDir, event, publish, replace_by_rename, with_custom_section};
use tokio::sync::broadcast;

/// The manifest both versions of the swapped plugin share.
const MANIFEST: &str = "subscribe = [\"order.*\"]\n[config]\ngreeting = \"hello\"\n";

/// How long a test waits for a reload before it gives up: a guard against
/// hanging, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A host with a compile cache of its own that has loaded `dir`.
fn cached_host(dir: &PluginsDir, cache: &Path) -> Arc<Host> {
    let config = HostConfig {
        compile_cache: Some(cache.to_owned()),
        ..HostConfig::default()
    };
    let host = Host::new(config).expect("build the host");
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    Arc::new(host)
}

/// Waits for the first reload event that `accept` takes.
async fn wait_for(
    events: &mut broadcast::Receiver<ReloadEvent>,
    accept: impl FnMut(&ReloadEvent) -> bool,
) -> ReloadEvent {
    plugbus_tests::wait_for_reload(events, PATIENCE, accept).await
}

/// Publishes `order.created` events of tenant `t` from `publishers` tasks
/// until `stop`, and returns every delivery, by event id.
fn publish_until(
    host: &Arc<Host>,
    stop: &Arc<AtomicBool>,
    publishers: usize,
    published: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, Delivery)>>> {
    (0..publishers)
        .map(|p| {
            let (host, stop, published) = (host.clone(), stop.clone(), published.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("p{p}-{i}");
                    let report = host
                        .publish(event("t", "order.created", &id, serde_json::json!({})))
                        .await
                        .expect("a valid event");
                    seen.extend(report.deliveries.into_iter().map(|d| (id.clone(), d)));
                    published.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                seen
            })
        })
        .collect()
}

/// Waits until `more` further events have been published.
async fn let_events_flow(published: &AtomicUsize, more: usize) {
    let target = published.load(Ordering::Relaxed) + more;
    tokio::time::timeout(PATIENCE, async {
        while published.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("events flow");
}

/// 20 swaps between two versions that behave differently, under a steady
/// stream of events: every event is handled exactly once, each wholly by
/// one version, and after the last swap only the last version serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_load_lose_nothing_and_split_nothing() {
    // Version "noop" emits nothing; version "plain" emits one `plain.seen`
    // whose subject is the manifest's greeting.
    let noop = read(artifacts::FIXTURE_NOOP);
    let plain = read(artifacts::FIXTURE_PLAIN_BINDGEN);
    let dir = PluginsDir::new();
    let wasm = dir.add_bytes("t", "p", &noop, Some(MANIFEST));
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch");

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publishers = publish_until(&host, &stop, 4, &published);

    let mut behaviour: BTreeMap<String, &str> = BTreeMap::new();
    behaviour.insert(host.plugins()[0].version.clone(), "noop");
    for swap in 0..20 {
        let (bytes, name) = if swap % 2 == 0 {
            (&plain, "plain")
        } else {
            (&noop, "noop")
        };
        let_events_flow(&published, 20).await;
        replace_by_rename(&wasm, bytes);
        let replaced = wait_for(&mut events, |e| matches!(e, ReloadEvent::Replaced { .. })).await;
        let ReloadEvent::Replaced {
            version, compile, ..
        } = &replaced
        else {
            unreachable!()
        };
        // The first swap compiles "plain"; every later one finds its code
        // in the cache ("noop" was cached when the host loaded it).
        let expected = if swap == 0 {
            CompileSource::CacheMiss
        } else {
            CompileSource::CacheHit
        };
        assert_eq!(*compile, expected, "swap {swap}: {replaced:?}");
        assert_eq!(*behaviour.entry(version.clone()).or_insert(name), name);
    }
    let_events_flow(&published, 20).await;
    stop.store(true, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for publisher in publishers {
        deliveries.extend(publisher.await.expect("publisher"));
    }
    assert_eq!(behaviour.len(), 2, "two versions: {behaviour:?}");

    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, delivery) in &deliveries {
        *per_event.entry(id.as_str()).or_default() += 1;
        assert!(delivery.outcome.is_handled(), "{delivery:?}");
        let emitted: Vec<_> = delivery.emitted.iter().map(|e| e.ty.as_str()).collect();
        match behaviour.get(&delivery.plugin_version).copied() {
            Some("noop") => assert!(emitted.is_empty(), "{delivery:?}"),
            Some("plain") => {
                assert_eq!(emitted, ["plain.seen"], "{delivery:?}");
                assert_eq!(delivery.emitted[0].subject.as_deref(), Some("hello"));
            }
            _ => panic!("a delivery by an unknown version: {delivery:?}"),
        }
    }
    assert_eq!(per_event.len(), published.load(Ordering::Relaxed));
    assert!(per_event.values().all(|n| *n == 1), "none lost, none twice");
    let used: BTreeSet<_> = deliveries.iter().map(|(_, d)| &d.plugin_version).collect();
    assert_eq!(used.len(), 2, "both versions served");

    // After the last swap (to noop), only the last version handles events.
    let last = host.plugins()[0].version.clone();
    assert_eq!(behaviour[&last], "noop");
    for i in 0..10 {
        let deliveries = publish(&host, "t", "order.created", &format!("after-{i}")).await;
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].plugin_version, last);
    }
    let status = &host.statuses()[0];
    assert_eq!(status.reloads, 20);
    assert_eq!(status.health, Health::Active);
}

/// Broken versions — not wasm, the wrong world, a manifest that does not
/// parse — dropped in while events flow never replace the working one:
/// each failure is reported with the file and the reason, the plugin's
/// status shows it, and the fix dropped in next is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_never_replace_a_working_one() {
    let noop = read(artifacts::FIXTURE_NOOP);
    let dir = PluginsDir::new();
    let wasm = dir.add_bytes("t", "p", &noop, Some(MANIFEST));
    let manifest = wasm.with_extension("toml");
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let working = host.plugins()[0].version.clone();
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publishers = publish_until(&host, &stop, 2, &published);

    let breakages: [(&Path, Vec<u8>, &str); 3] = [
        (
            &wasm,
            b"#!/bin/sh\necho not wasm\n".to_vec(),
            "not a WebAssembly component",
        ),
        (
            &wasm,
            read(artifacts::FIXTURE_WRONG_WORLD),
            "does not match the world",
        ),
        (&manifest, b"subscribe = 5".to_vec(), "invalid manifest"),
    ];
    for (i, (path, bytes, reason)) in breakages.iter().enumerate() {
        if i == 2 {
            // Put the working component back first; its content hashes to
            // the serving version, so that is no reload.
            replace_by_rename(&wasm, &noop);
        }
        replace_by_rename(path, bytes);
        let failed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Failed { .. })).await;
        let ReloadEvent::Failed {
            path: at,
            reason: why,
            serving,
            ..
        } = &failed
        else {
            unreachable!()
        };
        assert_eq!(at, path, "{failed:?}");
        assert!(why.contains(reason), "{failed:?}");
        assert_eq!(serving.as_deref(), Some(working.as_str()));
        let status = &host.statuses()[0];
        assert_eq!(status.health, Health::Degraded);
        assert_eq!(status.version.as_deref(), Some(working.as_str()));
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(reason)),
            "{status:?}"
        );
        let_events_flow(&published, 10).await;
    }
    // The fix: a working manifest and another working component.
    replace_by_rename(&manifest, MANIFEST.as_bytes());
    replace_by_rename(&wasm, &with_custom_section(&noop, "fix", 16));
    let replaced = wait_for(&mut events, |e| matches!(e, ReloadEvent::Replaced { .. })).await;
    let_events_flow(&published, 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for publisher in publishers {
        deliveries.extend(publisher.await.expect("publisher"));
    }
    let ReloadEvent::Replaced {
        previous, version, ..
    } = replaced
    else {
        unreachable!()
    };
    assert_eq!(previous, working);
    assert_eq!(deliveries.len(), published.load(Ordering::Relaxed));
    for (_, delivery) in &deliveries {
        assert!(delivery.outcome.is_handled(), "{delivery:?}");
        assert!(
            delivery.plugin_version == working || delivery.plugin_version == version,
            "{delivery:?}"
        );
    }
    let status = &host.statuses()[0];
    assert_eq!(status.health, Health::Active);
    assert_eq!(status.last_error, None);
    assert_eq!(status.failed_reloads, 3);
    assert_eq!(status.reloads, 1);
}

/// A large component copied over the old file in place, in pieces like
/// `cp` writes it, is read only once whole: no half-read version ever
/// serves, and no failure is reported on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_copy_of_a_large_component_is_never_half_read() {
    let noop = read(artifacts::FIXTURE_NOOP);
    let large = with_custom_section(&noop, "ballast", 8 * 1024 * 1024);
    // The version the whole file has, from a host that loads it at rest.
    let whole = {
        let reference = PluginsDir::new();
        reference.add_bytes("t", "p", &large, Some(MANIFEST));
        let host = Host::new(HostConfig::default()).expect("host");
        let report = host.load_dir(reference.path()).expect("load");
        report.loaded[0].version.clone()
    };
    let dir = PluginsDir::new();
    let wasm = dir.add_bytes("t", "p", &noop, Some(MANIFEST));
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let old = host.plugins()[0].version.clone();
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publishers = publish_until(&host, &stop, 2, &published);

    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&wasm).expect("open for writing");
        for (i, chunk) in large.chunks(128 * 1024).enumerate() {
            file.write_all(chunk).expect("write");
            if i % 4 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    });
    writer.await.expect("writer");
    let event = wait_for(&mut events, |_| true).await;
    let_events_flow(&published, 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for publisher in publishers {
        deliveries.extend(publisher.await.expect("publisher"));
    }
    assert!(
        matches!(&event, ReloadEvent::Replaced { version, .. } if *version == whole),
        "the first change is the whole new version: {event:?}"
    );
    for (_, delivery) in &deliveries {
        assert!(
            delivery.plugin_version == old || delivery.plugin_version == whole,
            "{delivery:?}"
        );
    }
    assert_eq!(host.statuses()[0].failed_reloads, 0);
}

/// Removing a plugin, removing a tenant's folder and adding a tenant at
/// run time each take effect, and the other plugins serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_and_tenants_come_and_go_at_run_time() {
    let dir = PluginsDir::new();
    dir.add("a", "keep", artifacts::FIXTURE_NOOP, None);
    let gone = dir.add("a", "gone", artifacts::FIXTURE_NOOP, None);
    dir.add("b", "noop", artifacts::FIXTURE_NOOP, None);
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch");
    assert_eq!(publish(&host, "a", "order.created", "1").await.len(), 2);

    std::fs::remove_file(&gone).expect("remove a plugin");
    let removed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Removed { .. })).await;
    assert_eq!((removed.tenant(), removed.plugin()), ("a", "gone"));
    let deliveries = publish(&host, "a", "order.created", "2").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].plugin, "keep");

    std::fs::remove_dir_all(dir.path().join("b")).expect("remove a tenant");
    let removed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Removed { .. })).await;
    assert_eq!((removed.tenant(), removed.plugin()), ("b", "noop"));
    assert!(publish(&host, "b", "order.created", "3").await.is_empty());

    // A new tenant's folder, prepared aside and moved in whole.
    let staging = dir.path().join(".staging");
    std::fs::create_dir(&staging).expect("staging dir");
    std::fs::copy(artifacts::FIXTURE_NOOP, staging.join("fresh.wasm")).expect("copy");
    std::fs::rename(&staging, dir.path().join("c")).expect("move the tenant in");
    let loaded = wait_for(&mut events, |e| matches!(e, ReloadEvent::Loaded { .. })).await;
    assert_eq!((loaded.tenant(), loaded.plugin()), ("c", "fresh"));
    let deliveries = publish(&host, "c", "order.created", "4").await;
    assert_eq!(deliveries.len(), 1);
    assert!(deliveries[0].outcome.is_handled());
    let names: Vec<_> = host
        .statuses()
        .into_iter()
        .map(|s| format!("{}/{}", s.tenant, s.name))
        .collect();
    assert_eq!(names, ["a/keep", "c/fresh"]);
}

/// Files rewritten with the same content are no reload: the content hash,
/// not the file's time, decides.
#[tokio::test]
async fn unchanged_content_is_no_reload() {
    let dir = PluginsDir::new();
    let wasm = dir.add("t", "p", artifacts::FIXTURE_NOOP, Some(MANIFEST));
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let mut events = host.reload_events();
    replace_by_rename(&wasm, &read(artifacts::FIXTURE_NOOP));
    replace_by_rename(&wasm.with_extension("toml"), MANIFEST.as_bytes());
    host.refresh(dir.path()).await.expect("refresh");
    assert!(events.try_recv().is_err(), "no reload event");
    assert_eq!(host.statuses()[0].reloads, 0);
    // A changed manifest alone is a new version.
    replace_by_rename(&wasm.with_extension("toml"), b"subscribe = [\"order.*\"]");
    host.refresh(dir.path()).await.expect("refresh");
    assert!(matches!(
        events.try_recv(),
        Ok(ReloadEvent::Replaced {
            compile: CompileSource::CacheHit,
            ..
        })
    ));
}

/// A corrupt compile cache entry is discarded and the component compiled
/// again, never handed to wasmtime; the cache cannot live inside the
/// plugins directory.
#[tokio::test]
async fn a_corrupt_cache_entry_is_recompiled_not_trusted() {
    let dir = PluginsDir::new();
    dir.add("t", "p", artifacts::FIXTURE_NOOP, None);
    let cache = tempfile::tempdir().expect("cache dir");
    let first = cached_host(&dir, cache.path());
    assert_eq!(first.cache_stats().expect("cache").misses, 1);
    drop(first);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .expect("read cache")
        .map(|e| e.expect("entry").path())
        .collect();
    let [entry] = entries.as_slice() else {
        panic!("one cache entry: {entries:?}");
    };
    let mut bytes = std::fs::read(entry).expect("read entry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(entry, &bytes).expect("corrupt the entry");

    let second = cached_host(&dir, cache.path());
    let stats = second.cache_stats().expect("cache");
    assert_eq!((stats.hits, stats.discarded, stats.misses), (0, 1, 1));
    let deliveries = publish(&second, "t", "order.created", "1").await;
    assert!(deliveries[0].outcome.is_handled());
    drop(second);
    // The entry written anew is sound.
    let third = cached_host(&dir, cache.path());
    assert_eq!(third.cache_stats().expect("cache").hits, 1);

    let inside = HostConfig {
        compile_cache: Some(dir.path().join("t").join(".cache")),
        ..HostConfig::default()
    };
    let host = Host::new(inside).expect("host");
    let err = host.load_dir(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            HostError::Reload(plugbus::reload::ReloadError::CacheInPluginsDir { .. })
        ),
        "{err}"
    );
}

/// A plugin removed while it handles an event finishes that event on its
/// own version; the events after the removal no longer reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_plugin_finishes_the_event_it_has() {
    let dir = PluginsDir::new();
    let wasm = dir.add(
        "t",
        "slow",
        artifacts::FIXTURE_SPIN,
        Some("subscribe = [\"order.*\"]\n[limits]\ntimeout_ms = 1500\nfuel = 1_000_000_000_000"),
    );
    // Ample fuel, above the default ceiling, so that the clock stops it.
    let mut config = HostConfig::default();
    config.max_limits.fuel = u64::MAX;
    let host = Host::new(config).expect("build the host");
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let host = Arc::new(host);
    let plugin = host.plugin("t", "slow").expect("loaded");
    let version = plugin.version().to_owned();
    let mut events = host.reload_events();
    let _watcher = host.watch(dir.path()).expect("watch");
    let in_flight = tokio::spawn({
        let host = host.clone();
        async move { publish(&host, "t", "order.created", "running").await }
    });
    // The delivery has begun once it took the instance warmed at load.
    tokio::time::timeout(PATIENCE, async {
        while plugin.idle_instances() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the delivery began");
    drop(plugin);
    std::fs::remove_file(&wasm).expect("remove the plugin");
    let removed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Removed { .. })).await;
    assert_eq!(removed.plugin(), "slow");
    let deliveries = in_flight.await.expect("publisher");
    assert_eq!(deliveries.len(), 1, "the event in flight was not lost");
    assert_eq!(deliveries[0].plugin_version, version);
    assert_eq!(
        deliveries[0].outcome.failure_kind(),
        Some(plugbus::FailureKind::Timeout)
    );
    assert!(
        publish(&host, "t", "order.created", "after")
            .await
            .is_empty()
    );
}

/// A new version whose manifest asks for more than an operator's ceiling
/// is refused, naming the key and the ceiling, and the old version goes on
/// serving; the fix is picked up.
#[tokio::test]
async fn a_version_above_a_ceiling_keeps_the_old_one_serving() {
    let dir = PluginsDir::new();
    let wasm = dir.add("t", "p", artifacts::FIXTURE_PLAIN_BINDGEN, Some(MANIFEST));
    let manifest = wasm.with_extension("toml");
    let cache = tempfile::tempdir().expect("cache dir");
    let host = cached_host(&dir, cache.path());
    let working = host.plugins()[0].version.clone();
    let mut events = host.reload_events();

    let greedy = format!("{MANIFEST}[limits]\nfuel = 1_000_000_001\n");
    replace_by_rename(&manifest, greedy.as_bytes());
    host.refresh(dir.path()).await.expect("refresh");
    let failed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Failed { .. })).await;
    let ReloadEvent::Failed {
        path,
        reason,
        serving,
        ..
    } = &failed
    else {
        unreachable!()
    };
    assert_eq!(path, &manifest);
    assert!(
        reason.contains(
            "limits.fuel is 1000000001; the operator's ceiling is 1000000000 (limits.max.fuel in plugbus.toml)"
        ),
        "{failed:?}"
    );
    assert_eq!(serving.as_deref(), Some(working.as_str()));
    let deliveries = publish(&host, "t", "order.created", "1").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].plugin_version, working);
    assert!(deliveries[0].outcome.is_handled(), "{deliveries:?}");
    let status = &host.statuses()[0];
    assert_eq!(status.health, Health::Degraded);
    assert_eq!(status.version.as_deref(), Some(working.as_str()));

    // At the ceiling, it loads.
    let fair = format!("{MANIFEST}[limits]\nfuel = 1_000_000_000\n");
    replace_by_rename(&manifest, fair.as_bytes());
    host.refresh(dir.path()).await.expect("refresh");
    let replaced = wait_for(&mut events, |e| matches!(e, ReloadEvent::Replaced { .. })).await;
    assert!(
        matches!(&replaced, ReloadEvent::Replaced { previous, .. } if *previous == working),
        "{replaced:?}"
    );
    assert_eq!(host.statuses()[0].health, Health::Active);
    assert_eq!(host.plugins()[0].limits.fuel, 1_000_000_000);
}

/// At a tenant's quota, a new plugin never pushes out one that serves,
/// even one that comes after it by name; it is refused once, and loads
/// when a place frees up.
#[tokio::test]
async fn a_new_plugin_past_the_quota_never_pushes_out_a_loaded_one() {
    let dir = PluginsDir::new();
    dir.add("t", "b", artifacts::FIXTURE_NOOP, None);
    let c = dir.add("t", "c", artifacts::FIXTURE_NOOP, None);
    let mut config = HostConfig::default();
    config.tenant_max_plugins.insert("t".into(), 2);
    let host = Arc::new(Host::new(config).expect("host"));
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut events = host.reload_events();

    // "a" comes first by name, but "b" and "c" serve.
    dir.add("t", "a", artifacts::FIXTURE_NOOP, None);
    host.refresh(dir.path()).await.expect("refresh");
    let failed = wait_for(&mut events, |e| matches!(e, ReloadEvent::Failed { .. })).await;
    assert_eq!(failed.plugin(), "a");
    let ReloadEvent::Failed { reason, .. } = &failed else {
        unreachable!()
    };
    assert!(
        reason.contains("its quota of 2 plugins (tenants.t.max_plugins in plugbus.toml)"),
        "{failed:?}"
    );
    let serving =
        |host: &Host| -> Vec<String> { host.plugins().into_iter().map(|p| p.name).collect() };
    assert_eq!(serving(&host), ["b", "c"]);
    // Refused once, not at every scan.
    host.refresh(dir.path()).await.expect("refresh");
    assert!(events.try_recv().is_err(), "no second refusal");
    let refused = host
        .statuses()
        .into_iter()
        .find(|s| s.name == "a")
        .expect("a's status");
    assert_eq!(refused.health, Health::FailedToLoad);
    assert_eq!(refused.failed_reloads, 1);

    // A place frees up: "a" loads.
    std::fs::remove_file(&c).expect("remove c");
    host.refresh(dir.path()).await.expect("refresh");
    let loaded = wait_for(&mut events, |e| matches!(e, ReloadEvent::Loaded { .. })).await;
    assert_eq!(loaded.plugin(), "a");
    assert_eq!(serving(&host), ["a", "b"]);
    assert_eq!(publish(&host, "t", "order.created", "1").await.len(), 2);
}
