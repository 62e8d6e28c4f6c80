//! Two durable buses (two hosts) on one nats-server with the same plugins
//! share the work through leases: every event is handled once per plugin
//! across both, each bus handles some plugins, and when one shuts down the
//! other takes its plugins over and handles the rest. With several
//! partitions, the partitions of one plugin are shared the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugbus_bus::{DurableBus, DurableConfig};
use plugbus_core::event::Event;
use plugbus_log::EventLog;
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsServer;
use plugbus_runtime::{Host, HostConfig};

/// The plugins, each the audit-log example under another name.
const PLUGINS: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];

/// (bus, plugin, event id) of each handled delivery.
type Handled = Arc<Mutex<Vec<(String, String, String)>>>;

fn plugins_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = dir.path().join("shop");
    std::fs::create_dir_all(&tenant).expect("tenant dir");
    for plugin in PLUGINS {
        std::fs::copy(
            plugbus_artifacts::AUDIT_LOG,
            tenant.join(format!("{plugin}.wasm")),
        )
        .expect("copy the component");
    }
    dir
}

fn event(id: &str) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": "sale.completed",
        "tenant": "shop",
        "data": {},
    }))
    .expect("a valid event")
}

/// A bus named `id` on the server at `url`, with the plugins of `dir`; its
/// handled deliveries are added to `handled`.
async fn start(dir: &std::path::Path, url: &str, id: &str, handled: &Handled) -> DurableBus {
    start_with(dir, url, id, handled, 1).await
}

/// [`start`], on a log of `partitions` partitions.
async fn start_with(
    dir: &std::path::Path,
    url: &str,
    id: &str,
    handled: &Handled,
    partitions: u32,
) -> DurableBus {
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    let report = host.load_dir(dir).expect("load");
    assert!(report.errors.is_empty(), "{report:#?}");
    let config = NatsLogConfig {
        servers: vec![url.to_owned()],
        partitions,
        ..NatsLogConfig::default()
    };
    let log = tokio::task::spawn_blocking(move || NatsLog::open(config))
        .await
        .expect("join")
        .expect("open the log");
    let log: Arc<dyn EventLog> = Arc::new(log);
    let durable = DurableConfig {
        host_id: id.to_owned(),
        lease_ttl: Duration::from_secs(6),
        ..DurableConfig::default()
    };
    let (bus, mut deliveries) = DurableBus::start_observed(host, log, durable)
        .await
        .expect("start the bus");
    let (handled, name) = (handled.clone(), id.to_owned());
    tokio::spawn(async move {
        while let Ok(delivery) = deliveries.recv().await {
            if delivery.outcome.failure().is_none() {
                handled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.clone(), delivery.plugin, delivery.event_id));
            }
        }
    });
    bus
}

/// Waits until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often each (plugin, event id) was handled, and by which buses.
fn tally(handled: &Handled) -> BTreeMap<(String, String), Vec<String>> {
    let mut all: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (bus, plugin, id) in handled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        all.entry((plugin.clone(), id.clone()))
            .or_default()
            .push(bus.clone());
    }
    all
}

fn plugins_of(bus: &DurableBus) -> BTreeSet<String> {
    bus.held_leases().into_iter().map(|(_, p)| p).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_split_the_plugins_and_one_takes_over_when_the_other_stops() {
    let server = NatsServer::start();
    let dir = plugins_dir();
    let handled: Handled = Arc::default();
    let a = start(dir.path(), &server.url(), "bus-a", &handled).await;
    let b = start(dir.path(), &server.url(), "bus-b", &handled).await;

    // The leases settle: each plugin held by exactly one bus, both busy.
    until("the plugins are split between the buses", || {
        let (pa, pb) = (plugins_of(&a), plugins_of(&b));
        pa.len() + pb.len() == PLUGINS.len()
            && pa.is_disjoint(&pb)
            && !pa.is_empty()
            && !pb.is_empty()
    })
    .await;
    let (of_a, of_b) = (plugins_of(&a), plugins_of(&b));

    // Events published through both buses.
    for i in 0..40 {
        let bus = if i % 2 == 0 { &a } else { &b };
        bus.publish(vec![event(&format!("e{i}"))])
            .await
            .expect("publish");
    }
    until("every plugin handled every event", || {
        tally(&handled).len() == PLUGINS.len() * 40
    })
    .await;
    a.settle().await.expect("settle a");
    b.settle().await.expect("settle b");
    for ((plugin, id), buses) in tally(&handled) {
        assert_eq!(buses.len(), 1, "{plugin} handled {id} by {buses:?}");
        let owner = if of_a.contains(&plugin) {
            "bus-a"
        } else {
            "bus-b"
        };
        assert_eq!(buses[0], owner, "{plugin} handled {id} on the other bus");
    }

    // b stops: it releases every lease it held, a takes its plugins over
    // and handles what follows.
    let b_id = b.host_id().to_owned();
    let log = b.log().clone();
    b.shutdown().await;
    for plugin in PLUGINS {
        let key = plugbus_log::LeaseKey::of("shop", plugin, 0);
        let lease = log.lease(&key).expect("read the lease");
        assert!(
            lease
                .as_ref()
                .is_none_or(|l| l.holder != b_id || l.expires_ms <= plugbus_log::now_ms()),
            "{plugin}'s lease is still bus-b's after its shutdown: {lease:?}"
        );
    }
    until("bus-a holds every plugin", || {
        plugins_of(&a).len() == PLUGINS.len()
    })
    .await;
    for i in 40..60 {
        a.publish(vec![event(&format!("e{i}"))])
            .await
            .expect("publish");
    }
    until("every plugin handled the later events", || {
        tally(&handled).len() == PLUGINS.len() * 60
    })
    .await;
    a.settle().await.expect("settle a");
    let tally = tally(&handled);
    for ((plugin, id), buses) in &tally {
        assert_eq!(buses.len(), 1, "{plugin} handled {id} by {buses:?}");
    }
    for plugin in &of_b {
        let later = (40..60)
            .map(|i| &tally[&(plugin.clone(), format!("e{i}"))][0])
            .all(|bus| bus == "bus-a");
        assert!(later, "{plugin}'s later events went to bus-a");
    }
    a.shutdown().await;
}

/// The partitions of the counter plugin a bus holds.
fn partitions_of(bus: &DurableBus) -> BTreeSet<u32> {
    bus.held_partitions()
        .into_iter()
        .filter(|(tenant, plugin, _)| tenant == "shop" && plugin == "counter")
        .map(|(_, _, partition)| partition)
        .collect()
}

/// A `count.ok` event of key `k<i % KEYS>`, id `c<i>`.
fn counted(i: usize) -> Event {
    Event::builder("shop", format!("c{i}"), "/pos/store-12", "count.ok")
        .subject(format!("k{}", i % KEYS))
        .build()
        .expect("a valid event")
}

/// The keys the counter counts.
const KEYS: usize = 10;

/// The counter's count of key `k<key>`.
fn count(bus: &DurableBus, key: usize) -> Option<u64> {
    bus.log()
        .get("shop", "counter", &format!("count/k{key}"))
        .expect("read the state")
        .map(|bytes| serde_json::from_slice(&bytes).expect("a count"))
}

/// Checks that every event `c0..c<n>` was handled exactly once, on the
/// bus `owner` names for it, and each key's events in publish order.
fn handled_once_in_order(handled: &Handled, n: usize, owner: impl Fn(usize) -> Option<String>) {
    let all = handled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut by_id: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut last_of_key: BTreeMap<usize, usize> = BTreeMap::new();
    for (bus, _, id) in &all {
        let i: usize = id.trim_start_matches('c').parse().expect("an id c<i>");
        by_id.entry(i).or_default().push(bus.clone());
        if let Some(before) = last_of_key.insert(i % KEYS, i) {
            assert!(before < i, "key k{}: c{i} after c{before}", i % KEYS);
        }
    }
    assert_eq!(by_id.len(), n, "every event handled");
    for (i, buses) in by_id {
        assert_eq!(buses.len(), 1, "c{i} handled by {buses:?}");
        if let Some(owner) = owner(i) {
            assert_eq!(
                buses[0], owner,
                "c{i} handled on the bus not holding its partition"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_split_the_partitions_of_one_plugin_and_one_takes_all_when_the_other_stops() {
    const PARTITIONS: u32 = 4;
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = dir.path().join("shop");
    std::fs::create_dir_all(&tenant).expect("tenant dir");
    std::fs::copy(
        plugbus_artifacts::FIXTURE_COUNTER,
        tenant.join("counter.wasm"),
    )
    .expect("copy the component");
    std::fs::write(tenant.join("counter.toml"), "subscribe = [\"count.*\"]\n")
        .expect("write the manifest");
    let handled: Handled = Arc::default();
    let url = server.url();
    let a = start_with(dir.path(), &url, "bus-a", &handled, PARTITIONS).await;
    let b = start_with(dir.path(), &url, "bus-b", &handled, PARTITIONS).await;
    assert_eq!(a.log().partitions(), PARTITIONS);

    until("the partitions are split between the buses", || {
        let (pa, pb) = (partitions_of(&a), partitions_of(&b));
        pa.len() + pb.len() == PARTITIONS as usize
            && pa.is_disjoint(&pb)
            && !pa.is_empty()
            && !pb.is_empty()
    })
    .await;
    let of_a = partitions_of(&a);
    println!("bus-a holds {of_a:?}, bus-b {:?}", partitions_of(&b));
    // The keys must fall in partitions on both buses for the split to be
    // seen in the deliveries.
    let partition = |i: usize| plugbus_log::partition_of(&counted(i), PARTITIONS);

    for i in 0..200 {
        let bus = if i % 2 == 0 { &a } else { &b };
        bus.publish(vec![counted(i)]).await.expect("publish");
    }
    until("the counter handled every event", || {
        handled.lock().unwrap_or_else(PoisonError::into_inner).len() >= 200
    })
    .await;
    a.settle().await.expect("settle a");
    b.settle().await.expect("settle b");
    handled_once_in_order(&handled, 200, |i| {
        Some(
            if of_a.contains(&partition(i)) {
                "bus-a"
            } else {
                "bus-b"
            }
            .to_owned(),
        )
    });
    let on_a = (0..200).filter(|i| of_a.contains(&partition(*i))).count();
    println!("bus-a handled {on_a} of 200");
    for key in 0..KEYS {
        assert_eq!(count(&a, key), Some(20), "k{key}");
    }

    // b stops: a takes every partition over and handles what follows.
    b.shutdown().await;
    until("bus-a holds every partition", || {
        partitions_of(&a).len() == PARTITIONS as usize
    })
    .await;
    for i in 200..300 {
        a.publish(vec![counted(i)]).await.expect("publish");
    }
    until("the counter handled the later events", || {
        handled.lock().unwrap_or_else(PoisonError::into_inner).len() >= 300
    })
    .await;
    a.settle().await.expect("settle a");
    handled_once_in_order(&handled, 300, |i| (i >= 200).then(|| "bus-a".to_owned()));
    for key in 0..KEYS {
        assert_eq!(count(&a, key), Some(30), "k{key}");
    }
    a.shutdown().await;
}
