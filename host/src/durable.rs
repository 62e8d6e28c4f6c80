//! Durable delivery: events are published into the [`EventLog`] and every
//! plugin consumes its tenant's events from its own durable cursor, at
//! least once, in order, with retries and dead letters.
//!
//! - `publish` returns once the events are durable (the log groups commits).
//! - Each loaded plugin has a consumer: it reads its tenant's events after
//!   its cursor, delivers the ones it subscribes to (in batches, stopping
//!   at the first failure), and commits in one transaction the new cursor,
//!   the events the successful deliveries emitted, and the dead letters.
//!   A restarted host resumes every plugin at its cursor; what was
//!   delivered but not committed is delivered again (at least once).
//! - A failed delivery that may succeed later (`retryable`, a trap, a
//!   timeout, fuel or memory exhausted) is retried with exponential
//!   backoff and jitter, and holds back the plugin's later events until it
//!   succeeds or has used its attempts; then it becomes a dead letter with
//!   every attempt's failure. A `permanent` failure is a dead letter at once.
//! - A plugin whose last `quarantine_after` deliveries all failed is
//!   quarantined: paused for `quarantine_for`, or until a new version is
//!   loaded or [`DurableBus::resume`] is called. Its events wait.
//! - A plugin without a cursor starts at the end of the log: it sees the
//!   events published after it was loaded; with `start = "earliest"` in its
//!   manifest, at the beginning.
//! - A chain of events holds its budget through the log: a delivery may
//!   cause at most the event's `chainbudget` (the host's
//!   `max_events_per_chain` for an event published from outside), shared
//!   equally among the tenant's plugins that subscribe to its type.
//! - A consumer holds at most [`MAX_PENDING`] events and
//!   [`DurableConfig::max_pending_bytes`] bytes read ahead of its cursor,
//!   and reads at most [`DurableConfig::max_read_bytes`] at once.
//! - Every task of the bus (each consumer, retention, the reload watcher)
//!   is supervised: one that stops for any reason but shutdown or its
//!   plugin's unloading is logged, counted
//!   (`plugbus_consumer_restarts_total{tenant,plugin}`,
//!   `plugbus_task_restarts_total{task}`) and restarted after
//!   [`restart_backoff`]; a restarted consumer resumes at its cursor.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::dispatch::Item;
use crate::event::Event;
use crate::host::Host;
use crate::log::{
    Appended, Attempt, Commit, DeadLetter, DeadLetterDepths, EventLog, LogError, LogHealth,
    QuarantineChange, ReadLimit, Retention, Seq, StoredEvent, now_ms,
};
use crate::{Delivery, EventError, Outcome};

/// The longest wait the bus computes a deadline for, about 30 years: a
/// longer quarantine or backoff (up to `Duration::MAX`) ends at this
/// horizon instead of overflowing.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `wait` after `now`, saturating: waits past [`MAX_WAIT`] end at it.
fn deadline(now: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    now.checked_add(wait.min(MAX_WAIT))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 60 * 60)))
        .unwrap_or(now)
}

/// The wait before a supervised task that stopped unexpectedly is
/// restarted, for its `restarts`-th restart in a row (0 for the first):
/// 100 ms, doubling each time, at most 30 s. A task that ran for a minute
/// before it stopped starts the count again.
pub fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(restarts))
        .min(Duration::from_secs(30))
}

/// A delivery's share of its event's chain budget: `budget` split among
/// the `subscribers` plugins the event reaches (at least one), so that
/// many subscribers cannot multiply a chain.
pub fn budget_share(budget: usize, subscribers: usize) -> usize {
    budget / subscribers.max(1)
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries of one event before it becomes a dead letter, the first
    /// included (default 5).
    pub max_attempts: u32,
    /// The wait before the first retry (default 100 ms); each retry waits
    /// twice as long as the one before, up to `max_backoff`, and a random
    /// half of each wait is jitter. Any value is safe (waits saturate at
    /// [`MAX_WAIT`]); sensible ones are 1 ms to a minute.
    pub base_backoff: Duration,
    /// The longest wait between two attempts (default 30 s). Any value is
    /// safe (saturating at [`MAX_WAIT`]); sensible ones are up to a day.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1 for the first).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
        let full = self
            .base_backoff
            .saturating_mul(doubling)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter = std::collections::hash_map::RandomState::new().hash_one(failures);
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(jitter % nanos.max(1))
    }
}

/// The settings of durable delivery.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// How failed deliveries are retried.
    pub retry: RetryPolicy,
    /// The most events a consumer reads (and delivers) at once (default 128).
    pub read_batch: usize,
    /// The most bytes of events (their stored CloudEvents JSON) one
    /// consumer holds read ahead of its cursor: events waiting behind a
    /// failing event of their key, and those about to be delivered
    /// (default 64 MiB per plugin). At the bound the consumer stops
    /// reading until some are finished; with nothing held it still reads
    /// one event, however large, so an event above the bound is delivered.
    /// Alongside it, at most [`MAX_PENDING`] events are held.
    pub max_pending_bytes: u64,
    /// The most bytes of events one read of the log returns (default
    /// 8 MiB), events the plugin does not subscribe to included: the
    /// memory a consumer needs for one read, whatever the events' size.
    pub max_read_bytes: u64,
    /// After this many failed deliveries in a row a plugin is quarantined:
    /// paused instead of burning fuel on every event (default 20; 0 never).
    pub quarantine_after: u32,
    /// How long a quarantine lasts unless a new version of the plugin is
    /// loaded or [`DurableBus::resume`] ends it first (default 5 minutes).
    /// Its events wait in the log meanwhile; none is dropped. Any value is
    /// safe: one past [`MAX_WAIT`] (about 30 years) lasts that long, in
    /// effect until resumed or replaced.
    pub quarantine_for: Duration,
    /// How long the log keeps events (default: 7 days, no size bound); an
    /// event a loaded plugin has not finished with is always kept.
    pub retention: Retention,
    /// How often retention runs (default every minute); held between
    /// 1 s and 1 day.
    pub retention_interval: Duration,
}

pub use crate::log::Quarantine;

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            read_batch: 128,
            max_pending_bytes: 64 * 1024 * 1024,
            max_read_bytes: 8 * 1024 * 1024,
            quarantine_after: 20,
            quarantine_for: Duration::from_secs(5 * 60),
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 24 * 60 * 60)),
                max_bytes: None,
            },
            retention_interval: Duration::from_secs(60),
        }
    }
}

/// Why a durable publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum DurablePublishError {
    /// An event is invalid; none of the events was stored.
    #[error("invalid event {index}: {error}")]
    InvalidEvent {
        /// Its position in the published batch.
        index: usize,
        /// What is wrong with it.
        error: EventError,
    },
    /// The log could not store the events; none was stored.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Applies the retention policy every `retention_interval`, keeping every
/// event a loaded plugin has not finished with. Ends (`Ok`) at once when
/// there is no retention policy; otherwise runs until aborted.
async fn retain(inner: Arc<Inner>) -> Result<(), String> {
    let retention = inner.config.retention;
    if retention == Retention::default() {
        return Ok(());
    }
    let period = inner
        .config
        .retention_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(24 * 60 * 60));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let live = inner
            .host
            .plugins()
            .into_iter()
            .map(|p| (p.tenant, p.name))
            .collect();
        match inner.log.prune(retention, live).await {
            Ok(pruned) => {
                if pruned.deleted > 0 {
                    tracing::info!(deleted = pruned.deleted, "retention deleted old events");
                }
                if pruned.held_back {
                    tracing::warn!(
                        "the event log is over its size limit, but the oldest events are not yet handled by every plugin"
                    );
                }
            }
            Err(e) => tracing::error!("retention failed: {e}"),
        }
    }
}

/// Starts a consumer for every plugin the host loads, and when the host's
/// reload events were missed, for every plugin it has. `events` is the
/// first run's receiver, subscribed before the first consumers started; a
/// restarted watcher subscribes again and looks at every plugin, since
/// loads may have happened while it was down. Ends (`Ok`) when the host
/// stops sending reload events.
async fn watch_reloads(
    inner: Arc<Inner>,
    events: Option<broadcast::Receiver<crate::ReloadEvent>>,
) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = match events {
        Some(events) => events,
        None => {
            let events = inner.host.reload_events();
            for plugin in inner.host.plugins() {
                inner.ensure_consumer(&plugin.tenant, &plugin.name, None);
            }
            events
        }
    };
    loop {
        match events.recv().await {
            Ok(crate::ReloadEvent::Loaded { tenant, plugin, .. }) => {
                inner.ensure_consumer(&tenant, &plugin, None);
            }
            Ok(_) => {}
            // Missed events: look at what is loaded now.
            Err(RecvError::Lagged(_)) => {
                for plugin in inner.host.plugins() {
                    inner.ensure_consumer(&plugin.tenant, &plugin.name, None);
                }
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// A task of the bus that is restarted when it stops unexpectedly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    /// The consumer of a plugin.
    Consumer {
        /// The plugin's tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
    /// Retention, which deletes old events now and then.
    Retention,
    /// The watcher that starts a consumer for every plugin loaded.
    Reloads,
}

impl Task {
    /// The task's name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Consumer { .. } => "consumer",
            Self::Retention => "retention",
            Self::Reloads => "reloads",
        }
    }
}

/// Aborts its task when dropped: a supervisor that is aborted takes the
/// task it runs along.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task that ended by a panic or a cancellation said.
fn join_failure(error: tokio::task::JoinError) -> String {
    if error.is_panic() {
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "without a message".to_owned());
        format!("panicked: {message}")
    } else {
        "was cancelled".to_owned()
    }
}

/// Runs the task `start` makes (given the number of runs before), and
/// while the bus is not stopping, makes and runs it again after
/// [`restart_backoff`] whenever it fails or panics. A task that ends with
/// `Ok` is finished (the bus stops, its plugin was unloaded, its source
/// closed) and is not restarted.
async fn supervise<F, Fut>(inner: Arc<Inner>, task: Task, mut start: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut stop = inner.stop.subscribe();
    let mut runs = 0u32;
    let mut in_a_row = 0u32;
    loop {
        let started = std::time::Instant::now();
        let mut running = AbortOnDrop(tokio::spawn(start(runs)));
        runs = runs.saturating_add(1);
        let reason = match (&mut running.0).await {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(e) => join_failure(e),
        };
        if *stop.borrow() {
            return;
        }
        if started.elapsed() >= Duration::from_secs(60) {
            in_a_row = 0;
        }
        let wait = restart_backoff(in_a_row);
        in_a_row = in_a_row.saturating_add(1);
        inner.restarted(&task, &reason, wait);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A plugin's backlog, as its consumer keeps it: reading it costs no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// Events of the tenant after the plugin's cursor: those read and not
    /// yet finished, and those not yet read. Exact once the consumer has
    /// caught up with the log; while it is behind (or paused, quarantined),
    /// the unread events are counted as this bus appends them, so events
    /// another process appended show once read.
    pub lag: u64,
    /// Events held read ahead of the cursor (see [`MAX_PENDING`]).
    pub pending_events: u64,
    /// Their bytes (see [`DurableConfig::max_pending_bytes`]).
    pub pending_bytes: u64,
}

/// A consumer's gauges, kept as it works.
#[derive(Debug, Default)]
struct Gauges {
    /// Events read past the cursor (finished or not).
    behind: AtomicU64,
    /// Events appended and not read yet: counted up by appends, down by
    /// reads, and set to 0 when a read finds nothing more.
    unread: AtomicU64,
    pending_events: AtomicU64,
    pending_bytes: AtomicU64,
}

impl Gauges {
    /// Counts `n` events read.
    fn read(&self, n: u64) {
        let _ = self
            .unread
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Publishes the line's numbers.
    fn show(&self, line: &Line) {
        self.behind
            .store(line.read_seqs.len() as u64, Ordering::Relaxed);
        self.pending_events
            .store(line.pending.len() as u64, Ordering::Relaxed);
        self.pending_bytes
            .store(line.pending_bytes, Ordering::Relaxed);
    }
}

/// A host whose events go through the durable log.
pub struct DurableBus {
    inner: Arc<Inner>,
    /// Starts a consumer for every plugin loaded later (supervised).
    reloads: tokio::task::JoinHandle<()>,
    /// Runs retention now and then (supervised).
    retention: tokio::task::JoinHandle<()>,
}

struct Inner {
    host: Arc<Host>,
    log: Arc<dyn EventLog>,
    config: DurableConfig,
    /// Woken when events of the tenant are appended.
    tenants: Mutex<HashMap<String, Arc<Notify>>>,
    /// The running consumers' supervisors, by (tenant, plugin).
    consumers: Mutex<HashMap<PluginKey, tokio::task::JoinHandle<()>>>,
    /// The running consumers' gauges, by tenant, then plugin.
    gauges: Mutex<HashMap<String, HashMap<String, Arc<Gauges>>>>,
    /// How often each task was restarted.
    restarts: Mutex<BTreeMap<Task, u64>>,
    stop: watch::Sender<bool>,
    /// Every delivery the consumers make, for whoever listens.
    deliveries: broadcast::Sender<Delivery>,
    /// The quarantined plugins, and what wakes each one.
    quarantined: Mutex<HashMap<PluginKey, (Quarantine, Arc<Notify>)>>,
}

/// A plugin by (tenant, name).
type PluginKey = (String, String);

impl DurableBus {
    /// Starts a consumer for every plugin `host` has loaded, and for every
    /// plugin it loads later, and makes `log` the store of the plugins'
    /// state. The plugins loaded now have their cursors
    /// when this returns: a plugin without one starts at the end of the log
    /// as it is now, before anything is published through the bus.
    pub async fn start(
        host: Arc<Host>,
        log: Arc<dyn EventLog>,
        config: DurableConfig,
    ) -> Result<Self, LogError> {
        Ok(Self::start_observed(host, log, config).await?.0)
    }

    /// Like [`DurableBus::start`], with a receiver of every delivery the
    /// consumers make, subscribed before the first of them starts, so that
    /// no delivery is missed (a later [`DurableBus::deliveries`] may miss
    /// those made before it).
    pub async fn start_observed(
        host: Arc<Host>,
        log: Arc<dyn EventLog>,
        config: DurableConfig,
    ) -> Result<(Self, broadcast::Receiver<Delivery>), LogError> {
        // The plugins' state lives in the log, so that it commits with
        // their cursors.
        host.set_state_store(log.clone());
        let inner = Arc::new(Inner {
            host,
            log,
            config,
            tenants: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            gauges: Mutex::new(HashMap::new()),
            restarts: Mutex::new(BTreeMap::new()),
            stop: watch::Sender::new(false),
            deliveries: broadcast::Sender::new(4096),
            quarantined: Mutex::new(HashMap::new()),
        });
        let observer = inner.deliveries.subscribe();
        let reload_events = inner.host.reload_events();
        for plugin in inner.host.plugins() {
            let consumer = Consumer::new(&inner, &plugin.tenant, &plugin.name, Arc::default());
            let position = consumer.start_position().await?;
            inner.ensure_consumer(&plugin.tenant, &plugin.name, Some(position));
        }
        let watcher = inner.clone();
        let mut first = Some(reload_events);
        let reloads = tokio::spawn(supervise(inner.clone(), Task::Reloads, move |_| {
            watch_reloads(watcher.clone(), first.take())
        }));
        let retainer = inner.clone();
        let retention = tokio::spawn(supervise(inner.clone(), Task::Retention, move |_| {
            retain(retainer.clone())
        }));
        Ok((
            Self {
                inner,
                reloads,
                retention,
            },
            observer,
        ))
    }

    /// Appends `events` (valid, as every [`Event`] is) to the log and
    /// answers once they are durable; the consumers then deliver them. All
    /// or none.
    pub async fn publish(&self, events: Vec<Event>) -> Result<Vec<Appended>, DurablePublishError> {
        let tenants: Vec<String> = events.iter().map(|e| e.tenant().to_owned()).collect();
        // Counted before they can be read, so that no consumer reads one
        // before it is counted (and counts it twice).
        let mut count: HashMap<&str, u64> = HashMap::new();
        for tenant in &tenants {
            *count.entry(tenant).or_default() += 1;
        }
        self.inner.appending(&count, true);
        let appended = match self.inner.log.append(events).await {
            Ok(appended) => appended,
            Err(e) => {
                self.inner.appending(&count, false);
                return Err(e.into());
            }
        };
        let mut duplicates: HashMap<&str, u64> = HashMap::new();
        for (tenant, answer) in tenants.iter().zip(&appended) {
            if answer.duplicate {
                *duplicates.entry(tenant).or_default() += 1;
            }
        }
        self.inner.appending(&duplicates, false);
        for tenant in count.keys() {
            self.inner.notify(tenant).notify_waiters();
        }
        Ok(appended)
    }

    /// Every delivery the consumers make from now on, failed attempts
    /// included (see [`DurableBus::start_observed`] for all of them). A listener that falls more than 4,096 deliveries behind
    /// misses the oldest (`RecvError::Lagged`); the deliveries happen anyway.
    pub fn deliveries(&self) -> broadcast::Receiver<Delivery> {
        self.inner.deliveries.subscribe()
    }

    /// Waits until every running consumer is finished with every event of
    /// its tenant in the log (delivered, skipped as not subscribed, or
    /// dead-lettered) and with every redrive requested of it. A quarantined
    /// plugin counts as finished: its events wait in the log.
    pub async fn settle(&self) -> Result<(), LogError> {
        loop {
            let running: Vec<(String, String)> = {
                let quarantined = self
                    .inner
                    .quarantined
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.inner
                    .consumers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|(key, task)| !task.is_finished() && !quarantined.contains_key(*key))
                    .map(|(key, _)| key.clone())
                    .collect()
            };
            let log = self.inner.log.clone();
            let settled = tokio::task::spawn_blocking(move || {
                for (tenant, plugin) in running {
                    let cursor = log.cursor(&tenant, &plugin)?.unwrap_or(0);
                    if !log.read(&tenant, cursor, 1)?.is_empty()
                        || !log.redrives(&tenant, &plugin, 1)?.is_empty()
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await
            .map_err(|_| LogError::Closed)??;
            if settled {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Each running consumer's backlog (its lag and what it holds), kept
    /// as it works: cheap enough for every metrics scrape.
    pub fn backlogs(&self) -> Vec<Backlog> {
        let gauges = self
            .inner
            .gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Backlog> = gauges
            .iter()
            .flat_map(|(tenant, plugins)| {
                plugins.iter().map(move |(plugin, g)| {
                    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    Backlog {
                        tenant: tenant.clone(),
                        plugin: plugin.clone(),
                        lag: get(&g.behind).saturating_add(get(&g.unread)),
                        pending_events: get(&g.pending_events),
                        pending_bytes: get(&g.pending_bytes),
                    }
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.tenant, &a.plugin).cmp(&(&b.tenant, &b.plugin)));
        all
    }

    /// How many dead letters each plugin has, by (tenant, plugin), without
    /// reading them: the log counts them once when it opens and keeps the
    /// counts as dead letters are stored, discarded and redriven.
    pub fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.inner.log.dead_letter_depths()
    }

    /// Whether the log can be written now: false from the first failed
    /// append or commit (disk full, data directory gone, file system
    /// read-only) until a write or the log's probe succeeds again.
    pub fn writable(&self) -> bool {
        self.inner.log.health().writable
    }

    /// The log's health, with the last write error while not writable.
    pub fn log_health(&self) -> LogHealth {
        self.inner.log.health()
    }

    /// How often each supervised task was restarted after it stopped
    /// unexpectedly (tasks never restarted are not listed).
    pub fn restarts(&self) -> BTreeMap<Task, u64> {
        self.inner
            .restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// The plugins in quarantine now.
    pub fn quarantined(&self) -> Vec<Quarantine> {
        let mut all: Vec<_> = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(q, _)| q.clone())
            .collect();
        all.sort_by(|a, b| (&a.tenant, &a.plugin).cmp(&(&b.tenant, &b.plugin)));
        all
    }

    /// The host's plugin statuses, each with its quarantine if it has one.
    pub fn statuses(&self) -> Vec<crate::PluginStatus> {
        let quarantined = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut statuses = self.inner.host.statuses();
        for status in &mut statuses {
            let key = (status.tenant.clone(), status.name.clone());
            status.quarantine = quarantined.get(&key).map(|(q, _)| q.clone());
        }
        statuses
    }

    /// Ends a plugin's quarantine now; returns whether it was quarantined.
    pub fn resume(&self, tenant: &str, plugin: &str) -> bool {
        let key = (tenant.to_owned(), plugin.to_owned());
        let entry = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        match entry {
            Some((_, wake)) => {
                wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// The host whose plugins the bus delivers to.
    pub fn host(&self) -> &Arc<Host> {
        &self.inner.host
    }

    /// The log the bus publishes into.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    /// Stops every consumer after the batch it is delivering, and waits.
    pub async fn shutdown(self) {
        self.reloads.abort();
        self.retention.abort();
        let _ = self.inner.stop.send(true);
        let consumers: Vec<_> = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, task)| task)
            .collect();
        for task in consumers {
            let _ = task.await;
        }
    }
}

impl Inner {
    fn notify(&self, tenant: &str) -> Arc<Notify> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Counts events of each tenant about to be appended (`more`) in its
    /// consumers' unread events, or takes back those that were not
    /// (refused, or duplicates).
    fn appending(&self, events: &HashMap<&str, u64>, more: bool) {
        let gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        for (tenant, n) in events {
            for plugin in gauges.get(*tenant).into_iter().flat_map(HashMap::values) {
                if more {
                    plugin.unread.fetch_add(*n, Ordering::Relaxed);
                } else {
                    plugin.read(*n);
                }
            }
        }
    }

    /// Starts the consumer of (tenant, plugin), supervised, from
    /// `position` (else from its stored cursor), unless it runs already.
    fn ensure_consumer(self: &Arc<Self>, tenant: &str, plugin: &str, position: Option<Seq>) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.to_owned(), plugin.to_owned());
        if consumers.get(&key).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let gauges = Arc::new(Gauges::default());
        self.gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone(), gauges.clone());
        let inner = self.clone();
        let task = Task::Consumer {
            tenant: key.0.clone(),
            plugin: key.1.clone(),
        };
        let supervisor = supervise(self.clone(), task, move |runs| {
            let consumer = Consumer::new(&inner, &key.0, &key.1, gauges.clone());
            let from = if runs == 0 { position } else { None };
            consumer.run(from)
        });
        consumers.insert(
            (tenant.to_owned(), plugin.to_owned()),
            tokio::spawn(supervisor),
        );
    }

    /// Forgets the gauges of a consumer that ended for good.
    fn drop_gauges(&self, tenant: &str, plugin: &str, gauges: &Arc<Gauges>) {
        let mut all = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plugins) = all.get_mut(tenant) {
            if plugins.get(plugin).is_some_and(|g| Arc::ptr_eq(g, gauges)) {
                plugins.remove(plugin);
            }
            if plugins.is_empty() {
                all.remove(tenant);
            }
        }
    }

    /// Logs and counts a restart of `task`.
    fn restarted(&self, task: &Task, reason: &str, wait: Duration) {
        *self
            .restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(task.clone())
            .or_insert(0) += 1;
        // The reason may quote a log error or a panic: one line, bounded.
        let mut reason: String = reason.escape_debug().collect();
        if reason.len() > 1024 {
            let mut end = 1024;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        match task {
            Task::Consumer { tenant, plugin } => {
                tracing::error!(
                    tenant = %tenant,
                    plugin = %plugin,
                    "the plugin's consumer stopped unexpectedly ({reason}); restarting it from its cursor in {wait:?}"
                );
                metrics::counter!(
                    "plugbus_consumer_restarts_total",
                    "tenant" => tenant.clone(),
                    "plugin" => plugin.clone()
                )
                .increment(1);
            }
            other => {
                tracing::error!(
                    task = other.name(),
                    "a task of the durable bus stopped unexpectedly ({reason}); restarting it in {wait:?}"
                );
                metrics::counter!("plugbus_task_restarts_total", "task" => other.name())
                    .increment(1);
            }
        }
    }
}

/// The most events a consumer holds read ahead of its cursor (waiting
/// behind failing events of their keys, or about to be delivered) before
/// it stops reading new ones, until some are handled or dead-lettered.
/// [`DurableConfig::max_pending_bytes`] bounds their bytes.
pub const MAX_PENDING: usize = 10_000;

/// What an event keeps its order with, for one plugin: the events of the
/// same partition key (the CloudEvents `partitionkey` extension, else the
/// subject). An event with neither keeps no order with others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OrderKey {
    Key(String),
    Alone(Seq),
}

impl OrderKey {
    fn of(stored: &StoredEvent) -> Self {
        let event = &stored.event;
        match event
            .extensions()
            .get("partitionkey")
            .map(String::as_str)
            .or(event.subject())
        {
            Some(key) => Self::Key(key.to_owned()),
            None => Self::Alone(stored.seq),
        }
    }
}

/// A failed event waiting for its retry; it holds back the later events
/// of its key.
struct Waiting {
    seq: Seq,
    attempts: Vec<Attempt>,
    retry_at: tokio::time::Instant,
}

/// A consumer's view of its plugin's events: the committed cursor, the
/// events read past it and not finished, the failed ones waiting for a
/// retry, and the events finished ahead of the cursor while an earlier
/// event of another key waits.
struct Line {
    /// The committed cursor: every event of the tenant up to it is
    /// finished (handled, dead-lettered, or not subscribed to).
    position: Seq,
    /// The last event read.
    read_after: Seq,
    /// The events read and not finished, by position.
    pending: BTreeMap<Seq, Arc<StoredEvent>>,
    /// Their stored bytes together.
    pending_bytes: u64,
    /// Every event read past the cursor, in order, finished or not: how
    /// far the consumer has read ahead of it.
    read_seqs: std::collections::VecDeque<Seq>,
    /// By key, the failed event waiting for its retry.
    waiting: HashMap<OrderKey, Waiting>,
    /// Events finished since the last commit.
    unsaved: Vec<Seq>,
    /// Events past the cursor that were finished before a restart (or a
    /// failed commit), skipped when read.
    skip: std::collections::BTreeSet<Seq>,
    /// A commit found the cursor moved by someone else.
    moved: bool,
}

impl Line {
    fn new(position: Seq) -> Self {
        Self {
            position,
            read_after: position,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            read_seqs: std::collections::VecDeque::new(),
            waiting: HashMap::new(),
            unsaved: Vec::new(),
            skip: std::collections::BTreeSet::new(),
            moved: false,
        }
    }

    /// Takes newly read events: pending, or finished at once when not
    /// subscribed to or finished before.
    fn take(&mut self, events: Vec<StoredEvent>, manifest: &crate::Manifest) {
        for stored in events {
            let seq = stored.seq;
            self.read_after = self.read_after.max(seq);
            if seq > self.position {
                self.read_seqs.push_back(seq);
            }
            if self.skip.remove(&seq) {
                continue;
            }
            if manifest.subscribes_to(stored.event.ty()) {
                self.pending_bytes = self.pending_bytes.saturating_add(stored.bytes);
                if let Some(replaced) = self.pending.insert(seq, Arc::new(stored)) {
                    self.pending_bytes = self.pending_bytes.saturating_sub(replaced.bytes);
                }
            } else {
                self.unsaved.push(seq);
            }
        }
    }

    /// The pending events to deliver now, in order, each with its attempt
    /// number: every event whose key has no earlier event waiting, and the
    /// waiting events whose retry is due.
    fn due(&self, now: tokio::time::Instant, limit: usize) -> Vec<(Arc<StoredEvent>, u32)> {
        let mut due = Vec::new();
        for (seq, stored) in &self.pending {
            if due.len() >= limit {
                break;
            }
            match self.waiting.get(&OrderKey::of(stored)) {
                None => due.push((stored.clone(), 1)),
                Some(w) if w.seq == *seq && w.retry_at <= now => {
                    let attempt = u32::try_from(w.attempts.len() + 1).unwrap_or(u32::MAX);
                    due.push((stored.clone(), attempt));
                }
                // Held back by an earlier event of its key.
                Some(_) => {}
            }
        }
        due
    }

    /// When the next waiting event is due.
    fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.waiting.values().map(|w| w.retry_at).min()
    }

    /// The failed attempts so far of the pending event at `seq`.
    fn attempts(&mut self, seq: Seq) -> Vec<Attempt> {
        let Some(stored) = self.pending.get(&seq) else {
            return Vec::new();
        };
        let key = OrderKey::of(stored);
        match self.waiting.get(&key) {
            Some(w) if w.seq == seq => self
                .waiting
                .remove(&key)
                .map(|w| w.attempts)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Holds `stored` (and the later events of its key) until `retry_at`.
    fn wait(
        &mut self,
        stored: &StoredEvent,
        attempts: Vec<Attempt>,
        retry_at: tokio::time::Instant,
    ) {
        self.waiting.insert(
            OrderKey::of(stored),
            Waiting {
                seq: stored.seq,
                attempts,
                retry_at,
            },
        );
    }

    /// Marks the pending event at `seq` finished: handled or dead-lettered.
    fn finish(&mut self, seq: Seq) {
        if let Some(stored) = self.pending.remove(&seq) {
            self.pending_bytes = self.pending_bytes.saturating_sub(stored.bytes);
            let key = OrderKey::of(&stored);
            if self.waiting.get(&key).is_some_and(|w| w.seq == seq) {
                self.waiting.remove(&key);
            }
            self.unsaved.push(seq);
        }
    }

    /// Fills in `commit`'s cursor (just before the first unfinished event)
    /// and the events finished ahead of it; true when there is anything to
    /// commit.
    fn advance(&self, commit: &mut Commit) -> bool {
        let frontier = match self.pending.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.read_after,
        }
        .max(self.position);
        commit.cursor = frontier;
        commit.ahead = self
            .unsaved
            .iter()
            .copied()
            .filter(|seq| *seq > frontier)
            .collect();
        frontier != self.position
            || !commit.ahead.is_empty()
            || !commit.emitted.is_empty()
            || !commit.state.is_empty()
            || !commit.dead_letters.is_empty()
    }

    /// The commit up to `cursor` is durable.
    fn committed(&mut self, cursor: Seq) {
        self.position = cursor;
        self.unsaved.clear();
        while self.read_seqs.front().is_some_and(|seq| *seq <= cursor) {
            self.read_seqs.pop_front();
        }
    }

    /// How much the next read may bring: nothing when the line holds
    /// [`MAX_PENDING`] events or `max_pending_bytes`; else up to
    /// `read_batch` events (no more than fit under [`MAX_PENDING`]) and
    /// the bytes left under either bound, strictly while the line holds
    /// events, and at least one event when it holds none.
    fn read_limit(&self, config: &DurableConfig) -> Option<ReadLimit> {
        let held = self.pending.len();
        if held >= MAX_PENDING || self.pending_bytes >= config.max_pending_bytes {
            return None;
        }
        Some(ReadLimit {
            events: config.read_batch.clamp(1, MAX_PENDING - held),
            bytes: (config.max_pending_bytes - self.pending_bytes).min(config.max_read_bytes),
            first_always: held == 0,
        })
    }
}

struct Consumer {
    inner: Arc<Inner>,
    tenant: String,
    plugin: String,
    gauges: Arc<Gauges>,
}

impl Consumer {
    fn new(inner: &Arc<Inner>, tenant: &str, plugin: &str, gauges: Arc<Gauges>) -> Self {
        Self {
            inner: inner.clone(),
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            gauges,
        }
    }

    /// Delivers from `position`, or from the plugin's start position, until
    /// the bus stops or the plugin is unloaded (`Ok`); an `Err` says why it
    /// could not go on, and its supervisor restarts it from its cursor.
    async fn run(self, position: Option<Seq>) -> Result<(), String> {
        let result = self.deliver_from(position).await;
        if matches!(result, Ok(())) && self.inner.host.plugin(&self.tenant, &self.plugin).is_none()
        {
            // Unloaded: its cursor stays for when it comes back.
            self.inner
                .drop_gauges(&self.tenant, &self.plugin, &self.gauges);
        }
        result
    }

    /// A fresh line at `position`, with what was finished ahead of it, and
    /// the count of events after it (at most 1,000,000 counted, once).
    async fn line_at(&self, position: Seq) -> Result<Line, String> {
        let mut line = Line::new(position);
        if let Err(e) = self.load_ahead(&mut line).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
        }
        let log = self.inner.log.clone();
        let tenant = self.tenant.clone();
        match tokio::task::spawn_blocking(move || log.count_after(&tenant, position, 1_000_000))
            .await
        {
            Ok(Ok(unread)) => self.gauges.unread.store(unread, Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot count the plugin's lag: {e}");
            }
            Err(e) => return Err(format!("counting its lag {}", join_failure(e))),
        }
        self.gauges.show(&line);
        Ok(line)
    }

    /// The consumer's loop: `Ok` when the bus stops or the plugin is
    /// unloaded.
    async fn deliver_from(&self, position: Option<Seq>) -> Result<(), String> {
        let mut stop = self.inner.stop.subscribe();
        let notify = self.inner.notify(&self.tenant);
        let position = loop {
            if let Some(position) = position {
                break position;
            }
            match self.start_position().await {
                Ok(position) => break position,
                Err(e) => {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the plugin's cursor: {e}");
                    if self.pause(Duration::from_secs(1), &mut stop).await {
                        return Ok(());
                    }
                }
            }
        };
        let mut line = self.line_at(position).await?;
        // Failed deliveries in a row, of any events.
        let mut failures_in_a_row = 0u32;
        // When the log was last asked for redrive requests, and for a
        // cursor moved by an operator.
        let mut redrives_checked: Option<std::time::Instant> = None;
        let mut cursor_checked = std::time::Instant::now();
        loop {
            self.gauges.show(&line);
            if *stop.borrow() {
                return Ok(());
            }
            // Registered before reading, so an append between the read and
            // the wait is not missed.
            let appended = notify.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let Some(plugin) = self.inner.host.plugin(&self.tenant, &self.plugin) else {
                return Ok(());
            };
            // An operator may have moved the cursor (`plugbus replay`):
            // looked at each second, and after a commit found it moved.
            let look = line.moved || cursor_checked.elapsed() >= Duration::from_secs(1);
            if look {
                cursor_checked = std::time::Instant::now();
                line.moved = false;
            }
            match if look {
                self.stored_cursor().await
            } else {
                Ok(None)
            } {
                Ok(Some(stored)) if stored != line.position => {
                    tracing::info!(
                        tenant = %self.tenant,
                        plugin = %self.plugin,
                        from = line.position,
                        to = stored,
                        "the plugin's cursor was moved; delivering from there"
                    );
                    line = self.line_at(stored).await?;
                }
                _ => {}
            }
            // Dead letters an operator asked to redrive go first, looked
            // for at most twice a second, a few at a time.
            if redrives_checked.is_none_or(|at| at.elapsed() >= Duration::from_millis(500)) {
                redrives_checked = Some(std::time::Instant::now());
                let log = self.inner.log.clone();
                let (tenant, name) = (self.tenant.clone(), self.plugin.clone());
                match tokio::task::spawn_blocking(move || log.redrives(&tenant, &name, 16)).await {
                    Ok(Ok(redrives)) if !redrives.is_empty() => {
                        for dead in redrives {
                            if self
                                .redrive(&plugin, dead, line.position, &mut stop)
                                .await?
                            {
                                return Ok(());
                            }
                        }
                        // More may wait: looked for again at once.
                        redrives_checked = None;
                        continue;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the redrive requests: {e}");
                    }
                    Err(e) => return Err(format!("reading redrive requests {}", join_failure(e))),
                }
            }
            // New events, unless the line holds as many as it may.
            if let Some(limit) = line.read_limit(&self.inner.config) {
                let tenant = self.tenant.clone();
                let (log, after) = (self.inner.log.clone(), line.read_after);
                let read = tokio::task::spawn_blocking(move || {
                    let events = log.read_bounded(&tenant, after, limit)?;
                    // Fewer than asked for: has it reached the end of the
                    // log? (One index lookup.)
                    let more = match events.last() {
                        Some(last) if events.len() < limit.events => {
                            log.count_after(&tenant, last.seq, 1)?
                        }
                        Some(_) => 1,
                        None if limit.first_always => 0,
                        None => log.count_after(&tenant, after, 1)?,
                    };
                    Ok::<_, LogError>((events, more == 0))
                })
                .await;
                match read {
                    Ok(Ok((events, at_the_end))) => {
                        self.gauges.read(events.len() as u64);
                        if at_the_end {
                            self.gauges.unread.store(0, Ordering::Relaxed);
                        }
                        line.take(events, plugin.manifest());
                    }
                    Ok(Err(e)) => {
                        tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the log: {e}");
                        if self.pause(Duration::from_secs(1), &mut stop).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(format!("reading the log {}", join_failure(e))),
                }
            }
            self.gauges.show(&line);
            let now = tokio::time::Instant::now();
            let due = line.due(now, self.inner.config.read_batch);
            if due.is_empty() {
                let mut commit = self.commit_from(line.position);
                if line.advance(&mut commit) {
                    // Events skipped as not subscribed moved the cursor.
                    if self.commit(commit, &mut line).await?
                        && self.pause(Duration::from_secs(1), &mut stop).await
                    {
                        return Ok(());
                    }
                    continue;
                }
                // Woken by an append, by the next retry, or after a while
                // to look for a cursor moved by another process.
                let second = deadline(now, Duration::from_secs(1));
                let wake = line.next_retry().unwrap_or(second).min(second);
                tokio::select! {
                    () = &mut appended => {}
                    () = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => return Ok(()),
                }
                continue;
            }

            let delivering = plugin.clone();
            let batch: Vec<(Arc<StoredEvent>, u32)> = due;
            let budgets: Vec<usize> = batch.iter().map(|(s, _)| self.budget(&s.event)).collect();
            let sent = batch.clone();
            let delivered = tokio::task::spawn_blocking(move || {
                let items: Vec<_> = sent
                    .iter()
                    .zip(budgets)
                    .map(|((s, attempt), budget)| Item {
                        event: &s.event,
                        chain_budget: Some(Arc::new(AtomicUsize::new(budget))),
                        attempt: *attempt,
                    })
                    .collect();
                delivering.deliver_batch_in_chain(items, true)
            })
            .await;
            let reports = delivered.map_err(|e| format!("delivering {}", join_failure(e)))?;
            if self.inner.deliveries.receiver_count() > 0 {
                for (delivery, _) in &reports {
                    let _ = self.inner.deliveries.send(delivery.clone());
                }
            }

            let mut commit = self.commit_from(line.position);
            // Events after a failure in the batch were not delivered: they
            // stay pending.
            for ((stored, _), (delivery, effects)) in batch.iter().zip(reports) {
                let seq = stored.seq;
                match delivery.outcome {
                    Outcome::Handled => {
                        commit.emitted.extend(effects.emitted);
                        commit.state.extend(effects.state);
                        line.finish(seq);
                        failures_in_a_row = 0;
                    }
                    Outcome::Failed(failure) => {
                        failures_in_a_row = failures_in_a_row.saturating_add(1);
                        let mut attempts = line.attempts(seq);
                        if let Some(wait) = self.failed(
                            &plugin,
                            &mut attempts,
                            failure,
                            &delivery.plugin_version,
                            delivery.fuel,
                        ) {
                            metrics::counter!(
                                "plugbus_retries_total",
                                "tenant" => self.tenant.clone(),
                                "plugin" => self.plugin.clone()
                            )
                            .increment(1);
                            line.wait(
                                stored,
                                attempts,
                                deadline(tokio::time::Instant::now(), wait),
                            );
                            continue;
                        }
                        metrics::counter!(
                            "plugbus_dead_lettered_total",
                            "tenant" => self.tenant.clone(),
                            "plugin" => self.plugin.clone()
                        )
                        .increment(1);
                        tracing::warn!(
                            tenant = %self.tenant,
                            plugin = %self.plugin,
                            seq,
                            event_id = %stored.event.id().escape_debug(),
                            attempts = attempts.len(),
                            "event dead-lettered"
                        );
                        commit.dead_letters.push(DeadLetter {
                            seq,
                            event: stored.event.clone(),
                            attempts,
                        });
                        line.finish(seq);
                    }
                }
            }
            let pause = line.advance(&mut commit) && self.commit(commit, &mut line).await?;
            let limit = self.inner.config.quarantine_after;
            if limit > 0 && failures_in_a_row >= limit {
                failures_in_a_row = 0;
                if self.quarantine(&plugin, &mut stop).await {
                    return Ok(());
                }
                continue;
            }
            if pause && self.pause(Duration::from_secs(1), &mut stop).await {
                return Ok(());
            }
        }
    }

    /// The budget of events a delivery of `event` may cause: the event's
    /// chain budget (the host's limit when it carries none), shared among
    /// the tenant's loaded plugins that subscribe to its type.
    fn budget(&self, event: &Event) -> usize {
        let limit = self.inner.host.config().max_events_per_chain;
        let subscribers = self
            .inner
            .host
            .registry
            .load()
            .route(event.tenant(), event.ty())
            .count();
        budget_share(event.chain_budget(limit), subscribers)
    }

    /// Commits the plugin's progress; true when the caller should pause
    /// (the log failed, and the same events are delivered again).
    async fn commit(&self, commit: Commit, line: &mut Line) -> Result<bool, String> {
        let cursor = commit.cursor;
        match self.commit_emitting(commit).await {
            Ok(committed) => {
                if committed.cursor_moved {
                    line.committed(cursor);
                    self.gauges.show(line);
                } else {
                    // An operator moved the cursor (`plugbus replay`): the
                    // next round goes on from there.
                    line.moved = true;
                }
                Ok(false)
            }
            Err(e) => {
                // Nothing was committed: the events since the last commit
                // are delivered again (at least once).
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit the plugin's progress: {e}");
                // What was read past the cursor is to be read again.
                self.gauges
                    .unread
                    .fetch_add(line.read_seqs.len() as u64, Ordering::Relaxed);
                let mut fresh = Line::new(line.position);
                if let Err(e) = self.load_ahead(&mut fresh).await {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
                }
                *line = fresh;
                self.gauges.show(line);
                Ok(true)
            }
        }
    }

    /// Commits `commit`, counting the events it emits in the consumers'
    /// unread events first (and taking them back if it fails), and wakes
    /// those consumers.
    async fn commit_emitting(&self, commit: Commit) -> Result<crate::log::Committed, LogError> {
        let tenants: Vec<String> = commit
            .emitted
            .iter()
            .map(|e| e.tenant().to_owned())
            .collect();
        let mut count: HashMap<&str, u64> = HashMap::new();
        for tenant in &tenants {
            *count.entry(tenant).or_default() += 1;
        }
        self.inner.appending(&count, true);
        let committed = self.inner.log.commit(commit).await;
        if committed.is_err() {
            self.inner.appending(&count, false);
        }
        for tenant in count.keys() {
            self.inner.notify(tenant).notify_waiters();
        }
        committed
    }

    /// Reads the events the plugin finished ahead of its cursor, which a
    /// restart must not deliver again.
    async fn load_ahead(&self, line: &mut Line) -> Result<(), LogError> {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        let ahead = tokio::task::spawn_blocking(move || log.ahead(&tenant, &plugin))
            .await
            .map_err(|_| LogError::Closed)??;
        line.skip = ahead.into_iter().filter(|s| *s > line.position).collect();
        Ok(())
    }

    /// The plugin's cursor, or for a plugin without one the end of the log
    /// (the beginning with `start = "earliest"`), committed as its cursor
    /// so that a restart starts there too.
    async fn start_position(&self) -> Result<Seq, LogError> {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        let earliest = self
            .inner
            .host
            .plugin(&self.tenant, &self.plugin)
            .is_some_and(|p| p.manifest().start == crate::Start::Earliest);
        let found = tokio::task::spawn_blocking(move || {
            log.cursor(&tenant, &plugin)
                .and_then(|cursor| match cursor {
                    Some(c) => Ok((c, false)),
                    None if earliest => Ok((0, true)),
                    None => log.head().map(|h| (h, true)),
                })
        })
        .await
        .map_err(|_| LogError::Closed)??;
        let (position, new) = found;
        if new {
            self.inner
                .log
                .commit_cursor(&self.tenant, &self.plugin, position)
                .await?;
        }
        Ok(position)
    }

    /// Pauses the plugin until its quarantine ends: the time runs out, a
    /// new version is loaded, or an operator resumes it. True when the bus
    /// is stopping.
    async fn quarantine(&self, plugin: &crate::Plugin, stop: &mut watch::Receiver<bool>) -> bool {
        let version = plugin.version().to_owned();
        let length = self.inner.config.quarantine_for;
        let since_ms = now_ms();
        // Recorded as the bus keeps it: no later than MAX_WAIT from now, a
        // time every reader of the record can print.
        let until_ms = since_ms
            .saturating_add(i64::try_from(length.min(MAX_WAIT).as_millis()).unwrap_or(i64::MAX));
        let key = (self.tenant.clone(), self.plugin.clone());
        let wake = Arc::new(Notify::new());
        let record = Quarantine {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            version: version.clone(),
            since_ms,
            until_ms,
        };
        // Recorded in the log, where an operator sees it and can lift it
        // (`plugbus quarantine`); a failure to record it only means that.
        let recorded = self
            .inner
            .log
            .set_quarantine(QuarantineChange::Begin(record.clone()))
            .await;
        if let Err(e) = &recorded {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot record the quarantine: {e}");
        }
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), (record, wake.clone()));
        tracing::warn!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            version = %version,
            seconds = length.as_secs(),
            "plugin quarantined after {} failed deliveries in a row; its events wait",
            self.inner.config.quarantine_after
        );
        let until = deadline(tokio::time::Instant::now(), length);
        let mut ticks = 0u32;
        let stopping = loop {
            let replaced = self
                .inner
                .host
                .plugin(&self.tenant, &self.plugin)
                .is_none_or(|p| p.version() != version);
            if replaced || tokio::time::Instant::now() >= until {
                break false;
            }
            // Lifted by an operator through the log, looked at each second.
            ticks = ticks.wrapping_add(1);
            if recorded.is_ok() && ticks.is_multiple_of(5) && !self.still_quarantined().await {
                break false;
            }
            tokio::select! {
                () = wake.notified() => break false,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => break true,
            }
        };
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        // Over, however it ended: a restarted host starts the plugin afresh.
        let lift = QuarantineChange::Lift {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
        };
        if let Err(e) = self.inner.log.set_quarantine(lift).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot record the end of the quarantine: {e}");
        }
        if !stopping {
            tracing::info!(tenant = %self.tenant, plugin = %self.plugin, "quarantine over");
        }
        stopping
    }

    /// Delivers a dead letter an operator asked to redrive to the plugin's
    /// current version, retried like any event. Handled, its dead letter is
    /// deleted in the transaction that keeps its effects; failed for the
    /// last time, the dead letter gets the new attempts appended. The
    /// cursor stays where it is. True when the bus is stopping; an error
    /// when the delivery ended without a report.
    async fn redrive(
        &self,
        plugin: &Arc<crate::Plugin>,
        dead: DeadLetter,
        position: Seq,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        tracing::info!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            seq = dead.seq,
            event_id = %dead.event.id().escape_debug(),
            "redriving a dead letter"
        );
        let budget = self.budget(&dead.event);
        let dead = Arc::new(dead);
        let mut attempts: Vec<Attempt> = Vec::new();
        loop {
            let attempt = u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX);
            let (delivering, letter) = (plugin.clone(), dead.clone());
            let delivered = tokio::task::spawn_blocking(move || {
                let item = Item {
                    event: &letter.event,
                    chain_budget: Some(Arc::new(AtomicUsize::new(budget))),
                    attempt,
                };
                delivering.deliver_batch_in_chain(vec![item], true)
            })
            .await
            .map_err(|e| format!("redriving {}", join_failure(e)))?;
            let Some((delivery, effects)) = delivered.into_iter().next() else {
                return Err("a redriven delivery ended without a report".to_owned());
            };
            if self.inner.deliveries.receiver_count() > 0 {
                let _ = self.inner.deliveries.send(delivery.clone());
            }
            let mut commit = self.commit_from(position);
            let mut retry_after = None;
            match delivery.outcome {
                Outcome::Handled => {
                    commit.emitted = effects.emitted;
                    commit.state = effects.state;
                    commit.redriven.push(dead.seq);
                }
                Outcome::Failed(failure) => {
                    retry_after = self.failed(
                        plugin,
                        &mut attempts,
                        failure,
                        &delivery.plugin_version,
                        delivery.fuel,
                    );
                    if retry_after.is_none() {
                        let mut history = dead.attempts.clone();
                        history.append(&mut attempts);
                        commit.dead_letters.push(DeadLetter {
                            seq: dead.seq,
                            event: dead.event.clone(),
                            attempts: history,
                        });
                    }
                }
            }
            if let Some(wait) = retry_after {
                if self.pause(wait, stop).await {
                    return Ok(true);
                }
                continue;
            }
            match self.commit_emitting(commit).await {
                Ok(_) => return Ok(false),
                Err(e) => {
                    // Nothing was committed: the request stays, and is
                    // taken again.
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit a redrive: {e}");
                    return Ok(self.pause(Duration::from_secs(1), stop).await);
                }
            }
        }
    }

    /// An empty commit of the plugin's progress from `position`: it moves
    /// the cursor only if nobody else moved it since.
    fn commit_from(&self, position: Seq) -> Commit {
        Commit {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            cursor: position,
            expected: Some(position),
            ..Commit::default()
        }
    }

    /// Records a failed attempt; answers how long to wait before the next
    /// when the event may be tried again, `None` when it is given up.
    fn failed(
        &self,
        plugin: &crate::Plugin,
        attempts: &mut Vec<Attempt>,
        failure: crate::Failure,
        plugin_version: &str,
        fuel: u64,
    ) -> Option<Duration> {
        let retryable = failure.kind.is_retryable();
        attempts.push(Attempt {
            kind: failure.kind,
            message: failure.message,
            fuel,
            plugin_version: plugin_version.to_owned(),
            at_ms: now_ms(),
        });
        let used = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
        let max_attempts = plugin
            .manifest()
            .max_attempts
            .unwrap_or(self.inner.config.retry.max_attempts);
        (retryable && used < max_attempts).then(|| self.inner.config.retry.backoff(used))
    }

    /// Whether the log still records this plugin's quarantine; true when it
    /// cannot be read (the quarantine then runs its time).
    async fn still_quarantined(&self) -> bool {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        tokio::task::spawn_blocking(move || {
            log.quarantines().map_or(true, |all| {
                all.iter().any(|q| q.tenant == tenant && q.plugin == plugin)
            })
        })
        .await
        .unwrap_or(true)
    }

    /// The plugin's cursor as stored.
    async fn stored_cursor(&self) -> Result<Option<Seq>, LogError> {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        tokio::task::spawn_blocking(move || log.cursor(&tenant, &plugin))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// Waits `wait`; true when the bus is stopping.
    async fn pause(&self, wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => *stop.borrow(),
            _ = stop.changed() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_thirty_seconds() {
        assert_eq!(restart_backoff(0), Duration::from_millis(100));
        assert_eq!(restart_backoff(1), Duration::from_millis(200));
        assert_eq!(restart_backoff(2), Duration::from_millis(400));
        assert_eq!(restart_backoff(8), Duration::from_millis(25_600));
        assert_eq!(restart_backoff(9), Duration::from_secs(30));
        assert_eq!(restart_backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_budget_is_shared_among_subscribers() {
        assert_eq!(budget_share(10_000, 1), 10_000);
        assert_eq!(budget_share(10_000, 3), 3_333);
        assert_eq!(budget_share(2, 2), 1);
        assert_eq!(budget_share(1, 2), 0);
        // Nobody subscribed counts as one.
        assert_eq!(budget_share(7, 0), 7);
    }

    #[test]
    fn deadlines_saturate() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(deadline(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(deadline(now, Duration::from_secs(u64::MAX)), now + MAX_WAIT);
    }

    fn stored(seq: Seq, bytes: u64) -> StoredEvent {
        let event = Event::from_json(&format!(
            r#"{{"specversion":"1.0","id":"e-{seq}","source":"/t","type":"t.x","tenant":"acme"}}"#
        ))
        .expect("event");
        StoredEvent {
            seq,
            appended_at_ms: 0,
            event,
            bytes,
        }
    }

    #[test]
    fn the_read_limit_leaves_room_for_what_the_line_holds() {
        let manifest = crate::Manifest::with_defaults(crate::Limits::default());
        let config = DurableConfig {
            max_pending_bytes: 100,
            max_read_bytes: 60,
            read_batch: 128,
            ..DurableConfig::default()
        };
        let mut line = Line::new(0);
        // Holding nothing: up to the read bound, the first event always.
        assert_eq!(
            line.read_limit(&config),
            Some(ReadLimit {
                events: 128,
                bytes: 60,
                first_always: true
            })
        );
        line.take(vec![stored(1, 30), stored(2, 30)], &manifest);
        assert_eq!(line.pending_bytes, 60);
        // Holding some: strictly what is left.
        assert_eq!(
            line.read_limit(&config),
            Some(ReadLimit {
                events: 128,
                bytes: 40,
                first_always: false
            })
        );
        line.take(vec![stored(3, 40)], &manifest);
        assert_eq!(line.read_limit(&config), None, "full");
        line.finish(1);
        assert_eq!(line.pending_bytes, 70);
        assert_eq!(line.read_limit(&config).map(|l| l.bytes), Some(30));
        // Behind the cursor: every event read past it.
        assert_eq!(line.read_seqs.len(), 3);
        line.committed(1);
        assert_eq!(line.read_seqs.len(), 2);
    }

    #[test]
    fn the_read_limit_stops_at_max_pending_events() {
        let manifest = crate::Manifest::with_defaults(crate::Limits::default());
        let config = DurableConfig::default();
        let mut line = Line::new(0);
        let almost: Vec<_> = (1..MAX_PENDING as Seq).map(|seq| stored(seq, 1)).collect();
        line.take(almost, &manifest);
        assert_eq!(line.read_limit(&config).map(|l| l.events), Some(1));
        line.take(vec![stored(MAX_PENDING as Seq, 1)], &manifest);
        assert_eq!(line.read_limit(&config), None);
    }
}
