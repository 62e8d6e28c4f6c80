//! The cost of the Wasm boundary, side by side in one run, on the same
//! event (realistic CloudEvent attributes, a JSON payload of 64 B, 256 B,
//! 4 KiB and 64 KiB) and the same handler logic (the `checksum` fixture:
//! FNV-1a over the payload):
//!
//! - `native_direct`: the logic as a plain Rust function call;
//! - `native_channel`: the same function behind a tokio channel hop, the
//!   floor an in-process bus pays;
//! - `raw_wasmtime`: the component called through `bindgen!` with no plugbus
//!   code around it, one long-lived store, no fuel, no epochs;
//! - `raw_wasmtime_fuel_epoch`: the same with fuel and epoch interruption on
//!   and a refuel before each call, as plugbus runs it;
//! - `plugbus_deliver`: `Plugin::deliver`, plugbus's limits, accounting and
//!   outcome around the same call;
//! - `plugbus_batch`: one event of a batch of 128 through
//!   `Plugin::deliver_batch` and the plugin's `handle-batch` export, each
//!   event under its own limits (criterion's iteration is one event);
//! - `plugbus_publish`: `Host::publish`, validation, routing and the hop to a
//!   blocking thread on top;
//! - `extism_data`: the same logic as an Extism plugin (Rust PDK, built for
//!   `wasm32-unknown-unknown`) called through the `extism` host crate with
//!   the payload alone as input: less than plugbus carries across (no
//!   attributes), so the strictest comparison;
//! - `extism_data_limits`: the same with Extism's limits on (a fuel limit per
//!   call and a manifest timeout), as plugbus always runs;
//! - `extism_event_json`: the whole event as CloudEvents JSON, parsed by the
//!   plugin, which is how an Extism user passes an event with its attributes.
//!
//! A second group, `trivial`, puts the `noop` fixture (which reads nothing)
//! through `deliver` and through batches: plugbus's own cost per event.
//! A third shows what each limit costs on the 64 KiB payload (the
//! branch-heavy case): fuel on/off × epoch deadline on/off.
//!
//! Run with `cargo bench -p plugbus --bench boundary`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use plugbus::engine::EngineOptions;
use plugbus::{Event, Host, HostConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The world's bindings, generated here so that no plugbus code is involved.
mod raw {
    wasmtime::component::bindgen!({ path: "../../wit/v0.2.0", world: "handler" });
}

/// The same logic as the fixture, natively.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn native_handle(event: &Event) -> Result<(), String> {
    if event.data().is_empty() {
        return Err("an empty payload has nothing to hash".into());
    }
    std::hint::black_box(checksum(event.data()));
    Ok(())
}

/// An `inventory.stock_changed` event with every attribute set, one
/// extension, and a JSON payload of exactly `size` bytes.
fn event(size: usize) -> Event {
    let skeleton = r#"{"sku":"sku-123","new_quantity":4,"store":"store-12","note":""}"#;
    let padding = size.saturating_sub(skeleton.len());
    let data = format!(
        r#"{{"sku":"sku-123","new_quantity":4,"store":"store-12","note":"{}"}}"#,
        "n".repeat(padding)
    );
    assert_eq!(data.len(), size.max(skeleton.len()));
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": "0b9c4f5e-3c0d-4d8e-9f59-2a1f1f0c7e11",
        "source": "/pos/store-12/terminal-3",
        "type": "inventory.stock_changed",
        "subject": "sku-123",
        "time": "2026-11-22T10:00:00Z",
        "datacontenttype": "application/json",
        "dataschema": "https://schemas.example.com/inventory/stock_changed/1",
        "partitionkey": "sku-123",
        "tenant": "acme-pos",
        "data": serde_json::from_str::<serde_json::Value>(&data).expect("JSON payload"),
    }))
    .expect("valid event")
}

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl raw::plugbus::plugin::types::Host for RawState {}

impl raw::plugbus::plugin::host::Host for RawState {
    fn emit(&mut self, _: raw::plugbus::plugin::types::OutgoingEvent) -> Result<String, String> {
        Err("not in this benchmark".into())
    }
    fn log(&mut self, _: raw::plugbus::plugin::types::Level, _: String) {}
    fn config_get(&mut self, _: String) -> Option<String> {
        None
    }
}

impl raw::plugbus::plugin::state::Host for RawState {
    fn get(&mut self, _: String) -> Option<Vec<u8>> {
        None
    }
    fn set(&mut self, _: String, _: Vec<u8>) -> Result<(), String> {
        Err("not in this benchmark".into())
    }
    fn delete(&mut self, _: String) {}
}

/// The component behind `bindgen!` alone: one engine with wasmtime's
/// defaults (but concurrency support off, as plugbus has it), one store.
/// With `limits`, fuel and epoch interruption are on and the store is
/// refuelled before each call, as plugbus does, so that what remains between
/// this and `plugbus_deliver` is plugbus's own code.
struct RawWasmtime {
    store: Store<RawState>,
    handler: raw::Handler,
    limits: bool,
}

impl RawWasmtime {
    fn new(limits: bool) -> Self {
        let mut config = Config::new();
        config
            .concurrency_support(false)
            .consume_fuel(limits)
            .epoch_interruption(limits);
        let engine = Engine::new(&config).expect("engine");
        let component =
            Component::from_file(&engine, plugbus_artifacts::FIXTURE_CHECKSUM).expect("component");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        raw::Handler::add_to_linker::<RawState, HasSelf<RawState>>(&mut linker, |s| s)
            .expect("host");
        // The SDK's components also import `batch.done`, which `handle`
        // never calls.
        linker
            .instance("plugbus:plugin/batch@0.2.0")
            .expect("the batch interface")
            .func_wrap(
                "done",
                |_, _: (Result<(), raw::plugbus::plugin::types::HandlerError>,)| Ok((true,)),
            )
            .expect("batch.done");
        let pre =
            raw::HandlerPre::new(linker.instantiate_pre(&component).expect("pre")).expect("world");
        let mut store = Store::new(
            &engine,
            RawState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        if limits {
            store.set_fuel(u64::MAX).expect("fuel");
            store.set_epoch_deadline(u64::MAX);
        }
        let handler = pre.instantiate(&mut store).expect("instance");
        Self {
            store,
            handler,
            limits,
        }
    }

    fn call(&mut self, event: &raw::plugbus::plugin::types::Event) {
        if self.limits {
            self.store.set_fuel(1_000_000_000).expect("fuel");
            self.store.set_epoch_deadline(1_000_000);
        }
        let result = self
            .handler
            .call_handle(&mut self.store, event)
            .expect("no trap");
        assert!(result.is_ok());
    }
}

fn raw_event(e: &Event) -> raw::plugbus::plugin::types::Event {
    raw::plugbus::plugin::types::Event {
        id: e.id().to_owned(),
        source: e.source().to_owned(),
        type_: e.ty().to_owned(),
        subject: e.subject().map(str::to_owned),
        time: e.time().map(str::to_owned),
        datacontenttype: e.datacontenttype().map(str::to_owned),
        dataschema: e.dataschema().map(str::to_owned),
        data: e.data().to_vec(),
        extensions: e
            .extensions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tenant: e.tenant().to_owned(),
        attempt: 1,
    }
}

fn plugbus_host(engine: EngineOptions) -> (Host, tempfile::TempDir) {
    plugbus_host_with(engine, plugbus_artifacts::FIXTURE_CHECKSUM)
}

/// A host with the component at `wasm` as plugin `acme-pos/checksum`.
fn plugbus_host_with(engine: EngineOptions, wasm: &str) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let tenant = dir.path().join("acme-pos");
    std::fs::create_dir_all(&tenant).expect("tenant directory");
    std::fs::copy(wasm, tenant.join("checksum.wasm")).expect("copy");
    // Generous limits: the benchmark measures the boundary, not a limit hit.
    std::fs::write(
        tenant.join("checksum.toml"),
        "[limits]\nfuel = 1_000_000_000\ntimeout_ms = 10_000\n",
    )
    .expect("manifest");
    let config = HostConfig {
        engine,
        ..HostConfig::default()
    };
    let host = Host::new(config).expect("host");
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    (host, dir)
}

/// The `extism-checksum` peer, loaded the idiomatic way: one `Plugin`,
/// called again and again. With `limits`, a fuel limit per call and a
/// timeout, like plugbus's generous manifest above.
fn extism_plugin(limits: bool) -> extism::Plugin {
    let wasm = std::fs::read(plugbus_artifacts::EXTISM_CHECKSUM).expect("the Extism peer");
    let mut manifest = extism::Manifest::new([extism::Wasm::data(wasm)]);
    let mut builder = if limits {
        manifest = manifest.with_timeout(Duration::from_secs(10));
        extism::PluginBuilder::new(manifest).with_fuel_limit(1_000_000_000)
    } else {
        extism::PluginBuilder::new(manifest)
    };
    builder = builder.with_wasi(false).with_cache_disabled();
    builder.build().expect("the Extism plugin loads")
}

/// Calls an Extism plugin's function and checks its answer.
fn extism_call(plugin: &mut extism::Plugin, function: &str, input: &[u8], expected: u64) {
    let output = plugin
        .call::<&[u8], &[u8]>(function, input)
        .expect("the Extism call succeeds");
    assert_eq!(output, expected.to_le_bytes());
}

/// Delivers `iters` events in batches of up to `events.len()` through
/// `Plugin::deliver_batch`; criterion's iteration is one event.
fn batches(plugin: &plugbus::Plugin, events: &[Event], iters: u64) -> Duration {
    let started = std::time::Instant::now();
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(events.len());
        let reports = plugin
            .deliver_batch(&events[..n])
            .expect("valid events of its tenant");
        assert!(reports.iter().all(|(d, _)| d.outcome.is_handled()));
        left -= n;
    }
    started.elapsed()
}

/// Events per batch in the batch benchmarks: the host's default limit.
const BATCH: usize = 128;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn boundary(c: &mut Criterion) {
    let runtime = runtime();
    let mut raw = RawWasmtime::new(false);
    let mut raw_limited = RawWasmtime::new(true);
    let (host, _dir) = plugbus_host(EngineOptions::default());
    let plugin = host.plugin("acme-pos", "checksum").expect("loaded");
    let mut extism = extism_plugin(false);
    let mut extism_limited = extism_plugin(true);

    // The native handler behind a channel: a task that runs it and answers.
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Event, tokio::sync::oneshot::Sender<Result<(), String>>)>(64);
    runtime.spawn(async move {
        while let Some((event, reply)) = rx.recv().await {
            let _ = reply.send(native_handle(&event));
        }
    });

    let mut group = c.benchmark_group("boundary");
    for size in [64usize, 256, 4096, 65536] {
        let event = event(size);
        let raw_event = raw_event(&event);
        group.bench_with_input(BenchmarkId::new("native_direct", size), &event, |b, e| {
            b.iter(|| native_handle(e).expect("handled"));
        });
        group.bench_with_input(BenchmarkId::new("native_channel", size), &event, |b, e| {
            b.iter(|| {
                runtime.block_on(async {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    tx.send((e.clone(), reply)).await.expect("send");
                    answer.await.expect("answer").expect("handled");
                });
            });
        });
        group.bench_with_input(
            BenchmarkId::new("raw_wasmtime", size),
            &raw_event,
            |b, e| {
                b.iter(|| raw.call(e));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("raw_wasmtime_fuel_epoch", size),
            &raw_event,
            |b, e| b.iter(|| raw_limited.call(e)),
        );
        group.bench_with_input(BenchmarkId::new("plugbus_deliver", size), &event, |b, e| {
            b.iter(|| {
                let (delivery, _) = plugin.deliver(e).expect("a valid event of its tenant");
                assert!(delivery.outcome.is_handled());
            });
        });
        let batch = vec![event.clone(); BATCH];
        group.bench_with_input(
            BenchmarkId::new("plugbus_batch", size),
            &batch,
            |b, events| {
                b.iter_custom(|iters| batches(&plugin, events, iters));
            },
        );
        group.bench_with_input(BenchmarkId::new("plugbus_publish", size), &event, |b, e| {
            b.iter(|| {
                let report = runtime.block_on(host.publish(e.clone())).expect("valid");
                assert!(report.deliveries[0].outcome.is_handled());
            });
        });
        let sum = checksum(event.data());
        group.bench_with_input(BenchmarkId::new("extism_data", size), &event, |b, e| {
            b.iter(|| extism_call(&mut extism, "handle_data", e.data(), sum));
        });
        group.bench_with_input(
            BenchmarkId::new("extism_data_limits", size),
            &event,
            |b, e| b.iter(|| extism_call(&mut extism_limited, "handle_data", e.data(), sum)),
        );
        let json = serde_json::to_vec(&event.to_json_value()).expect("JSON");
        group.bench_with_input(
            BenchmarkId::new("extism_event_json", size),
            &json,
            |b, j| {
                b.iter(|| extism_call(&mut extism, "handle_event", j, sum));
            },
        );
    }
    group.finish();
}

/// A trivial plugin (the `noop` fixture, which reads nothing), fuel and
/// epochs on: one event through `handle` against one event of a batch.
fn trivial(c: &mut Criterion) {
    let (host, _dir) = plugbus_host_with(EngineOptions::default(), plugbus_artifacts::FIXTURE_NOOP);
    let plugin = host.plugin("acme-pos", "checksum").expect("loaded");
    let mut group = c.benchmark_group("trivial");
    for size in [64usize, 256] {
        let event = event(size);
        group.bench_with_input(BenchmarkId::new("deliver", size), &event, |b, e| {
            b.iter(|| {
                let (delivery, _) = plugin.deliver(e).expect("a valid event of its tenant");
                assert!(delivery.outcome.is_handled());
            });
        });
        let batch = vec![event.clone(); BATCH];
        group.bench_with_input(BenchmarkId::new("batch", size), &batch, |b, events| {
            b.iter_custom(|iters| batches(&plugin, events, iters));
        });
    }
    group.finish();
}

fn limits(c: &mut Criterion) {
    let event = event(65536);
    let mut group = c.benchmark_group("limits_64KiB");
    for (name, consume_fuel, epoch_interruption) in [
        ("fuel_on_epoch_on", true, true),
        ("fuel_off_epoch_on", false, true),
        ("fuel_on_epoch_off", true, false),
        ("fuel_off_epoch_off", false, false),
    ] {
        let options = EngineOptions {
            consume_fuel,
            epoch_interruption,
            ..EngineOptions::default()
        };
        let (host, _dir) = plugbus_host(options);
        let plugin = host.plugin("acme-pos", "checksum").expect("loaded");
        group.bench_function(name, |b| {
            b.iter(|| {
                let (delivery, _) = plugin.deliver(&event).expect("a valid event of its tenant");
                assert!(delivery.outcome.is_handled());
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = boundary, trivial, limits
}
criterion_main!(benches);
