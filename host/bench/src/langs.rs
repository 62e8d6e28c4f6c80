//! `plugbus-bench bench-langs`: what the same handler costs when written in
//! different languages (issue 17): component size, compile time, load time
//! from the compile cache, the time from a rename to the new version
//! serving with a cache hit, the first event's and the steady state's time
//! and fuel, and the linear memory of one instance.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plugbus::{Event, Host, HostConfig, Limits};
use serde::Serialize;

/// Arguments of `plugbus-bench bench-langs`.
#[derive(clap::Args)]
pub struct LangsArgs {
    /// A component to measure, as LABEL=FILE (for example
    /// `python=target/guests/python/low-stock-alert-py.wasm`); repeat it for
    /// each language. The handlers should do the same thing.
    #[arg(long = "plugin", value_name = "LABEL=FILE", required = true, value_parser = parse_plugin)]
    plugins: Vec<(String, PathBuf)>,

    /// Events delivered one after the other for the steady-state figures.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    events: u32,

    /// Cold compiles measured per component (a Python or JavaScript
    /// component takes tens of seconds each).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    compiles: u32,

    /// Loads from a warm compile cache measured per component.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    cache_loads: u32,

    /// Renames measured per component, alternating two versions already in
    /// the compile cache.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=1000))]
    swaps: u32,

    /// The memory limit of the plugins while measuring, in MiB (their
    /// manifests are not used; the fuel and time limits are the host's
    /// defaults).
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mib: u64,

    /// Print one JSON object per component instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_plugin(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((label, path)) if !label.is_empty() && !path.is_empty() => {
            Ok((label.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected LABEL=FILE, got {s:?}")),
    }
}

/// One component's figures.
#[derive(Serialize)]
struct Row {
    label: String,
    bytes: usize,
    compile_ms: f64,
    cache_load_ms: f64,
    swap_hit_median_ms: f64,
    swap_hit_max_ms: f64,
    first_event_us: f64,
    first_event_fuel: u64,
    ignored_median_us: f64,
    ignored_fuel: u64,
    low_stock_median_us: f64,
    low_stock_p99_us: f64,
    low_stock_fuel: u64,
    instance_memory_bytes: u64,
}

/// Runs the benchmark.
pub async fn run(args: LangsArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut rows = Vec::new();
    for (label, path) in &args.plugins {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the {label} component {}", path.display()))?;
        let row = measure(label, &bytes, &args)
            .await
            .with_context(|| format!("{label} ({})", path.display()))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        }
        rows.push(row);
    }
    if !args.json {
        println!(
            "| component | MB | compile s | load from cache ms | rename to served, cache hit: median / max ms | first event µs | fuel | steady, ignored event: µs | fuel | steady, low-stock event: median / p99 µs | fuel | instance memory MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &rows {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} | {} | {:.1} | {} | {:.1} / {:.1} | {} | {:.1} |",
                r.label,
                r.bytes as f64 / 1e6,
                r.compile_ms / 1000.0,
                r.cache_load_ms,
                r.swap_hit_median_ms,
                r.swap_hit_max_ms,
                r.first_event_us,
                r.first_event_fuel,
                r.ignored_median_us,
                r.ignored_fuel,
                r.low_stock_median_us,
                r.low_stock_p99_us,
                r.low_stock_fuel,
                r.instance_memory_bytes as f64 / (1024.0 * 1024.0),
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A host serving `bytes` as tenant `t`'s plugin `p`, with its compile
/// cache in `cache`.
struct Loaded {
    host: Arc<Host>,
    load: Duration,
    _plugins: tempfile::TempDir,
}

fn load(bytes: &[u8], cache: &std::path::Path, memory_mib: u64) -> anyhow::Result<Loaded> {
    let plugins = tempfile::tempdir()?;
    let tenant = plugins.path().join("t");
    std::fs::create_dir(&tenant)?;
    std::fs::write(tenant.join("p.wasm"), bytes)?;
    let config = HostConfig {
        compile_cache: Some(cache.to_owned()),
        default_limits: limits(memory_mib),
        ..HostConfig::default()
    };
    let host = Arc::new(Host::new(config)?);
    let started = Instant::now();
    let report = host.load_dir(plugins.path())?;
    let load = started.elapsed();
    if let Some(error) = report.errors.first() {
        bail!("the plugin does not load: {error}");
    }
    Ok(Loaded {
        host,
        load,
        _plugins: plugins,
    })
}

/// The host's default limits with a memory limit of `memory_mib`.
fn limits(memory_mib: u64) -> Limits {
    Limits {
        memory_bytes: memory_mib * 1024 * 1024,
        ..Limits::default()
    }
}

fn event(i: u64, ty: &str, data: serde_json::Value) -> anyhow::Result<Event> {
    Ok(Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": format!("e-{i}"),
        "source": "/bench",
        "type": ty,
        "tenant": "t",
        "datacontenttype": "application/json",
        "data": data,
    }))?)
}

/// The event every low-stock-alert handler emits for: a quantity at its
/// default threshold of 10 or below.
fn low_stock(i: u64) -> anyhow::Result<Event> {
    event(
        i,
        "inventory.stock_changed",
        serde_json::json!({"sku": format!("sku-{}", i % 100), "new_quantity": 3}),
    )
}

/// Delivers `event` and returns its time and fuel; fails unless handled.
async fn deliver(host: &Host, event: Event) -> anyhow::Result<(Duration, u64)> {
    let report = host.publish(event).await?;
    let Some(delivery) = report.deliveries.first() else {
        bail!("no delivery: the plugin is not subscribed");
    };
    if !delivery.outcome.is_handled() {
        bail!("the delivery failed: {:?}", delivery.outcome);
    }
    Ok((delivery.duration, delivery.fuel))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn measure(label: &str, bytes: &[u8], args: &LangsArgs) -> anyhow::Result<Row> {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    // Cold compiles, on the host's engine, each of bytes never seen.
    let engine = plugbus::engine::shared(&plugbus::engine::EngineOptions::default())?;
    let mut compiles = Vec::new();
    for i in 0..args.compiles {
        let fresh = plugbus::loader::with_custom_section(bytes, &format!("compile-{i}"), 8);
        let started = Instant::now();
        wasmtime::component::Component::from_binary(&engine, &fresh)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        compiles.push(started.elapsed());
    }
    compiles.sort();

    // Loads of the plugin by a new host whose compile cache holds it: a
    // restart, or a revert to a version seen before.
    let cache = tempfile::tempdir()?;
    drop(load(bytes, cache.path(), args.memory_mib)?);
    let mut loads = Vec::new();
    for _ in 0..args.cache_loads {
        loads.push(load(bytes, cache.path(), args.memory_mib)?.load);
    }
    loads.sort();

    // The first event of a fresh instance, then the steady state.
    let loaded = load(bytes, cache.path(), args.memory_mib)?;
    let host = &loaded.host;
    let (first, first_fuel) = deliver(host, low_stock(0)?).await?;
    let mut ignored = Vec::new();
    let mut ignored_fuel = Vec::new();
    let mut low = Vec::new();
    let mut low_fuel = Vec::new();
    for i in 1..=u64::from(args.events) {
        let (time, fuel) = if i % 2 == 0 {
            deliver(
                host,
                event(i, "order.created", serde_json::json!({"n": i}))?,
            )
            .await?
        } else {
            deliver(host, low_stock(i)?).await?
        };
        if i % 2 == 0 {
            ignored.push(time);
            ignored_fuel.push(fuel);
        } else {
            low.push(time);
            low_fuel.push(fuel);
        }
    }
    ignored.sort();
    low.sort();
    let instance_memory = host
        .plugin("t", "p")
        .map(|p| p.idle_memory_bytes().into_iter().max().unwrap_or(0))
        .unwrap_or(0);
    drop(loaded);

    let swaps = crate::reload_bench::swap_latency(
        bytes,
        "hit",
        args.swaps as usize,
        HostConfig {
            default_limits: limits(args.memory_mib),
            ..HostConfig::default()
        },
    )
    .await?;

    Ok(Row {
        label: label.to_owned(),
        bytes: bytes.len(),
        compile_ms: ms(compiles[compiles.len() / 2]),
        cache_load_ms: ms(loads[loads.len() / 2]),
        swap_hit_median_ms: ms(swaps.median),
        swap_hit_max_ms: ms(swaps.max),
        first_event_us: us(first),
        first_event_fuel: first_fuel,
        ignored_median_us: us(quantile(&ignored, 0.5)),
        ignored_fuel: median_u64(ignored_fuel),
        low_stock_median_us: us(quantile(&low, 0.5)),
        low_stock_p99_us: us(quantile(&low, 0.99)),
        low_stock_fuel: median_u64(low_fuel),
        instance_memory_bytes: instance_memory,
    })
}
