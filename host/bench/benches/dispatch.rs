//! One dispatch of a trivial handler (the `noop` fixture): with the
//! instance reused, and with a fresh instance per event, from the pooling
//! allocator and from on-demand allocation; each measured as the delivery
//! alone (`Plugin::deliver` on the calling thread) and through
//! `Host::publish` (validation, routing, the hop to a blocking thread).
//!
//! Run with `cargo bench -p plugbus --bench dispatch`.

use criterion::{Criterion, criterion_group, criterion_main};
use plugbus::{Event, Host, HostConfig, InstanceMode};

fn host(config: HostConfig) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tenant = dir.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(plugbus_artifacts::FIXTURE_NOOP, tenant.join("noop.wasm")).expect("copy");
    let host = Host::new(config).expect("host");
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (host, dir)
}

fn event() -> Event {
    Event::from_json(
        r#"{"specversion":"1.0","id":"evt-1","source":"/pos/store-12","type":"order.created","subject":"order-1","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","tenant":"acme-pos","data":{"order":"order-1","total":1299}}"#,
    )
    .expect("valid event")
}

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let event = event();
    let on_demand_fresh = HostConfig {
        instance_mode: InstanceMode::FreshPerEvent,
        ..HostConfig::default()
    };
    let variants = [
        ("instance_reused", HostConfig::default()),
        ("fresh_instance_pooling", HostConfig::fresh_instances(64)),
        ("fresh_instance_on_demand", on_demand_fresh),
    ];
    let mut group = c.benchmark_group("dispatch_noop");
    for (name, config) in variants {
        let (host, _dir) = host(config);
        let plugin = host.plugin("acme-pos", "noop").expect("loaded");
        // The delivery alone, on this thread: limits, call, outcome.
        group.bench_function(format!("{name}/deliver"), |b| {
            b.iter(|| {
                let (delivery, _) = plugin.deliver(&event).expect("a valid event of its tenant");
                assert!(delivery.outcome.is_handled());
            });
        });
        // Through the host: validation, routing, the hop to a blocking
        // thread and back to the async caller.
        group.bench_function(format!("{name}/publish"), |b| {
            b.iter(|| {
                let report = runtime
                    .block_on(host.publish(event.clone()))
                    .expect("valid event");
                assert!(report.deliveries[0].outcome.is_handled());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
