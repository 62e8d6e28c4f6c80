//! `plugbus-bench`: plugbus's load generators, kept out of the production
//! `plugbus` binary. Each drives a host in this process and prints a table;
//! `cargo xtask bench`, `bench-reload`, `bench-noisy` and
//! `bench-throughput` run them in a
//! release build, and BENCHMARKS.md says how each table was made.

mod bench;
mod hosts;
mod jetstream;
mod langs;
mod matrix;
mod noisy;
mod outbound;
mod reload_bench;
mod sqlite_peer;
mod throughput;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// plugbus-bench: measures a plugbus host in this process.
#[derive(Parser)]
#[command(name = "plugbus-bench", version, about)]
struct Cli {
    /// Which log lines the host writes to stderr: a level or a tracing
    /// filter (default warn: the table is the output).
    #[arg(long, global = true, env = "PLUGBUS_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drives a host in memory (or through the durable log, or over HTTP)
    /// with generated events and reports events/s, CPU time per event,
    /// latency percentiles (p50, p99, p999), start-up time (cold, and from
    /// a warm compile cache) and memory per loaded plugin, for several
    /// layouts of tenants and plugins. Exit status 1 when any delivery
    /// failed.
    Bench(bench::BenchArgs),

    /// Measures hot reload: the time from renaming a new version over a
    /// plugin to the first event it handles (median, p99, max over repeated
    /// swaps), with and without a compile cache hit, for the plugin and for
    /// a large copy of it; and events/s with a swap every second against
    /// none.
    BenchReload(reload_bench::ReloadBenchArgs),

    /// The noisy-neighbour benchmark: a good tenant's throughput and
    /// latency to handled through the durable log, alone and beside a
    /// hostile tenant's behaviours one at a time and all at once, with the
    /// peak RSS and the log's growth of each row.
    BenchNoisy(noisy::NoisyArgs),

    /// JetStream alone, with no plugbus: publishes the events `bench
    /// --durable --nats` publishes and reads them back with one durable
    /// pull consumer per plugin of each tenant, reporting events/s, CPU per event (this
    /// client's, and the server's when it starts its own) and batch
    /// latency: the baseline of the NATS backend.
    BenchJetstream(jetstream::JetStreamArgs),

    /// Issue 15's benchmark in one run: `bench --durable` on SQLite and on
    /// NATS, JetStream alone with the same events, and NATS shared by one,
    /// two and three host processes, for publishes of one event and of
    /// batches; prints the tables, with plugbus on NATS as a share of
    /// JetStream alone.
    BenchNats(matrix::MatrixArgs),

    /// Issue 16's benchmark in one run: every row of its table (the
    /// durable log with 1, 100 and 1,000 tenants, ack p99 at half those
    /// loads, HTTP single and batched, in memory, a hot swap every second,
    /// and SQLite alone as the peer), each measured by running a
    /// plugbus-bench binary as a child; with --before, alternating with an
    /// older build, before and after side by side. Prints a markdown table.
    BenchThroughput(throughput::ThroughputArgs),

    /// Issue 17's benchmark: the same handler written in several languages
    /// (`--plugin rust=… --plugin python=… --plugin js=…`), each with its
    /// component size, compile time, load time from the compile cache,
    /// rename-to-served time with a cache hit, first-event and steady-state
    /// time and fuel, and the linear memory of one instance.
    BenchLangs(langs::LangsArgs),

    /// Issue 18's benchmark: what one outbound HTTP request costs a
    /// delivery (the `http-probe` fixture with and without one request,
    /// beside a native client on a new and on a kept-alive connection),
    /// and the `webhook-notify` example posting one webhook per event:
    /// events/s and p99, one at a time and concurrently. Starts its own
    /// local HTTP server.
    BenchOutbound(outbound::OutboundArgs),

    /// SQLite alone, with no plugbus: the events `bench --durable`
    /// publishes, inserted by one producer (one event or a batch per
    /// transaction) and read after a cursor by one consumer that writes its
    /// cursor per read, WAL mode with synchronous=FULL. Reports events/s and
    /// CPU per event: the floor of what the embedded store allows.
    BenchSqlitePeer(sqlite_peer::PeerArgs),

    /// One host of `bench --durable --nats --hosts N`, driven by it over
    /// stdin and stdout.
    #[command(hide = true)]
    BenchHost(hosts::HostArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Bench(args) => args.otlp_endpoint.as_deref().map(|url| {
            plugbus::telemetry::traces_url("--otlp-endpoint", url).map(|traces_url| {
                plugbus::telemetry::OtlpSettings {
                    traces_url,
                    service_name: "plugbus-bench".into(),
                    sample_ratio: args.otlp_sample_ratio,
                }
            })
        }),
        Command::BenchReload(_)
        | Command::BenchNoisy(_)
        | Command::BenchJetstream(_)
        | Command::BenchNats(_)
        | Command::BenchThroughput(_)
        | Command::BenchLangs(_)
        | Command::BenchOutbound(_)
        | Command::BenchSqlitePeer(_)
        | Command::BenchHost(_) => None,
    };
    let otlp = match otlp.transpose() {
        Ok(otlp) => otlp,
        Err(e) => {
            eprintln!("plugbus-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Started before the async runtime, and shut down after it: its HTTP
    // client is a blocking one.
    let export = match otlp.as_ref().map(plugbus::telemetry::OtlpExport::start) {
        None => None,
        Some(Ok(export)) => Some(export),
        Some(Err(e)) => {
            eprintln!("plugbus-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) =
        plugbus::telemetry::init_logging(false, cli.log.as_deref(), "warn", export.as_ref())
    {
        eprintln!("plugbus-bench: {:#}", anyhow::Error::from(e));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("plugbus-bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Bench(args) => bench::run(args).await,
            Command::BenchReload(args) => reload_bench::run(args).await,
            Command::BenchNoisy(args) => noisy::run(args).await,
            Command::BenchJetstream(args) => jetstream::run(args).await,
            Command::BenchNats(args) => matrix::run(args).await,
            Command::BenchThroughput(args) => throughput::run(args).await,
            Command::BenchLangs(args) => langs::run(args).await,
            Command::BenchOutbound(args) => outbound::run(args).await,
            Command::BenchSqlitePeer(args) => sqlite_peer::run(args).await,
            Command::BenchHost(args) => hosts::serve(args).await,
        }
    });
    drop(runtime);
    if let Some(export) = export
        && let Err(e) = export.shutdown()
    {
        eprintln!("plugbus-bench: {e}");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugbus-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
