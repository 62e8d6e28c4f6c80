//! `plugbus-bench bench-jetstream`: JetStream alone, with no plugbus, as
//! the baseline the NATS backend is measured against. A small async-nats
//! client publishes the same events `bench --durable --nats` publishes (the
//! same CloudEvents JSON, the same message ids, the same stream settings:
//! file storage, a 24-hour duplicate window, direct get) in batches, and
//! one durable pull consumer per plugin of each tenant reads them back and
//! acknowledges them (AckAll every 128 messages, with a double ack), as a
//! hand-written consumer would. Events/s counts from the first publish
//! to the last acknowledged read; latency is a batch's, from its publish
//! to the last publish acknowledgement, as `bench --durable` reports it.
//! The consumers do not parse the events: this is the engine's cost, with
//! nothing on top.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;

use crate::bench::Scenario;

/// The arguments of `bench-jetstream`: those of `bench --durable --nats`
/// that shape the events, with the same defaults.
#[derive(Debug, clap::Args)]
pub struct JetStreamArgs {
    /// A NATS server with JetStream to measure against; without it, a
    /// nats-server from PATH (or PLUGBUS_NATS_SERVER) is started for each
    /// scenario on a free loopback port with a temporary store, and its
    /// CPU time is reported too.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// The layouts: a subject per tenant, a durable consumer per plugin.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-plugin,hundred-tenants"
    )]
    pub scenario: Vec<Scenario>,
    /// Events published per scenario.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Events per publish (each published alone, then all their
    /// acknowledgements awaited, as the NATS log's append does).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: u32,
    /// Bytes of JSON payload per event.
    #[arg(long, default_value_t = 256)]
    pub payload: u64,
}

/// One row of the baseline.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) scenario: &'static str,
    pub(crate) events_per_s: f64,
    pub(crate) client_cpu_us_per_event: f64,
    pub(crate) server_cpu_us_per_event: Option<f64>,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
}

/// What one measurement publishes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) events: u64,
    pub(crate) batch: u64,
    pub(crate) concurrency: u32,
    pub(crate) payload: u64,
}

/// Runs the baseline and prints its rows.
pub async fn run(args: JetStreamArgs) -> anyhow::Result<std::process::ExitCode> {
    let load = Load {
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        payload: args.payload,
    };
    let mut rows = Vec::new();
    for scenario in &args.scenario {
        rows.push(measure(*scenario, load, args.nats_url.as_deref()).await?);
    }
    print_rows(&load, &rows);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Publishes and consumes `load` laid out as `scenario` on JetStream
/// alone; a server of its own unless `url` names one.
pub(crate) async fn measure(
    scenario: Scenario,
    load: Load,
    url: Option<&str>,
) -> anyhow::Result<Measured> {
    let (url, server) = crate::bench::nats_server(url)?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let js = jetstream::new(client);
    // A stream of its own, made afresh, so that runs do not see each other.
    let _ = js.delete_stream("jsbench_events").await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "jsbench_events".to_owned(),
            subjects: vec!["jsbench.events.*".to_owned()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(24 * 60 * 60),
            allow_direct: true,
            ..Default::default()
        })
        .await
        .context("cannot create the stream")?;
    let tenants = crate::bench::tenant_names(scenario);
    let consumers_per_tenant = scenario.layout().1;
    let per_tenant = expected_per_tenant(load.events, load.batch, tenants.len());
    let mut consumers = Vec::new();
    for (tenant, expected) in tenants.iter().zip(per_tenant) {
        for p in 0..consumers_per_tenant {
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some(format!("{tenant}-{p:02}")),
                    filter_subject: format!("jsbench.events.{tenant}"),
                    ack_policy: jetstream::consumer::AckPolicy::All,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create a consumer of {tenant}"))?;
            consumers.push((consumer, expected));
        }
    }
    let server_cpu = server.as_ref().and_then(|s| process_cpu(s.pid()));
    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    let wall = Instant::now();
    let consumers: Vec<_> = consumers
        .into_iter()
        .map(|(consumer, expected)| tokio::spawn(consume(consumer, expected)))
        .collect();
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .context("cannot create the latency histogram")?;
    let (js_ref, tenants_ref) = (&js, &tenants);
    let mut acks = futures::stream::iter((0..load.events).step_by(load.batch as usize))
        .map(|first| async move {
            let tenant = &tenants_ref[(first / load.batch) as usize % tenants_ref.len()];
            let started = Instant::now();
            let mut pending = Vec::new();
            for i in first..(first + load.batch).min(load.events) {
                let event = crate::bench::event(tenant, i, load.payload as usize);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    plugbus::log_nats::names::ingest_id(tenant, event.source(), event.id())
                        .as_str(),
                );
                pending.push(
                    js_ref
                        .publish_with_headers(
                            format!("jsbench.events.{tenant}"),
                            headers,
                            event.to_json_string().into(),
                        )
                        .await?,
                );
            }
            for ack in pending {
                ack.await?;
            }
            anyhow::Ok(started.elapsed())
        })
        .buffer_unordered(load.concurrency as usize);
    while let Some(latency) = acks.next().await {
        let micros = u64::try_from(latency?.as_micros()).unwrap_or(u64::MAX);
        latencies.saturating_record(micros.max(1));
    }
    drop(acks);
    for consumer in consumers {
        consumer.await.context("a consumer panicked")??;
    }
    let wall = wall.elapsed().as_secs_f64().max(f64::EPSILON);
    let cpu = cpu
        .try_elapsed()
        .context("cannot read the process's CPU time")?;
    let server_cpu = match (server.as_ref(), server_cpu) {
        (Some(s), Some(before)) => process_cpu(s.pid()).map(|after| after.saturating_sub(before)),
        _ => None,
    };
    js.delete_stream("jsbench_events")
        .await
        .context("cannot delete the stream")?;
    drop(server);
    Ok(Measured {
        scenario: scenario.name(),
        events_per_s: load.events as f64 / wall,
        client_cpu_us_per_event: cpu.as_secs_f64() * 1e6 / load.events as f64,
        server_cpu_us_per_event: server_cpu.map(|s| s.as_secs_f64() * 1e6 / load.events as f64),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

/// Reads `expected` events from one consumer as they come (a pull
/// consumer's message stream, 128 messages per pull), acknowledging every
/// 128th and the last with a double ack (AckAll): the acknowledgement of a
/// batch, as a plugin's commit is.
async fn consume(
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    expected: u64,
) -> anyhow::Result<()> {
    if expected == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(128)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
    let mut seen = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("a pulled message: {e}"))?;
        seen += 1;
        if seen % 128 == 0 || seen == expected {
            message
                .double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        if seen == expected {
            return Ok(());
        }
    }
    anyhow::bail!("the consumer's messages ended after {seen} of {expected}")
}

/// How many of `events`, published in batches of `batch` round-robin over
/// `tenants`, each tenant gets.
fn expected_per_tenant(events: u64, batch: u64, tenants: usize) -> Vec<u64> {
    let mut counts = vec![0; tenants];
    let mut first = 0;
    while first < events {
        let index = (first / batch) as usize % tenants;
        counts[index] += (first + batch).min(events) - first;
        first += batch;
    }
    counts
}

/// A process's user and system CPU time so far (Linux), from
/// `/proc/<pid>/stat`.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ, 100 on every Linux plugbus runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn print_rows(load: &Load, rows: &[Measured]) {
    println!(
        "JetStream alone: {} events per scenario, {} per publish, {} publishes in flight, {}-byte payloads",
        load.events, load.batch, load.concurrency, load.payload
    );
    println!(
        "| scenario | events/s | client CPU µs/event | server CPU µs/event | publish p50 µs | publish p99 µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for m in rows {
        println!(
            "| {} | {:.0} | {:.1} | {} | {} | {} |",
            m.scenario,
            m.events_per_s,
            m.client_cpu_us_per_event,
            m.server_cpu_us_per_event
                .map_or_else(|| "—".to_owned(), |c| format!("{c:.1}")),
            m.p50_us,
            m.p99_us
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_round_robin_over_tenants() {
        assert_eq!(expected_per_tenant(10, 3, 2), vec![6, 4]);
        assert_eq!(expected_per_tenant(5, 10, 3), vec![5, 0, 0]);
        assert_eq!(expected_per_tenant(0, 1, 1), vec![0]);
    }
}
