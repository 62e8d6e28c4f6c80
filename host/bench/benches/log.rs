//! The durable log's append throughput: events per second through group
//! commit, with each commit fsynced (the default) and left to the OS, for
//! one appender and for 64 concurrent appenders of one event each, and for
//! appends of 100 events at once (an HTTP batch).
//!
//! Criterion's iteration is one event, so the time it reports is the cost
//! per event and its reciprocal the throughput.
//!
//! Run with `cargo bench -p plugbus --bench log`, then print the table with
//! `cargo xtask bench-table log`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use plugbus::Event;
use plugbus::log::{Durability, EventStore, SqliteLog, SqliteLogConfig};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A point-of-sale event with a 256-byte JSON payload and a fresh id.
fn event() -> Event {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": format!("evt-{id}"),
        "source": "/pos/store-12/terminal-3",
        "type": "order.placed",
        "subject": "order-123",
        "time": "2026-11-25T10:00:00Z",
        "datacontenttype": "application/json",
        "tenant": "acme-pos",
        "data": { "order": "order-123", "lines": "x".repeat(200), "total": 1299 },
    }))
    .expect("a valid event")
}

/// Appends `iters` events from `appenders` threads, `per_append` events per
/// request, and returns the elapsed time.
fn run(log: &SqliteLog, iters: u64, appenders: usize, per_append: usize) -> Duration {
    let requests = (iters as usize).div_ceil(per_append);
    let batches: Vec<Vec<Event>> = (0..requests)
        .map(|_| (0..per_append).map(|_| event()).collect())
        .collect();
    let next = std::sync::Mutex::new(batches.into_iter());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..appenders {
            scope.spawn(|| {
                loop {
                    let batch = next
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some(batch) = batch else { break };
                    log.append(batch).wait().expect("append");
                }
            });
        }
    });
    started.elapsed()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log");
    for (name, durability) in [("fsync", Durability::Fsync), ("os", Durability::Os)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SqliteLogConfig {
            durability,
            ..SqliteLogConfig::default()
        };
        let log = SqliteLog::open(dir.path(), config).expect("open the log");
        for (input, appenders, per_append) in [
            ("1 appender", 1, 1),
            ("64 appenders", 64, 1),
            ("batches of 100", 4, 100),
        ] {
            group.bench_function(BenchmarkId::new(name, input), |b| {
                b.iter_custom(|iters| run(&log, iters, appenders, per_append));
            });
        }
        let stats = log.stats();
        eprintln!(
            "{name}: {} events in {} commits ({:.1} requests per commit)",
            stats.appended,
            stats.commits,
            stats.requests as f64 / stats.commits.max(1) as f64
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    targets = append
}
criterion_main!(benches);
