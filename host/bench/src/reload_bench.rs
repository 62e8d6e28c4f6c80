//! `plugbus bench-reload`: how fast a replaced plugin serves, and what
//! swapping costs the events flowing meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plugbus::loader::with_custom_section;
use plugbus::{Event, Host, HostConfig, ReloadEvent};
use serde::Serialize;

/// Arguments of `plugbus bench-reload`.
#[derive(clap::Args)]
pub struct ReloadBenchArgs {
    /// The component to swap (`fixture-noop` is the trivial handler; see
    /// `cargo xtask build-plugins`).
    #[arg(long, value_name = "FILE")]
    plugin: std::path::PathBuf,

    /// Swaps measured per case.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    swaps: u32,

    /// Size of the large component: the plugin with a custom section of
    /// this many MiB appended.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=48))]
    large_mib: u32,

    /// Seconds of load for each throughput figure.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,

    /// Events in flight at once during the throughput runs.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,

    /// Print one JSON object per row instead of tables.
    #[arg(long)]
    json: bool,
}

/// Time from a rename to the first event handled by the new version.
#[derive(Serialize)]
struct SwapRow {
    component: String,
    bytes: usize,
    cache: &'static str,
    swaps: usize,
    compile_ms: f64,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Events/s with and without swaps.
#[derive(Serialize)]
struct ThroughputRow {
    case: &'static str,
    events_per_s: f64,
    swaps: u64,
    ratio_to_steady: f64,
}

/// Runs the benchmark.
pub async fn run(args: ReloadBenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let small = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read the plugin {}", args.plugin.display()))?;
    let large = with_custom_section(&small, "ballast", args.large_mib as usize * 1024 * 1024);
    let mut swap_rows = Vec::new();
    for (name, base) in [("small", &small), ("large", &large)] {
        for cache in ["hit", "miss"] {
            let row = swap_row(name, base, cache, args.swaps as usize)
                .await
                .with_context(|| format!("{name} component, cache {cache}"))?;
            if args.json {
                println!("{}", serde_json::to_string(&row)?);
            }
            swap_rows.push(row);
        }
    }
    let throughput = throughput(&small, &args).await?;
    if args.json {
        for row in &throughput {
            println!("{}", serde_json::to_string(row)?);
        }
    }
    if !args.json {
        println!(
            "| component | bytes | compile cache | swaps | compile alone ms | rename to served: median ms | p99 ms | max ms |\n|---|---:|---|---:|---:|---:|---:|---:|"
        );
        for r in &swap_rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} |",
                r.component,
                r.bytes,
                r.cache,
                r.swaps,
                r.compile_ms,
                r.median_ms,
                r.p99_ms,
                r.max_ms
            );
        }
        println!(
            "\n| load ({} in flight; 3 interleaved rounds of {} s per case) | events/s | swaps | ratio to steady |\n|---|---:|---:|---:|",
            args.concurrency, args.seconds
        );
        for r in &throughput {
            println!(
                "| {} | {:.0} | {} | {:.3} |",
                r.case, r.events_per_s, r.swaps, r.ratio_to_steady
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A host with a fresh compile cache, serving `base` as tenant `t`'s
/// plugin `p`, watching its directory.
struct Rig {
    host: Arc<Host>,
    wasm: std::path::PathBuf,
    _watcher: plugbus::Watcher,
    _plugins: tempfile::TempDir,
    _cache: tempfile::TempDir,
}

impl Rig {
    fn new(base: &[u8]) -> anyhow::Result<Self> {
        Self::with_config(base, HostConfig::default())
    }

    /// [`Rig::new`] on a host of `config`, with a compile cache of its own.
    fn with_config(base: &[u8], config: HostConfig) -> anyhow::Result<Self> {
        let plugins = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let tenant = plugins.path().join("t");
        std::fs::create_dir(&tenant)?;
        let wasm = tenant.join("p.wasm");
        std::fs::write(&wasm, base)?;
        let config = HostConfig {
            compile_cache: Some(cache.path().to_owned()),
            ..config
        };
        let host = Arc::new(Host::new(config)?);
        let report = host.load_dir(plugins.path())?;
        if let Some(error) = report.errors.first() {
            bail!("the plugin does not load: {error}");
        }
        let watcher = host.watch(plugins.path())?;
        Ok(Self {
            host,
            wasm,
            _watcher: watcher,
            _plugins: plugins,
            _cache: cache,
        })
    }

    /// Renames `bytes` over the plugin and waits until the host reports the
    /// outcome; fails if the new version did not load.
    async fn swap(&self, bytes: &[u8]) -> anyhow::Result<Instant> {
        let mut events = self.host.reload_events();
        let staged = self.wasm.with_file_name(".p.wasm.new");
        std::fs::write(&staged, bytes)?;
        let renamed = Instant::now();
        std::fs::rename(&staged, &self.wasm)?;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
                Ok(Ok(ReloadEvent::Replaced { .. })) => return Ok(renamed),
                Ok(Ok(ReloadEvent::Failed { reason, .. })) => bail!("swap failed: {reason}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("reload events: {e}"),
                Err(_) => bail!("no reload within 60 s"),
            }
        }
    }
}

fn event(i: u64) -> anyhow::Result<Event> {
    Ok(Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": format!("e-{i}"),
        "source": "/bench",
        "type": "order.created",
        "tenant": "t",
        "data": {"n": i},
    }))?)
}

/// Time from a rename to the first event the new version handled, over
/// several swaps.
pub(crate) struct SwapLatency {
    /// The median.
    pub(crate) median: Duration,
    /// The 99th percentile.
    pub(crate) p99: Duration,
    /// The longest.
    pub(crate) max: Duration,
}

/// [`swap_latency`] on a default host, with what compiling the component
/// costs on its own beside it.
async fn swap_row(
    name: &str,
    base: &[u8],
    cache: &'static str,
    swaps: usize,
) -> anyhow::Result<SwapRow> {
    let latency = swap_latency(base, cache, swaps, HostConfig::default()).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // What compiling the component costs on its own, for comparison with
    // the cache misses: the median of a few compiles on the host's engine.
    let engine = plugbus::engine::shared(&plugbus::engine::EngineOptions::default())?;
    let mut compiles = Vec::new();
    for i in 0..5 {
        let bytes = with_custom_section(base, &format!("compile-{i}"), 8);
        let started = Instant::now();
        wasmtime::component::Component::from_binary(&engine, &bytes)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        compiles.push(started.elapsed());
    }
    compiles.sort();
    Ok(SwapRow {
        component: name.to_owned(),
        bytes: base.len(),
        cache,
        swaps,
        compile_ms: ms(compiles[compiles.len() / 2]),
        median_ms: ms(latency.median),
        p99_ms: ms(latency.p99),
        max_ms: ms(latency.max),
    })
}

/// Swaps `swaps` times on a host of `config` and measures, for each, the
/// time from the rename to the end of the first delivery by the new
/// version, publishing events back to back meanwhile. With `cache` "hit",
/// the swaps alternate between two versions already compiled; with
/// "miss", each is a version never seen (another custom section), so it
/// is compiled.
pub(crate) async fn swap_latency(
    base: &[u8],
    cache: &'static str,
    swaps: usize,
    config: HostConfig,
) -> anyhow::Result<SwapLatency> {
    let rig = Rig::with_config(base, config)?;
    let versions = [
        with_custom_section(base, "version-a", 8),
        with_custom_section(base, "version-b", 8),
    ];
    if cache == "hit" {
        for v in &versions {
            rig.swap(v).await?;
        }
    }
    let mut latencies = Vec::with_capacity(swaps);
    let mut n = 0u64;
    for i in 0..swaps {
        let bytes = match cache {
            "hit" => versions[i % 2].clone(),
            _ => with_custom_section(base, &format!("miss-{i}"), 8),
        };
        let old = rig.host.plugins()[0].version.clone();
        let staged = rig.wasm.with_file_name(".p.wasm.new");
        std::fs::write(&staged, &bytes)?;
        let renamed = Instant::now();
        std::fs::rename(&staged, &rig.wasm)?;
        loop {
            n += 1;
            let report = rig.host.publish(event(n)?).await?;
            let Some(delivery) = report.deliveries.first() else {
                bail!("no delivery");
            };
            if delivery.plugin_version != old {
                latencies.push(renamed.elapsed());
                break;
            }
            if renamed.elapsed() > Duration::from_secs(60) {
                bail!("the new version did not serve within 60 s");
            }
            // Yield so the watcher runs even on one thread.
            tokio::task::yield_now().await;
        }
    }
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    Ok(SwapLatency {
        median: at(0.5),
        p99: at(0.99),
        max: latencies[latencies.len() - 1],
    })
}

/// Events/s through one plugin under steady load, in phases of
/// `args.seconds`: no swaps, a swap every second between two cached
/// versions, a swap every second to a version never seen; the three phases
/// repeat three times, interleaved, so that drift of the machine's speed
/// weighs on all of them alike.
async fn throughput(base: &[u8], args: &ReloadBenchArgs) -> anyhow::Result<Vec<ThroughputRow>> {
    const CASES: [&str; 3] = [
        "steady, no swaps",
        "a swap every second, cache hit",
        "a swap every second, cache miss",
    ];
    let rig = Rig::new(base)?;
    let versions = [
        with_custom_section(base, "version-a", 8),
        with_custom_section(base, "version-b", 8),
    ];
    for v in &versions {
        rig.swap(v).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..u64::from(args.concurrency) {
        let (host, stop, handled) = (rig.host.clone(), stop.clone(), handled.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = p << 40;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let report = host.publish(event(i)?).await?;
                if report.deliveries.iter().all(|d| d.outcome.is_handled()) {
                    handled.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut events = [0u64; 3];
    let mut time = [Duration::ZERO; 3];
    let mut swaps = [0u64; 3];
    let mut fresh = 0u64;
    for _round in 0..3 {
        for (case, _) in CASES.iter().enumerate() {
            let before = handled.load(Ordering::Relaxed);
            let started = Instant::now();
            for _second in 0..args.seconds {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match case {
                    1 => rig.swap(&versions[(swaps[1] % 2) as usize]).await?,
                    2 => {
                        fresh += 1;
                        rig.swap(&with_custom_section(base, &format!("load-{fresh}"), 8))
                            .await?
                    }
                    _ => continue,
                };
                swaps[case] += 1;
            }
            time[case] += started.elapsed();
            events[case] += handled.load(Ordering::Relaxed) - before;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await??;
    }
    let rate = |case: usize| events[case] as f64 / time[case].as_secs_f64();
    Ok(CASES
        .iter()
        .enumerate()
        .map(|(case, name)| ThroughputRow {
            case: name,
            events_per_s: rate(case),
            swaps: swaps[case],
            ratio_to_steady: rate(case) / rate(0),
        })
        .collect())
}
