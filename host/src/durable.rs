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

mod failures;
mod operations;
mod read_ahead;
mod retry;

pub use failures::{RECENT_FAILURES, RecentFailure};
pub use operations::PluginReport;

use read_ahead::ReadAhead;
use retry::deadline;
pub use retry::{MAX_WAIT, RetryPolicy};

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
    fn show(&self, line: &ReadAhead) {
        self.behind.store(line.behind() as u64, Ordering::Relaxed);
        self.pending_events
            .store(line.pending_events() as u64, Ordering::Relaxed);
        self.pending_bytes
            .store(line.pending_bytes(), Ordering::Relaxed);
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
    /// Per tenant, its most recent failed deliveries.
    failures: Mutex<failures::Failures>,
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
            failures: Mutex::new(failures::Failures::new(RECENT_FAILURES)),
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

    /// Validates `events`, appends them to the log and answers once they
    /// are durable; the consumers then deliver them. All or none: one
    /// invalid event refuses the whole batch.
    pub async fn publish(&self, events: Vec<Event>) -> Result<Vec<Appended>, DurablePublishError> {
        for (index, event) in events.iter().enumerate() {
            event
                .validate()
                .map_err(|error| DurablePublishError::InvalidEvent { index, error })?;
        }
        let tenants: Vec<String> = events.iter().map(|e| e.tenant.clone()).collect();
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
    /// Keeps the failed deliveries in `reports` among their tenants'
    /// recent failures, and tells every delivery to whoever listens.
    fn delivered(&self, reports: &[(Delivery, crate::dispatch::Effects)]) {
        if reports.iter().any(|(d, _)| d.outcome.failure().is_some()) {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            for (delivery, _) in reports {
                failures.record(delivery, failures::now_rfc3339);
            }
        }
        if self.deliveries.receiver_count() > 0 {
            for (delivery, _) in reports {
                let _ = self.deliveries.send(delivery.clone());
            }
        }
    }

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

/// How a step of a consumer's round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Go on with the round.
    Go,
    /// Start the next round.
    Again,
    /// The bus stops, or the plugin was unloaded.
    Stop,
}

/// What a consumer keeps from one round to the next.
struct Run {
    /// The events read past the cursor.
    line: ReadAhead,
    /// Failed deliveries in a row, of any events.
    failures_in_a_row: u32,
    /// When the log was last asked for redrive requests.
    redrives_checked: Option<std::time::Instant>,
    /// When the log was last asked for a cursor moved by an operator.
    cursor_checked: std::time::Instant,
}

/// What becomes of an event after a delivery.
enum Verdict {
    /// Handled: what it left behind is committed.
    Handled(crate::dispatch::Effects),
    /// Failed, to be tried again after the wait, with every attempt so far.
    Retry(Vec<Attempt>, Duration),
    /// Given up: a dead letter with every attempt.
    Dead(Vec<Attempt>),
}

/// Something delivered through [`Consumer::deliver`]: an event read from
/// the log, or a dead letter redriven.
trait Deliverable: Send + Sync + 'static {
    /// The event to deliver.
    fn event(&self) -> &Event;
}

impl Deliverable for StoredEvent {
    fn event(&self) -> &Event {
        &self.event
    }
}

impl Deliverable for DeadLetter {
    fn event(&self) -> &Event {
        &self.event
    }
}

/// Whether a read of at most `limit` events after `after`, which returned
/// `events`, reached the end of the tenant's events (one index lookup
/// when it returned fewer than asked for).
fn at_the_end(
    log: &dyn EventLog,
    tenant: &str,
    after: Seq,
    limit: ReadLimit,
    events: &[StoredEvent],
) -> Result<bool, LogError> {
    let more = match events.last() {
        Some(last) if events.len() < limit.events => log.count_after(tenant, last.seq, 1)?,
        Some(_) => 1,
        None if limit.first_always => 0,
        None => log.count_after(tenant, after, 1)?,
    };
    Ok(more == 0)
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
    async fn line_at(&self, position: Seq) -> Result<ReadAhead, String> {
        let mut line = ReadAhead::new(position);
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
        let Some(position) = self.first_position(position, &mut stop).await else {
            return Ok(());
        };
        let notify = self.inner.notify(&self.tenant);
        let mut run = Run {
            line: self.line_at(position).await?,
            failures_in_a_row: 0,
            redrives_checked: None,
            cursor_checked: std::time::Instant::now(),
        };
        loop {
            if let Step::Stop = self.round(&mut run, &notify, &mut stop).await? {
                return Ok(());
            }
        }
    }

    /// `position`, else the plugin's start position, asked of the log
    /// again each second while it cannot be read; `None` when the bus
    /// stops meanwhile.
    async fn first_position(
        &self,
        position: Option<Seq>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Seq> {
        if position.is_some() {
            return position;
        }
        loop {
            match self.start_position().await {
                Ok(position) => return Some(position),
                Err(e) => {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the plugin's cursor: {e}");
                    if self.pause(Duration::from_secs(1), stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One round of the consumer: follow a cursor an operator moved,
    /// redrive the dead letters asked for, read new events, then deliver
    /// the due ones (or commit what is finished, or wait).
    async fn round(
        &self,
        run: &mut Run,
        notify: &Notify,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        self.gauges.show(&run.line);
        if *stop.borrow() {
            return Ok(Step::Stop);
        }
        // Registered before reading, so an append between the read and
        // the wait is not missed.
        let appended = notify.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let Some(plugin) = self.inner.host.plugin(&self.tenant, &self.plugin) else {
            return Ok(Step::Stop);
        };
        self.follow_moved_cursor(run).await?;
        if let step @ (Step::Again | Step::Stop) =
            self.redrive_requested(&plugin, run, stop).await?
        {
            return Ok(step);
        }
        if let step @ (Step::Again | Step::Stop) = self.read(&plugin, &mut run.line, stop).await? {
            return Ok(step);
        }
        self.gauges.show(&run.line);
        let now = tokio::time::Instant::now();
        let due = run.line.due(now, self.inner.config.read_batch);
        if due.is_empty() {
            return self.idle(&mut run.line, appended, now, stop).await;
        }
        self.deliver_due(&plugin, run, due, stop).await
    }

    /// Starts again from the stored cursor when an operator moved it
    /// (`plugbus replay`): looked at each second, and after a commit found
    /// it moved.
    async fn follow_moved_cursor(&self, run: &mut Run) -> Result<(), String> {
        let look = run.line.take_moved() || run.cursor_checked.elapsed() >= Duration::from_secs(1);
        if !look {
            return Ok(());
        }
        run.cursor_checked = std::time::Instant::now();
        if let Ok(Some(stored)) = self.stored_cursor().await
            && stored != run.line.position()
        {
            tracing::info!(
                tenant = %self.tenant,
                plugin = %self.plugin,
                from = run.line.position(),
                to = stored,
                "the plugin's cursor was moved; delivering from there"
            );
            run.line = self.line_at(stored).await?;
        }
        Ok(())
    }

    /// Redrives the dead letters an operator asked for, before anything
    /// else: looked for at most twice a second, a few at a time, and at
    /// once again after some were found (`Again`).
    async fn redrive_requested(
        &self,
        plugin: &Arc<crate::Plugin>,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        if run
            .redrives_checked
            .is_some_and(|at| at.elapsed() < Duration::from_millis(500))
        {
            return Ok(Step::Go);
        }
        run.redrives_checked = Some(std::time::Instant::now());
        let log = self.inner.log.clone();
        let (tenant, name) = (self.tenant.clone(), self.plugin.clone());
        match tokio::task::spawn_blocking(move || log.redrives(&tenant, &name, 16)).await {
            Ok(Ok(redrives)) if !redrives.is_empty() => {
                for dead in redrives {
                    if self
                        .redrive(plugin, dead, run.line.position(), stop)
                        .await?
                    {
                        return Ok(Step::Stop);
                    }
                }
                run.redrives_checked = None;
                Ok(Step::Again)
            }
            Ok(Ok(_)) => Ok(Step::Go),
            Ok(Err(e)) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the redrive requests: {e}");
                Ok(Step::Go)
            }
            Err(e) => Err(format!("reading redrive requests {}", join_failure(e))),
        }
    }

    /// Reads new events into the line, unless it holds as many as it may;
    /// when the log cannot be read, waits a second and starts the round
    /// again (`Again`).
    async fn read(
        &self,
        plugin: &crate::Plugin,
        line: &mut ReadAhead,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        let Some(limit) = line.read_limit(&self.inner.config) else {
            return Ok(Step::Go);
        };
        let tenant = self.tenant.clone();
        let (log, after) = (self.inner.log.clone(), line.read_after());
        let read = tokio::task::spawn_blocking(move || {
            let events = log.read_bounded(&tenant, after, limit)?;
            let at_the_end = at_the_end(log.as_ref(), &tenant, after, limit, &events)?;
            Ok::<_, LogError>((events, at_the_end))
        })
        .await;
        match read {
            Ok(Ok((events, at_the_end))) => {
                self.gauges.read(events.len() as u64);
                if at_the_end {
                    self.gauges.unread.store(0, Ordering::Relaxed);
                }
                line.take(events, |ty| plugin.manifest().subscribes_to(ty));
                Ok(Step::Go)
            }
            Ok(Err(e)) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the log: {e}");
                Ok(self.pause_step(Duration::from_secs(1), stop).await)
            }
            Err(e) => Err(format!("reading the log {}", join_failure(e))),
        }
    }

    /// With nothing due: commits what is finished (events skipped as not
    /// subscribed move the cursor), else waits for an append, the next
    /// retry, or a second (to look for a cursor moved by another process).
    async fn idle(
        &self,
        line: &mut ReadAhead,
        appended: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        now: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        let mut commit = self.commit_from(line.position());
        if line.advance(&mut commit) {
            if self.commit(commit, line).await? {
                return Ok(self.pause_step(Duration::from_secs(1), stop).await);
            }
            return Ok(Step::Again);
        }
        let second = deadline(now, Duration::from_secs(1));
        let wake = line.next_retry().unwrap_or(second).min(second);
        tokio::select! {
            () = appended => {}
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => return Ok(Step::Stop),
        }
        Ok(Step::Again)
    }

    /// Delivers the due events, commits what came of them, and
    /// quarantines the plugin when too many deliveries in a row failed.
    async fn deliver_due(
        &self,
        plugin: &Arc<crate::Plugin>,
        run: &mut Run,
        due: Vec<(Arc<StoredEvent>, u32)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Step, String> {
        let reports = self.deliver(plugin, &due, "delivering").await?;
        let mut commit = self.commit_from(run.line.position());
        // Events after a failure in the batch were not delivered: they
        // stay pending.
        for ((stored, _), (delivery, effects)) in due.iter().zip(reports) {
            let line = &mut run.line;
            let verdict = self.judge(plugin, delivery, effects, || line.attempts(stored.seq));
            if let Verdict::Handled(_) = verdict {
                run.failures_in_a_row = 0;
            } else {
                run.failures_in_a_row = run.failures_in_a_row.saturating_add(1);
            }
            self.settle_one(stored, verdict, &mut run.line, &mut commit);
        }
        let pause = run.line.advance(&mut commit) && self.commit(commit, &mut run.line).await?;
        let limit = self.inner.config.quarantine_after;
        if limit > 0 && run.failures_in_a_row >= limit {
            run.failures_in_a_row = 0;
            if self.quarantine(plugin, stop).await {
                return Ok(Step::Stop);
            }
            return Ok(Step::Again);
        }
        if pause {
            return Ok(self.pause_step(Duration::from_secs(1), stop).await);
        }
        Ok(Step::Again)
    }

    /// Puts what became of the event at `stored` into the line and the
    /// commit: handled (its effects committed), waiting for its retry, or
    /// a dead letter.
    fn settle_one(
        &self,
        stored: &StoredEvent,
        verdict: Verdict,
        line: &mut ReadAhead,
        commit: &mut Commit,
    ) {
        let seq = stored.seq;
        match verdict {
            Verdict::Handled(effects) => {
                commit.emitted.extend(effects.emitted);
                commit.state.extend(effects.state);
                line.finish(seq);
            }
            Verdict::Retry(attempts, wait) => {
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
            }
            Verdict::Dead(attempts) => {
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
                    event_id = %stored.event.id.escape_debug(),
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

    /// The one delivery path, of events read from the log and of dead
    /// letters redriven alike: delivers `batch` (each event with its
    /// attempt number and its share of its chain's budget) to `plugin`,
    /// stopping at the first failure, and tells every delivery to whoever
    /// listens. An `Err` (`what` failed) when the delivery task panicked.
    async fn deliver<T: Deliverable>(
        &self,
        plugin: &Arc<crate::Plugin>,
        batch: &[(Arc<T>, u32)],
        what: &str,
    ) -> Result<Vec<(Delivery, crate::dispatch::Effects)>, String> {
        let budgets: Vec<usize> = batch.iter().map(|(e, _)| self.budget(e.event())).collect();
        let sent = batch.to_vec();
        let delivering = plugin.clone();
        let reports = tokio::task::spawn_blocking(move || {
            let items: Vec<_> = sent
                .iter()
                .zip(budgets)
                .map(|((e, attempt), budget)| Item {
                    event: e.event(),
                    chain_budget: Some(Arc::new(AtomicUsize::new(budget))),
                    attempt: *attempt,
                })
                .collect();
            delivering.deliver_batch_in_chain(items, true)
        })
        .await
        .map_err(|e| format!("{what} {}", join_failure(e)))?;
        self.inner.delivered(&reports);
        Ok(reports)
    }

    /// What becomes of an event after a delivery: handled, retried after
    /// a wait, or given up as a dead letter with every attempt's failure
    /// (those before taken from `earlier`, asked only when it failed).
    fn judge(
        &self,
        plugin: &crate::Plugin,
        delivery: Delivery,
        effects: crate::dispatch::Effects,
        earlier: impl FnOnce() -> Vec<Attempt>,
    ) -> Verdict {
        let Outcome::Failed(failure) = delivery.outcome else {
            return Verdict::Handled(effects);
        };
        let mut attempts = earlier();
        match self.failed(
            plugin,
            &mut attempts,
            failure,
            &delivery.plugin_version,
            delivery.fuel,
        ) {
            Some(wait) => Verdict::Retry(attempts, wait),
            None => Verdict::Dead(attempts),
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
            .route(&event.tenant, &event.ty)
            .count();
        budget_share(event.chain_budget(limit), subscribers)
    }

    /// Commits the plugin's progress; true when the caller should pause
    /// (the log failed, and the same events are delivered again).
    async fn commit(&self, commit: Commit, line: &mut ReadAhead) -> Result<bool, String> {
        let cursor = commit.cursor;
        match self.commit_emitting(commit).await {
            Ok(committed) => {
                if committed.cursor_moved {
                    line.committed(cursor);
                    self.gauges.show(line);
                } else {
                    // An operator moved the cursor (`plugbus replay`): the
                    // next round goes on from there.
                    line.mark_moved();
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
                    .fetch_add(line.behind() as u64, Ordering::Relaxed);
                let mut fresh = ReadAhead::new(line.position());
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
        let tenants: Vec<String> = commit.emitted.iter().map(|e| e.tenant.clone()).collect();
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
    async fn load_ahead(&self, line: &mut ReadAhead) -> Result<(), LogError> {
        let log = self.inner.log.clone();
        let (tenant, plugin) = (self.tenant.clone(), self.plugin.clone());
        let ahead = tokio::task::spawn_blocking(move || log.ahead(&tenant, &plugin))
            .await
            .map_err(|_| LogError::Closed)??;
        line.skip(ahead);
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
        let (wake, recorded) = self.begin_quarantine(&version, length).await;
        tracing::warn!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            version = %version,
            seconds = length.as_secs(),
            "plugin quarantined after {} failed deliveries in a row; its events wait",
            self.inner.config.quarantine_after
        );
        let until = deadline(tokio::time::Instant::now(), length);
        let stopping = self
            .sit_out_quarantine(&version, until, &wake, recorded, stop)
            .await;
        self.end_quarantine(stopping).await;
        stopping
    }

    /// Records the plugin's quarantine, in the bus and in the log (where
    /// an operator sees it and can lift it, `plugbus quarantine`); answers
    /// what wakes it, and whether the log has the record.
    async fn begin_quarantine(&self, version: &str, length: Duration) -> (Arc<Notify>, bool) {
        let since_ms = now_ms();
        // Recorded as the bus keeps it: no later than MAX_WAIT from now, a
        // time every reader of the record can print.
        let until_ms = since_ms
            .saturating_add(i64::try_from(length.min(MAX_WAIT).as_millis()).unwrap_or(i64::MAX));
        let wake = Arc::new(Notify::new());
        let record = Quarantine {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            version: version.to_owned(),
            since_ms,
            until_ms,
        };
        // A failure to record it only means that.
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
            .insert(self.key(), (record, wake.clone()));
        (wake, recorded.is_ok())
    }

    /// Waits until `until`, a version other than `version` is loaded, the
    /// quarantine is resumed (`wake`) or lifted in the log (looked at each
    /// second when `recorded`), or the bus stops (true).
    async fn sit_out_quarantine(
        &self,
        version: &str,
        until: tokio::time::Instant,
        wake: &Notify,
        recorded: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut ticks = 0u32;
        loop {
            let replaced = self
                .inner
                .host
                .plugin(&self.tenant, &self.plugin)
                .is_none_or(|p| p.version() != version);
            if replaced || tokio::time::Instant::now() >= until {
                return false;
            }
            ticks = ticks.wrapping_add(1);
            if recorded && ticks.is_multiple_of(5) && !self.still_quarantined().await {
                return false;
            }
            tokio::select! {
                () = wake.notified() => return false,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return true,
            }
        }
    }

    /// Forgets the quarantine, in the bus and in the log, however it
    /// ended: a restarted host starts the plugin afresh.
    async fn end_quarantine(&self, stopping: bool) {
        self.inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key());
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
    }

    /// The plugin as the bus keys it.
    fn key(&self) -> PluginKey {
        (self.tenant.clone(), self.plugin.clone())
    }

    /// Delivers a dead letter an operator asked to redrive to the plugin's
    /// current version, through the one delivery path, retried like any
    /// event. Handled, its dead letter is deleted in the transaction that
    /// keeps its effects; failed for the last time, the dead letter gets
    /// the new attempts appended. The cursor stays where it is. True when
    /// the bus is stopping; an error when the delivery ended without a
    /// report.
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
            event_id = %dead.event.id.escape_debug(),
            "redriving a dead letter"
        );
        let dead = Arc::new(dead);
        let mut attempts: Vec<Attempt> = Vec::new();
        loop {
            let attempt = u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX);
            let reports = self
                .deliver(plugin, &[(dead.clone(), attempt)], "redriving")
                .await?;
            let Some((delivery, effects)) = reports.into_iter().next() else {
                return Err("a redriven delivery ended without a report".to_owned());
            };
            let mut commit = self.commit_from(position);
            match self.judge(plugin, delivery, effects, || std::mem::take(&mut attempts)) {
                Verdict::Handled(effects) => {
                    commit.emitted = effects.emitted;
                    commit.state = effects.state;
                    commit.redriven.push(dead.seq);
                }
                Verdict::Retry(so_far, wait) => {
                    attempts = so_far;
                    if self.pause(wait, stop).await {
                        return Ok(true);
                    }
                    continue;
                }
                Verdict::Dead(mut so_far) => {
                    let mut history = dead.attempts.clone();
                    history.append(&mut so_far);
                    commit.dead_letters.push(DeadLetter {
                        seq: dead.seq,
                        event: dead.event.clone(),
                        attempts: history,
                    });
                }
            }
            return self.commit_redrive(commit, stop).await;
        }
    }

    /// Commits a redrive; true when the bus stops while it waits a second
    /// after a failed commit (the request stays, and is taken again).
    async fn commit_redrive(
        &self,
        commit: Commit,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        match self.commit_emitting(commit).await {
            Ok(_) => Ok(false),
            Err(e) => {
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit a redrive: {e}");
                Ok(self.pause(Duration::from_secs(1), stop).await)
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
        let max_attempts = plugin.manifest().max_attempts;
        attempts.push(Attempt {
            kind: failure.kind,
            message: failure.message,
            fuel,
            plugin_version: plugin_version.to_owned(),
            at_ms: now_ms(),
        });
        let used = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
        self.inner
            .config
            .retry
            .retry_after(used, retryable, max_attempts)
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

    /// Waits `wait`, then starts the next round (`Again`), unless the bus
    /// is stopping.
    async fn pause_step(&self, wait: Duration, stop: &mut watch::Receiver<bool>) -> Step {
        if self.pause(wait, stop).await {
            Step::Stop
        } else {
            Step::Again
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
}
