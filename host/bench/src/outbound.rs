//! `plugbus-bench bench-outbound`: what an outbound HTTP request from a
//! plugin costs (issue 18), against a local HTTP server started here.
//!
//! - **Per request**: the `http-probe` fixture handles events that send no
//!   request and events that send one `POST`; the difference is what one
//!   request costs a delivery. Beside it, a native client (ureq) sends the
//!   same request, once on a new connection each time (as the host does:
//!   it keeps no connections between requests) and once on a kept-alive
//!   one. All are medians and p99 of alternating rounds in one run.
//! - **Webhook**: the `webhook-notify` example, which posts one alert per
//!   event with a secret bearer token, handles `--events` events, one at a
//!   time and then `--concurrency` at a time: events/s and the p50/p99 of a
//!   delivery.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plugbus::secrets::{SecretName, SecretValue, Secrets, TenantSecrets};
use plugbus::{Event, Host, HostConfig};

/// Arguments of `plugbus-bench bench-outbound`.
#[derive(clap::Args)]
pub struct OutboundArgs {
    /// The `http-probe` fixture (`target/guests/wasm32-wasip2/release/fixture_http_probe.wasm`).
    #[arg(long, value_name = "FILE")]
    probe: PathBuf,

    /// The `webhook-notify` example (`target/guests/wasm32-wasip2/release/webhook_notify.wasm`).
    #[arg(long, value_name = "FILE")]
    webhook: PathBuf,

    /// Requests measured per path (plugbus, native on new connections,
    /// native kept alive).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    requests: u32,

    /// Events the webhook handler handles, one at a time and then
    /// `--concurrency` at a time.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    events: u32,

    /// Deliveries under way at once in the concurrent webhook run.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
}

/// The local server: answers every request with 200 and a short body.
struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

async fn start_server() -> anyhow::Result<Server> {
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Server { addr, requests })
}

/// A host serving `wasm` as plugin `p` of tenant `t`, with `manifest`,
/// allowed to call `origin` (on loopback), with the secret
/// `webhook_token`.
fn host(
    wasm: &[u8],
    manifest: &str,
    origin: &str,
) -> anyhow::Result<(Arc<Host>, tempfile::TempDir)> {
    let plugins = tempfile::tempdir()?;
    let tenant = plugins.path().join("t");
    std::fs::create_dir(&tenant)?;
    std::fs::write(tenant.join("p.toml"), manifest)?;
    std::fs::write(tenant.join("p.wasm"), wasm)?;
    let mut config = HostConfig::default();
    config.outbound.allow_private = vec!["127.0.0.1/32".parse()?];
    config
        .outbound
        .tenant_ceilings
        .insert("t".to_owned(), vec![origin.parse()?]);
    let mut secrets = Secrets::new();
    secrets.insert(
        SecretName::parse("webhook_token")?,
        SecretValue::new("bench-token".to_owned())?,
    );
    let mut tenants = TenantSecrets::new();
    tenants.insert("t", secrets);
    config.secrets = tenants;
    let host = Arc::new(Host::new(config)?);
    let report = host.load_dir(plugins.path())?;
    if let Some(error) = report.errors.first() {
        bail!("the plugin does not load: {error}");
    }
    Ok((host, plugins))
}

fn event(id: String, ty: &str, data: serde_json::Value) -> anyhow::Result<Event> {
    Ok(Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/bench",
        "type": ty,
        "tenant": "t",
        "datacontenttype": "application/json",
        "data": data,
    }))?)
}

/// Delivers `event` and returns the delivery's time; fails unless handled.
async fn deliver(host: &Host, event: Event) -> anyhow::Result<Duration> {
    let report = host.publish(event).await?;
    let Some(delivery) = report.deliveries.first() else {
        bail!("no delivery: the plugin is not subscribed");
    };
    if !delivery.outcome.is_handled() {
        bail!("the delivery failed: {:?}", delivery.outcome);
    }
    Ok(delivery.duration)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and p99 of `v`, in µs.
fn summary(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (us(quantile(&v, 0.5)), us(quantile(&v, 0.99)))
}

/// Runs the benchmark.
pub async fn run(args: OutboundArgs) -> anyhow::Result<std::process::ExitCode> {
    let server = start_server().await?;
    let origin = format!("http://{}", server.addr);
    let url = format!("{origin}/hook");
    let body = "x".repeat(64);

    // Per request: plugbus (the probe with and without one request) and
    // native clients, in alternating rounds.
    let probe = std::fs::read(&args.probe)
        .with_context(|| format!("cannot read {}", args.probe.display()))?;
    let manifest = format!(
        "subscribe = [\"probe\"]\n[limits]\nfuel = 1000000000\n[http]\nallow = [{origin:?}]\n"
    );
    let (probe_host, _probe_dir) = host(&probe, &manifest, &origin)?;
    let none = serde_json::json!({"requests": []});
    let one = serde_json::json!({"requests": [{"method": "POST", "url": url, "body": body}]});
    let fresh_agent = || {
        ureq::Agent::config_builder()
            .max_idle_connections(0)
            .build()
            .new_agent()
    };
    let kept = ureq::Agent::new_with_defaults();
    let (mut without, mut with, mut native_fresh, mut native_kept) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Warm up: the first instance, the first connection.
    deliver(&probe_host, event("warm-0".into(), "probe", one.clone())?).await?;
    for i in 0..args.requests {
        without.push(deliver(&probe_host, event(format!("n-{i}"), "probe", none.clone())?).await?);
        with.push(deliver(&probe_host, event(format!("o-{i}"), "probe", one.clone())?).await?);
        let (u, b) = (url.clone(), body.clone());
        let agent = fresh_agent();
        native_fresh.push(
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                agent
                    .post(&u)
                    .send(b.as_str())?
                    .into_body()
                    .read_to_string()?;
                Ok::<_, ureq::Error>(started.elapsed())
            })
            .await??,
        );
        let (u2, b2, agent2) = (url.clone(), body.clone(), kept.clone());
        native_kept.push(
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                agent2
                    .post(&u2)
                    .send(b2.as_str())?
                    .into_body()
                    .read_to_string()?;
                Ok::<_, ureq::Error>(started.elapsed())
            })
            .await??,
        );
    }
    let (without, with) = (summary(without), summary(with));
    let (fresh, kept_alive) = (summary(native_fresh), summary(native_kept));
    println!(
        "| path ({} requests each) | median µs | p99 µs |\n|---|---:|---:|",
        args.requests
    );
    println!(
        "| plugbus: a delivery sending no request | {:.1} | {:.1} |",
        without.0, without.1
    );
    println!(
        "| plugbus: a delivery sending one POST | {:.1} | {:.1} |",
        with.0, with.1
    );
    println!(
        "| plugbus: one request (the difference of the medians) | {:.1} | |",
        with.0 - without.0
    );
    println!(
        "| native (ureq), a new connection per request | {:.1} | {:.1} |",
        fresh.0, fresh.1
    );
    println!(
        "| native (ureq), one kept-alive connection | {:.1} | {:.1} |",
        kept_alive.0, kept_alive.1
    );
    println!(
        "| plugbus's overhead per request over native on a new connection | {:.1} | |",
        with.0 - without.0 - fresh.0
    );
    drop(probe_host);

    // The webhook handler.
    let webhook = std::fs::read(&args.webhook)
        .with_context(|| format!("cannot read {}", args.webhook.display()))?;
    let manifest = format!(
        "subscribe = [\"inventory.low_stock\"]\n[config]\nwebhook_url = {url:?}\n\
         [http]\nallow = [{origin:?}]\n[secrets]\ngrant = [\"webhook_token\"]\n"
    );
    let (webhook_host, _webhook_dir) = host(&webhook, &manifest, &origin)?;
    let low = |i: u64| {
        event(
            format!("w-{i}"),
            "inventory.low_stock",
            serde_json::json!({"sku": format!("sku-{}", i % 100), "quantity": 3, "threshold": 10}),
        )
    };
    deliver(&webhook_host, low(0)?).await?;
    let before = server.requests.load(Ordering::Relaxed);
    let events = u64::from(args.events);
    let started = Instant::now();
    let mut sequential = Vec::new();
    for i in 1..=events {
        sequential.push(deliver(&webhook_host, low(i)?).await?);
    }
    let sequential_rate = events as f64 / started.elapsed().as_secs_f64();

    let next = Arc::new(AtomicU64::new(events + 1));
    let last = 2 * events;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (host, next) = (webhook_host.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > last {
                    return Ok::<_, anyhow::Error>(times);
                }
                times.push(deliver(&host, low(i)?).await?);
            }
        }));
    }
    let mut concurrent = Vec::new();
    for task in tasks {
        concurrent.extend(task.await??);
    }
    let concurrent_rate = events as f64 / started.elapsed().as_secs_f64();
    let received = server.requests.load(Ordering::Relaxed) - before;
    if received != 2 * events {
        bail!(
            "the server received {received} webhook requests for {} events",
            2 * events
        );
    }
    let (seq, conc) = (summary(sequential), summary(concurrent));
    println!(
        "\n| webhook-notify, one POST per event ({} events) | events/s | p50 µs | p99 µs |\n|---|---:|---:|---:|",
        args.events
    );
    println!(
        "| one at a time | {sequential_rate:.0} | {:.1} | {:.1} |",
        seq.0, seq.1
    );
    println!(
        "| {} at a time | {concurrent_rate:.0} | {:.1} | {:.1} |",
        args.concurrency, conc.0, conc.1
    );
    Ok(std::process::ExitCode::SUCCESS)
}
