//! `plugbus dispatch`: loads the plugins directory into a host in memory,
//! dispatches the CloudEvents of a file or stdin, one JSON line each, and
//! writes one JSON line per delivery to stdout (see [`crate::lines`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use futures::StreamExt as _;
use plugbus::{Host, HostConfig};

use crate::lines::{DeliveryLine, numbered_lines, parse_line};

#[derive(clap::Args)]
pub struct DispatchArgs {
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
pub struct HostArgs {
    /// Fuel per event for plugins whose manifest does not set `limits.fuel`.
    #[arg(long, value_name = "N", default_value_t = plugbus::Limits::default().fuel)]
    fuel: u64,

    /// Memory (MiB) of plugins whose manifest does not set `limits.memory_mib`.
    #[arg(long, value_name = "MIB", default_value_t = plugbus::Limits::default().memory_bytes / (1024 * 1024), value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_MEMORY_MIB))]
    memory_mib: u64,

    /// Wall-clock limit (ms) per event for plugins whose manifest does not
    /// set `limits.timeout_ms`.
    #[arg(long, value_name = "MS", default_value_t = default_timeout_ms(), value_parser = clap::value_parser!(u64).range(1..=plugbus::manifest::MAX_TIMEOUT_MS))]
    timeout_ms: u64,

    /// How many emits may separate an event from the root of its chain.
    #[arg(long, value_name = "N", default_value_t = HostConfig::default().max_chain_depth)]
    max_chain_depth: u32,

    /// Reuse a plugin's instance across events, or create a fresh one per event.
    #[arg(long, value_enum, default_value_t = Mode::Reuse)]
    instance_mode: Mode,

    /// How many input events are dispatched at once (output keeps input order).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
}

/// The host's default wall-clock limit per event, in milliseconds.
fn default_timeout_ms() -> u64 {
    u64::try_from(plugbus::Limits::default().timeout.as_millis()).unwrap_or(u64::MAX)
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
pub(crate) enum Mode {
    /// One long-lived instance per plugin (and per concurrent event),
    /// replaced after a trap.
    Reuse,
    /// A fresh instance per event, from the pooling allocator.
    Fresh,
}

/// Runs `plugbus dispatch`.
pub async fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
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
/// Loads the plugins directory and logs what it did.
pub(crate) fn load(host: &Host, dir: &std::path::Path) -> anyhow::Result<()> {
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
