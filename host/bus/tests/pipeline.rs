//! A consumer hands its commit to the log and delivers the next events
//! while the commit is made durable (one commit in flight). These tests
//! run real fixture components over a log whose commits answer late, and
//! fail one of them, and check what must hold whatever the timing:
//! - a plugin that writes state reads, in each delivery, what the
//!   deliveries before it wrote (no update lost to a commit in flight);
//! - a failed commit with the next deliveries made meanwhile starts the
//!   consumer again at its last durable cursor: every event is handled,
//!   and its effects are stored exactly once (the deliveries made while
//!   the failed commit was in flight are not committed).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugbus_bus::{DurableBus, DurableConfig};
use plugbus_core::event::Event;
use plugbus_core::state::StateStore;
use plugbus_log::{
    Appended, Commit, Committed, CursorStore, DeadLetter, DeadLetterDepths, DeadLetterStore,
    EventLog, EventStore, InspectStore, LeaseStore, LogError, MemoryLog, Page, Pruned, Quarantine,
    QuarantineChange, QuarantineStore, ReadLimit, Reply, Retention, StateEntry, StateQuery,
    StoredEvent,
};
use plugbus_runtime::{Host, HostConfig};

/// How late every commit is answered (and made): long enough that the
/// consumer goes on to read and deliver meanwhile.
const LATE: Duration = Duration::from_millis(30);

/// A log whose commits are made and answered [`LATE`], on a thread of
/// their own, and whose `fail`-th commit carrying emitted events or state
/// (counted from 1) fails without storing anything, like a disk error.
struct LateLog {
    log: Arc<dyn EventLog>,
    fail: u32,
    /// Commits carrying effects so far.
    with_effects: AtomicU32,
    /// Commits failed.
    failed: Arc<AtomicU32>,
    /// Commits made and not answered yet.
    pending: Arc<AtomicU32>,
    /// Reads while a commit was pending.
    reads_while_pending: AtomicU32,
}

impl LateLog {
    fn new(fail: u32) -> Self {
        Self {
            log: Arc::new(MemoryLog::new()),
            fail,
            with_effects: AtomicU32::new(0),
            failed: Arc::default(),
            pending: Arc::default(),
            reads_while_pending: AtomicU32::new(0),
        }
    }
}

impl StateStore for LateLog {
    fn get(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, plugbus_core::state::StateError> {
        self.log.get(tenant, plugin, key)
    }

    fn apply(
        &self,
        tenant: &str,
        plugin: &str,
        writes: &[plugbus_core::state::StateWrite],
    ) -> Result<(), plugbus_core::state::StateError> {
        self.log.apply(tenant, plugin, writes)
    }
}

impl EventStore for LateLog {
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>> {
        self.log.append(events)
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.reads_while_pending.fetch_add(1, Ordering::SeqCst);
        }
        self.log.read_bounded(tenant, after, limit)
    }

    fn count_after(&self, tenant: &str, after: u64, limit: u64) -> Result<u64, LogError> {
        self.log.count_after(tenant, after, limit)
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<u64>, LogError> {
        self.log.first_since(tenant, at_ms)
    }

    fn head(&self) -> Result<u64, LogError> {
        self.log.head()
    }

    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned> {
        self.log.prune(retention, live)
    }
}

impl CursorStore for LateLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<u64>, LogError> {
        self.log.cursor(tenant, plugin)
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<u64>, LogError> {
        self.log.ahead(tenant, plugin)
    }

    fn commit(&self, commit: Commit) -> Reply<Committed> {
        let effects = !commit.emitted.is_empty() || !commit.state.is_empty();
        let fails = effects && self.with_effects.fetch_add(1, Ordering::SeqCst) + 1 == self.fail;
        let (answer, reply) = Reply::channel();
        let (log, failed, pending) = (self.log.clone(), self.failed.clone(), self.pending.clone());
        pending.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            std::thread::sleep(LATE);
            let committed = if fails {
                failed.fetch_add(1, Ordering::SeqCst);
                Err(LogError::Store {
                    path: "late".into(),
                    reason: "a test's disk error".to_owned(),
                })
            } else {
                log.commit(commit).wait()
            };
            pending.fetch_sub(1, Ordering::SeqCst);
            answer.send(committed);
        });
        reply
    }
}

impl DeadLetterStore for LateLog {
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        self.log.dead_letters(tenant, plugin)
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        self.log.dead_letter_plugins(tenant)
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: u64) -> Reply<bool> {
        self.log.discard_dead_letter(tenant, plugin, seq)
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: u64) -> Reply<bool> {
        self.log.request_redrive(tenant, plugin, seq)
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        self.log.redrives(tenant, plugin, limit)
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.log.dead_letter_depths()
    }
}

impl QuarantineStore for LateLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        self.log.set_quarantine(change)
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        self.log.quarantines()
    }
}

impl LeaseStore for LateLog {}

impl InspectStore for LateLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        self.log.state_entries(tenant, plugin, query)
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<u64>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        self.log.emitted(tenant, plugin, before, limit)
    }
}

/// A plugins directory with `shop/<name>` the component at `wasm`, under
/// `manifest`.
fn plugins(name: &str, wasm: &str, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenant = dir.path().join("shop");
    std::fs::create_dir_all(&tenant).expect("tenant dir");
    std::fs::copy(wasm, tenant.join(format!("{name}.wasm"))).expect("copy the component");
    std::fs::write(tenant.join(format!("{name}.toml")), manifest).expect("manifest");
    dir
}

/// A bus over `log` with the plugins of `dir`.
async fn start(dir: &tempfile::TempDir, log: Arc<LateLog>) -> DurableBus {
    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    let report = host.load_dir(dir.path()).expect("load");
    assert!(report.errors.is_empty(), "{report:#?}");
    DurableBus::start(host, log, DurableConfig::default())
        .await
        .expect("start the bus")
}

fn event(ty: &str, id: &str, subject: &str, data: serde_json::Value) -> Event {
    Event::from_json_value(serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/pos/store-12",
        "type": ty,
        "tenant": "shop",
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }))
    .expect("a valid event")
}

/// Publishes `n` events made by `make`, one publish each, a moment
/// apart, so that they reach the consumer over many rounds; answers the
/// position of the last.
async fn publish_one_by_one(bus: &DurableBus, n: u64, make: impl Fn(u64) -> Event) -> u64 {
    let mut head = 0;
    for i in 1..=n {
        let appended = bus.publish(vec![make(i)]).await.expect("publish");
        head = appended.last().expect("appended").seq;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    head
}

/// Waits until `done` holds (the consumer works in the background).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cursor(log: &LateLog, plugin: &str) -> u64 {
    log.cursor("shop", plugin).expect("cursor").unwrap_or(0)
}

/// Every event of type `ty` in the log, in order.
fn logged(log: &LateLog, ty: &str) -> Vec<Event> {
    log.log
        .read("shop", 0, 100_000)
        .expect("read the log")
        .into_iter()
        .map(|s| s.event)
        .filter(|e| e.ty() == ty)
        .collect()
}

/// The counter counts the events of one subject in its state, one
/// delivery after another while commits answer late, and one commit
/// fails: the count is the number of events, and the counts it emitted
/// are 1, 2, 3, … once each. A delivery that read the count before the
/// previous delivery's commit landed would lose an update (a count
/// repeated, the total short); a commit made after the failed one would
/// store a count twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_read_after_the_writes_before_it_with_commits_in_flight() {
    let dir = plugins(
        "counter",
        plugbus_artifacts::FIXTURE_COUNTER,
        "subscribe = [\"count.*\"]",
    );
    let log = Arc::new(LateLog::new(3));
    let bus = start(&dir, log.clone()).await;
    let n = 40;
    let head = publish_one_by_one(&bus, n, |i| {
        event("count.ok", &format!("c-{i}"), "s", serde_json::json!({}))
    })
    .await;
    until("the counter is past the events", || {
        cursor(&log, "counter") >= head
    })
    .await;
    bus.shutdown().await;
    assert_eq!(log.failed.load(Ordering::SeqCst), 1, "one commit failed");
    let count: u64 = log
        .get("shop", "counter", "count/s")
        .expect("state")
        .map(|bytes| serde_json::from_slice(&bytes).expect("a count"))
        .expect("a count");
    assert_eq!(count, n, "every event counted once");
    let counted: Vec<u64> = logged(&log, "counter.counted")
        .iter()
        .map(|e| serde_json::from_slice(e.data()).expect("a count"))
        .collect();
    assert_eq!(counted, (1..=n).collect::<Vec<_>>());
}

/// A plugin without state is delivered while its commits are in flight;
/// one commit fails: the consumer starts again at its last durable
/// cursor, and every event's emitted event is stored exactly once: none
/// skipped (the failed commit's events delivered again), none twice (the
/// deliveries made while it was in flight not committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_in_flight_redelivers_from_the_last_durable_cursor() {
    let dir = plugins(
        "mixed",
        plugbus_artifacts::FIXTURE_MIXED,
        "subscribe = [\"mix.*\"]\n[limits]\nfuel = 20_000_000\n",
    );
    let log = Arc::new(LateLog::new(2));
    let bus = start(&dir, log.clone()).await;
    let n = 40;
    let head = publish_one_by_one(&bus, n, |i| {
        event(
            "mix.emit",
            &format!("m-{i}"),
            &format!("k-{}", i % 3),
            serde_json::json!(i),
        )
    })
    .await;
    let emitted = Arc::new(Mutex::new(Vec::new()));
    until(
        "every event is handled and its emitted event stored",
        || {
            let all = logged(&log, "mix.emitted");
            let done = cursor(&log, "mixed") >= head && all.len() as u64 >= n;
            *emitted.lock().unwrap_or_else(PoisonError::into_inner) = all;
            done
        },
    )
    .await;
    bus.shutdown().await;
    assert_eq!(log.failed.load(Ordering::SeqCst), 1, "one commit failed");
    assert!(
        log.reads_while_pending.load(Ordering::SeqCst) > 0,
        "the consumer never read while a commit was in flight: nothing was pipelined"
    );
    let mut payloads: Vec<u64> = logged(&log, "mix.emitted")
        .iter()
        .map(|e| serde_json::from_slice(e.data()).expect("a number"))
        .collect();
    // Per key, in order.
    for key in 0..3 {
        let of_key: Vec<u64> = payloads.iter().copied().filter(|i| i % 3 == key).collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(of_key, sorted, "key {key} out of order");
    }
    payloads.sort_unstable();
    assert_eq!(
        payloads,
        (1..=n).collect::<Vec<_>>(),
        "each event's effects once"
    );
}
