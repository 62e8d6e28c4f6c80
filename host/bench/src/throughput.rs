//! `plugbus-bench bench-throughput`: issue 16's table in one run.
//!
//! Each row is measured by running a `plugbus-bench` binary as a child
//! process (`bench --json`, `bench-reload --json`, `bench-sqlite-peer
//! --json`) and reading its JSON lines. With `--before BIN` every row is
//! also measured with another build, the two alternating row by row (the one
//! that goes first alternates between runs), and the table puts before,
//! after and their ratio side by side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// Arguments of `plugbus-bench bench-throughput`.
#[derive(clap::Args)]
pub struct ThroughputArgs {
    /// The component every plugin runs (`fixture-noop`).
    #[arg(long, value_name = "FILE")]
    pub(crate) plugin: PathBuf,

    /// Another plugbus-bench binary (an older build) to measure the same
    /// rows with, alternating with this one.
    #[arg(long, value_name = "BIN")]
    pub(crate) before: Option<PathBuf>,

    /// The binary measured as "after" (default: this one).
    #[arg(long, value_name = "BIN")]
    pub(crate) after: Option<PathBuf>,

    /// Measurements of each row per binary; the table shows their range
    /// and the ratio of their medians.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(crate) runs: u32,

    /// The rows to measure, comma-separated (default: all). An ack row
    /// measures its throughput row too.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) rows: Vec<RowId>,

    /// Events of the one-plugin durable rows.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub(crate) durable_events: u64,

    /// Events of the 100- and 1,000-tenant durable rows.
    #[arg(long, value_name = "N", default_value_t = 40_000)]
    pub(crate) tenants_events: u64,

    /// Events of the HTTP single-event rows.
    #[arg(long, value_name = "N", default_value_t = 30_000)]
    pub(crate) http_events: u64,

    /// Events of the HTTP batched rows (batches of 100, 8 in flight).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub(crate) http_batch_events: u64,

    /// Events of the in-memory row.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub(crate) memory_events: u64,

    /// Seconds of each throughput phase of the hot-swap row (nine phases).
    #[arg(long, value_name = "S", default_value_t = 3)]
    pub(crate) reload_seconds: u64,

    /// Events of the SQLite peer's batched row (its single row takes a
    /// tenth).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub(crate) peer_events: u64,

    /// Print the child commands without running them.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// A row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum RowId {
    /// One plugin, durable, single-event publishes, 64 in flight.
    Durable1,
    /// 100 tenants × 1 plugin, durable.
    Durable100,
    /// 1,000 tenants × 1 plugin, durable.
    Durable1000,
    /// Ack p99 of one plugin at half its measured throughput.
    Ack1,
    /// Ack p99 of 100 tenants at half their measured throughput.
    Ack100,
    /// Ack p99 of 1,000 tenants at half their measured throughput.
    Ack1000,
    /// HTTP, one structured event per request, one plugin.
    HttpSingle1,
    /// HTTP, one structured event per request, 100 tenants.
    HttpSingle100,
    /// HTTP, batches of 100, one plugin.
    HttpBatch1,
    /// HTTP, batches of 100, 100 tenants.
    HttpBatch100,
    /// In memory, one plugin (the plugin's queue batches deliveries).
    Memory,
    /// Throughput with a hot swap every second (cache hit), as a share of
    /// steady.
    Reload,
    /// SQLite alone, one event per insert transaction.
    PeerSingle,
    /// SQLite alone, 100 events per insert transaction.
    PeerBatched,
}

impl RowId {
    const ALL: [Self; 14] = [
        Self::Durable1,
        Self::Durable100,
        Self::Durable1000,
        Self::Ack1,
        Self::Ack100,
        Self::Ack1000,
        Self::HttpSingle1,
        Self::HttpSingle100,
        Self::HttpBatch1,
        Self::HttpBatch100,
        Self::Memory,
        Self::Reload,
        Self::PeerSingle,
        Self::PeerBatched,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Durable1 => "1 plugin, durable",
            Self::Durable100 => "100 tenants × 1 plugin, durable",
            Self::Durable1000 => "1,000 tenants × 1 plugin, durable",
            Self::Ack1 => "ack p99 at half load: 1 plugin",
            Self::Ack100 => "ack p99 at half load: 100 tenants",
            Self::Ack1000 => "ack p99 at half load: 1,000 tenants",
            Self::HttpSingle1 => "HTTP single-event, counted until handled: 1 plugin",
            Self::HttpSingle100 => "HTTP single-event, counted until handled: 100 tenants",
            Self::HttpBatch1 => "HTTP batched, counted until handled: 1 plugin",
            Self::HttpBatch100 => "HTTP batched, counted until handled: 100 tenants",
            Self::Memory => "in-memory publish, 1 plugin, batched",
            Self::Reload => "throughput with a hot swap every second",
            Self::PeerSingle => "peer: SQLite alone, 1 event per transaction",
            Self::PeerBatched => "peer: SQLite alone, 100 events per transaction",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Self::Durable1 => "≥ 150,000",
            Self::Durable100 | Self::Durable1000 => "≥ 60,000",
            Self::Ack1 | Self::Ack100 | Self::Ack1000 => "< 10 ms",
            Self::HttpSingle1 | Self::HttpSingle100 => "≥ 30,000",
            Self::HttpBatch1 | Self::HttpBatch100 => "≥ 120,000",
            Self::Memory => "≥ 1,000,000",
            Self::Reload => "≥ 95% of steady",
            Self::PeerSingle | Self::PeerBatched => "(floor)",
        }
    }

    /// The throughput row an ack row's rate comes from.
    fn throughput_row(self) -> Option<Self> {
        match self {
            Self::Ack1 => Some(Self::Durable1),
            Self::Ack100 => Some(Self::Durable100),
            Self::Ack1000 => Some(Self::Durable1000),
            _ => None,
        }
    }

    fn scenario(self) -> &'static str {
        match self {
            Self::Durable100 | Self::Ack100 | Self::HttpSingle100 | Self::HttpBatch100 => {
                "hundred-tenants"
            }
            Self::Durable1000 | Self::Ack1000 => "thousand-tenants",
            _ => "one-plugin",
        }
    }

    fn unit(self) -> Unit {
        match self {
            Self::Ack1 | Self::Ack100 | Self::Ack1000 => Unit::P99Ms,
            Self::Reload => Unit::ShareOfSteady,
            _ => Unit::EventsPerS,
        }
    }
}

/// What a row's figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    EventsPerS,
    P99Ms,
    ShareOfSteady,
}

/// One measurement of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figure {
    /// events/s, p99 in ms, or the share of steady.
    pub(crate) value: f64,
    pub(crate) cpu_us_per_event: Option<f64>,
    /// For an ack row: the events/s the publishes reached.
    pub(crate) at_events_per_s: Option<f64>,
}

/// What a binary measured for a row: its figures, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Measured(Vec<Figure>),
    /// The binary has no way to measure the row.
    Missing,
    /// A child failed; the message says how.
    Failed(String),
}

/// What a binary can do, from its `--help`.
#[derive(Debug, Clone, Copy)]
struct Abilities {
    rate: bool,
    peer: bool,
}

impl Abilities {
    fn of(bin: &Path) -> anyhow::Result<Self> {
        let help = |args: &[&str]| -> anyhow::Result<String> {
            let output = Command::new(bin)
                .args(args)
                .output()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        Ok(Self {
            rate: help(&["bench", "--help"])?.contains("--rate"),
            peer: help(&["--help"])?.contains("bench-sqlite-peer"),
        })
    }
}

/// The child command of a row, or None when the binary cannot measure it.
/// `rate` is the events/s an ack row's throughput row measured.
fn command(
    row: RowId,
    args: &ThroughputArgs,
    abilities: Abilities,
    rate: Option<f64>,
) -> Option<Vec<String>> {
    let plugin = args.plugin.display().to_string();
    let bench = |events: u64, extra: &[&str]| {
        let mut v: Vec<String> = [
            "bench",
            "--json",
            "--plugin",
            &plugin,
            "--scenario",
            row.scenario(),
            "--events",
            &events.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let tenants = |single: u64| {
        if row.scenario() == "one-plugin" {
            single
        } else {
            args.tenants_events
        }
    };
    Some(match row {
        RowId::Durable1 | RowId::Durable100 | RowId::Durable1000 => {
            bench(tenants(args.durable_events), &["--durable"])
        }
        RowId::Ack1 | RowId::Ack100 | RowId::Ack1000 => {
            let events = (tenants(args.durable_events) / 2).max(1);
            match rate {
                Some(rate) if abilities.rate => {
                    let half = ((rate / 2.0).round() as u64).max(1).to_string();
                    bench(events, &["--durable", "--rate", &half])
                }
                // Half the publishes in flight: the closest an older
                // build has to half the load.
                _ => bench(events, &["--durable", "--concurrency", "32"]),
            }
        }
        RowId::HttpSingle1 | RowId::HttpSingle100 => {
            bench(args.http_events, &["--durable", "--http"])
        }
        RowId::HttpBatch1 | RowId::HttpBatch100 => bench(
            args.http_batch_events,
            &[
                "--durable",
                "--http",
                "--batch",
                "100",
                "--concurrency",
                "8",
            ],
        ),
        RowId::Memory => bench(args.memory_events, &[]),
        RowId::Reload => [
            "bench-reload",
            "--json",
            "--plugin",
            &plugin,
            "--swaps",
            "2",
            "--large-mib",
            "1",
            "--seconds",
            &args.reload_seconds.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        RowId::PeerSingle | RowId::PeerBatched => {
            if !abilities.peer {
                return None;
            }
            let (mode, events) = if row == RowId::PeerSingle {
                ("single", (args.peer_events / 10).max(1))
            } else {
                ("batched", args.peer_events)
            };
            let events = events.to_string();
            let flag = if row == RowId::PeerSingle {
                "--single-events"
            } else {
                "--events"
            };
            [
                "bench-sqlite-peer",
                "--json",
                "--mode",
                mode,
                flag,
                &events,
                "--batch",
                "100",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        }
    })
}

/// A line of `bench --json`.
#[derive(Deserialize)]
struct BenchLine {
    events_per_s: f64,
    cpu_us_per_event: f64,
    p99_us: u64,
    failed: u64,
}

/// A throughput line of `bench-reload --json` (its swap-latency lines have
/// no `case`).
#[derive(Deserialize)]
struct ReloadLine {
    case: String,
    ratio_to_steady: f64,
}

/// A line of `bench-sqlite-peer --json`.
#[derive(Deserialize)]
struct PeerLine {
    events_per_s: f64,
    cpu_us_per_event: f64,
}

/// The figure of `row` in a child's standard output.
pub(crate) fn parse(row: RowId, stdout: &str) -> anyhow::Result<Figure> {
    let mut lines = stdout.lines().filter(|l| l.trim_start().starts_with('{'));
    match row {
        RowId::Reload => {
            for line in lines {
                if let Ok(r) = serde_json::from_str::<ReloadLine>(line)
                    && r.case.starts_with("a swap every second, cache hit")
                {
                    return Ok(Figure {
                        value: r.ratio_to_steady,
                        cpu_us_per_event: None,
                        at_events_per_s: None,
                    });
                }
            }
            bail!("no line of bench-reload's output has the cache-hit swap case")
        }
        RowId::PeerSingle | RowId::PeerBatched => {
            let line = lines
                .next_back()
                .context("bench-sqlite-peer printed no row")?;
            let r: PeerLine =
                serde_json::from_str(line).context("cannot read bench-sqlite-peer's row")?;
            Ok(Figure {
                value: r.events_per_s,
                cpu_us_per_event: Some(r.cpu_us_per_event),
                at_events_per_s: None,
            })
        }
        _ => {
            let line = lines.next_back().context("bench printed no row")?;
            let r: BenchLine = serde_json::from_str(line).context("cannot read bench's row")?;
            if r.failed > 0 {
                bail!("{} deliveries failed", r.failed);
            }
            Ok(match row.unit() {
                Unit::P99Ms => Figure {
                    value: r.p99_us as f64 / 1000.0,
                    cpu_us_per_event: Some(r.cpu_us_per_event),
                    at_events_per_s: Some(r.events_per_s),
                },
                _ => Figure {
                    value: r.events_per_s,
                    cpu_us_per_event: Some(r.cpu_us_per_event),
                    at_events_per_s: None,
                },
            })
        }
    }
}

/// Runs `bin` with `args` and reads `row`'s figure from what it prints.
fn measure(bin: &Path, row: RowId, args: &[String]) -> Result<Figure, String> {
    let output = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figure = parse(row, &stdout).map_err(|e| format!("{e:#}"));
    if !output.status.success() {
        return Err(match figure {
            Err(e) => format!("exit {}: {e}", output.status),
            Ok(_) => format!("exit {}", output.status),
        });
    }
    figure
}

/// Runs the table.
pub async fn run(args: ThroughputArgs) -> anyhow::Result<std::process::ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("the runner's task failed")?
}

fn run_blocking(args: &ThroughputArgs) -> anyhow::Result<std::process::ExitCode> {
    let after_bin = match &args.after {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let mut rows: Vec<RowId> = if args.rows.is_empty() {
        RowId::ALL.to_vec()
    } else {
        args.rows.clone()
    };
    let needed: Vec<RowId> = rows.iter().filter_map(|r| r.throughput_row()).collect();
    rows.extend(needed);
    rows.sort();
    rows.dedup();

    let mut bins = vec![("after", after_bin.clone())];
    if let Some(before) = &args.before {
        bins.insert(0, ("before", before.clone()));
    }
    let abilities: Vec<Abilities> = if args.dry_run {
        bins.iter()
            .map(|_| Abilities {
                rate: true,
                peer: true,
            })
            .collect()
    } else {
        bins.iter()
            .map(|(_, bin)| Abilities::of(bin))
            .collect::<anyhow::Result<_>>()?
    };
    println!(
        "bench-throughput: {} run(s) per binary; events: durable 1 plugin {}, 100/1,000 tenants {} (ack rows half of each), HTTP single {}, HTTP batched {} (batches of 100, 8 in flight), in memory {}, hot swap {} s per phase, SQLite peer {} batched and {} single; 64 in flight unless said; load average {}",
        args.runs,
        args.durable_events,
        args.tenants_events,
        args.http_events,
        args.http_batch_events,
        args.memory_events,
        args.reload_seconds,
        args.peer_events,
        (args.peer_events / 10).max(1),
        crate::matrix::load_average()
    );
    for ((name, bin), abilities) in bins.iter().zip(&abilities) {
        println!(
            "{name}: {} ({})",
            bin.display(),
            match (abilities.rate, abilities.peer) {
                (true, true) => "has --rate and bench-sqlite-peer",
                (true, false) => "has --rate, no bench-sqlite-peer",
                (false, true) => "no --rate, has bench-sqlite-peer",
                (false, false) => "no --rate, no bench-sqlite-peer",
            }
        );
    }

    // cells[b][r]: binary b's figures for rows[r].
    let mut cells: Vec<Vec<Option<Cell>>> = vec![vec![None; rows.len()]; bins.len()];
    let started = std::time::Instant::now();
    for run in 0..args.runs {
        for (r, row) in rows.iter().enumerate() {
            let mut order: Vec<usize> = (0..bins.len()).collect();
            if run % 2 == 1 {
                order.reverse();
            }
            for b in order {
                let (name, bin) = &bins[b];
                // An ack row's rate: its throughput row's last figure of
                // this binary.
                let rate = row.throughput_row().and_then(|t| {
                    let t = rows.iter().position(|x| *x == t)?;
                    match &cells[b][t] {
                        Some(Cell::Measured(figures)) => figures.last().map(|f| f.value),
                        _ => None,
                    }
                });
                let cell = &mut cells[b][r];
                let Some(child) = command(*row, args, abilities[b], rate) else {
                    *cell = Some(Cell::Missing);
                    continue;
                };
                eprintln!(
                    "[{:>4.0} s] run {}/{}, {name}: {} — {} {}",
                    started.elapsed().as_secs_f64(),
                    run + 1,
                    args.runs,
                    row.label(),
                    bin.display(),
                    child.join(" ")
                );
                if args.dry_run {
                    continue;
                }
                match measure(bin, *row, &child) {
                    Ok(figure) => {
                        eprintln!("         {}", format_figure(row.unit(), &figure));
                        match cell {
                            Some(Cell::Measured(figures)) => figures.push(figure),
                            Some(Cell::Failed(_)) => {}
                            _ => *cell = Some(Cell::Measured(vec![figure])),
                        }
                    }
                    Err(e) => {
                        eprintln!("         failed: {e}");
                        *cell = Some(Cell::Failed(e));
                    }
                }
            }
        }
    }
    if args.dry_run {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let results: Vec<RowResult> = rows
        .iter()
        .enumerate()
        .map(|(r, row)| RowResult {
            row: *row,
            before: (bins.len() == 2).then(|| cells[0][r].clone().unwrap_or(Cell::Missing)),
            after: cells[bins.len() - 1][r].clone().unwrap_or(Cell::Missing),
        })
        .collect();
    println!(
        "\n{}",
        render(&results, abilities.first().is_some_and(|a| !a.rate))
    );
    println!(
        "took {:.0} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        crate::matrix::load_average()
    );
    let failed = results
        .iter()
        .any(|r| matches!(r.after, Cell::Failed(_)) || matches!(r.before, Some(Cell::Failed(_))));
    Ok(if failed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// A row's cells.
#[derive(Debug, Clone)]
pub(crate) struct RowResult {
    pub(crate) row: RowId,
    /// None without --before.
    pub(crate) before: Option<Cell>,
    pub(crate) after: Cell,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `12,345` for an integer figure.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::EventsPerS => thousands(value),
        Unit::P99Ms => format!("{value:.1} ms"),
        Unit::ShareOfSteady => format!("{:.0}%", value * 100.0),
    }
}

fn format_figure(unit: Unit, figure: &Figure) -> String {
    let mut text = format_value(unit, figure.value);
    if let Some(rate) = figure.at_events_per_s {
        text.push_str(&format!(" at {} events/s", thousands(rate)));
    }
    if let Some(cpu) = figure.cpu_us_per_event {
        text.push_str(&format!(", {cpu:.1} µs CPU/event"));
    }
    text
}

/// A cell's text: the range of its figures (and for an ack row the range
/// of the loads it was measured at).
fn format_cell(unit: Unit, cell: &Cell) -> String {
    let range = |values: Vec<f64>, format: &dyn Fn(f64) -> String| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if format(lo) == format(hi) {
            format(lo)
        } else {
            format!("{}–{}", format(lo), format(hi))
        }
    };
    match cell {
        Cell::Missing => "—".to_owned(),
        Cell::Failed(_) => "failed".to_owned(),
        Cell::Measured(figures) if figures.is_empty() => "—".to_owned(),
        Cell::Measured(figures) => {
            let mut text = range(figures.iter().map(|f| f.value).collect(), &|v| {
                format_value(unit, v)
            });
            let rates: Vec<f64> = figures.iter().filter_map(|f| f.at_events_per_s).collect();
            if !rates.is_empty() {
                text.push_str(&format!(" at {}/s", range(rates, &|v| thousands(v))));
            }
            text
        }
    }
}

fn cpu_cell(cell: &Cell) -> String {
    match cell {
        Cell::Measured(figures) => {
            let cpu: Vec<f64> = figures.iter().filter_map(|f| f.cpu_us_per_event).collect();
            median(&cpu).map_or_else(|| "—".to_owned(), |c| format!("{c:.1}"))
        }
        _ => "—".to_owned(),
    }
}

fn median_of(cell: &Cell) -> Option<f64> {
    match cell {
        Cell::Measured(figures) => median(&figures.iter().map(|f| f.value).collect::<Vec<_>>()),
        _ => None,
    }
}

/// The markdown table: with before cells, before, after and after ÷ before
/// (of the medians) side by side, and the CPU per event of each.
/// `before_lacks_rate` adds the footnote of the ack rows' before figures.
pub(crate) fn render(results: &[RowResult], before_lacks_rate: bool) -> String {
    let with_before = results.iter().any(|r| r.before.is_some());
    let mut out = String::new();
    if with_before {
        out.push_str("| path | target | before | after | after ÷ before | CPU µs/event before | after |\n|---|---:|---:|---:|---:|---:|---:|\n");
    } else {
        out.push_str("| path | target | measured | CPU µs/event |\n|---|---:|---:|---:|\n");
    }
    let mut footnotes = Vec::new();
    for r in results {
        let unit = r.row.unit();
        let mut label = r.row.label().to_owned();
        if unit == Unit::P99Ms && with_before && before_lacks_rate {
            label.push_str(" ¹");
        }
        for cell in std::iter::once(&r.after).chain(r.before.as_ref()) {
            if let Cell::Failed(e) = cell {
                footnotes.push(format!("{}: failed: {e}", r.row.label()));
            }
        }
        match &r.before {
            Some(before) => {
                let ratio = median_of(before)
                    .zip(median_of(&r.after))
                    .filter(|(b, _)| *b > 0.0)
                    .map_or_else(|| "—".to_owned(), |(b, a)| format!("{:.2}×", a / b));
                out.push_str(&format!(
                    "| {label} | {} | {} | {} | {ratio} | {} | {} |\n",
                    r.row.target(),
                    format_cell(unit, before),
                    format_cell(unit, &r.after),
                    cpu_cell(before),
                    cpu_cell(&r.after),
                ));
            }
            None => out.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                r.row.target(),
                format_cell(unit, &r.after),
                cpu_cell(&r.after),
            )),
        }
    }
    let mut notes = vec![
        "Events/s count until every plugin has handled every event; durable rows with fsync on. Ack rows: the p99 of the durable acknowledgement, publishing at half the events/s the row above measured with the same binary (`bench --durable --rate`), at the load shown. The hot-swap row is `bench-reload`'s cache-hit phase as a share of its steady phase. Peer rows: SQLite alone (`bench-sqlite-peer`, WAL, synchronous=FULL), no plugbus.".to_owned(),
    ];
    if with_before {
        notes.push("Cells show the range over the runs; the ratio is of the medians (for ack p99, lower is better). \"—\": the binary cannot measure the row.".to_owned());
    }
    if with_before && before_lacks_rate {
        notes.push("¹ The before binary has no `--rate`: its ack rows publish with 32 in flight instead of 64 (the closest it has to half the load), at the events/s shown.".to_owned());
    }
    notes.extend(footnotes);
    out.push('\n');
    out.push_str(&notes.join("\n\n"));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH_LINE: &str = r#"{"scenario":"1 plugin","backend":"sqlite","plugins":1,"events":20000,"deliveries":20000,"failed":0,"startup_ms":1451.775681,"startup_cached_ms":null,"memory_per_plugin_kib":17604,"events_per_s":2936.1934657252095,"deliveries_per_s":2936.1934657252095,"cpu_us_per_event":55.402840600000005,"server_cpu_us_per_event":null,"hosts":[],"p50_us":5191,"p99_us":333823,"p999_us":925695}"#;

    fn figure(value: f64, cpu: Option<f64>, at: Option<f64>) -> Figure {
        Figure {
            value,
            cpu_us_per_event: cpu,
            at_events_per_s: at,
        }
    }

    #[test]
    fn parses_a_bench_line_as_throughput_or_ack_latency() {
        let out = format!("some banner\n{BENCH_LINE}\n");
        let f = parse(RowId::Durable1, &out).expect("parses");
        assert!((f.value - 2936.19).abs() < 0.01);
        assert_eq!(f.at_events_per_s, None);
        let f = parse(RowId::Ack1, &out).expect("parses");
        assert!((f.value - 333.823).abs() < 1e-9);
        assert!((f.at_events_per_s.expect("the load") - 2936.19).abs() < 0.01);
        assert!((f.cpu_us_per_event.expect("CPU") - 55.4).abs() < 0.01);
    }

    #[test]
    fn a_bench_line_with_failed_deliveries_is_an_error() {
        let out = BENCH_LINE.replace(r#""failed":0"#, r#""failed":3"#);
        let e = parse(RowId::Memory, &out).expect_err("failed deliveries");
        assert!(e.to_string().contains("3 deliveries failed"), "{e}");
    }

    #[test]
    fn missing_or_broken_output_is_an_error() {
        assert!(parse(RowId::Durable1, "").is_err());
        assert!(parse(RowId::Durable1, "{\"events_per_s\": \"fast\"}").is_err());
        assert!(parse(RowId::PeerBatched, "").is_err());
        assert!(parse(RowId::Reload, "{\"component\":\"small\"}").is_err());
    }

    #[test]
    fn parses_the_cache_hit_phase_of_bench_reload() {
        let out = r#"{"component":"small","bytes":63736,"cache":"hit","swaps":2,"compile_ms":1.0,"median_ms":13.0,"p99_ms":14.0,"max_ms":14.0}
{"case":"steady, no swaps","events_per_s":189138.0,"swaps":0,"ratio_to_steady":1.0}
{"case":"a swap every second, cache hit","events_per_s":160055.0,"swaps":15,"ratio_to_steady":0.846}
{"case":"a swap every second, cache miss","events_per_s":166618.0,"swaps":15,"ratio_to_steady":0.881}
"#;
        let f = parse(RowId::Reload, out).expect("parses");
        assert_eq!(f.value, 0.846);
    }

    #[test]
    fn parses_the_peer_line() {
        let out = r#"{"mode":"batched","events":200,"batch":100,"events_per_s":123456.7,"cpu_us_per_event":3.5}"#;
        let f = parse(RowId::PeerBatched, out).expect("parses");
        assert_eq!(f.value, 123456.7);
        assert_eq!(f.cpu_us_per_event, Some(3.5));
    }

    #[test]
    fn renders_before_after_and_ratio() {
        let results = vec![
            RowResult {
                row: RowId::Durable1,
                before: Some(Cell::Measured(vec![
                    figure(32_000.0, Some(31.0), None),
                    figure(36_000.0, Some(29.0), None),
                ])),
                after: Cell::Measured(vec![
                    figure(150_000.0, Some(9.0), None),
                    figure(170_000.0, Some(8.0), None),
                ]),
            },
            RowResult {
                row: RowId::Ack1,
                before: Some(Cell::Measured(vec![figure(
                    12.0,
                    Some(30.0),
                    Some(20_000.0),
                )])),
                after: Cell::Measured(vec![figure(4.5, Some(9.0), Some(80_000.0))]),
            },
            RowResult {
                row: RowId::Reload,
                before: Some(Cell::Measured(vec![figure(0.846, None, None)])),
                after: Cell::Measured(vec![figure(0.97, None, None)]),
            },
            RowResult {
                row: RowId::PeerBatched,
                before: Some(Cell::Missing),
                after: Cell::Measured(vec![figure(250_000.0, Some(4.0), None)]),
            },
            RowResult {
                row: RowId::HttpSingle1,
                before: Some(Cell::Measured(vec![figure(7_000.0, Some(200.0), None)])),
                after: Cell::Failed("exit status: 2".to_owned()),
            },
        ];
        let table = render(&results, true);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| path | target | before | after | after ÷ before | CPU µs/event before | after |"
        );
        assert_eq!(
            lines[2],
            "| 1 plugin, durable | ≥ 150,000 | 32,000–36,000 | 150,000–170,000 | 4.71× | 30.0 | 8.5 |"
        );
        assert_eq!(
            lines[3],
            "| ack p99 at half load: 1 plugin ¹ | < 10 ms | 12.0 ms at 20,000/s | 4.5 ms at 80,000/s | 0.38× | 30.0 | 9.0 |"
        );
        assert_eq!(
            lines[4],
            "| throughput with a hot swap every second | ≥ 95% of steady | 85% | 97% | 1.15× | — | — |"
        );
        assert_eq!(
            lines[5],
            "| peer: SQLite alone, 100 events per transaction | (floor) | — | 250,000 | — | — | 4.0 |"
        );
        assert_eq!(
            lines[6],
            "| HTTP single-event, counted until handled: 1 plugin | ≥ 30,000 | 7,000 | failed | — | 200.0 | — |"
        );
        assert!(
            table.contains("¹ The before binary has no `--rate`"),
            "{table}"
        );
        assert!(
            table.contains(
                "HTTP single-event, counted until handled: 1 plugin: failed: exit status: 2"
            ),
            "{table}"
        );
    }

    #[test]
    fn renders_one_binary_without_ratio() {
        let results = vec![RowResult {
            row: RowId::Memory,
            before: None,
            after: Cell::Measured(vec![figure(1_234_567.0, Some(1.5), None)]),
        }];
        let table = render(&results, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| path | target | measured | CPU µs/event |");
        assert_eq!(
            lines[2],
            "| in-memory publish, 1 plugin, batched | ≥ 1,000,000 | 1,234,567 | 1.5 |"
        );
        assert!(!table.contains('¹'));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn an_ack_row_paces_at_half_its_throughput_or_halves_the_in_flight() {
        let args = ThroughputArgs {
            plugin: PathBuf::from("noop.wasm"),
            before: None,
            after: None,
            runs: 1,
            rows: Vec::new(),
            durable_events: 100_000,
            tenants_events: 40_000,
            http_events: 1,
            http_batch_events: 1,
            memory_events: 1,
            reload_seconds: 1,
            peer_events: 1,
            dry_run: true,
        };
        let with_rate = Abilities {
            rate: true,
            peer: false,
        };
        let old = Abilities {
            rate: false,
            peer: false,
        };
        let c = command(RowId::Ack100, &args, with_rate, Some(10_001.0)).expect("a command");
        let joined = c.join(" ");
        assert!(joined.contains("--rate 5001"), "{joined}");
        assert!(joined.contains("--events 20000"), "{joined}");
        assert!(joined.contains("--scenario hundred-tenants"), "{joined}");
        let c = command(RowId::Ack1, &args, old, Some(10_000.0)).expect("a command");
        assert!(c.join(" ").contains("--concurrency 32"));
        assert_eq!(command(RowId::PeerBatched, &args, old, None), None);
    }
}
