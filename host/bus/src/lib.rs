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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use plugbus_core::event::Event;
use plugbus_log::{Appended, DeadLetterDepths, EventLog, LogError, LogHealth, Retention, Seq};
use plugbus_runtime::Delivery;
use plugbus_runtime::host::Host;

mod consumer;
mod failures;
mod operations;
mod read_ahead;
mod retry;

pub use failures::{RECENT_FAILURES, RecentFailure};
pub use operations::PluginReport;

use consumer::Consumer;
use read_ahead::ReadAhead;
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

pub use plugbus_log::Quarantine;

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
    events: Option<broadcast::Receiver<plugbus_runtime::ReloadEvent>>,
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
            Ok(plugbus_runtime::ReloadEvent::Loaded { tenant, plugin, .. }) => {
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
    pub fn statuses(&self) -> Vec<plugbus_runtime::PluginStatus> {
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
    fn delivered(&self, reports: &[(Delivery, plugbus_runtime::dispatch::Effects)]) {
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
