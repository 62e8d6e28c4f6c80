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

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::dispatch::Item;
use crate::event::Event;
use crate::host::Host;
use crate::log::{
    Appended, Attempt, Commit, DeadLetter, EventLog, LogError, QuarantineChange, Retention, Seq,
    StoredEvent, now_ms,
};
use crate::{Delivery, EventError, Outcome};

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries of one event before it becomes a dead letter, the first
    /// included (default 5).
    pub max_attempts: u32,
    /// The wait before the first retry (default 100 ms); each retry waits
    /// twice as long as the one before, up to `max_backoff`, and a random
    /// half of each wait is jitter.
    pub base_backoff: Duration,
    /// The longest wait between two attempts (default 30 s).
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
    /// After this many failed deliveries in a row a plugin is quarantined:
    /// paused instead of burning fuel on every event (default 20; 0 never).
    pub quarantine_after: u32,
    /// How long a quarantine lasts unless a new version of the plugin is
    /// loaded or [`DurableBus::resume`] ends it first (default 5 minutes).
    /// Its events wait in the log meanwhile; none is dropped.
    pub quarantine_for: Duration,
    /// How long the log keeps events (default: 7 days, no size bound); an
    /// event a loaded plugin has not finished with is always kept.
    pub retention: Retention,
    /// How often retention runs (default every minute).
    pub retention_interval: Duration,
}

pub use crate::log::Quarantine;

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            read_batch: 128,
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
/// event a loaded plugin has not finished with.
async fn retain(inner: Arc<Inner>) {
    let retention = inner.config.retention;
    if retention == Retention::default() {
        return;
    }
    let mut ticks =
        tokio::time::interval(inner.config.retention_interval.max(Duration::from_secs(1)));
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

/// A host whose events go through the durable log.
pub struct DurableBus {
    inner: Arc<Inner>,
    reloads: tokio::task::JoinHandle<()>,
    /// Runs retention now and then.
    retention: tokio::task::JoinHandle<()>,
}

struct Inner {
    host: Arc<Host>,
    log: Arc<dyn EventLog>,
    config: DurableConfig,
    /// Woken when events of the tenant are appended.
    tenants: Mutex<HashMap<String, Arc<Notify>>>,
    /// The running consumers, by (tenant, plugin).
    consumers: Mutex<HashMap<PluginKey, tokio::task::JoinHandle<()>>>,
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
            stop: watch::Sender::new(false),
            deliveries: broadcast::Sender::new(4096),
            quarantined: Mutex::new(HashMap::new()),
        });
        let observer = inner.deliveries.subscribe();
        let mut reload_events = inner.host.reload_events();
        for plugin in inner.host.plugins() {
            let consumer = Consumer {
                inner: inner.clone(),
                tenant: plugin.tenant.clone(),
                plugin: plugin.name.clone(),
            };
            let position = consumer.start_position().await?;
            inner
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    (plugin.tenant, plugin.name),
                    tokio::spawn(consumer.run(Some(position))),
                );
        }
        let watcher = inner.clone();
        let reloads = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match reload_events.recv().await {
                    Ok(crate::ReloadEvent::Loaded { tenant, plugin, .. }) => {
                        watcher.ensure_consumer(&tenant, &plugin);
                    }
                    Ok(_) => {}
                    // Missed events: look at what is loaded now.
                    Err(RecvError::Lagged(_)) => {
                        for plugin in watcher.host.plugins() {
                            watcher.ensure_consumer(&plugin.tenant, &plugin.name);
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let retention = tokio::spawn(retain(inner.clone()));
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
        let appended = self.inner.log.append(events).await?;
        for tenant in tenants {
            self.inner.notify(&tenant).notify_waiters();
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
                        || !log.redrives(&tenant, &plugin)?.is_empty()
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

    /// Starts the consumer of (tenant, plugin) unless it runs already.
    fn ensure_consumer(self: &Arc<Self>, tenant: &str, plugin: &str) {
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.to_owned(), plugin.to_owned());
        if consumers.get(&key).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let consumer = Consumer {
            inner: self.clone(),
            tenant: key.0.clone(),
            plugin: key.1.clone(),
        };
        consumers.insert(key, tokio::spawn(consumer.run(None)));
    }
}

/// One plugin's consumer.
/// The most events a consumer keeps waiting behind failing keys before it
/// stops reading new ones, until the failing events are handled or
/// dead-lettered.
const MAX_PENDING: usize = 10_000;

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
            .extensions
            .get("partitionkey")
            .or(event.subject.as_ref())
        {
            Some(key) => Self::Key(key.clone()),
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
    pending: std::collections::BTreeMap<Seq, Arc<StoredEvent>>,
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
            pending: std::collections::BTreeMap::new(),
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
            if self.skip.remove(&seq) {
                continue;
            }
            if manifest.subscribes_to(&stored.event.ty) {
                self.pending.insert(seq, Arc::new(stored));
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
    }
}

struct Consumer {
    inner: Arc<Inner>,
    tenant: String,
    plugin: String,
}

impl Consumer {
    /// Delivers from `position`, or from the plugin's start position.
    async fn run(self, position: Option<Seq>) {
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
                        return;
                    }
                }
            }
        };
        let mut line = Line::new(position);
        if let Err(e) = self.load_ahead(&mut line).await {
            tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
        }
        // Failed deliveries in a row, of any events.
        let mut failures_in_a_row = 0u32;
        // When the log was last asked for redrive requests, and for a
        // cursor moved by an operator.
        let mut redrives_checked: Option<std::time::Instant> = None;
        let mut cursor_checked = std::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            // Registered before reading, so an append between the read and
            // the wait is not missed.
            let appended = notify.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let Some(plugin) = self.inner.host.plugin(&self.tenant, &self.plugin) else {
                // Unloaded: its cursor stays for when it comes back.
                return;
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
                    line = Line::new(stored);
                    if let Err(e) = self.load_ahead(&mut line).await {
                        tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
                    }
                }
                _ => {}
            }
            // Dead letters an operator asked to redrive go first, looked
            // for at most twice a second.
            if redrives_checked.is_none_or(|at| at.elapsed() >= Duration::from_millis(500)) {
                redrives_checked = Some(std::time::Instant::now());
                let log = self.inner.log.clone();
                let (tenant, name) = (self.tenant.clone(), self.plugin.clone());
                match tokio::task::spawn_blocking(move || log.redrives(&tenant, &name)).await {
                    Ok(Ok(redrives)) if !redrives.is_empty() => {
                        for dead in redrives {
                            if self.redrive(&plugin, dead, line.position, &mut stop).await {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the redrive requests: {e}");
                    }
                    Err(_) => return,
                }
            }
            // New events, unless too many wait behind failing keys.
            if line.pending.len() < MAX_PENDING {
                let (tenant, batch) = (self.tenant.clone(), self.inner.config.read_batch);
                let (log, after) = (self.inner.log.clone(), line.read_after);
                let read =
                    tokio::task::spawn_blocking(move || log.read(&tenant, after, batch)).await;
                match read {
                    Ok(Ok(events)) => line.take(events, plugin.manifest()),
                    Ok(Err(e)) => {
                        tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the log: {e}");
                        if self.pause(Duration::from_secs(1), &mut stop).await {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                }
            }
            let now = tokio::time::Instant::now();
            let due = line.due(now, self.inner.config.read_batch);
            if due.is_empty() {
                let mut commit = self.commit_from(line.position);
                if line.advance(&mut commit) {
                    // Events skipped as not subscribed moved the cursor.
                    if self.commit(commit, &mut line).await
                        && self.pause(Duration::from_secs(1), &mut stop).await
                    {
                        return;
                    }
                    continue;
                }
                // Woken by an append, by the next retry, or after a while
                // to look for a cursor moved by another process.
                let wake = line
                    .next_retry()
                    .unwrap_or(now + Duration::from_secs(1))
                    .min(now + Duration::from_secs(1));
                tokio::select! {
                    () = &mut appended => {}
                    () = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }

            let max_events = self.inner.host.config().max_events_per_chain;
            let delivering = plugin.clone();
            let batch: Vec<(Arc<StoredEvent>, u32)> = due;
            let sent = batch.clone();
            let delivered = tokio::task::spawn_blocking(move || {
                let items: Vec<_> = sent
                    .iter()
                    .map(|(s, attempt)| Item {
                        event: &s.event,
                        chain_budget: Some(Arc::new(AtomicUsize::new(max_events))),
                        attempt: *attempt,
                    })
                    .collect();
                delivering.deliver_batch_in_chain(items, true)
            })
            .await;
            let Ok(reports) = delivered else { return };
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
                            line.wait(stored, attempts, tokio::time::Instant::now() + wait);
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
                            event_id = %stored.event.id,
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
            let pause = line.advance(&mut commit) && self.commit(commit, &mut line).await;
            let limit = self.inner.config.quarantine_after;
            if limit > 0 && failures_in_a_row >= limit {
                failures_in_a_row = 0;
                if self.quarantine(&plugin, &mut stop).await {
                    return;
                }
                continue;
            }
            if pause && self.pause(Duration::from_secs(1), &mut stop).await {
                return;
            }
        }
    }

    /// Commits the plugin's progress; true when the caller should pause
    /// (the log failed, and the same events are delivered again).
    async fn commit(&self, commit: Commit, line: &mut Line) -> bool {
        let emitted_tenants: Vec<String> =
            commit.emitted.iter().map(|e| e.tenant.clone()).collect();
        let cursor = commit.cursor;
        match self.inner.log.commit(commit).await {
            Ok(committed) if !committed.cursor_moved => {
                // An operator moved the cursor (`plugbus replay`): the
                // next round goes on from there.
                line.moved = true;
                false
            }
            Ok(_) => {
                line.committed(cursor);
                for tenant in emitted_tenants {
                    self.inner.notify(&tenant).notify_waiters();
                }
                false
            }
            Err(e) => {
                // Nothing was committed: the events since the last commit
                // are delivered again (at least once).
                tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit the plugin's progress: {e}");
                *line = Line::new(line.position);
                if let Err(e) = self.load_ahead(line).await {
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot read the events handled ahead of the cursor: {e}");
                }
                true
            }
        }
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
        let until_ms =
            since_ms.saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX));
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
        let deadline = tokio::time::Instant::now() + length;
        let mut ticks = 0u32;
        let stopping = loop {
            let replaced = self
                .inner
                .host
                .plugin(&self.tenant, &self.plugin)
                .is_none_or(|p| p.version() != version);
            if replaced || tokio::time::Instant::now() >= deadline {
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
    /// cursor stays where it is. True when the bus is stopping.
    async fn redrive(
        &self,
        plugin: &Arc<crate::Plugin>,
        dead: DeadLetter,
        position: Seq,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let max_events = self.inner.host.config().max_events_per_chain;
        tracing::info!(
            tenant = %self.tenant,
            plugin = %self.plugin,
            seq = dead.seq,
            event_id = %dead.event.id,
            "redriving a dead letter"
        );
        let dead = Arc::new(dead);
        let mut attempts: Vec<Attempt> = Vec::new();
        loop {
            let attempt = u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX);
            let (delivering, letter) = (plugin.clone(), dead.clone());
            let delivered = tokio::task::spawn_blocking(move || {
                let item = Item {
                    event: &letter.event,
                    chain_budget: Some(Arc::new(AtomicUsize::new(max_events))),
                    attempt,
                };
                delivering.deliver_batch_in_chain(vec![item], true)
            })
            .await;
            let Some((delivery, effects)) = delivered.ok().and_then(|r| r.into_iter().next())
            else {
                return true;
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
                    return true;
                }
                continue;
            }
            let emitted_tenants: Vec<String> =
                commit.emitted.iter().map(|e| e.tenant.clone()).collect();
            match self.inner.log.commit(commit).await {
                Ok(_) => {
                    for tenant in emitted_tenants {
                        self.inner.notify(&tenant).notify_waiters();
                    }
                    return false;
                }
                Err(e) => {
                    // Nothing was committed: the request stays, and is
                    // taken again.
                    tracing::error!(tenant = %self.tenant, plugin = %self.plugin, "cannot commit a redrive: {e}");
                    return self.pause(Duration::from_secs(1), stop).await;
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
