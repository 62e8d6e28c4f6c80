//! Two durable buses (two hosts) on one nats-server with the same plugins
//! share the work through leases: every event is handled once per plugin
//! across both, each bus handles some plugins, and when one shuts down the
//! other takes its plugins over and handles the rest.

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
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    let report = host.load_dir(dir).expect("load");
    assert!(report.errors.is_empty(), "{report:#?}");
    let config = NatsLogConfig {
        servers: vec![url.to_owned()],
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

    // b stops: a takes its plugins over and handles what follows.
    b.shutdown().await;
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
