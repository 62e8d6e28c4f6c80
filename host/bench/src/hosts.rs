//! `plugbus-bench bench --durable --nats --hosts N`: N plugbus hosts, each
//! its own process, sharing one NATS log.
//!
//! Each host is a `plugbus-bench bench-host` process (hidden): it loads the
//! scenario's plugins, starts a [`DurableBus`] on the NATS log and, when
//! told, publishes its share of the events (every N-th batch) and delivers
//! for the plugins whose lease it holds, as `plugbus serve` would. Separate
//! processes, so that each host's CPU time is its own (read by the host
//! itself, from the moment it is told to go to the moment it is told to
//! stop) and nothing is shared but the NATS server, as between machines.
//! The HTTP layer is left out (as in the in-process rows): `bench --durable
//! --http` measures what it adds.
//!
//! The coordinator (this module's [`run`]) starts the server, creates the
//! streams and buckets once, starts the hosts, waits until the plugins'
//! leases are spread and have not moved for a while, then says `go` to
//! every host, sums the hosts' counts of handled deliveries until every
//! event is handled, and says `stop`. It publishes and delivers nothing
//! itself.
//!
//! The protocol, one line each: the host writes `ready`, then
//! `status <leases held> <deliveries handled since ready> <published 0/1>`
//! every 10 ms, then `done <json>` after `stop`; the coordinator writes `go`
//! and `stop`.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use plugbus::durable::{DurableBus, DurableConfig};
use plugbus::{Event, Host, HostConfig};
use serde::{Deserialize, Serialize};

use crate::bench::{BenchArgs, Row, Scenario};

/// How long the hosts' lease counts must stay unchanged before the run
/// starts: past two renewal rounds of the default 10 s lease (3.3 s each),
/// in which a lease being handed over would move.
const LEASES_STABLE: Duration = Duration::from_secs(8);

/// The arguments of the hidden `bench-host` subcommand: one host of a
/// `--hosts` run.
#[derive(clap::Args)]
pub struct HostArgs {
    /// The component every plugin runs.
    #[arg(long)]
    plugin: PathBuf,
    /// The scenario's layout.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The NATS server.
    #[arg(long)]
    nats_url: String,
    /// The log's prefix (made by the coordinator).
    #[arg(long)]
    prefix: String,
    /// Events of the whole run.
    #[arg(long)]
    events: u64,
    /// Events per publish.
    #[arg(long)]
    batch: u64,
    /// Publishes in flight on this host.
    #[arg(long)]
    concurrency: u32,
    /// Bytes of JSON payload per event.
    #[arg(long)]
    payload: u64,
    /// This host's number, from 0.
    #[arg(long)]
    index: u64,
    /// How many hosts there are.
    #[arg(long)]
    hosts: u64,
}

/// One host's figures, as it reports them at the end.
#[derive(Serialize, Deserialize, Clone)]
pub struct HostFigures {
    /// Events this host published.
    pub published: u64,
    /// Deliveries this host made (handled or failed).
    pub handled: u64,
    /// Of those, the failed ones.
    pub failed: u64,
    /// Leases it held when the run started.
    pub leases: u64,
    /// Its CPU time (user + system) from `go` to `stop`, in µs per event
    /// of the whole run.
    pub cpu_us_per_event: f64,
    /// Its CPU time per delivery it made (its share of ingest included).
    pub cpu_us_per_handled: Option<f64>,
    /// Its CPU time in seconds.
    cpu_s: f64,
    /// The latency of each of its publishes, in µs.
    latencies_us: Vec<u64>,
}

/// A host of a `--hosts` run: see the module's documentation.
pub async fn serve(args: HostArgs) -> anyhow::Result<std::process::ExitCode> {
    let component = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read the plugin {}", args.plugin.display()))?;
    let (dir, names) = crate::bench::plugins_dir(args.scenario, &component)?;
    let host = Arc::new(Host::new(HostConfig::default())?);
    let report = host.load_dir(dir.path())?;
    if let Some(error) = report.errors.first() {
        bail!("the plugin was refused: {error}");
    }
    // One event per tenant instantiates every plugin once (in memory, not
    // through the log), as in the in-process rows.
    for tenant in &names {
        host.publish(crate::bench::event(tenant, 0, args.payload as usize))
            .await?;
    }
    let log =
        crate::bench::open_nats(crate::bench::nats_config(&args.nats_url, &args.prefix)?).await?;
    let bus = Arc::new(
        DurableBus::start(
            host.clone(),
            Arc::new(log),
            DurableConfig {
                host_id: plugbus::durable::process_host_id(&format!("bench-host-{}", args.index)),
                ..DurableConfig::default()
            },
        )
        .await?,
    );
    let failures = |host: &Host| host.stats().failures.iter().map(|(_, n)| n).sum::<u64>();
    let made = |host: &Host| host.stats().deliveries_ok + failures(host);
    let before = made(&host);
    let failed_before = failures(&host);

    let (lines, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let say = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say("ready");
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => say(&format!("status {} {} 0", bus.held_leases().len(), made(&host) - before)),
            command = commands.recv() => match command.as_deref() {
                Some("go") => break,
                Some(_) => {}
                None => bail!("the coordinator went away before the run"),
            },
        }
    }
    let leases = bus.held_leases().len() as u64;
    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    let mut publishing = tokio::spawn(publish_share(bus.clone(), names, args_share(&args)));
    let mut published = None;
    loop {
        tokio::select! {
            _ = tick.tick() => say(&format!("status {} {} {}", bus.held_leases().len(), made(&host) - before, u8::from(published.is_some()))),
            done = &mut publishing, if published.is_none() => {
                published = Some(done.context("the publishing task failed")??);
            }
            command = commands.recv() => match command.as_deref() {
                Some("stop") => break,
                Some(_) => {}
                None => bail!("the coordinator went away during the run"),
            },
        }
    }
    let cpu = cpu
        .try_elapsed()
        .context("cannot read the process's CPU time")?
        .as_secs_f64();
    let (published, latencies_us) = match published {
        Some(published) => published,
        None => publishing.await.context("the publishing task failed")??,
    };
    let handled = made(&host) - before;
    let figures = HostFigures {
        published,
        handled,
        failed: failures(&host) - failed_before,
        leases,
        cpu_us_per_event: cpu * 1e6 / args.events as f64,
        cpu_us_per_handled: (handled > 0).then(|| cpu * 1e6 / handled as f64),
        cpu_s: cpu,
        latencies_us,
    };
    say(&format!("done {}", serde_json::to_string(&figures)?));
    Arc::try_unwrap(bus)
        .map_err(|_| anyhow::anyhow!("the bus is still shared after the run"))?
        .shutdown()
        .await;
    drop(dir);
    Ok(std::process::ExitCode::SUCCESS)
}

/// What one host publishes.
struct Share {
    events: u64,
    batch: u64,
    concurrency: usize,
    payload: usize,
    index: u64,
    hosts: u64,
}

fn args_share(args: &HostArgs) -> Share {
    Share {
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency.max(1) as usize,
        payload: args.payload as usize,
        index: args.index,
        hosts: args.hosts.max(1),
    }
}

/// Publishes every `hosts`-th batch of the run, starting with the
/// `index`th; the tenant of batch k is the (k mod tenants)th, as in the
/// in-process rows. Answers the events published and each publish's
/// latency in µs.
async fn publish_share(
    bus: Arc<DurableBus>,
    names: Vec<String>,
    share: Share,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let (bus, names, share) = (&bus, &names, &share);
    let batches = share.events.div_ceil(share.batch);
    let mut acks = futures::stream::iter((share.index..batches).step_by(share.hosts as usize))
        .map(|k| async move {
            let first = k * share.batch;
            let tenant = &names[k as usize % names.len()];
            let events: Vec<Event> = (first..(first + share.batch).min(share.events))
                .map(|i| crate::bench::event(tenant, i, share.payload))
                .collect();
            let count = events.len() as u64;
            let started = Instant::now();
            bus.publish(events).await?;
            anyhow::Ok((count, started.elapsed()))
        })
        .buffer_unordered(share.concurrency);
    let (mut published, mut latencies) = (0, Vec::new());
    while let Some(acked) = acks.next().await {
        let (count, latency) = acked?;
        published += count;
        latencies.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }
    Ok((published, latencies))
}

/// A host process as the coordinator sees it.
struct Running {
    child: Child,
    stdin: ChildStdin,
    ready: bool,
    leases: u64,
    handled: u64,
    published: bool,
    done: Option<HostFigures>,
}

impl Running {
    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .context("cannot write to a host process")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A host that did not finish (an error in the run) is not left
        // behind; one that did has exited already.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `scenario` on `hosts` host processes sharing one NATS log: see the
/// module's documentation.
pub async fn run(scenario: Scenario, hosts: u32, args: &BenchArgs) -> anyhow::Result<Row> {
    let (url, server) = crate::bench::nats_server(args.nats_url.as_deref())?;
    let prefix = crate::bench::fresh_prefix();
    // The streams and buckets, made once before the hosts start.
    let config = crate::bench::nats_config(&url, &prefix)?;
    tokio::task::spawn_blocking(move || plugbus::log_nats::NatsLog::open(config).map(drop))
        .await
        .context("opening the NATS log failed")??;
    let (tenants, per_tenant) = scenario.layout();
    let plugins = (tenants * per_tenant) as u64;

    let exe = std::env::current_exe().context("cannot find this program")?;
    let started = Instant::now();
    let (lines, mut heard) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut running = Vec::new();
    let concurrency = args.concurrency.div_ceil(hosts).max(1);
    for index in 0..hosts as usize {
        let mut child = Command::new(&exe)
            .arg("bench-host")
            .arg("--plugin")
            .arg(&args.plugin)
            .args([
                "--scenario",
                scenario.arg(),
                "--nats-url",
                &url,
                "--prefix",
                &prefix,
                "--events",
                &args.events.to_string(),
                "--batch",
                &args.batch.to_string(),
                "--concurrency",
                &concurrency.to_string(),
                "--payload",
                &args.payload.to_string(),
                "--index",
                &index.to_string(),
                "--hosts",
                &hosts.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stdin = child.stdin.take().context("the host's stdin")?;
        let stdout = child.stdout.take().context("the host's stdout")?;
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send((index, line)).is_err() {
                    break;
                }
            }
        });
        running.push(Running {
            child,
            stdin,
            ready: false,
            leases: 0,
            handled: 0,
            published: false,
            done: None,
        });
    }
    drop(lines);

    // Every host ready, and the leases spread and settled.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut counts: Vec<u64> = Vec::new();
    let mut since = Instant::now();
    loop {
        let (index, line) = next_line(&mut heard, deadline).await?;
        take(&mut running[index], &line)?;
        let now: Vec<u64> = running.iter().map(|r| r.leases).collect();
        if now != counts {
            counts = now;
            since = Instant::now();
        }
        let spread =
            hosts == 1 || (tenants * per_tenant) < hosts as usize || counts.iter().all(|c| *c > 0);
        if running.iter().all(|r| r.ready)
            && counts.iter().sum::<u64>() == plugins
            && spread
            && since.elapsed() >= LEASES_STABLE
        {
            break;
        }
    }
    let startup = started.elapsed();

    let expected = args.events * per_tenant as u64;
    let server_cpu = server
        .as_ref()
        .and_then(|s| crate::jetstream::process_cpu(s.pid()));
    let wall = Instant::now();
    for host in &mut running {
        host.tell("go")?;
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (index, line) = next_line(&mut heard, deadline).await?;
        take(&mut running[index], &line)?;
        if running.iter().all(|r| r.published)
            && running.iter().map(|r| r.handled).sum::<u64>() >= expected
        {
            break;
        }
    }
    let wall = wall.elapsed();
    let server_cpu = server
        .as_ref()
        .and_then(|s| crate::jetstream::process_cpu(s.pid()))
        .zip(server_cpu)
        .map(|(after, before)| after.saturating_sub(before));
    for host in &mut running {
        host.tell("stop")?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.iter().any(|r| r.done.is_none()) {
        let (index, line) = next_line(&mut heard, deadline).await?;
        take(&mut running[index], &line)?;
    }
    for host in &mut running {
        let status = host.child.wait().context("a host process")?;
        if !status.success() {
            bail!("a host process ended with {status}");
        }
    }
    drop(server);

    let figures: Vec<HostFigures> = running.iter_mut().filter_map(|r| r.done.take()).collect();
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .context("cannot create the latency histogram")?;
    for latency in figures.iter().flat_map(|f| &f.latencies_us) {
        latencies.saturating_record((*latency).max(1));
    }
    let deliveries: u64 = figures.iter().map(|f| f.handled).sum();
    let cpu: f64 = figures.iter().map(|f| f.cpu_s).sum();
    let seconds = wall.as_secs_f64().max(f64::EPSILON);
    Ok(Row {
        scenario: scenario.name(),
        backend: "nats",
        plugins: plugins as usize,
        events: args.events,
        deliveries,
        failed: figures.iter().map(|f| f.failed).sum(),
        startup_ms: startup.as_secs_f64() * 1000.0,
        startup_cached_ms: None,
        memory_per_plugin_kib: None,
        events_per_s: args.events as f64 / seconds,
        deliveries_per_s: deliveries as f64 / seconds,
        cpu_us_per_event: cpu * 1e6 / args.events as f64,
        server_cpu_us_per_event: server_cpu.map(|c| c.as_secs_f64() * 1e6 / args.events as f64),
        hosts: figures,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
    })
}

/// The next line of any host, or an error when all have gone quiet or the
/// deadline passed.
async fn next_line(
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
    deadline: Instant,
) -> anyhow::Result<(usize, String)> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, heard.recv()).await {
        Ok(Some(line)) => Ok(line),
        Ok(None) => bail!("every host process ended early (see their errors above)"),
        Err(_) => bail!("the host processes did not get there in time"),
    }
}

/// Takes in one line of a host.
fn take(host: &mut Running, line: &str) -> anyhow::Result<()> {
    if line == "ready" {
        host.ready = true;
    } else if let Some(status) = line.strip_prefix("status ") {
        let mut fields = status.split(' ').map(str::parse::<u64>);
        if let (Some(Ok(leases)), Some(Ok(handled)), Some(Ok(published))) =
            (fields.next(), fields.next(), fields.next())
        {
            host.leases = leases;
            host.handled = handled;
            host.published = published == 1;
        }
    } else if let Some(done) = line.strip_prefix("done ") {
        host.done = Some(serde_json::from_str(done).context("a host's figures")?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_lines_are_taken_in() {
        let child = Command::new("true")
            .stdin(Stdio::piped())
            .spawn()
            .expect("`true` runs");
        let mut host = Running {
            stdin: Command::new("true")
                .stdin(Stdio::piped())
                .spawn()
                .ok()
                .and_then(|mut c| c.stdin.take())
                .expect("a pipe"),
            child,
            ready: false,
            leases: 0,
            handled: 0,
            published: false,
            done: None,
        };
        take(&mut host, "ready").expect("ready");
        take(&mut host, "status 34 1200 1").expect("a status");
        assert!(host.ready && host.published);
        assert_eq!((host.leases, host.handled), (34, 1200));
        // A line cut short changes nothing.
        take(&mut host, "status 35").expect("a partial status");
        assert_eq!(host.leases, 34);
        take(
            &mut host,
            r#"done {"published":5,"handled":6,"failed":0,"leases":1,"cpu_us_per_event":2.0,"cpu_us_per_handled":3.0,"cpu_s":0.5,"latencies_us":[7,8]}"#,
        )
        .expect("the figures");
        assert_eq!(host.done.as_ref().map(|d| d.latencies_us.len()), Some(2));
        assert!(take(&mut host, "done {").is_err());
    }
}
