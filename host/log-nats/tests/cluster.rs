//! The NATS log on a three-node JetStream cluster with every stream and
//! bucket replicated three times: one node is killed (SIGKILL) in the
//! middle of a stream of appends and of commits, and restarted. Nothing
//! acknowledged is lost, and nothing is applied twice.
//!
//! An appender appends events in batches, retrying a failed batch with
//! the same events (their ingest ids make the retry a duplicate), and
//! records every acknowledged position. A driver, as a plugin's consumer
//! does, reads past its cursor and commits each batch with its effects: a
//! per-key counter in the plugin's state (read, + 1, write) and one
//! emitted event per handled event, under a lease. On a failed commit it
//! forgets the batch, reads its cursor again (which finishes a commit a
//! failure left half-applied) and goes on from there. One test kills the
//! node that leads the events stream, the other the one that leads the
//! commits bucket. Each prints how long appends and commits stalled.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use plugbus_core::event::Event;
use plugbus_core::state::{StateStore, StateWrite};
use plugbus_log::{
    Commit, CursorStore, EventStore, LeaseGrant, LeaseKey, LeaseStore, LeaseTerms, StoredEvent,
};
use plugbus_log_nats::{NatsLog, NatsLogConfig};
use plugbus_nats_server::NatsCluster;

const TENANT: &str = "acme";
/// The tenant the driver's emitted events go to (so that it does not read
/// them back as work).
const SINK: &str = "sink";
const PLUGIN: &str = "counter";
const KEYS: usize = 7;
const BATCHES: usize = 60;
const BATCH: usize = 25;
/// How many events the driver handles per commit, at most.
const READ: usize = 40;
/// How long the whole run may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(300);

/// Which node is killed.
#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The leader of the events stream.
    EventsLeader,
    /// The leader of the commits bucket's stream.
    CommitsLeader,
}

#[test]
fn killing_the_events_stream_leader_loses_nothing_and_applies_nothing_twice() {
    run(Victim::EventsLeader);
}

#[test]
fn killing_the_commits_bucket_leader_loses_nothing_and_applies_nothing_twice() {
    run(Victim::CommitsLeader);
}

/// The event number `i` of the stream.
fn event(i: usize) -> Event {
    let key = i % KEYS;
    Event::from_json(&format!(
        r#"{{"specversion":"1.0","id":"e{i}","source":"/cluster","type":"t","tenant":"{TENANT}","data":{{"key":"k{key}","n":{i}}}}}"#
    ))
    .expect("a valid event")
}

/// The key an event counts for.
fn key_of(event: &Event) -> String {
    let data: serde_json::Value = serde_json::from_slice(event.data()).expect("json data");
    data["key"].as_str().expect("a key").to_owned()
}

/// The event the driver emits for a handled one.
fn emit_for(handled: &Event) -> Event {
    Event::builder(SINK, format!("emit-{}", handled.id()), "/driver", "handled")
        .data(handled.id().as_bytes().to_vec())
        .build()
        .expect("a valid event")
}

/// When calls succeeded and failed, to tell how long a failover stalled
/// them.
#[derive(Debug, Default)]
struct Timeline {
    /// (when the call ended, whether it succeeded), in order.
    calls: Vec<(Instant, bool)>,
    /// The longest a single successful call took.
    slowest_ok: Duration,
}

impl Timeline {
    fn note(&mut self, started: Instant, ok: bool) {
        let now = Instant::now();
        if ok {
            self.slowest_ok = self.slowest_ok.max(now - started);
        }
        self.calls.push((now, ok));
    }

    fn failures(&self) -> usize {
        self.calls.iter().filter(|(_, ok)| !ok).count()
    }

    /// From `at` to the first success that ended after it.
    fn first_success_after(&self, at: Instant) -> Option<Duration> {
        self.calls
            .iter()
            .find(|(when, ok)| *ok && *when > at)
            .map(|(when, _)| *when - at)
    }

    /// The longest time between two successes in a row.
    fn longest_gap(&self) -> Duration {
        let oks: Vec<Instant> = self
            .calls
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(when, _)| *when)
            .collect();
        oks.windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// Leader lookups through a client of the test's own.
struct Admin {
    runtime: tokio::runtime::Runtime,
    js: jetstream::Context,
}

impl Admin {
    fn connect(cluster: &NatsCluster) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let js = runtime
            .block_on(async {
                async_nats::ConnectOptions::new()
                    .connect(cluster.urls())
                    .await
                    .map(jetstream::new)
            })
            .expect("connect");
        Self { runtime, js }
    }

    /// The server name of the leader of `stream`.
    fn leader(&self, stream: &str) -> String {
        self.runtime
            .block_on(async {
                let mut stream = self.js.get_stream(stream).await?;
                let info = stream.info().await?;
                Ok::<_, Box<dyn std::error::Error>>(info.cluster.clone().and_then(|c| c.leader))
            })
            .expect("the stream's info")
            .expect("a leader")
    }
}

fn run(victim: Victim) {
    let mut cluster = NatsCluster::start(3);
    let log = Arc::new(
        NatsLog::open(NatsLogConfig {
            servers: cluster.urls(),
            replicas: 3,
            ..NatsLogConfig::default()
        })
        .expect("open the log on the cluster"),
    );
    let admin = Admin::connect(&cluster);
    let started = Instant::now();
    let deadline = started + PATIENCE;

    // The appender.
    let batches_done = Arc::new(AtomicU64::new(0));
    let appended_all = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let append_times = Arc::new(Mutex::new(Timeline::default()));
    let appender = {
        let (log, batches_done, appended_all, acked, times) = (
            log.clone(),
            batches_done.clone(),
            appended_all.clone(),
            acked.clone(),
            append_times.clone(),
        );
        std::thread::spawn(move || {
            for b in 0..BATCHES {
                let events: Vec<Event> = (b * BATCH..(b + 1) * BATCH).map(event).collect();
                loop {
                    assert!(Instant::now() < deadline, "appends did not recover");
                    let call = Instant::now();
                    match log.append(events.clone()).wait() {
                        Ok(appended) => {
                            times.lock().expect("lock").note(call, true);
                            let mut acked = acked.lock().expect("lock");
                            for (event, a) in events.iter().zip(appended) {
                                acked.entry(event.id().to_owned()).or_default().push(a.seq);
                            }
                            break;
                        }
                        Err(e) => {
                            times.lock().expect("lock").note(call, false);
                            eprintln!("append of batch {b} failed, retrying it: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                batches_done.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
            appended_all.store(true, Ordering::SeqCst);
        })
    };

    // The driver.
    let commits_done = Arc::new(AtomicU64::new(0));
    let commit_times = Arc::new(Mutex::new(Timeline::default()));
    let driver = {
        let (log, appended_all, acked, commits_done, times) = (
            log.clone(),
            appended_all.clone(),
            acked.clone(),
            commits_done.clone(),
            commit_times.clone(),
        );
        std::thread::spawn(move || {
            drive(&log, &appended_all, &acked, &commits_done, &times, deadline)
        })
    };

    // Mid-stream: kill the victim, let both go on through the failover,
    // then bring it back.
    wait_for("a third of the appends", deadline, || {
        batches_done.load(Ordering::SeqCst) >= (BATCHES / 3) as u64
            && commits_done.load(Ordering::SeqCst) >= 3
    });
    let stream = match victim {
        Victim::EventsLeader => log.stream_name().to_owned(),
        Victim::CommitsLeader => "KV_plugbus_commits".to_owned(),
    };
    let leader = admin.leader(&stream);
    let meta = cluster.meta_leader();
    let index = cluster.index_of(&leader).expect("a node of the cluster");
    let (batches_before, commits_before) = (
        batches_done.load(Ordering::SeqCst),
        commits_done.load(Ordering::SeqCst),
    );
    let killed_at = Instant::now();
    cluster.kill(index);
    eprintln!(
        "killed {leader}, the leader of {stream} (meta leader: {meta:?}), after {batches_before} \
         batches appended and {commits_before} commits"
    );
    wait_for("appends and commits after the kill", deadline, || {
        batches_done.load(Ordering::SeqCst) >= batches_before + 5
            && commits_done.load(Ordering::SeqCst) >= commits_before + 5
    });
    let restarted_at = Instant::now();
    cluster.restart(index);
    eprintln!(
        "restarted {leader} after {:?} down; healthy again {:?} later",
        restarted_at - killed_at,
        restarted_at.elapsed()
    );

    appender.join().expect("the appender");
    let handled = driver.join().expect("the driver");
    let appends = append_times.lock().expect("lock");
    let commits = commit_times.lock().expect("lock");
    eprintln!(
        "{victim:?}: {} events in {:?}; appends: {} failed, first success {:?} after the kill, \
         longest gap between successes {:?}, slowest success {:?}; commits: {} failed, first \
         success {:?} after the kill, longest gap {:?}, slowest success {:?}",
        BATCHES * BATCH,
        started.elapsed(),
        appends.failures(),
        appends.first_success_after(killed_at),
        appends.longest_gap(),
        appends.slowest_ok,
        commits.failures(),
        commits.first_success_after(killed_at),
        commits.longest_gap(),
        commits.slowest_ok,
    );

    check(&log, &acked.lock().expect("lock"), handled);
}

/// Waits until `done`, at most until `deadline`.
fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "not reached in time: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Retries `call` until it succeeds (a request may fail while the cluster
/// elects a leader).
fn retry<T, E: std::fmt::Display>(
    what: &str,
    deadline: Instant,
    mut call: impl FnMut() -> Result<T, E>,
) -> T {
    loop {
        match call() {
            Ok(value) => return value,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: {e}");
                eprintln!("{what} failed, trying again: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The driver: handles every event of the tenant, as a plugin's consumer
/// does, until every appended event is handled. Answers how many events
/// it handled in commits that succeeded.
fn drive(
    log: &NatsLog,
    appended_all: &AtomicBool,
    acked: &Mutex<HashMap<String, Vec<u64>>>,
    commits_done: &AtomicU64,
    times: &Mutex<Timeline>,
    deadline: Instant,
) -> usize {
    let terms = LeaseTerms {
        ttl: Duration::from_secs(600),
        margin: Duration::from_secs(1),
    };
    let key = LeaseKey::new(TENANT, PLUGIN);
    let epoch = match retry("take the lease", deadline, || {
        log.acquire(&key, "driver", terms).wait()
    }) {
        LeaseGrant::Held { epoch, .. } => epoch,
        refused @ LeaseGrant::Refused { .. } => panic!("the lease is free: {refused:?}"),
    };
    let mut handled = 0;
    loop {
        assert!(Instant::now() < deadline, "the driver did not finish");
        // Where to go on from: read again after every failure, which
        // applies a commit left half-done.
        let cursor = retry("read the cursor", deadline, || log.cursor(TENANT, PLUGIN));
        let events: Vec<StoredEvent> = retry("read past the cursor", deadline, || {
            log.read(TENANT, cursor.unwrap_or(0), READ)
        });
        let Some(last) = events.last().map(|e| e.seq) else {
            let done = appended_all.load(Ordering::SeqCst);
            let newest = acked
                .lock()
                .expect("lock")
                .values()
                .flatten()
                .max()
                .copied();
            if done && cursor >= newest {
                return handled;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        // Handle the batch: read each key's counter once, count on.
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        let mut state = Vec::new();
        let mut emitted = Vec::new();
        let mut failed = false;
        for stored in &events {
            let key = key_of(&stored.event);
            if !counters.contains_key(&key) {
                match log.get(TENANT, PLUGIN, &key) {
                    Ok(value) => {
                        let n = value.map_or(0, |v| {
                            String::from_utf8(v)
                                .expect("text")
                                .parse()
                                .expect("a number")
                        });
                        counters.insert(key.clone(), n);
                    }
                    Err(e) => {
                        eprintln!("reading the state failed, handling the batch again: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            let n = counters.get_mut(&key).expect("read above");
            *n += 1;
            state.push(StateWrite {
                key,
                value: Some(n.to_string().into_bytes()),
            });
            emitted.push(emit_for(&stored.event));
        }
        if failed {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let call = Instant::now();
        let committed = log
            .commit(Commit {
                tenant: TENANT.into(),
                plugin: PLUGIN.into(),
                cursor: last,
                expected: cursor,
                emitted,
                state,
                lease: Some(epoch),
                ..Commit::default()
            })
            .wait();
        match committed {
            Ok(committed) => {
                times.lock().expect("lock").note(call, true);
                assert!(
                    committed.cursor_moved,
                    "the only consumer's cursor moved as expected from {cursor:?} to {last}"
                );
                handled += events.len();
                commits_done.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                times.lock().expect("lock").note(call, false);
                eprintln!("a commit up to {last} failed, handling from the cursor again: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Every acknowledged event is stored once, at its acknowledged position,
/// as appended; every one was counted and emitted for exactly once; the
/// cursor is at the end.
fn check(log: &NatsLog, acked: &HashMap<String, Vec<u64>>, handled: usize) {
    let total = BATCHES * BATCH;
    assert_eq!(acked.len(), total, "every batch was acknowledged");
    let stored = read_all(log, TENANT);
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    for event in &stored {
        if let Some(first) = seq_of.insert(event.event.id().to_owned(), event.seq) {
            panic!(
                "{} stored twice: at {first} and {}",
                event.event.id(),
                event.seq
            );
        }
    }
    let by_seq: HashMap<u64, &StoredEvent> = stored.iter().map(|e| (e.seq, e)).collect();
    for i in 0..total {
        let appended = event(i);
        let seqs = &acked[appended.id()];
        assert!(
            seqs.windows(2).all(|w| w[0] == w[1]),
            "{} acknowledged at different positions: {seqs:?}",
            appended.id()
        );
        let found = by_seq
            .get(&seqs[0])
            .unwrap_or_else(|| panic!("{} lost: nothing at {}", appended.id(), seqs[0]));
        assert_eq!(
            found.event.to_json_string(),
            appended.to_json_string(),
            "the event at {}",
            seqs[0]
        );
    }
    assert_eq!(
        stored.len(),
        total,
        "nothing stored beyond what was appended"
    );

    // Effects once: the counters, the emitted events, the cursor.
    for k in 0..KEYS {
        let key = format!("k{k}");
        let expected = (0..total).filter(|i| i % KEYS == k).count();
        let counted: usize = log
            .get(TENANT, PLUGIN, &key)
            .expect("read the state")
            .map(|v| {
                String::from_utf8(v)
                    .expect("text")
                    .parse()
                    .expect("a number")
            })
            .unwrap_or(0);
        assert_eq!(counted, expected, "the counter of {key}");
    }
    let emits = read_all(log, SINK);
    let mut times_emitted: HashMap<&str, usize> = HashMap::new();
    for emit in &emits {
        *times_emitted.entry(emit.event.id()).or_default() += 1;
    }
    for i in 0..total {
        let id = format!("emit-e{i}");
        assert_eq!(
            times_emitted.get(id.as_str()).copied().unwrap_or(0),
            1,
            "{id} emitted once"
        );
    }
    assert_eq!(emits.len(), total, "one emit per event, none other");
    let newest = stored.iter().map(|e| e.seq).max().expect("events");
    assert_eq!(log.cursor(TENANT, PLUGIN).expect("cursor"), Some(newest));
    eprintln!(
        "checked: {total} events stored once each, {handled} handled in successful commits, \
         {} emits, counters exact, cursor at {newest}",
        emits.len()
    );
}

/// Every event of `tenant`, in order.
fn read_all(log: &NatsLog, tenant: &str) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read(tenant, after, 500).expect("read");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.seq;
        all.extend(page);
    }
}
