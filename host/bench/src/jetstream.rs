//! `plugbus-bench bench-jetstream`: JetStream alone, with no plugbus, as
//! the baseline the NATS backend is measured against. A small async-nats
//! client publishes the same events `bench --durable --nats` publishes (the
//! same CloudEvents JSON, the same message ids, the same stream settings:
//! file storage, a 24-hour duplicate window, direct get) in batches, and
//! one durable pull consumer per tenant reads them back and acknowledges
//! them (AckAll on the last of each fetched batch, with a double ack), as
//! a hand-written consumer would. Events/s counts from the first publish
//! to the last acknowledged read; latency is a batch's, from its publish
//! to the last publish acknowledgement, as `bench --durable` reports it.
//! The consumers do not parse the events: this is the engine's cost, with
//! nothing on top.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;

/// The arguments of `bench-jetstream`.
#[derive(Debug, clap::Args)]
pub struct JetStreamArgs {
    /// A NATS server with JetStream to measure against; without it, a
    /// nats-server from PATH (or PLUGBUS_NATS_SERVER) is started on a
    /// free loopback port with a temporary store, and its CPU time is
    /// reported too.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Events to publish.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per publish (each published alone, then all their
    /// acknowledgements awaited).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Tenants the events are spread over (a subject and a consumer each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tenants: u64,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub concurrency: u64,
    /// The size of each event's data, in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: u64,
}

/// One row of the table.
#[derive(Debug)]
struct Measured {
    events_per_s: f64,
    client_cpu_us_per_event: f64,
    server_cpu_us_per_event: Option<f64>,
    p50_us: u64,
    p99_us: u64,
}

/// Runs the baseline and prints its row.
pub async fn run(args: JetStreamArgs) -> anyhow::Result<std::process::ExitCode> {
    let server = match &args.nats {
        Some(_) => None,
        None => Some(plugbus_nats_server::NatsServer::start()),
    };
    let url = args
        .nats
        .clone()
        .or_else(|| server.as_ref().map(plugbus_nats_server::NatsServer::url))
        .context("no NATS server")?;
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
    let tenants: Vec<String> = (0..args.tenants)
        .map(|t| format!("tenant-{t:05}"))
        .collect();
    let per_tenant = expected_per_tenant(args.events, args.batch, tenants.len());
    let server_cpu = server.as_ref().map(|s| process_cpu(s.pid()));
    let cpu = cpu_time::ProcessTime::try_now().context("cannot read the process's CPU time")?;
    let wall = Instant::now();
    let mut consumers = Vec::new();
    for (tenant, expected) in tenants.iter().zip(per_tenant) {
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(tenant.clone()),
                filter_subject: format!("jsbench.events.{tenant}"),
                ack_policy: jetstream::consumer::AckPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the consumer of {tenant}"))?;
        consumers.push(tokio::spawn(consume(consumer, expected)));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .context("cannot create the latency histogram")?;
    let (js_ref, tenants_ref) = (&js, &tenants);
    let mut acks = futures::stream::iter((0..args.events).step_by(args.batch as usize))
        .map(|first| async move {
            let tenant = &tenants_ref[(first / args.batch) as usize % tenants_ref.len()];
            let started = Instant::now();
            let mut pending = Vec::new();
            for i in first..(first + args.batch).min(args.events) {
                let event = crate::bench::event(tenant, i, args.payload as usize);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{tenant}/{}/{}", event.source(), event.id()).as_str(),
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
        .buffer_unordered(args.concurrency as usize);
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
        (Some(s), Some(Some(before))) => process_cpu(s.pid()).map(|after| after - before),
        _ => None,
    };
    js.delete_stream("jsbench_events")
        .await
        .context("cannot delete the stream")?;
    let measured = Measured {
        events_per_s: args.events as f64 / wall,
        client_cpu_us_per_event: cpu.as_secs_f64() * 1e6 / args.events as f64,
        server_cpu_us_per_event: server_cpu.map(|s| s.as_secs_f64() * 1e6 / args.events as f64),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    };
    print_row(&args, &measured);
    Ok(std::process::ExitCode::SUCCESS)
}

/// Reads `expected` events from one tenant's consumer, acknowledging each
/// fetched batch with a double ack of its last message (AckAll).
async fn consume(
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    expected: u64,
) -> anyhow::Result<()> {
    let mut seen = 0;
    while seen < expected {
        let mut batch = consumer
            .fetch()
            .max_messages(128)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        let mut last = None;
        while let Some(message) = batch.next().await {
            last = Some(message.map_err(|e| anyhow::anyhow!("a fetched message: {e}"))?);
            seen += 1;
        }
        if let Some(last) = last {
            last.double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
    }
    Ok(())
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
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ, 100 on every Linux plugbus runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn print_row(args: &JetStreamArgs, m: &Measured) {
    println!(
        "JetStream alone: {} events, {} tenants, batches of {}, {} in flight",
        args.events, args.tenants, args.batch, args.concurrency
    );
    println!(
        "| events/s | client CPU µs/event | server CPU µs/event | batch p50 µs | batch p99 µs |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.1} | {} | {} | {} |",
        m.events_per_s,
        m.client_cpu_us_per_event,
        m.server_cpu_us_per_event
            .map_or_else(|| "—".to_owned(), |c| format!("{c:.1}")),
        m.p50_us,
        m.p99_us
    );
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
