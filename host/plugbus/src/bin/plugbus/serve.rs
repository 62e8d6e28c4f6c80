//! `plugbus serve`: the long-running host. Settings come from the flags,
//! else their `PLUGBUS_…` environment variables, else `plugbus.toml`
//! (`--config`), else the embedded default.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use plugbus::Delivery;
use plugbus::config::Config;
use plugbus::durable::{DurableBus, DurableConfig};
use plugbus::log::{EventLog, SqliteLog};
use plugbus::log_nats::NatsLog;

use crate::dispatch::{Mode, load};
use crate::lines::{DeliveryLine, numbered_lines, parse_line};

/// How long after the drain deadline the deliveries already made may still
/// be written to stdout.
const PRINT_GRACE: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The configuration file (see the README); without one, the embedded
    /// default (the defaults below, no tenant tokens).
    #[arg(long, value_name = "FILE", env = "PLUGBUS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where HTTP ingest, the admin API and /metrics listen: an address
    /// such as 127.0.0.1:8080 (port 0 for any free one), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "PLUGBUS_LISTEN")]
    listen: Option<String>,

    /// The plugins directory: <DIR>/<tenant>/<plugin>.wasm.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_PLUGINS")]
    plugins: Option<PathBuf>,

    /// The data directory: the event log <DIR>/events.db (unless
    /// plugbus.toml's [log] backend is "nats"), and compiled plugins cached
    /// in <DIR>/compiled. It must not lie inside the plugins directory.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_DATA")]
    data: Option<PathBuf>,

    /// Compile every plugin on every load instead of caching compiled code.
    #[arg(long)]
    no_compile_cache: bool,

    /// Read CloudEvents, one JSON object per line, from stdin and publish
    /// them; at the end of the input, wait until they are handled and exit.
    #[arg(long)]
    stdin: bool,

    /// With --stdin: once the input is handled, keep serving HTTP until
    /// Ctrl-C or SIGTERM instead of exiting.
    #[arg(long, requires = "stdin")]
    keep_serving: bool,

    /// Keep events in the log for this many hours (0: no age limit). An
    /// event a loaded plugin has not handled is always kept.
    #[arg(long, value_name = "HOURS", env = "PLUGBUS_RETAIN_HOURS")]
    retain_hours: Option<u64>,

    /// Keep the log under this many MiB by deleting its oldest handled
    /// events.
    #[arg(long, value_name = "MIB", env = "PLUGBUS_RETAIN_MIB", value_parser = clap::value_parser!(u64).range(1..))]
    retain_mib: Option<u64>,

    /// Store the same (tenant, source, id) once when it is published again
    /// within this many hours.
    #[arg(long, value_name = "HOURS", env = "PLUGBUS_DEDUPE_HOURS", value_parser = clap::value_parser!(u64).range(1..=24 * 365))]
    dedupe_hours: Option<u64>,

    /// Pause a plugin after this many failed deliveries in a row (0: never).
    #[arg(long, value_name = "N", env = "PLUGBUS_QUARANTINE_AFTER")]
    quarantine_after: Option<u32>,

    /// How long a quarantine lasts unless a new version or `plugbus
    /// quarantine resume` ends it first, in seconds.
    #[arg(long, value_name = "SECONDS", env = "PLUGBUS_QUARANTINE_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    quarantine_seconds: Option<u64>,

    /// Attempts per event before it becomes a dead letter, for plugins
    /// whose manifest does not set `[retry] max_attempts`.
    #[arg(long, value_name = "N", env = "PLUGBUS_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: Option<u32>,

    /// Fuel per event for plugins whose manifest does not set `limits.fuel`.
    #[arg(long, value_name = "N", env = "PLUGBUS_FUEL", value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,

    /// Memory (MiB) of plugins whose manifest does not set `limits.memory_mib`.
    #[arg(long, value_name = "MIB", env = "PLUGBUS_MEMORY_MIB", value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_MEMORY_MIB))]
    memory_mib: Option<u64>,

    /// Wall-clock limit (ms) per event for plugins whose manifest does not
    /// set `limits.timeout_ms`.
    #[arg(long, value_name = "MS", env = "PLUGBUS_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_TIMEOUT_MS))]
    timeout_ms: Option<u64>,

    /// The largest HTTP request body, in bytes.
    #[arg(long, value_name = "BYTES", env = "PLUGBUS_MAX_BODY_BYTES", value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    max_body_bytes: Option<u64>,

    /// Export the ingest and delivery spans to this OpenTelemetry
    /// collector's OTLP/HTTP base URL (http://host:4318); spans go to
    /// <URL>/v1/traces. Without it, `otlp.endpoint` of the configuration
    /// file, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; none of them: no export.
    #[arg(long, value_name = "URL", env = "PLUGBUS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    /// Reuse a plugin's instance across events, or create a fresh one per event.
    #[arg(long, value_enum, default_value_t = Mode::Reuse)]
    instance_mode: Mode,

    /// How many stdin events are published at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
}

/// `serve`'s command line with the default of each flag plugbus.toml may
/// set added to its help: the embedded configuration's value (from
/// [`Config::default`], where the numbers live), unless the file sets it.
/// Those flags are `Option`s, so that an absent flag leaves the file's
/// value in place: clap cannot show a default of its own for them.
pub fn show_defaults(command: clap::Command) -> clap::Command {
    let c = Config::default();
    let (d, l) = (&c.delivery, &c.limits);
    let defaults = [
        ("listen", c.listen.to_string(), "listen"),
        (
            "plugins",
            c.plugins_dir.display().to_string(),
            "plugins_dir",
        ),
        ("data", c.data_dir.display().to_string(), "data_dir"),
        (
            "retain_hours",
            d.retain_hours.to_string(),
            "delivery.retain_hours",
        ),
        (
            "retain_mib",
            d.retain_mib
                .map_or_else(|| "no size limit".to_owned(), |m| m.to_string()),
            "delivery.retain_mib",
        ),
        (
            "dedupe_hours",
            d.dedupe_hours.to_string(),
            "delivery.dedupe_hours",
        ),
        (
            "quarantine_after",
            d.quarantine_after.to_string(),
            "delivery.quarantine_after",
        ),
        (
            "quarantine_seconds",
            d.quarantine_seconds.to_string(),
            "delivery.quarantine_seconds",
        ),
        (
            "max_attempts",
            d.max_attempts.to_string(),
            "delivery.max_attempts",
        ),
        ("fuel", l.fuel.to_string(), "limits.fuel"),
        ("memory_mib", l.memory_mib.to_string(), "limits.memory_mib"),
        ("timeout_ms", l.timeout_ms.to_string(), "limits.timeout_ms"),
        (
            "max_body_bytes",
            c.http.max_body_bytes.to_string(),
            "http.max_body_bytes",
        ),
    ];
    defaults
        .into_iter()
        .fold(command, |command, (id, value, key)| {
            let note = format!("[default: {value}, or plugbus.toml's {key}]");
            command.mut_arg(id, |arg| {
                let help = match arg.get_help() {
                    Some(help) => format!("{help} {note}"),
                    None => note.clone(),
                };
                let long = arg.get_long_help().map(|long| format!("{long} {note}"));
                let arg = arg.help(help);
                match long {
                    Some(long) => arg.long_help(long),
                    None => arg,
                }
            })
        })
}

/// The configuration file, or the embedded default, with the flags laid
/// over it.
pub fn settings(args: &ServeArgs) -> anyhow::Result<(Config, Option<SocketAddr>)> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let listen = match args.listen.as_deref() {
        Some("off") => None,
        Some(addr) => Some(addr.parse::<SocketAddr>().with_context(|| {
            format!("--listen {addr:?} is neither an address (127.0.0.1:8080) nor `off`")
        })?),
        None => Some(config.listen),
    };
    if let Some(dir) = &args.plugins {
        config.plugins_dir = dir.clone();
    }
    if let Some(dir) = &args.data {
        config.data_dir = dir.clone();
    }
    let d = &mut config.delivery;
    d.retain_hours = args.retain_hours.unwrap_or(d.retain_hours);
    d.retain_mib = args.retain_mib.or(d.retain_mib);
    d.dedupe_hours = args.dedupe_hours.unwrap_or(d.dedupe_hours);
    d.quarantine_after = args.quarantine_after.unwrap_or(d.quarantine_after);
    d.quarantine_seconds = args.quarantine_seconds.unwrap_or(d.quarantine_seconds);
    d.max_attempts = args.max_attempts.unwrap_or(d.max_attempts);
    let l = &mut config.limits;
    l.fuel = args.fuel.unwrap_or(l.fuel);
    l.memory_mib = args.memory_mib.unwrap_or(l.memory_mib);
    l.timeout_ms = args.timeout_ms.unwrap_or(l.timeout_ms);
    if let Some(bytes) = args.max_body_bytes {
        config.http.max_body_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    Ok((config, listen))
}

/// Where and how spans are exported, if anywhere: `--otlp-endpoint`, else
/// the file's `otlp.endpoint`, else the standard OpenTelemetry variables.
pub fn otlp(
    args: &ServeArgs,
    config: &Config,
) -> anyhow::Result<Option<plugbus::telemetry::OtlpSettings>> {
    let configured = match (&args.otlp_endpoint, &config.otlp.endpoint) {
        (Some(flag), _) => Some(("--otlp-endpoint", flag.as_str())),
        (None, Some(file)) => Some(("otlp.endpoint", file.as_str())),
        (None, None) => None,
    };
    let url = plugbus::telemetry::resolve_traces_url(configured, |name| std::env::var(name).ok())?;
    Ok(url.map(|traces_url| plugbus::telemetry::OtlpSettings {
        traces_url,
        service_name: config.otlp.service_name.clone(),
        sample_ratio: config.otlp.sample_ratio,
    }))
}

/// The process's Prometheus recorder, with histogram buckets for the
/// durations and fuel plugbus records.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let seconds = [
        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
    ];
    let fuel = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("plugbus_fuel_consumed".into()), &fuel)
        })
        .context("cannot set the histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (settings, listen) = settings(&args)?;
    // Registered before the port is bound: once the host answers, a SIGINT
    // or SIGTERM is a graceful stop, never the default disposition's kill.
    let shutdown = shutdown_signal()?;
    if args.config.is_none() {
        tracing::info!(
            "no --config: the embedded default (listen {}, plugins {}, data {}; no tenant tokens, so HTTP ingest refuses every request until a plugbus.toml names tenants)",
            listen.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            settings.plugins_dir.display(),
            settings.data_dir.display()
        );
    }
    let plugins = settings.plugins_dir.clone();
    let data = settings.data_dir.clone();
    let mut config = host_config(&settings, args.instance_mode);
    // Read now: a secret that cannot be read stops the start.
    config.secrets = settings.tenant_secrets(|var| std::env::var_os(var))?;
    if !args.no_compile_cache {
        config.compile_cache = Some(data.join("compiled"));
    }
    // A large component not in the compile cache (Python and JavaScript
    // ones are 10-20 MB and take 25-45 s; Rust ones 0.1-2 MB) is compiled
    // in the background: the other plugins serve meanwhile.
    config.background_compile_bytes = Some(
        settings
            .instances
            .background_compile_mib
            .saturating_mul(1024 * 1024),
    );
    prepare_dirs(&plugins, &data)?;
    // Bound before anything starts, so a port in use is a clear error.
    let listener = match listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let metrics = install_metrics()?;
    // Opened before the host: the largest event it stores bounds what
    // plugins may emit and write.
    let (log, place) = open_log(&settings, &data).await?;
    fit_to_log(&settings, &mut config, log.max_event_bytes());
    let host = Arc::new(plugbus::Host::new(config)?);
    load(&host, &plugins)?;
    let _watcher = host.watch(&plugins)?;
    // The last reference to the log is let go off this runtime's workers
    // (below): a NATS log owns a runtime of its own, which may not be
    // dropped on one.
    let last_reference = log.clone();
    tracing::info!(
        "watching {} for plugin changes{}; events are stored in {place}",
        plugins.display(),
        match host.cache_dir() {
            Some(dir) => format!("; compiled plugins cached in {}", dir.display()),
            None => String::new(),
        },
    );
    // Subscribed before the first consumer starts: no delivery unprinted.
    let (bus, deliveries) =
        DurableBus::start_observed(host.clone(), log, durable_config(&settings)).await?;
    let bus = Arc::new(bus);
    let printer = tokio::spawn(print_deliveries(deliveries));
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let http = match listener {
        Some(listener) => Some(start_http(listener, &bus, &settings, metrics, http_stopped).await?),
        None => None,
    };
    take_events(&args, &host, &bus, listen.is_some(), shutdown).await?;
    // One deadline for everything that is under way when the signal comes:
    // HTTP requests, deliveries, and the output of what was delivered. A
    // client or a guest that does not finish by then does not hold the
    // process (what is stored and not delivered is delivered after the next
    // start; a request not answered was not acknowledged).
    let drain = Duration::from_secs(settings.drain_seconds);
    let deadline = tokio::time::Instant::now() + drain;
    if let Some(http) = http {
        stop_http_within(http, &stop_http, deadline, drain).await;
    }
    finish_deliveries(bus, printer, deadline, drain).await?;
    let _ = tokio::task::spawn_blocking(move || drop(last_reference)).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Creates the plugins and data directories; refuses a data directory
/// inside the plugins directory, which tenants write to. The data
/// directory is private to the host's user: it holds every tenant's events.
fn prepare_dirs(plugins: &Path, data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(plugins)
        .with_context(|| format!("cannot create the plugins directory {}", plugins.display()))?;
    let plugins_dir = std::fs::canonicalize(plugins)
        .with_context(|| format!("cannot resolve {}", plugins.display()))?;
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let data_dir = std::fs::canonicalize(data)
        .with_context(|| format!("cannot resolve {}", data.display()))?;
    if data_dir.starts_with(&plugins_dir) {
        anyhow::bail!(
            "the data directory {} lies inside the plugins directory {}, which tenants write to",
            data.display(),
            plugins.display()
        );
    }
    Ok(())
}

/// The event log `[log]` chooses, with the configured duplicate window,
/// dead-letter quotas and (embedded) read connections and tail cache, and where it keeps the events (for the operator's
/// log line; never a secret): the embedded log in `data`, or NATS
/// JetStream.
async fn open_log(settings: &Config, data: &Path) -> anyhow::Result<(Arc<dyn EventLog>, String)> {
    match settings.nats_log_config(|var| std::env::var(var).ok())? {
        None => {
            let log = SqliteLog::open(data, settings.sqlite_log_config())?;
            let place = log.path().display().to_string();
            Ok((Arc::new(log), place))
        }
        Some(nats) => {
            let servers = nats.servers.join(", ");
            tracing::info!("connecting to NATS ({servers})");
            // Opening waits for the first connection (at most the connect
            // timeout) on the log's own runtime: not on this one's workers.
            let log = tokio::task::spawn_blocking(move || NatsLog::open(nats))
                .await
                .context("the NATS log's opening failed")?
                .with_context(|| format!("cannot open the event log in NATS ({servers})"))?;
            let place = format!(
                "the NATS JetStream stream {} (servers {servers})",
                log.stream_name()
            );
            Ok((Arc::new(log), place))
        }
    }
}

/// Bounds what plugins may emit and write by the largest record the log
/// stores (`max_event` bytes; a NATS server's `max_payload` less 1 KiB),
/// and says how that meets `http.max_body_bytes`.
///
/// A request body over the log's bound is not refused at start: a batch
/// of events each within the bound may well be larger than one message,
/// so `http.max_body_bytes` and `max_payload` measure different things.
/// What the log cannot take is one event larger than its bound: the
/// request is answered 413 naming both numbers, nothing stored. When
/// `http.max_body_bytes` is larger than the server's whole `max_payload`
/// the operator likely raised it expecting larger single events: that is
/// warned, naming both settings.
fn fit_to_log(settings: &Config, config: &mut plugbus::HostConfig, max_event: Option<u64>) {
    let Some(max_event) = max_event else {
        return;
    };
    let max = usize::try_from(max_event).unwrap_or(usize::MAX);
    config.max_event_bytes = Some(max);
    if config.max_state_value_bytes > max {
        tracing::info!(
            "state values are bounded at {max} bytes, the largest record the event log stores (the NATS server's max_payload less 1 KiB), below the host's {}",
            config.max_state_value_bytes
        );
        config.max_state_value_bytes = max;
    }
    let body = settings.http.max_body_bytes as u64;
    let max_payload = max_event.saturating_add(1024);
    if body > max_payload {
        tracing::warn!(
            "http.max_body_bytes ({body}) is larger than the NATS server's max_payload ({max_payload}): \
             a request may carry several events up to that size, but each event must stay within \
             {max_event} bytes as stored (max_payload less 1 KiB); a larger one is refused with 413. \
             Raise max_payload in the nats-server configuration (all servers of the cluster), or lower http.max_body_bytes"
        );
    } else {
        tracing::info!(
            "events of up to {max_event} bytes as stored are accepted (the NATS server's max_payload of {max_payload} less 1 KiB); http.max_body_bytes ({body}) bounds a request"
        );
    }
}

/// The durable bus's settings from the operator's: retention, read-ahead,
/// quarantine and retries.
fn durable_config(settings: &Config) -> DurableConfig {
    let d = &settings.delivery;
    DurableConfig {
        retention: plugbus::log::Retention {
            max_age: (d.retain_hours > 0)
                .then(|| Duration::from_secs(d.retain_hours.saturating_mul(3600))),
            max_bytes: d.retain_mib.map(|m| m.saturating_mul(1024 * 1024)),
        },
        max_pending_bytes: settings.budgets.max_pending_mib.saturating_mul(1024 * 1024),
        quarantine_after: d.quarantine_after,
        quarantine_for: Duration::from_secs(d.quarantine_seconds),
        retry: plugbus::durable::RetryPolicy {
            max_attempts: d.max_attempts,
            ..plugbus::durable::RetryPolicy::default()
        },
        ..shared_log(settings, DurableConfig::default())
    }
}

/// The lease settings of hosts that share a NATS log.
fn shared_log(settings: &Config, defaults: DurableConfig) -> DurableConfig {
    match &settings.log.nats {
        Some(nats) => DurableConfig {
            lease_ttl: Duration::from_millis(nats.lease_ttl_ms),
            // The operator's name for the host, made this process's own.
            host_id: nats.host_id.as_deref().map_or(defaults.host_id, |name| {
                plugbus::durable::process_host_id(name)
            }),
            ..defaults
        },
        None => defaults,
    }
}

/// The HTTP surface being served: its task, and the API (to mark it not
/// ready at shutdown).
struct Http {
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    api: Arc<plugbus::api::Api>,
}

/// Serves the HTTP API on `listener` until `stopped` turns true.
async fn start_http(
    listener: tokio::net::TcpListener,
    bus: &Arc<DurableBus>,
    settings: &Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Http> {
    let api = plugbus::api::Api::with_limits(
        bus.clone(),
        plugbus::api::ApiConfig {
            max_body_bytes: settings.http.max_body_bytes,
            max_batch_events: settings.http.max_batch_events,
            tenant_tokens: settings
                .tenant_tokens()
                .map(|(t, token)| (t.to_owned(), token.to_owned()))
                .collect(),
            admin_token: settings.admin.as_ref().map(|a| a.token_sha256.clone()),
            plugins_dir: Some(settings.plugins_dir.clone()),
        },
        api_limits(settings),
        Some(metrics),
    );
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(
        "listening on http://{addr} ({} tenant tokens{})",
        settings.tenant_tokens().count(),
        if settings.admin.is_some() {
            ", an admin token"
        } else {
            ", no admin token"
        }
    );
    let limits = plugbus::api::ServerLimits {
        header_read_timeout: Duration::from_millis(settings.http.header_timeout_ms),
        max_connections: usize::try_from(settings.http.max_connections).unwrap_or(usize::MAX),
        drain: Duration::from_secs(settings.drain_seconds),
        ..plugbus::api::ServerLimits::default()
    };
    let server = tokio::spawn(plugbus::api::serve(
        listener,
        api.clone(),
        limits,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    Ok(Http { server, api })
}

/// Takes events until Ctrl-C or SIGTERM: from stdin with `--stdin` (then,
/// with `--keep-serving`, goes on serving HTTP after the input), else from
/// HTTP alone.
async fn take_events(
    args: &ServeArgs,
    host: &plugbus::Host,
    bus: &DurableBus,
    http: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Fused: a signal that ends the input's publishing must not be awaited
    // again (a finished future polled again panics).
    let shutdown = futures::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    if args.stdin {
        let rejected = publish_lines(
            host,
            bus,
            tokio::io::stdin(),
            args.concurrency,
            &mut shutdown,
        )
        .await?;
        if rejected > 0 {
            tracing::warn!("{rejected} input lines rejected");
        }
        if args.keep_serving && !futures::future::FusedFuture::is_terminated(&shutdown) {
            tracing::info!("the input is handled; serving until Ctrl-C or SIGTERM");
            (&mut shutdown).await;
        }
    } else {
        if !http {
            tracing::info!("no event source: HTTP is off and --stdin is not given");
        }
        (&mut shutdown).await;
    }
    Ok(())
}

/// Stops taking events: not ready, no new requests; the requests under
/// way finish by `deadline` (an event acknowledged is durable), or their
/// connections are closed.
async fn stop_http_within(
    http: Http,
    stop: &tokio::sync::watch::Sender<bool>,
    deadline: tokio::time::Instant,
    drain: Duration,
) {
    let Http { mut server, api } = http;
    api.set_ready(false);
    let _ = stop.send(true);
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!("the HTTP server failed: {e}"),
        Ok(Err(e)) => tracing::error!("the HTTP server task failed: {e}"),
        Err(_) => {
            tracing::warn!(
                "HTTP requests still under way after {}s; closing their connections",
                drain.as_secs()
            );
            server.abort();
            let _ = server.await;
        }
    }
}

/// Finishes the deliveries under way, within `deadline` (what is stored
/// and not delivered is delivered after the next start), and the output of
/// what they delivered.
async fn finish_deliveries(
    bus: Arc<DurableBus>,
    mut printer: tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
    drain: Duration,
) -> anyhow::Result<()> {
    let bus =
        Arc::try_unwrap(bus).map_err(|_| anyhow::anyhow!("the bus is still shared at shutdown"))?;
    if tokio::time::timeout_at(deadline, bus.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "deliveries still under way after {}s; stopping anyway (they are delivered again after the next start)",
            drain.as_secs()
        );
        // A delivery still running holds the channel open: the printer
        // would wait for it.
        printer.abort();
    }
    // The consumers are gone, so the channel closes once the printer has
    // written everything they delivered.
    if tokio::time::timeout_at(deadline + PRINT_GRACE, &mut printer)
        .await
        .is_err()
    {
        printer.abort();
    }
    Ok(())
}

/// The host's settings from the operator's: limits and their ceilings, the
/// budgets of deliveries, chains and batches, instance recycling and the
/// tenants' plugin quotas.
pub fn host_config(settings: &Config, mode: Mode) -> plugbus::HostConfig {
    let mut config = match mode {
        Mode::Reuse => plugbus::HostConfig::default(),
        Mode::Fresh => plugbus::HostConfig::fresh_instances(1000),
    };
    let limits = |fuel: u64, memory_mib: u64, timeout_ms: u64| plugbus::Limits {
        fuel,
        memory_bytes: memory_mib.saturating_mul(1024 * 1024),
        timeout: Duration::from_millis(timeout_ms),
    };
    let l = &settings.limits;
    config.default_limits = limits(l.fuel, l.memory_mib, l.timeout_ms);
    config.max_limits = limits(l.max.fuel, l.max.memory_mib, l.max.timeout_ms);
    config.max_manifest_bytes = l.max.manifest_bytes;
    config.max_plugin_bytes = l.max.plugin_bytes;
    // The numbers were range-checked when the file was read: they fit.
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let b = &settings.budgets;
    config.max_emits_per_delivery = size(b.max_emits_per_delivery);
    config.max_emit_bytes_per_delivery = size(b.max_emit_bytes_per_delivery);
    config.max_chain_depth = b.max_chain_depth;
    config.max_events_per_chain = size(b.max_events_per_chain);
    config.max_state_bytes_per_delivery = size(b.max_state_bytes_per_delivery);
    config.max_batch_commit_bytes = size(b.max_batch_commit_bytes);
    config.max_error_bytes = size(b.max_error_bytes);
    config.max_log_bytes = size(b.max_log_bytes);
    config.max_log_lines_per_delivery = size(b.max_log_lines_per_delivery);
    config.recycle_after_events = settings.instances.recycle_after_events;
    config.max_concurrent_compiles =
        usize::try_from(settings.instances.max_concurrent_compiles).unwrap_or(usize::MAX);
    config.recycle_memory_percent =
        u8::try_from(settings.instances.recycle_memory_percent).unwrap_or(u8::MAX);
    config.max_plugins_per_tenant = size(settings.quotas.max_plugins);
    config.tenant_max_plugins = settings
        .tenants
        .iter()
        .filter_map(|(tenant, t)| Some((tenant.clone(), size(t.max_plugins?))))
        .collect();
    config.outbound = settings.outbound_config();
    config
}

/// The bounds of HTTP requests: timeouts, each tenant's requests in flight
/// and ingest rate, and the scrape token.
fn api_limits(settings: &Config) -> plugbus::api::ApiLimits {
    let rate = |q: &plugbus::config::QuotasConfig| plugbus::api::RateLimit {
        events_per_second: q.ingest_events_per_second,
        bytes_per_second: q.ingest_bytes_per_second,
    };
    plugbus::api::ApiLimits {
        body_read_timeout: Duration::from_millis(settings.http.body_timeout_ms),
        max_in_flight_per_tenant: usize::try_from(settings.quotas.max_requests_in_flight)
            .unwrap_or(usize::MAX),
        rate: rate(&settings.quotas),
        tenant_rates: settings
            .tenants
            .keys()
            .map(|tenant| (tenant.clone(), rate(&settings.quotas_of(tenant))))
            .collect(),
        metrics_token: settings.metrics.token_sha256.clone(),
        ..plugbus::api::ApiLimits::default()
    }
}

/// Writes one JSON line per delivery to stdout until the channel closes.
async fn print_deliveries(mut deliveries: tokio::sync::broadcast::Receiver<Delivery>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match deliveries.recv().await {
            Ok(delivery) => {
                let mut stdout = std::io::stdout().lock();
                let written = serde_json::to_writer(&mut stdout, &DeliveryLine::from(&delivery))
                    .map_err(std::io::Error::from)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush());
                if let Err(e) = written {
                    tracing::error!("cannot write to stdout: {e}");
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!("{missed} deliveries were not written: the output fell behind");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Publishes the events of `input`, one JSON line each, into the durable
/// log, `concurrency` at a time, until the input ends or `stop` resolves.
/// At the end of the input it waits until the plugins of `host` compiled in
/// the background are loaded and every plugin has handled what was
/// published (or `stop`). Returns how many lines were rejected.
async fn publish_lines(
    host: &plugbus::Host,
    bus: &DurableBus,
    input: impl tokio::io::AsyncRead + Unpin + Send,
    concurrency: u32,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<u64> {
    let mut lines = Box::pin(numbered_lines(input))
        .map(|line| async move {
            let (number, line) = line?;
            let published = match parse_line(&line) {
                None => None,
                Some(Err(reason)) => Some(Err(reason)),
                Some(Ok(event)) => Some(bus.publish(vec![event]).await.map_err(|e| e.to_string())),
            };
            Ok::<_, std::io::Error>((number, published))
        })
        .buffered(concurrency as usize);
    let mut rejected = 0u64;
    loop {
        let next = tokio::select! {
            next = lines.next() => next,
            () = &mut *stop => return Ok(rejected),
        };
        let Some(result) = next else { break };
        let (number, published) = result.context("cannot read the events")?;
        match published {
            Some(Err(reason)) => {
                rejected += 1;
                eprintln!("plugbus: line {number}: rejected: {reason}");
            }
            Some(Ok(appended)) if appended.first().is_some_and(|a| a.duplicate) => {
                eprintln!("plugbus: line {number}: a duplicate of an event already stored");
            }
            Some(Ok(_)) | None => {}
        }
    }
    // The plugins compiled in the background (large components not in the
    // compile cache) handle the input too: their consumers start once they
    // are loaded.
    tokio::select! {
        () = background_loads(host) => {}
        () = &mut *stop => return Ok(rejected),
    }
    tokio::select! {
        settled = bus.settle() => settled?,
        () = &mut *stop => {}
    }
    Ok(rejected)
}

/// Waits until no plugin of `host` is being compiled in the background.
async fn background_loads(host: &plugbus::Host) {
    let mut told = false;
    loop {
        let loading = host.loading();
        if loading.is_empty() {
            return;
        }
        if !told {
            let names: Vec<String> = loading.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            tracing::info!(
                "the input is published; waiting for {} compiling in the background to handle it",
                names.join(", ")
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// Both handlers are registered here, not when the future is first polled:
/// a signal that arrives before the host awaits it is kept, not lost to the
/// default disposition (which would end the process without draining).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing the deliveries under way");
    })
}
