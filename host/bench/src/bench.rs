//! `plugbus bench`: an end-to-end load generator that drives a host in
//! memory and reports events/s, CPU time per event and latency percentiles.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use futures::StreamExt as _;
use plugbus::{Event, Host, HostConfig};
use serde::Serialize;

/// Arguments of `plugbus bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The component every plugin of the benchmark runs. `cargo xtask
    /// build-plugins` prints the paths of the fixtures; `fixture-noop` is the
    /// trivial handler.
    #[arg(long, value_name = "FILE")]
    pub(crate) plugin: PathBuf,

    /// The scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-plugin,ten-plugins,hundred-tenants,thousand-tenants"
    )]
    pub(crate) scenario: Vec<Scenario>,

    /// Events published per scenario.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) events: u64,

    /// Events in flight at once.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) concurrency: u32,

    /// Bytes of JSON payload per event.
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(..=(plugbus::event::MAX_DATA_BYTES as u64)))]
    pub(crate) payload: u64,

    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    pub(crate) json: bool,

    /// Publish through the durable event log (in a temporary data
    /// directory, fsync on) and deliver from it, as `plugbus serve` does:
    /// the latency is then the time to the durable acknowledgement, and
    /// events/s counts until every plugin has handled every event.
    #[arg(long)]
    pub(crate) durable: bool,

    /// With --durable: events per publish, as a producer sending
    /// CloudEvents batches does (the latency is then per batch).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000), requires = "durable")]
    pub(crate) batch: u64,

    /// With --durable: start publishes at this steady rate (events/s, a
    /// publish of --batch events taking that many), at most --concurrency
    /// in flight: a token bucket on the publisher's side, so that the
    /// latency is measured at a load below the host's maximum. Tokens
    /// missed while every slot was in flight are spent at once (the
    /// arrivals keep their rate). Without it, each publish starts as soon
    /// as a slot is free.
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = clap::value_parser!(u64).range(1..=100_000_000), requires = "durable")]
    pub(crate) rate: Option<u64>,

    /// With --durable: answer publishes once the OS has the log's writes,
    /// without fsync, to measure what durability costs.
    #[arg(long, requires = "durable")]
    pub(crate) no_fsync: bool,

    /// With --durable: publish over HTTP, as producers do: a `plugbus
    /// serve` API on 127.0.0.1 in this process, and one keep-alive client
    /// connection per event in flight (structured mode, or batch mode with
    /// --batch). The clients share the process's CPU, as a load generator
    /// on the same machine would.
    #[arg(long, requires = "durable")]
    pub(crate) http: bool,

    /// With --durable: keep the log in NATS JetStream instead of SQLite:
    /// a nats-server started for each scenario (from PATH or
    /// PLUGBUS_NATS_SERVER, a free loopback port, a temporary store), whose
    /// CPU time per event is reported too; or the server of --nats-url.
    #[arg(long, requires = "durable")]
    pub(crate) nats: bool,

    /// With --nats: the NATS server (JetStream on) to use instead of
    /// starting one; each scenario gets streams and buckets of its own
    /// (a fresh prefix). Its CPU time is not reported.
    #[arg(long, value_name = "URL", requires = "nats")]
    pub(crate) nats_url: Option<String>,

    /// With --nats: run N hosts, each its own `plugbus-bench bench-host`
    /// process with the same plugins, sharing the one NATS log; each
    /// publishes its share of the events (every N-th batch, with
    /// concurrency / N in flight) and delivers the plugins whose lease it
    /// holds. Reports each host's CPU time, and the server's.
    #[arg(long, value_name = "N", requires = "nats", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) hosts: Option<u32>,

    /// Export every delivery span to this OpenTelemetry collector's
    /// OTLP/HTTP base URL while measuring, to see what tracing costs.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// With --otlp-endpoint: the share of the traces exported (each
    /// delivery starts one here).
    #[arg(
        long,
        value_name = "RATIO",
        default_value_t = 1.0,
        requires = "otlp_endpoint"
    )]
    pub otlp_sample_ratio: f64,
}

/// A layout of tenants and plugins.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scenario {
    /// One tenant with one plugin.
    OnePlugin,
    /// One tenant with ten plugins: every event is delivered ten times.
    TenPlugins,
    /// A hundred tenants with one plugin each; events spread over them.
    HundredTenants,
    /// A thousand tenants with one plugin each; events spread over them.
    ThousandTenants,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::OnePlugin => "1 plugin",
            Self::TenPlugins => "10 plugins, 1 tenant",
            Self::HundredTenants => "100 tenants x 1 plugin",
            Self::ThousandTenants => "1,000 tenants x 1 plugin",
        }
    }

    /// Its name on the command line.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::OnePlugin => "one-plugin",
            Self::TenPlugins => "ten-plugins",
            Self::HundredTenants => "hundred-tenants",
            Self::ThousandTenants => "thousand-tenants",
        }
    }

    /// (tenants, plugins per tenant)
    pub(crate) fn layout(self) -> (usize, usize) {
        match self {
            Self::OnePlugin => (1, 1),
            Self::TenPlugins => (1, 10),
            Self::HundredTenants => (100, 1),
            Self::ThousandTenants => (1000, 1),
        }
    }
}

/// The figures of one scenario.
#[derive(Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    /// Where the events went: `memory`, `sqlite` or `nats`.
    pub(crate) backend: &'static str,
    pub(crate) plugins: usize,
    pub(crate) events: u64,
    pub(crate) deliveries: u64,
    pub(crate) failed: u64,
    pub(crate) startup_ms: f64,
    /// Not measured through the durable log.
    pub(crate) startup_cached_ms: Option<f64>,
    pub(crate) memory_per_plugin_kib: Option<u64>,
    pub(crate) events_per_s: f64,
    pub(crate) deliveries_per_s: f64,
    /// The CPU time of the plugbus process (of every host process with
    /// --hosts, summed) per event.
    pub(crate) cpu_us_per_event: f64,
    /// The nats-server's CPU time per event, when this run started it.
    pub(crate) server_cpu_us_per_event: Option<f64>,
    /// With --hosts: each host's figures.
    pub(crate) hosts: Vec<crate::hosts::HostFigures>,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
}

/// Runs the benchmark; the exit status says whether every delivery was handled.
pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let component = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read the plugin {}", args.plugin.display()))?;
    let mut rows = Vec::new();
    for scenario in &args.scenario {
        let row = run_row(*scenario, &component, &args)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        }
        rows.push(row);
    }
    if !args.json {
        print_table(&rows, &args);
    }
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    if failed > 0 {
        eprintln!("plugbus bench: {failed} deliveries failed; see the log");
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One scenario's row: in this process, or with --hosts in host processes.
pub(crate) async fn run_row(
    scenario: Scenario,
    component: &[u8],
    args: &BenchArgs,
) -> anyhow::Result<Row> {
    match args.hosts {
        Some(hosts) => crate::hosts::run(scenario, hosts, args).await,
        None => run_scenario(scenario, component, args).await,
    }
}

async fn run_scenario(
    scenario: Scenario,
    component: &[u8],
    args: &BenchArgs,
) -> anyhow::Result<Row> {
    let (dir, names) = plugins_dir(scenario, component)?;

    let rss_before = rss_bytes();
    let started = Instant::now();
    let host = std::sync::Arc::new(Host::new(HostConfig::default())?);
    let report = host.load_dir(dir.path())?;
    let startup = started.elapsed();
    if let Some(error) = report.errors.first() {
        bail!("the plugin was refused: {error}");
    }
    let plugins = report.loaded.len();

    // One event per tenant instantiates every plugin once.
    for tenant in &names {
        host.publish(event(tenant, 0, args.payload as usize))
            .await?;
    }
    let memory_per_plugin_kib = rss_before
        .zip(rss_bytes())
        .map(|(before, after)| after.saturating_sub(before) / 1024 / plugins.max(1) as u64);

    if args.durable {
        return run_durable(
            scenario,
            &host,
            args,
            plugins,
            startup,
            memory_per_plugin_kib,
        )
        .await;
    }

    let progress = indicatif::ProgressBar::new(args.events).with_message(scenario.name());
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>26} [{bar:30}] {pos}/{len} events {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .context("cannot create the latency histogram")?;
    let (mut deliveries, mut failed) = (0u64, 0u64);
    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    let wall = Instant::now();
    let host = &host;
    let names = &names;
    let mut results = futures::stream::iter(0..args.events)
        .map(|i| async move {
            let tenant = &names[(i as usize) % names.len()];
            let started = Instant::now();
            let report = host.publish(event(tenant, i, args.payload as usize)).await;
            (started.elapsed(), report)
        })
        .buffer_unordered(args.concurrency as usize);
    while let Some((latency, report)) = results.next().await {
        let report = report?;
        deliveries += report.deliveries.len() as u64;
        failed += report
            .deliveries
            .iter()
            .filter(|d| !d.outcome.is_handled())
            .count() as u64;
        latencies.saturating_record(micros(latency).max(1));
        progress.inc(1);
    }
    let wall = wall.elapsed();
    let cpu = cpu
        .try_elapsed()
        .context("cannot read the process's CPU time")?;
    progress.finish_and_clear();

    // Start-up again from a warm compile cache: one load fills it, the
    // next one is measured.
    let cache = tempfile::tempdir().context("cannot create a temporary compile cache")?;
    let cached = || HostConfig {
        compile_cache: Some(cache.path().join("cache")),
        ..HostConfig::default()
    };
    drop(Host::new(cached())?.load_dir(dir.path())?);
    let started = Instant::now();
    let warm = Host::new(cached())?;
    warm.load_dir(dir.path())?;
    let startup_cached = started.elapsed();
    drop(warm);

    let seconds = wall.as_secs_f64().max(f64::EPSILON);
    Ok(Row {
        scenario: scenario.name(),
        backend: "memory",
        server_cpu_us_per_event: None,
        hosts: Vec::new(),
        plugins,
        events: args.events,
        deliveries,
        failed,
        startup_ms: startup.as_secs_f64() * 1000.0,
        startup_cached_ms: Some(startup_cached.as_secs_f64() * 1000.0),
        memory_per_plugin_kib,
        events_per_s: args.events as f64 / seconds,
        deliveries_per_s: deliveries as f64 / seconds,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / args.events as f64,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
    })
}

/// The tenants' names of a scenario.
pub(crate) fn tenant_names(scenario: Scenario) -> Vec<String> {
    (0..scenario.layout().0)
        .map(|t| format!("tenant-{t:04}"))
        .collect()
}

/// A temporary plugins directory laid out for `scenario`, every plugin
/// `component`, and the tenants' names.
pub(crate) fn plugins_dir(
    scenario: Scenario,
    component: &[u8],
) -> anyhow::Result<(tempfile::TempDir, Vec<String>)> {
    let per_tenant = scenario.layout().1;
    let dir = tempfile::tempdir().context("cannot create a temporary plugins directory")?;
    let names = tenant_names(scenario);
    for tenant in &names {
        let tenant_dir = dir.path().join(tenant);
        std::fs::create_dir_all(&tenant_dir)?;
        for p in 0..per_tenant {
            std::fs::write(tenant_dir.join(format!("plugin-{p:02}.wasm")), component)?;
        }
    }
    Ok((dir, names))
}

/// A prefix for the NATS log's streams and buckets no other run used.
pub(crate) fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench{}x{nanos}", std::process::id())
}

/// The settings of a NATS log on `url` under `prefix`, as `plugbus serve`
/// would make them by default.
pub(crate) fn nats_config(
    url: &str,
    prefix: &str,
) -> anyhow::Result<plugbus::log_nats::NatsLogConfig> {
    Ok(plugbus::log_nats::NatsLogConfig {
        servers: vec![url.to_owned()],
        prefix: plugbus::log_nats::Prefix::new(prefix)?,
        ..plugbus::log_nats::NatsLogConfig::default()
    })
}

/// Opens the NATS log off the async runtime's workers (opening blocks).
pub(crate) async fn open_nats(
    config: plugbus::log_nats::NatsLogConfig,
) -> anyhow::Result<plugbus::log_nats::NatsLog> {
    Ok(
        tokio::task::spawn_blocking(move || plugbus::log_nats::NatsLog::open(config))
            .await
            .context("opening the NATS log failed")??,
    )
}

/// A nats-server for one measurement, or the one the user named: the URL,
/// and the server when this run started it (its CPU time is then known).
pub(crate) fn nats_server(
    url: Option<&str>,
) -> anyhow::Result<(String, Option<plugbus_nats_server::NatsServer>)> {
    Ok(match url {
        Some(url) => (url.to_owned(), None),
        None => {
            // `start` panics (naming the install command) without a binary.
            let server = std::panic::catch_unwind(plugbus_nats_server::NatsServer::start)
                .map_err(|_| anyhow::anyhow!("cannot start a nats-server (see above)"))?;
            (server.url(), Some(server))
        }
    })
}

/// Waits until the host has handled `expected` more deliveries than
/// `before` (or failed them), looking every millisecond.
async fn handled(host: &Host, before: u64, expected: u64) {
    loop {
        let stats = host.stats();
        let failed: u64 = stats.failures.iter().map(|(_, n)| n).sum();
        if stats.deliveries_ok + failed >= before + expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The measured part of a scenario through the durable log.
async fn run_durable(
    scenario: Scenario,
    host: &std::sync::Arc<Host>,
    args: &BenchArgs,
    plugins: usize,
    startup: Duration,
    memory_per_plugin_kib: Option<u64>,
) -> anyhow::Result<Row> {
    use plugbus::durable::{DurableBus, DurableConfig};
    use plugbus::log::{SqliteLog, SqliteLogConfig};

    let data = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let durability = if args.no_fsync {
        plugbus::log::Durability::Os
    } else {
        plugbus::log::Durability::Fsync
    };
    let mut server = None;
    let log: std::sync::Arc<dyn plugbus::log::EventLog> = if args.nats {
        let (url, started) = nats_server(args.nats_url.as_deref())?;
        server = started;
        std::sync::Arc::new(open_nats(nats_config(&url, &fresh_prefix())?).await?)
    } else {
        std::sync::Arc::new(SqliteLog::open(
            data.path(),
            SqliteLogConfig {
                durability,
                ..SqliteLogConfig::default()
            },
        )?)
    };
    let bus =
        std::sync::Arc::new(DurableBus::start(host.clone(), log, DurableConfig::default()).await?);
    if args.nats {
        // The one host takes every lease at once; wait for it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while bus.held_leases().len() < plugins {
            if Instant::now() > deadline {
                bail!("the host did not get every plugin's lease within a minute");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let before = host.stats();
    let failed_before: u64 = before.failures.iter().map(|(_, n)| n).sum();
    let names: Vec<String> = host
        .plugins()
        .into_iter()
        .map(|p| p.tenant)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Deliveries per event: the plugins of its tenant.
    let per_event = (plugins / names.len().max(1)) as u64;
    let front = if args.http {
        Some(HttpFront::start(&bus, &names, args.concurrency as usize).await?)
    } else {
        None
    };
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .context("cannot create the latency histogram")?;
    let server_cpu = server
        .as_ref()
        .and_then(|s| crate::jetstream::process_cpu(s.pid()));
    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    // The token bucket of --rate: one tick per publish.
    let pacer = args.rate.map(|rate| {
        let period = Duration::from_secs_f64(args.batch as f64 / rate as f64);
        tokio::sync::Mutex::new(tokio::time::interval(period))
    });
    let wall = Instant::now();
    let (bus_ref, names_ref, front_ref, pacer_ref) = (&bus, &names, &front, &pacer);
    let mut acks = futures::stream::iter((0..args.events).step_by(args.batch as usize))
        .map(|first| async move {
            if let Some(pacer) = pacer_ref {
                pacer.lock().await.tick().await;
            }
            let tenant = &names_ref[(first / args.batch) as usize % names_ref.len()];
            let events: Vec<Event> = (first..(first + args.batch).min(args.events))
                .map(|i| event(tenant, i, args.payload as usize))
                .collect();
            let started = Instant::now();
            let acknowledged = match front_ref {
                Some(front) => front.publish(tenant, &events).await,
                None => bus_ref.publish(events).await.map(drop).map_err(Into::into),
            };
            (started.elapsed(), acknowledged)
        })
        .buffer_unordered(args.concurrency as usize);
    while let Some((latency, acknowledged)) = acks.next().await {
        acknowledged?;
        latencies.saturating_record(micros(latency).max(1));
    }
    drop(acks);
    // Every event handled, then committed (settle looks at the cursors:
    // on NATS a round trip per plugin, so it is asked only at the end).
    handled(
        host,
        before.deliveries_ok + failed_before,
        args.events * per_event,
    )
    .await;
    bus.settle().await?;
    let wall = wall.elapsed();
    let cpu = cpu
        .try_elapsed()
        .context("cannot read the process's CPU time")?;
    let server_cpu = server
        .as_ref()
        .and_then(|s| crate::jetstream::process_cpu(s.pid()))
        .zip(server_cpu)
        .map(|(after, before)| after.saturating_sub(before));
    if let Some(front) = front {
        front.stop().await;
    }
    std::sync::Arc::try_unwrap(bus)
        .map_err(|_| anyhow::anyhow!("the bus is still shared after the run"))?
        .shutdown()
        .await;
    let after = host.stats();
    let deliveries = after.deliveries_ok - before.deliveries_ok;
    let failed: u64 = after
        .failures
        .iter()
        .zip(&before.failures)
        .map(|((_, a), (_, b))| a - b)
        .sum();
    drop(server);
    let seconds = wall.as_secs_f64().max(f64::EPSILON);
    Ok(Row {
        scenario: scenario.name(),
        backend: if args.nats { "nats" } else { "sqlite" },
        server_cpu_us_per_event: server_cpu.map(|c| c.as_secs_f64() * 1e6 / args.events as f64),
        hosts: Vec::new(),
        plugins,
        events: args.events,
        deliveries: deliveries + failed,
        failed,
        startup_ms: startup.as_secs_f64() * 1000.0,
        startup_cached_ms: None,
        memory_per_plugin_kib,
        events_per_s: args.events as f64 / seconds,
        deliveries_per_s: (deliveries + failed) as f64 / seconds,
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / args.events as f64,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
    })
}

/// The HTTP API in front of the benchmark's bus, and its clients.
struct HttpFront {
    url: String,
    agent: ureq::Agent,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HttpFront {
    /// Serves the API on a free port of 127.0.0.1, each tenant with the
    /// token `<tenant>-token`.
    async fn start(
        bus: &std::sync::Arc<plugbus::durable::DurableBus>,
        tenants: &[String],
        connections: usize,
    ) -> anyhow::Result<Self> {
        let config = plugbus::api::ApiConfig {
            max_body_bytes: 64 * 1024 * 1024,
            max_batch_events: 10_000,
            tenant_tokens: tenants
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        plugbus::config::hash_token(&format!("{t}-token")),
                    )
                })
                .collect(),
            admin_token: None,
            plugins_dir: None,
        };
        // The load generator is the one client: no rate or in-flight bound.
        let unbounded = plugbus::api::ApiLimits {
            rate: plugbus::api::RateLimit {
                events_per_second: 0,
                bytes_per_second: 0,
            },
            max_in_flight_per_tenant: 0,
            ..plugbus::api::ApiLimits::default()
        };
        let api = plugbus::api::Api::with_limits(bus.clone(), config, unbounded, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let url = format!("http://{}/v1/events", listener.local_addr()?);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(plugbus::api::serve(
            listener,
            api,
            plugbus::api::ServerLimits::default(),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(connections)
            .max_idle_connections_per_host(connections)
            // Timeouts per step, not overall: an overall one makes ureq
            // resolve the address on a new thread for every request.
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Self {
            url,
            agent,
            server,
            stop,
        })
    }

    /// Posts `events` (structured mode for one, batch mode for more) and
    /// waits for the 202.
    async fn publish(&self, tenant: &str, events: &[Event]) -> anyhow::Result<()> {
        let (content_type, body) = match events {
            [event] => (
                "application/cloudevents+json",
                event.to_json_value().to_string(),
            ),
            _ => (
                "application/cloudevents-batch+json",
                serde_json::Value::Array(events.iter().map(Event::to_json_value).collect())
                    .to_string(),
            ),
        };
        let (agent, url) = (self.agent.clone(), self.url.clone());
        let auth = format!("Bearer {tenant}-token");
        tokio::task::spawn_blocking(move || {
            let mut response = agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(body)
                .with_context(|| format!("cannot post to {url}"))?;
            let status = response.status().as_u16();
            // Read to its end, so the connection goes back to the pool.
            let text = response
                .body_mut()
                .read_to_string()
                .with_context(|| format!("cannot read the answer of {url}"))?;
            if status != 202 {
                bail!("{url} answered {status}: {text}");
            }
            Ok(())
        })
        .await
        .context("the HTTP client task failed")?
    }

    /// Stops the server once its requests are answered.
    async fn stop(self) {
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the benchmark's HTTP server failed: {e}"),
            Err(e) => tracing::error!("the benchmark's HTTP server task failed: {e}"),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// An `inventory.stock_changed` event of `tenant` with a JSON payload of
/// about `payload` bytes.
pub(crate) fn event(tenant: &str, i: u64, payload: usize) -> Event {
    let skeleton = format!(r#"{{"sku":"sku-{i}","new_quantity":4,"note":""}}"#);
    let note = "n".repeat(payload.saturating_sub(skeleton.len()));
    Event::builder(
        tenant,
        format!("bench-{i}"),
        "/plugbus/bench",
        "inventory.stock_changed",
    )
    .subject(format!("sku-{i}"))
    .time("2026-11-22T10:00:00Z".to_owned())
    .datacontenttype("application/json".to_owned())
    .data(format!(
        r#"{{"sku":"sku-{i}","new_quantity":4,"note":"{note}"}}"#
    ))
    .extension("partitionkey", format!("sku-{i}"))
    .build()
    .expect("the benchmark's events are valid")
}

/// The resident set size of this process (Linux), in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string(Path::new("/proc/self/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn print_table(rows: &[Row], args: &BenchArgs) {
    println!(
        "plugbus bench: {} events per scenario, {} in flight, {}-byte payloads, {}, plugin {}",
        args.events,
        args.concurrency,
        args.payload,
        if !args.durable {
            "in memory".to_owned()
        } else if args.http {
            format!(
                "over HTTP into the durable log{}, {} per request (latency: request to 202)",
                if args.no_fsync { " WITHOUT fsync" } else { "" },
                if args.batch > 1 {
                    format!("a batch of {} events", args.batch)
                } else {
                    "one structured event".to_owned()
                }
            )
        } else if args.nats {
            format!(
                "through the NATS log{}, {} per publish (latency: of a publish, to JetStream's acknowledgement)",
                args.hosts
                    .map_or_else(String::new, |n| format!(" shared by {n} host processes")),
                if args.batch > 1 {
                    format!("{} events", args.batch)
                } else {
                    "one event".to_owned()
                }
            )
        } else if let Some(rate) = args.rate {
            format!(
                "through the durable log{}, {} per publish started at {rate} events/s (latency: to the acknowledgement)",
                if args.no_fsync { " WITHOUT fsync" } else { "" },
                args.batch
            )
        } else if args.no_fsync {
            "through the durable log WITHOUT fsync (latency: to the acknowledgement)".to_owned()
        } else if args.batch > 1 {
            format!(
                "through the durable log in publishes of {} events (latency: of a batch, to the durable acknowledgement)",
                args.batch
            )
        } else {
            "through the durable log (latency: to the durable acknowledgement)".to_owned()
        },
        args.plugin.display()
    );
    println!(
        "{:<26} {:>7} {:>11} {:>11} {:>12} {:>12} {:>12} {:>10} {:>9} {:>9} {:>9} {:>12}",
        "scenario",
        "plugins",
        "startup ms",
        "cached ms",
        "KiB/plugin",
        "events/s",
        "deliveries/s",
        "CPU us/ev",
        "p50 us",
        "p99 us",
        "p999 us",
        "server us/ev"
    );
    for r in rows {
        let memory = r
            .memory_per_plugin_kib
            .map_or_else(|| "n/a".to_owned(), |m| m.to_string());
        let cached = r
            .startup_cached_ms
            .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.1}"));
        let server = r
            .server_cpu_us_per_event
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.1}"));
        println!(
            "{:<26} {:>7} {:>11.1} {:>11} {:>12} {:>12.0} {:>12.0} {:>10.1} {:>9} {:>9} {:>9} {:>12}",
            r.scenario,
            r.plugins,
            r.startup_ms,
            cached,
            memory,
            r.events_per_s,
            r.deliveries_per_s,
            r.cpu_us_per_event,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            server
        );
        for (i, h) in r.hosts.iter().enumerate() {
            println!(
                "{:>26}   host {}: published {} events, handled {} deliveries, {} leases, CPU {:.1} us per event of the run, {} us per delivery it handled (its ingest share included)",
                "",
                i + 1,
                h.published,
                h.handled,
                h.leases,
                h.cpu_us_per_event,
                h.cpu_us_per_handled
                    .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.1}"))
            );
        }
    }
}
