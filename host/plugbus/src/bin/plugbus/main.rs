//! The `plugbus` command: runs tenants' WebAssembly event handlers.

mod client;
mod ops;
mod serve;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use plugbus::{Delivery, Event, Host, HostConfig, Outcome};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;

/// plugbus: a host bus for event handlers written as WebAssembly components.
///
/// Tenants drop plugins (components of the WIT world plugbus:plugin/handler)
/// into <plugins-dir>/<tenant>/<plugin>.wasm, with an optional manifest
/// <plugin>.toml beside each. Every CloudEvent of a tenant reaches that
/// tenant's subscribed plugins, each under its own fuel, memory and time
/// limits.
#[derive(Parser)]
#[command(name = "plugbus", version, about, long_about)]
struct Cli {
    /// How log lines are written to stderr (default human; `serve` takes
    /// it from its configuration file when this is not given).
    #[arg(long, value_enum, global = true, env = "PLUGBUS_LOG_FORMAT")]
    log_format: Option<LogFormat>,

    /// Which log lines are written: a level (error, warn, info, debug, trace)
    /// or a tracing filter such as `plugbus=debug,plugbus::plugin=info`.
    /// RUST_LOG is used when this is not given.
    #[arg(long, global = true, env = "PLUGBUS_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Loads every tenant's plugins, dispatches CloudEvents read one per line
    /// (JSON format, the tenant in the extension attribute `tenant`) and
    /// everything the plugins emit in response, and writes one JSON line per
    /// delivery to stdout.
    ///
    /// Each output line holds: event_id, tenant, type, plugin,
    /// plugin_version, outcome (handled or failed), error_kind,
    /// error_message, fuel, micros, causationid (for emitted events) and the
    /// events the delivery emitted. An invalid input line is reported on
    /// stderr with its line number and reason; the valid lines are still
    /// dispatched.
    ///
    /// Exit status: 0 when every input line was dispatched, 1 when any was
    /// rejected, 2 when the host could not start.
    Dispatch(DispatchArgs),

    /// Runs the host: loads every tenant's plugins, watches the plugins
    /// directory and reloads a plugin when its files change, and with
    /// --stdin publishes CloudEvents read one per line from stdin into the
    /// durable event log <data>/events.db. The plugins consume the log, at
    /// least once, with retries and dead letters; each delivery is written
    /// to stdout as one JSON line (as `dispatch` writes; the plugin_version
    /// field tells which version handled it). At the end of the input it
    /// waits until the plugins have handled what was published. A restart
    /// resumes every plugin where it left off.
    ///
    /// Replace a plugin by writing the new file beside it and renaming it
    /// over the old one (`mv`): it serves within milliseconds. A copy over
    /// the file in place (`cp`) works too; it is read once the writer has
    /// closed it. A new version that does not load leaves the old one
    /// serving, and the reason is logged. Compiled plugins are cached in
    /// <data>/compiled, so a restart or a revert skips compilation.
    ///
    /// Ctrl-C or SIGTERM stops reading, finishes the deliveries under way,
    /// and exits 0; what is stored and not yet delivered is delivered after
    /// the next start.
    Serve(serve::ServeArgs),

    /// Lists, shows, redrives and discards dead letters: the events a plugin gave up
    /// on after its last attempt, each with every attempt's failure.
    Dlq(ops::DlqArgs),

    /// Moves a plugin's cursor back (or forward) in the event log, so that
    /// it is delivered the events from a position or a time again.
    Replay(ops::ReplayArgs),

    /// Lists the quarantined plugins (paused after failing too many
    /// deliveries in a row), or lifts a plugin's quarantine.
    Quarantine(ops::QuarantineArgs),

    /// Reads a token from stdin and prints the hex SHA-256 that
    /// plugbus.toml stores for it (`token_sha256`).
    HashToken,

    /// Publishes an event (from flags) or events (from a JSON file) to a
    /// running host, with a tenant's token.
    Publish(client::PublishArgs),

    /// Lists a running host's plugins: version, status, cursor and lag.
    Plugins(client::PluginsArgs),

    /// Says whether a running host is ready, and sums up its plugins.
    Status(client::StatusArgs),
}

#[derive(clap::Args)]
struct DispatchArgs {
    /// The plugins directory: <DIR>/<tenant>/<plugin>.wasm.
    #[arg(long, value_name = "DIR", env = "PLUGBUS_PLUGINS")]
    plugins: PathBuf,

    /// The file of events, one CloudEvent in JSON per line; stdin when absent.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,

    #[command(flatten)]
    host: HostArgs,
}

/// The settings `dispatch` and `serve` share.
#[derive(clap::Args)]
struct HostArgs {
    /// Fuel per event for plugins whose manifest does not set `limits.fuel`.
    #[arg(long, value_name = "N", default_value_t = plugbus::Limits::default().fuel)]
    fuel: u64,

    /// Memory (MiB) of plugins whose manifest does not set `limits.memory_mib`.
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_MEMORY_MIB))]
    memory_mib: u64,

    /// Wall-clock limit (ms) per event for plugins whose manifest does not
    /// set `limits.timeout_ms`.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_TIMEOUT_MS))]
    timeout_ms: u64,

    /// How many emits may separate an event from the root of its chain.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_chain_depth: u32,

    /// Reuse a plugin's instance across events, or create a fresh one per event.
    #[arg(long, value_enum, default_value_t = Mode::Reuse)]
    instance_mode: Mode,

    /// How many input events are dispatched at once (output keeps input order).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
}

impl HostArgs {
    /// The host configuration these flags describe.
    fn config(&self) -> HostConfig {
        let mut config = match self.instance_mode {
            Mode::Reuse => HostConfig::default(),
            Mode::Fresh => HostConfig::fresh_instances(1000),
        };
        config.default_limits = plugbus::Limits {
            fuel: self.fuel,
            memory_bytes: self.memory_mib * 1024 * 1024,
            timeout: Duration::from_millis(self.timeout_ms),
        };
        config.max_chain_depth = self.max_chain_depth;
        config
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// One long-lived instance per plugin (and per concurrent event),
    /// replaced after a trap.
    Reuse,
    /// A fresh instance per event, from the pooling allocator.
    Fresh,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print their own output log only warnings unless asked
    // for more.
    let default_level = match cli.command {
        Command::Dlq(_) | Command::Replay(_) | Command::Quarantine(_) => "warn",
        Command::Dispatch(_) | Command::Serve(_) => "info",
        Command::HashToken | Command::Publish(_) | Command::Plugins(_) | Command::Status(_) => {
            "warn"
        }
    };
    // `serve` may take the log format and span export from its
    // configuration file.
    let (configured, otlp) = match &cli.command {
        Command::Serve(args) => {
            match serve::settings(args)
                .and_then(|(config, _)| Ok((Some(config.log_format), serve::otlp(args, &config)?)))
            {
                Ok(found) => found,
                Err(e) => {
                    eprintln!("plugbus: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => (None, None),
    };
    let format = cli.log_format.unwrap_or(match configured {
        Some(plugbus::config::LogFormat::Json) => LogFormat::Json,
        _ => LogFormat::Human,
    });
    // Started before the async runtime, and shut down after it: its HTTP
    // client is a blocking one.
    let export = match otlp.as_ref().map(plugbus::telemetry::OtlpExport::start) {
        None => None,
        Some(Ok(export)) => Some(export),
        Some(Err(e)) => {
            eprintln!("plugbus: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = plugbus::telemetry::init_logging(
        matches!(format, LogFormat::Json),
        cli.log.as_deref(),
        default_level,
        export.as_ref(),
    ) {
        eprintln!("plugbus: {:#}", anyhow::Error::from(e));
        return ExitCode::from(2);
    }
    if let Some(otlp) = &otlp {
        tracing::info!(
            "exporting spans to {} (OTLP/HTTP, service.name {}, sample ratio {})",
            otlp.traces_url,
            otlp.service_name,
            otlp.sample_ratio
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plugbus: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dispatch(args) => dispatch(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Dlq(args) => tokio::task::spawn_blocking(move || ops::dlq(args))
                .await
                .context("the dlq command failed")?,
            Command::Replay(args) => tokio::task::spawn_blocking(move || ops::replay(args))
                .await
                .context("the replay command failed")?,
            Command::HashToken => hash_token(),
            Command::Publish(args) => tokio::task::spawn_blocking(move || client::publish(args))
                .await
                .context("the publish command failed")?,
            Command::Plugins(args) => tokio::task::spawn_blocking(move || client::plugins(args))
                .await
                .context("the plugins command failed")?,
            Command::Status(args) => tokio::task::spawn_blocking(move || client::status(args))
                .await
                .context("the status command failed")?,
            Command::Quarantine(args) => tokio::task::spawn_blocking(move || ops::quarantine(args))
                .await
                .context("the quarantine command failed")?,
        }
    });
    // Everything that matters has been awaited. What may remain is a
    // blocking read of stdin that no signal interrupts (tokio reads stdin on
    // a blocking thread), and dropping the runtime would wait for it.
    runtime.shutdown_background();
    if let Some(export) = export
        && let Err(e) = export.shutdown()
    {
        eprintln!("plugbus: {e}");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugbus: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The longest input line accepted.
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

async fn dispatch(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let host = Host::new(args.host.config())?;
    load(&host, &args.plugins)?;
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match &args.events {
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open events file {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdin()),
    };
    let totals = run_events(&host, input, args.host.concurrency, std::future::pending()).await?;
    Ok(if totals.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the hash of the token on stdin.
fn hash_token() -> anyhow::Result<ExitCode> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .context("cannot read the token from stdin")?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        anyhow::bail!("no token on stdin");
    }
    println!("{}", plugbus::config::hash_token(token));
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing the deliveries under way");
}

/// Loads the plugins directory and logs what it did.
fn load(host: &Host, dir: &std::path::Path) -> anyhow::Result<()> {
    let report = host.load_dir(dir)?;
    let tenants: std::collections::BTreeSet<_> =
        report.loaded.iter().map(|p| p.tenant.as_str()).collect();
    tracing::info!(
        "loaded {} plugins of {} tenants from {}; {} refused",
        report.loaded.len(),
        tenants.len(),
        dir.display(),
        report.errors.len()
    );
    Ok(())
}

/// What [`run_events`] dispatched.
struct Totals {
    rejected: u64,
}

/// Dispatches the events of `input`, one JSON line each, `concurrency` at
/// a time, writing one JSON line per delivery to stdout in input order,
/// until the input ends or `stop` resolves; then finishes the events under
/// way and returns.
async fn run_events(
    host: &Host,
    input: impl tokio::io::AsyncRead + Unpin + Send,
    concurrency: u32,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Totals> {
    let lines = Box::pin(numbered_lines(input).take_until(Box::pin(stop)));

    let mut results = lines
        .map(|line| async move {
            let (number, line) = line?;
            let parsed = parse_line(&line);
            let published = match parsed {
                None => None,
                Some(Err(reason)) => Some(Err(reason)),
                Some(Ok(event)) => Some(host.publish(event).await.map_err(|e| e.to_string())),
            };
            Ok::<_, std::io::Error>((number, published))
        })
        .buffered(concurrency as usize);

    let mut stdout = std::io::stdout().lock();
    let (mut events, mut rejected, mut handled, mut failed) = (0u64, 0u64, 0u64, 0u64);
    while let Some(result) = results.next().await {
        let (number, published) = result.context("cannot read the events")?;
        match published {
            None => {}
            Some(Err(reason)) => {
                rejected += 1;
                eprintln!("plugbus: line {number}: rejected: {reason}");
            }
            Some(Ok(report)) => {
                events += 1;
                for delivery in &report.deliveries {
                    if delivery.outcome.is_handled() {
                        handled += 1;
                    } else {
                        failed += 1;
                    }
                    serde_json::to_writer(&mut stdout, &DeliveryLine::from(delivery))?;
                    stdout.write_all(b"\n")?;
                }
                stdout.flush()?;
            }
        }
    }
    tracing::info!(
        "dispatched {events} events: {handled} deliveries handled, {failed} failed; {rejected} input lines rejected"
    );
    Ok(Totals { rejected })
}

/// The lines of `input` with their numbers, counting from 1.
fn numbered_lines(
    input: impl tokio::io::AsyncRead + Unpin + Send,
) -> impl futures::Stream<Item = std::io::Result<(usize, Line)>> + Send {
    futures::stream::unfold(
        (tokio::io::BufReader::new(input), 0usize),
        |(mut reader, number)| async move {
            match read_line(&mut reader).await {
                Ok(None) => None,
                Ok(Some(line)) => Some((Ok((number + 1, line)), (reader, number + 1))),
                Err(e) => Some((Err(e), (reader, number + 1))),
            }
        },
    )
}

/// One input line, or the length of a line too long to keep.
enum Line {
    Text(Vec<u8>),
    TooLong(usize),
}

/// Reads the next line, keeping at most [`MAX_LINE_BYTES`] of it in memory:
/// the rest of a longer line is read and dropped. `None` at the end.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Line>> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::new();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let read = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() <= MAX_LINE_BYTES || line.ends_with(b"\n") {
        return Ok(Some(Line::Text(line)));
    }
    let mut length = line.len();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        let (used, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        reader.consume(used);
        length += used;
        if done {
            break;
        }
    }
    Ok(Some(Line::TooLong(length)))
}

/// Parses one input line; `None` for a blank line.
fn parse_line(line: &Line) -> Option<Result<Event, String>> {
    let bytes = match line {
        Line::TooLong(length) => {
            return Some(Err(format!(
                "the line is {length} bytes long; at most {MAX_LINE_BYTES} are accepted"
            )));
        }
        Line::Text(bytes) => bytes,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.trim(),
        Err(e) => return Some(Err(format!("not valid UTF-8: {e}"))),
    };
    if text.is_empty() {
        return None;
    }
    Some(Event::from_json(text).map_err(|e| e.to_string()))
}

/// One line of `dispatch` output.
#[derive(Serialize)]
struct DeliveryLine<'a> {
    event_id: &'a str,
    tenant: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    plugin: &'a str,
    plugin_version: &'a str,
    outcome: &'static str,
    error_kind: Option<&'static str>,
    error_message: Option<&'a str>,
    fuel: u64,
    micros: u64,
    causationid: Option<&'a str>,
    emitted: &'a [plugbus::EmittedEvent],
}

impl<'a> From<&'a Delivery> for DeliveryLine<'a> {
    fn from(d: &'a Delivery) -> Self {
        let failure = match &d.outcome {
            Outcome::Handled => None,
            Outcome::Failed(f) => Some(f),
        };
        Self {
            event_id: &d.event_id,
            tenant: &d.tenant,
            ty: &d.event_type,
            plugin: &d.plugin,
            plugin_version: &d.plugin_version,
            outcome: if failure.is_some() {
                "failed"
            } else {
                "handled"
            },
            error_kind: failure.map(|f| f.kind.as_str()),
            error_message: failure.map(|f| f.message.as_str()),
            fuel: d.fuel,
            micros: u64::try_from(d.duration.as_micros()).unwrap_or(u64::MAX),
            causationid: d.causation_id.as_deref(),
            emitted: &d.emitted,
        }
    }
}
