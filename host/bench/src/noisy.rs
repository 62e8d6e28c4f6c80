//! `plugbus bench-noisy`: the noisy-neighbour benchmark. A well-behaved
//! tenant publishes through the durable log, alone and then beside a
//! hostile tenant doing one hostile thing at a time (and all of them at
//! once), in one run; each row reports the good tenant's throughput and
//! its latency to *handled*, with the host's peak resident memory and the
//! log's growth during the row beside the configured bounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use plugbus::durable::{DurableBus, DurableConfig};
use plugbus::log::{SqliteLog, SqliteLogConfig};
use plugbus::{Event, Host, HostConfig};
use serde::Serialize;

/// Arguments of `plugbus bench-noisy`.
#[derive(clap::Args)]
pub struct NoisyArgs {
    /// The good tenant's plugin (`fixture-noop` is the trivial handler).
    #[arg(long, value_name = "FILE")]
    plugin: PathBuf,

    /// The `fixture-hostile` component, run in its hostile modes.
    #[arg(long, value_name = "FILE")]
    hostile: PathBuf,

    /// The `fixture-sleeper` component, which blocks in host calls.
    #[arg(long, value_name = "FILE")]
    sleeper: PathBuf,

    /// The good tenant's events per row.
    #[arg(long, value_name = "N", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// The good tenant's events in flight at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,

    /// Events per second the hostile tenant publishes while the good one
    /// runs.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    hostile_rate: u32,

    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One hostile behaviour: the plugin the hostile tenant runs, its mode and
/// its manifest's extra lines.
struct Behaviour {
    name: &'static str,
    sleeper: bool,
    manifest: &'static str,
}

const BEHAVIOURS: &[Behaviour] = &[
    Behaviour {
        name: "big-emit",
        sleeper: false,
        manifest: "",
    },
    Behaviour {
        name: "amplify",
        sleeper: false,
        manifest: "",
    },
    Behaviour {
        name: "big-error",
        sleeper: false,
        manifest: "[retry]\nmax_attempts = 1\n",
    },
    Behaviour {
        name: "forge-log",
        sleeper: false,
        manifest: "",
    },
    Behaviour {
        name: "sleep",
        sleeper: true,
        manifest: "[limits]\ntimeout_ms = 100\n[retry]\nmax_attempts = 1\n",
    },
];

/// The figures of one row.
#[derive(Serialize)]
struct Row {
    beside: String,
    events: u64,
    events_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    /// Deliveries the hostile tenant's plugins made during the row.
    hostile_deliveries: u64,
    peak_rss_mib: Option<f64>,
    log_growth_mib: f64,
}

/// Runs the rows; fails when the good tenant's events are not all handled.
pub async fn run(args: NoisyArgs) -> anyhow::Result<std::process::ExitCode> {
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let components = Components {
        good: read(&args.plugin)?,
        hostile: read(&args.hostile)?,
        sleeper: read(&args.sleeper)?,
    };
    let config = HostConfig::default();
    if !args.json {
        println!(
            "plugbus bench-noisy: {} good events per row, {} in flight, hostile tenant at {} events/s; \
             latency is publish to handled, through the durable log (fsync on)",
            args.events, args.concurrency, args.hostile_rate
        );
        println!(
            "bounds: emits {} and {} KiB per delivery, {} KiB per batch commit, {} events per chain, \
             read-ahead {} MiB per plugin, timeout ceiling {} ms",
            config.max_emits_per_delivery,
            config.max_emit_bytes_per_delivery / 1024,
            config.max_batch_commit_bytes / 1024,
            config.max_events_per_chain,
            DurableConfig::default().max_pending_bytes / (1024 * 1024),
            config.max_limits.timeout.as_millis(),
        );
        println!(
            "{:<12} {:>8} {:>10} {:>9} {:>9} {:>9} {:>13} {:>14}",
            "beside",
            "events",
            "events/s",
            "p50 us",
            "p99 us",
            "hostile",
            "peak RSS MiB",
            "log grew MiB"
        );
    }
    let mut rows = Vec::new();
    let mut sets: Vec<(String, Vec<&Behaviour>)> = vec![("alone".to_owned(), Vec::new())];
    sets.extend(BEHAVIOURS.iter().map(|b| (b.name.to_owned(), vec![b])));
    sets.push(("all at once".to_owned(), BEHAVIOURS.iter().collect()));
    for (name, behaviours) in sets {
        let row = run_row(&name, &behaviours, &components, &args)
            .await
            .with_context(|| format!("row {name}"))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:<12} {:>8} {:>10.0} {:>9} {:>9} {:>9} {:>13} {:>14.1}",
                row.beside,
                row.events,
                row.events_per_s,
                row.p50_us,
                row.p99_us,
                row.hostile_deliveries,
                row.peak_rss_mib
                    .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0}")),
                row.log_growth_mib
            );
        }
        rows.push(row);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

struct Components {
    good: Vec<u8>,
    hostile: Vec<u8>,
    sleeper: Vec<u8>,
}

const GOOD: &str = "good-tenant";
const HOSTILE: &str = "hostile-tenant";

async fn run_row(
    name: &str,
    behaviours: &[&Behaviour],
    components: &Components,
    args: &NoisyArgs,
) -> anyhow::Result<Row> {
    let plugins = tempfile::tempdir().context("cannot create a plugins directory")?;
    let good_dir = plugins.path().join(GOOD);
    std::fs::create_dir_all(&good_dir)?;
    std::fs::write(good_dir.join("noop.wasm"), &components.good)?;
    std::fs::write(
        good_dir.join("noop.toml"),
        "subscribe = [\"inventory.*\"]\n",
    )?;
    if !behaviours.is_empty() {
        let hostile_dir = plugins.path().join(HOSTILE);
        std::fs::create_dir_all(&hostile_dir)?;
        for behaviour in behaviours {
            let component = if behaviour.sleeper {
                &components.sleeper
            } else {
                &components.hostile
            };
            std::fs::write(
                hostile_dir.join(format!("{}.wasm", behaviour.name)),
                component,
            )?;
            std::fs::write(
                hostile_dir.join(format!("{}.toml", behaviour.name)),
                format!(
                    "subscribe = [\"hostile.poke\"]\n{}[config]\nmode = \"{}\"\n",
                    behaviour.manifest, behaviour.name
                ),
            )?;
        }
    }
    let host = Arc::new(Host::new(HostConfig::default())?);
    let report = host.load_dir(plugins.path())?;
    if let Some(error) = report.errors.first() {
        bail!("a plugin was refused: {error}");
    }
    let data = tempfile::tempdir().context("cannot create a data directory")?;
    let log = SqliteLog::open(data.path(), SqliteLogConfig::default())?;
    let (bus, mut deliveries) =
        DurableBus::start_observed(host.clone(), Arc::new(log), DurableConfig::default()).await?;
    let bus = Arc::new(bus);

    // Publish times of the good events, and their latencies to handled.
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .context("cannot create the latency histogram")?,
    ));
    let hostile_deliveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (published, latencies, hostile) = (
            published.clone(),
            latencies.clone(),
            hostile_deliveries.clone(),
        );
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match deliveries.recv().await {
                    Ok(delivery) if delivery.tenant == GOOD && delivery.outcome.is_handled() => {
                        let started = published
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&delivery.event_id);
                        if let Some(started) = started {
                            latencies
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .saturating_record(micros(started.elapsed()).max(1));
                        }
                    }
                    Ok(delivery) if delivery.tenant == HOSTILE => {
                        hostile.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        })
    };

    let log_before = dir_bytes(data.path());
    reset_peak_rss();
    let (stop_hostile, mut stopped) = tokio::sync::watch::channel(false);
    let noise = (!behaviours.is_empty()).then(|| {
        let bus = bus.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(args.hostile_rate));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for i in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                if let Err(e) = bus.publish(vec![poke(i)]).await {
                    tracing::warn!("the hostile tenant's publish failed: {e}");
                }
            }
        })
    });

    let wall = Instant::now();
    let mut last_seq = 0;
    let (bus_ref, published_ref) = (&bus, &published);
    let mut acks = futures::stream::iter(0..args.events)
        .map(|i| async move {
            let event = good_event(i);
            published_ref
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(event.id().to_owned(), Instant::now());
            bus_ref.publish(vec![event]).await
        })
        .buffer_unordered(args.concurrency as usize);
    while let Some(appended) = acks.next().await {
        for a in appended? {
            last_seq = last_seq.max(a.seq);
        }
    }
    drop(acks);
    // Done when the good plugin's cursor has passed its last event.
    let done_by = Instant::now() + Duration::from_secs(600);
    loop {
        let log = bus.log().clone();
        let cursor = tokio::task::spawn_blocking(move || log.cursor(GOOD, "noop"))
            .await
            .context("the cursor read failed")??;
        if cursor.is_some_and(|c| c >= last_seq) {
            break;
        }
        if Instant::now() > done_by {
            bail!("the good tenant's events were not all handled within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = wall.elapsed();
    let peak_rss = peak_rss_bytes();
    let _ = stop_hostile.send(true);
    if let Some(noise) = noise {
        let _ = noise.await;
    }
    let log_growth = dir_bytes(data.path()).saturating_sub(log_before);
    let bus = Arc::try_unwrap(bus).map_err(|_| anyhow::anyhow!("the bus is still shared"))?;
    // A sleeping guest may hold its delivery up to its deadline.
    let _ = tokio::time::timeout(Duration::from_secs(30), bus.shutdown()).await;
    watcher.abort();
    let latencies = latencies.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Row {
        beside: name.to_owned(),
        events: args.events,
        events_per_s: args.events as f64 / wall.as_secs_f64().max(f64::EPSILON),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        hostile_deliveries: hostile_deliveries.load(std::sync::atomic::Ordering::Relaxed),
        peak_rss_mib: peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
        log_growth_mib: log_growth as f64 / (1024.0 * 1024.0),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A good tenant's event.
fn good_event(i: u64) -> Event {
    Event::builder(
        GOOD,
        format!("good-{i}"),
        "/plugbus/bench-noisy",
        "inventory.stock_changed",
    )
    .subject(format!("sku-{}", i % 64))
    .datacontenttype("application/json".to_owned())
    .data(format!(r#"{{"sku":"sku-{}","new_quantity":{i}}}"#, i % 64))
    .build()
    .expect("the benchmark's events are valid")
}

/// A hostile tenant's event, which every hostile plugin subscribes to.
fn poke(i: u64) -> Event {
    Event::builder(
        HOSTILE,
        format!("poke-{i}"),
        "/plugbus/bench-noisy",
        "hostile.poke",
    )
    .datacontenttype("application/json".to_owned())
    .data(b"{}".to_vec())
    .build()
    .expect("the benchmark's events are valid")
}

/// The bytes of the files directly in `dir`: the log, its WAL and journal.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Resets the process's peak resident set size (Linux: `clear_refs` 5).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::warn!("cannot reset the peak RSS: {e}");
    }
}

/// The process's peak resident set size since the last reset (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
