//! `plugbus-bench bench-nats`: issue 15's benchmark in one run. For
//! publishes of one event and of batches: `bench --durable` on SQLite and
//! on NATS, JetStream alone with the same events (`bench-jetstream`), and
//! NATS shared by one, two and three host processes (`bench --durable
//! --nats --hosts N`), printed as tables with plugbus on NATS as a share
//! of JetStream alone.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::bench::{BenchArgs, Row, Scenario};
use crate::jetstream::{Load, Measured};

/// The arguments of `bench-nats`.
#[derive(clap::Args)]
pub struct MatrixArgs {
    /// The component every plugin runs (`fixture-noop`).
    #[arg(long, value_name = "FILE")]
    plugin: PathBuf,
    /// The layouts measured on every backend.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-plugin,hundred-tenants"
    )]
    scenario: Vec<Scenario>,
    /// The layout of the rows with several hosts (the unit of work is a
    /// tenant's plugin, so one plugin would run on one host).
    #[arg(long, value_enum, default_value = "hundred-tenants")]
    hosts_scenario: Scenario,
    /// The numbers of host processes of the rows with hosts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    hosts: Vec<u32>,
    /// Events per row with publishes of one event (64 in flight).
    #[arg(long, default_value_t = 10_000)]
    events_single: u64,
    /// Events per row with publishes of `--batch` events (8 in flight).
    #[arg(long, default_value_t = 50_000)]
    events_batched: u64,
    /// Events per batched publish.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Bytes of JSON payload per event.
    #[arg(long, default_value_t = 256)]
    payload: u64,
    /// A NATS server to use instead of starting one per row.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
}

/// One line of a table.
enum Line {
    Plugbus(Row, Option<u32>),
    JetStream(Measured),
}

/// Runs every row and prints the tables.
pub async fn run(args: MatrixArgs) -> anyhow::Result<std::process::ExitCode> {
    let component = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read the plugin {}", args.plugin.display()))?;
    println!("load average at the start: {}", load_average());
    let mut failed = 0;
    for (batch, concurrency, events) in [
        (1, 64, args.events_single),
        (args.batch, 8, args.events_batched),
    ] {
        let mut lines = Vec::new();
        let bench = |nats: bool, hosts: Option<u32>| BenchArgs {
            plugin: args.plugin.clone(),
            scenario: Vec::new(),
            events,
            concurrency,
            payload: args.payload,
            json: false,
            durable: true,
            batch,
            rate: None,
            no_fsync: false,
            http: false,
            nats,
            nats_url: args.nats_url.clone(),
            hosts,
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
        };
        let load = Load {
            events,
            batch,
            concurrency,
            payload: args.payload,
        };
        for scenario in &args.scenario {
            for nats in [false, true] {
                eprintln!(
                    "bench-nats: {} on {}, {batch} per publish",
                    scenario.name(),
                    if nats { "NATS" } else { "SQLite" }
                );
                let row = crate::bench::run_row(*scenario, &component, &bench(nats, None)).await?;
                failed += row.failed;
                lines.push(Line::Plugbus(row, None));
            }
            eprintln!(
                "bench-nats: {} on JetStream alone, {batch} per publish",
                scenario.name()
            );
            let measured =
                crate::jetstream::measure(*scenario, load, args.nats_url.as_deref()).await?;
            lines.push(Line::JetStream(measured));
        }
        if !args
            .scenario
            .iter()
            .any(|s| s.arg() == args.hosts_scenario.arg())
        {
            eprintln!(
                "bench-nats: {} on JetStream alone, {batch} per publish",
                args.hosts_scenario.name()
            );
            let measured =
                crate::jetstream::measure(args.hosts_scenario, load, args.nats_url.as_deref())
                    .await?;
            lines.push(Line::JetStream(measured));
        }
        for hosts in &args.hosts {
            eprintln!(
                "bench-nats: {} on NATS, {hosts} host processes, {batch} per publish",
                args.hosts_scenario.name()
            );
            let row =
                crate::bench::run_row(args.hosts_scenario, &component, &bench(true, Some(*hosts)))
                    .await?;
            failed += row.failed;
            lines.push(Line::Plugbus(row, Some(*hosts)));
        }
        print_tables(&lines, events, batch, concurrency, args.payload);
    }
    println!("load average at the end: {}", load_average());
    if failed > 0 {
        eprintln!("plugbus-bench: {failed} deliveries failed; see the log");
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_tables(lines: &[Line], events: u64, batch: u64, concurrency: u32, payload: u64) {
    println!();
    println!(
        "{events} events per row, {} per publish, {concurrency} publishes in flight, {payload}-byte payloads; latency: of a publish, to its acknowledgement",
        if batch == 1 {
            "one event".to_owned()
        } else {
            format!("{batch} events")
        }
    );
    println!();
    println!(
        "| scenario | engine | hosts | events/s | client CPU µs/event | server CPU µs/event | p50 µs | p99 µs | of JetStream alone |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let alone = |scenario: &str| {
        lines.iter().find_map(|l| match l {
            Line::JetStream(m) if m.scenario == scenario => Some(m.events_per_s),
            _ => None,
        })
    };
    let server = |c: Option<f64>| c.map_or_else(|| "—".to_owned(), |c| format!("{c:.1}"));
    for line in lines {
        match line {
            Line::Plugbus(r, hosts) => {
                let ratio = match (r.backend, alone(r.scenario)) {
                    ("nats", Some(alone)) => format!("{:.2}", r.events_per_s / alone),
                    _ => "—".to_owned(),
                };
                println!(
                    "| {} | plugbus on {}{} | {} | {:.0} | {:.1} | {} | {} | {} | {} |",
                    r.scenario,
                    if r.backend == "nats" {
                        "NATS"
                    } else {
                        "SQLite"
                    },
                    if hosts.is_some() {
                        " (host processes)"
                    } else {
                        ""
                    },
                    hosts.unwrap_or(1),
                    r.events_per_s,
                    r.cpu_us_per_event,
                    server(r.server_cpu_us_per_event),
                    r.p50_us,
                    r.p99_us,
                    ratio
                );
            }
            Line::JetStream(m) => println!(
                "| {} | JetStream alone | — | {:.0} | {:.1} | {} | {} | {} | 1.00 |",
                m.scenario,
                m.events_per_s,
                m.client_cpu_us_per_event,
                server(m.server_cpu_us_per_event),
                m.p50_us,
                m.p99_us
            ),
        }
    }
    let with_hosts: Vec<(&Row, u32)> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Plugbus(r, Some(hosts)) => Some((r, *hosts)),
            _ => None,
        })
        .collect();
    if with_hosts.is_empty() {
        return;
    }
    println!();
    println!(
        "| hosts | host | published | deliveries | leases | CPU µs per event of the run | CPU µs per delivery it made |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (row, hosts) in with_hosts {
        for (i, h) in row.hosts.iter().enumerate() {
            println!(
                "| {hosts} | {} | {} | {} | {} | {:.1} | {} |",
                i + 1,
                h.published,
                h.handled,
                h.leases,
                h.cpu_us_per_event,
                h.cpu_us_per_handled
                    .map_or_else(|| "—".to_owned(), |c| format!("{c:.1}"))
            );
        }
        println!(
            "| {hosts} | all | {} | {} | {} | {:.1} | server: {} |",
            row.events,
            row.deliveries,
            row.plugins,
            row.cpu_us_per_event,
            server(row.server_cpu_us_per_event)
        );
    }
}

/// The first three fields of /proc/loadavg.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
