//! Delivering one event to one plugin: an instance from the plugin's pool
//! (or a fresh one), fuel and an epoch deadline set for the event, the call
//! of `handle`, and the classification of what happened into an
//! [`Outcome`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::{ComponentExportIndex, TypedFunc};
use wasmtime::{Engine, Store, Trap};

use plugbus_core::{Failure, FailureKind, Outcome};

use crate::bindings::{Instance as Handler, Pre};
use crate::overlay::Overlay;
pub use crate::sandbox::Effects;
use crate::sandbox::{
    BatchRun, Bounds, DeliveryScope, Finished, HandlerError, Identity, MemoryLimitExceeded,
    PluginState, delivery_span, enter_span,
};
use crate::stats::Stats;
use plugbus_core::event::Event;
use plugbus_core::manifest::Manifest;

/// Whether a plugin's instance serves many events or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceMode {
    /// An instance (with its `Store`) serves event after event until it
    /// traps; then it is discarded and the next event gets a fresh one.
    #[default]
    Reuse,
    /// Every event gets a fresh instance, dropped afterwards. Pair it with
    /// the pooling allocator ([`crate::engine::Allocation::Pooling`]).
    FreshPerEvent,
}

/// An event a delivery emitted, as reported with the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmittedEvent {
    /// The id the host gave it.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its subject, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// What happened when one event was delivered to one plugin.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's id.
    pub event_id: String,
    /// The event's tenant (and the plugin's).
    pub tenant: String,
    /// The event's type.
    pub event_type: String,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version: a hash of its component and manifest.
    pub plugin_version: String,
    /// How the delivery ended.
    pub outcome: Outcome,
    /// Fuel the delivery consumed (0 when fuel metering is off).
    pub fuel: u64,
    /// Wall-clock time of the delivery, instantiation included.
    pub duration: Duration,
    /// For an emitted event, the id of the event whose handler emitted it.
    pub causation_id: Option<String>,
    /// The events the delivery emitted; empty when it failed, since the
    /// events of a failed delivery are discarded.
    pub emitted: Vec<EmittedEvent>,
}

/// Why [`Plugin::deliver`] refused an event; nothing was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The event belongs to another tenant than the plugin.
    #[error("event of tenant {event_tenant:?} refused by a plugin of tenant {plugin_tenant:?}")]
    WrongTenant {
        /// The event's tenant.
        event_tenant: String,
        /// The plugin's tenant.
        plugin_tenant: String,
    },
}

/// A loaded plugin: its compiled component, pre-instantiated, and its pool
/// of idle instances.
pub struct Plugin {
    pub(crate) identity: Arc<Identity>,
    pub(crate) manifest: Manifest,
    pub(crate) path: std::path::PathBuf,
    engine: Engine,
    pre: Pre,
    bounds: Arc<Bounds>,
    stats: Arc<Stats>,
    mode: InstanceMode,
    epoch_tick: Duration,
    fuel_metered: bool,
    batch_export: Option<ComponentExportIndex>,
    idle: Mutex<Vec<Warm>>,
    /// Its recycled instances, counted.
    recycling: crate::deadline::Recycling,
    /// Deliveries waiting, and how many threads are taking them.
    queue: Mutex<Queue>,
    /// Wakes a drainer that lingers on the empty queue.
    work: Condvar,
    /// The most threads delivering to this plugin at once, and the most
    /// idle instances kept.
    concurrency: usize,
    /// Its delivery metrics, resolved once.
    metrics: DeliveryMetrics,
    /// What its outbound HTTP requests are checked against; `None` when
    /// its manifest allows no origin. Given to its instances' hooks.
    outbound: Option<Arc<crate::outbound::PluginOutbound>>,
}

/// A plugin's handles into the process's metrics recorder (no-ops when
/// there is none): deliveries by outcome and failure kind, handle time and
/// fuel. Each series is registered at its first use, so that `/metrics`
/// shows no zero series for outcomes that never happened.
struct DeliveryMetrics {
    tenant: String,
    plugin: String,
    handled: std::sync::OnceLock<metrics::Counter>,
    failed: [std::sync::OnceLock<metrics::Counter>; FailureKind::ALL.len()],
    seconds: std::sync::OnceLock<metrics::Histogram>,
    fuel: std::sync::OnceLock<metrics::Histogram>,
}

impl DeliveryMetrics {
    fn new(identity: &Identity) -> Self {
        Self {
            tenant: identity.tenant.clone(),
            plugin: identity.name.clone(),
            handled: std::sync::OnceLock::new(),
            failed: [const { std::sync::OnceLock::new() }; FailureKind::ALL.len()],
            seconds: std::sync::OnceLock::new(),
            fuel: std::sync::OnceLock::new(),
        }
    }

    fn deliveries(&self, outcome: &'static str, kind: &'static str) -> metrics::Counter {
        metrics::counter!(
            "plugbus_deliveries_total",
            "tenant" => self.tenant.clone(),
            "plugin" => self.plugin.clone(),
            "outcome" => outcome,
            "kind" => kind
        )
    }

    fn handled(&self) -> &metrics::Counter {
        self.handled.get_or_init(|| self.deliveries("handled", ""))
    }

    fn failed(&self, kind: FailureKind) -> &metrics::Counter {
        self.failed[kind.index()].get_or_init(|| self.deliveries("failed", kind.as_str()))
    }

    fn seconds(&self) -> &metrics::Histogram {
        self.seconds.get_or_init(|| {
            metrics::histogram!(
                "plugbus_handle_seconds",
                "tenant" => self.tenant.clone(),
                "plugin" => self.plugin.clone()
            )
        })
    }

    fn fuel(&self) -> &metrics::Histogram {
        self.fuel.get_or_init(|| {
            metrics::histogram!(
                "plugbus_fuel_consumed",
                "tenant" => self.tenant.clone(),
                "plugin" => self.plugin.clone()
            )
        })
    }
}

/// A plugin's waiting deliveries.
#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// Threads delivering to the plugin, lingering ones included.
    drainers: usize,
    /// Drainers lingering on the empty queue that no enqueue has woken.
    waiting: usize,
    /// Drainers lingering that an enqueue has woken.
    woken: usize,
    /// How long a drainer lingers on the empty queue now: halved after a
    /// linger in which nothing came (to zero below an eighth of the host's
    /// bound: a plugin whose events come further apart than that does not
    /// linger), doubled (up to the host's bound) after one that ended with
    /// work, and back to an eighth when a drainer must be started within
    /// the host's bound of the last one's end.
    linger: Duration,
    /// When the last drainer ended.
    ended: Option<Instant>,
}

/// The host's bound on drainers lingering on empty queues: a drainer whose
/// plugin's queue runs dry waits up to
/// [`HostConfig::drainer_linger`](crate::HostConfig::drainer_linger) for
/// more work instead of ending its thread, while fewer than
/// [`HostConfig::max_lingering_drainers`](crate::HostConfig::max_lingering_drainers)
/// threads of the host linger.
#[derive(Debug)]
pub(crate) struct Lingering {
    /// The longest linger.
    pub max: Duration,
    /// The most threads lingering at once, host-wide.
    pub limit: usize,
    /// Threads lingering now.
    now: AtomicUsize,
}

impl Lingering {
    /// The bound: lingers of at most `max`, by at most `limit` threads.
    pub(crate) fn new(max: Duration, limit: usize) -> Self {
        Self {
            max,
            limit,
            now: AtomicUsize::new(0),
        }
    }

    /// Takes a place among the lingering threads, if there is one.
    fn enter(&self) -> bool {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back.
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One delivery to make, and where its report goes.
struct Job {
    event: Arc<Event>,
    chain_budget: Option<Arc<AtomicUsize>>,
    reply: Reply,
}

/// A delivery's report, with the events it emitted when it succeeded.
pub(crate) type Report = (Delivery, Vec<Event>);

/// Where the reports of the deliveries a publisher queued together go:
/// one slot per delivery, and one wake-up of the publisher, when the last
/// of them has arrived.
#[derive(Default)]
pub(crate) struct Replies {
    inner: Mutex<RepliesInner>,
}

#[derive(Default)]
struct RepliesInner {
    /// The reports, in the order the deliveries were queued; `None` for a
    /// delivery that ended without one (its drainer died).
    reports: Vec<Option<Report>>,
    /// Deliveries queued whose report has not arrived.
    remaining: usize,
    /// The publisher waiting, if it is.
    waker: Option<Waker>,
}

impl Replies {
    /// A slot for one more delivery's report.
    pub(crate) fn slot(self: &Arc<Self>) -> Reply {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.reports.push(None);
        inner.remaining += 1;
        Reply {
            replies: self.clone(),
            index: inner.reports.len() - 1,
            sent: false,
        }
    }

    /// Waits for every slot's report; `None` in place of a report that a
    /// delivery ended without.
    pub(crate) async fn all(&self) -> Vec<Option<Report>> {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.remaining == 0 {
                return Poll::Ready(std::mem::take(&mut inner.reports));
            }
            match &mut inner.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Fills slot `index`, and wakes the publisher if it was the last.
    fn fill(&self, index: usize, report: Option<Report>) {
        let waker = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = inner.reports.get_mut(index) {
                *slot = report;
            }
            inner.remaining = inner.remaining.saturating_sub(1);
            if inner.remaining == 0 {
                inner.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One delivery's slot in its [`Replies`]. Dropped without a report (its
/// drainer died), it counts as ended without one, so that the publisher
/// does not wait for ever.
pub(crate) struct Reply {
    replies: Arc<Replies>,
    index: usize,
    sent: bool,
}

impl Reply {
    /// Delivers the report.
    fn send(mut self, report: Report) {
        self.sent = true;
        self.replies.fill(self.index, Some(report));
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.replies.fill(self.index, None);
        }
    }
}

/// Gives a drainer's place back if it unwinds, so the queue keeps moving.
struct DrainerSlot<'a>(&'a Plugin);

impl Drop for DrainerSlot<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drainers -= 1;
        }
    }
}

/// An instance that has handled events and may handle more.
struct Warm {
    store: Store<PluginState>,
    handler: Handler,
    /// The export `handle-batch`, when the plugin has it.
    batch: Option<BatchFunc>,
    /// What it has done, for the recycling rules.
    life: crate::deadline::Life,
}

/// A plugin's export `handle-batch`.
type BatchFunc = TypedFunc<(Vec<u8>,), ()>;

/// What one call of `handle-batch` did.
struct BatchCall {
    /// How the call ended.
    result: Result<(), wasmtime::Error>,
    /// The events the plugin reported through `batch.done`, in order.
    finished: Vec<Finished>,
    /// How many those are.
    events: u64,
    /// When the event running at the end started.
    started: Instant,
    /// The batch stopped with events left, its pending commit full.
    commit_full: bool,
    /// The span of the event running at the end, if any.
    running: Option<tracing::Span>,
}

/// Where a call of `handle-batch` ended: the event that was running then.
struct BatchEnd {
    /// Its span, if it had started.
    running: Option<tracing::Span>,
    /// When it started.
    started: Instant,
    /// How many events the call delivered before it.
    events: u64,
}

/// An instance's trap in the middle of a batch.
struct Trapped {
    err: wasmtime::Error,
    /// The tail of what the plugin wrote to stderr.
    stderr: String,
    /// The fuel of the running event.
    fuel: u64,
    /// What the running event emitted and wrote before the trap.
    effects: Effects,
}

/// Why an attempt at instantiating failed.
enum Instantiation {
    /// The pooling allocator had no free slot.
    PoolExhausted(wasmtime::Error),
    /// The plugin failed, with the fuel it consumed.
    Failed(Failure, u64),
}

/// What [`Plugin::new`] needs from the host.
pub(crate) struct PluginParts {
    pub identity: Arc<Identity>,
    pub manifest: Manifest,
    pub path: std::path::PathBuf,
    pub engine: Engine,
    pub pre: Pre,
    pub bounds: Arc<Bounds>,
    pub stats: Arc<Stats>,
    pub mode: InstanceMode,
    pub epoch_tick: Duration,
    pub fuel_metered: bool,
    pub concurrency: usize,
    /// The export `handle-batch`, when the component has one.
    pub batch_export: Option<ComponentExportIndex>,
    /// The host's outbound HTTP policy.
    pub outbound: Arc<crate::outbound::OutboundConfig>,
}

impl Plugin {
    pub(crate) fn new(parts: PluginParts) -> Self {
        let linger = parts.bounds.lingering.max;
        let metrics = DeliveryMetrics::new(&parts.identity);
        let recycling =
            crate::deadline::Recycling::new(&parts.identity.tenant, &parts.identity.name);
        // Every plugin has one, so that a request of a plugin that allows
        // no origin is refused and counted under its names.
        let outbound = Some(Arc::new(crate::outbound::PluginOutbound {
            config: parts.outbound.clone(),
            allow: parts.manifest.http_allow.clone(),
            tenant: parts.identity.tenant.clone(),
            plugin: parts.identity.name.clone(),
        }));
        Self {
            identity: parts.identity,
            manifest: parts.manifest,
            path: parts.path,
            engine: parts.engine,
            pre: parts.pre,
            bounds: parts.bounds,
            stats: parts.stats,
            mode: parts.mode,
            epoch_tick: parts.epoch_tick,
            fuel_metered: parts.fuel_metered,
            batch_export: parts.batch_export,
            idle: Mutex::new(Vec::new()),
            recycling,
            queue: Mutex::new(Queue {
                linger,
                ..Queue::default()
            }),
            work: Condvar::new(),
            concurrency: parts.concurrency,
            metrics,
            outbound,
        }
    }

    /// The plugin's tenant.
    pub fn tenant(&self) -> &str {
        &self.identity.tenant
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The plugin's version: a hash of its component and manifest.
    pub fn version(&self) -> &str {
        &self.identity.version
    }

    /// The plugin's manifest, defaults filled in.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The plugin's component file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// How many instances are idle in the pool now.
    pub fn idle_instances(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The bytes of linear memory each idle instance in the pool holds, all
    /// its memories together: what one instance of the plugin costs once
    /// it has handled events (the figure the memory limit counts).
    pub fn idle_memory_bytes(&self) -> Vec<u64> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|warm| warm.store.data().limiter.used())
            .collect()
    }

    /// How many of its instances were recycled: dropped after a number of
    /// events or for their memory's high water (see
    /// [`HostConfig::recycle_after_events`](crate::HostConfig::recycle_after_events)).
    pub fn instances_recycled(&self) -> u64 {
        self.recycling.count()
    }

    /// Creates a store and instance under the plugin's limits. Instantiation
    /// runs guest code (start functions), so it gets the event's fuel and
    /// deadline too. A failure comes with the fuel it consumed; its store is
    /// dropped. When the pooling allocator has no free slot, it waits for
    /// one: that is the host's capacity, not a failure of the plugin.
    fn instantiate(&self) -> Result<Warm, (Failure, u64)> {
        let mut slot_wait = crate::deadline::SlotWait::new();
        loop {
            match self.instantiate_once() {
                Err(Instantiation::PoolExhausted(err)) => {
                    if !slot_wait.again() {
                        let failure = Failure {
                            kind: FailureKind::Timeout,
                            message: format!(
                                "instantiation failed: no slot of the pooling allocator became free in {} s: {err:#}",
                                slot_wait.waited().as_secs()
                            ),
                        };
                        return Err((failure, 0));
                    }
                }
                Err(Instantiation::Failed(failure, fuel)) => return Err((failure, fuel)),
                Ok(warm) => return Ok(warm),
            }
        }
    }

    /// One attempt at [`Plugin::instantiate`].
    fn instantiate_once(&self) -> Result<Warm, Instantiation> {
        let state = PluginState::new(
            self.identity.clone(),
            self.bounds.clone(),
            self.stats.clone(),
            self.manifest.limits.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.data_mut().http.plugin = self.outbound.clone();
        store.limiter(|s| &mut s.limiter);
        let instantiated = self.arm(&mut store).and_then(|()| {
            let instance = self.pre.instance_pre().instantiate(&mut store)?;
            let handler = self.pre.handler(&mut store, &instance)?;
            let batch = match &self.batch_export {
                Some(export) => Some(
                    instance
                        .get_typed_func::<(Vec<u8>,), ()>(&mut store, export)
                        .map_err(|e| {
                            e.context("the export handle-batch does not have the type of world batch-handler")
                        })?,
                ),
                None => None,
            };
            Ok((handler, batch))
        });
        match instantiated {
            Ok((handler, batch)) => {
                self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
                Ok(Warm {
                    store,
                    handler,
                    batch,
                    life: crate::deadline::Life::default(),
                })
            }
            // The store, dropped on return, gives back the slots it took.
            Err(err) if crate::deadline::pool_exhausted(&err) => {
                Err(Instantiation::PoolExhausted(err))
            }
            Err(err) => {
                let fuel = self.fuel_consumed(&store);
                let (stderr, _) = store.data().output.finish_delivery();
                let mut failure = classify(&err, &stderr);
                failure.message = format!("instantiation failed: {}", failure.message);
                Err(Instantiation::Failed(self.bounded(failure), fuel))
            }
        }
    }

    /// Instantiates the plugin once under its limits, as a check before it
    /// is put into service; with reused instances, the instance then waits
    /// in the pool for the first event.
    pub(crate) fn warm_up(&self) -> Result<(), Failure> {
        let warm = self.instantiate().map_err(|(failure, _)| failure)?;
        if self.mode == InstanceMode::Reuse {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(warm);
        }
        Ok(())
    }

    /// The fuel a store has consumed since it was last armed.
    fn fuel_consumed(&self, store: &Store<PluginState>) -> u64 {
        if self.fuel_metered {
            self.manifest
                .limits
                .fuel
                .saturating_sub(store.get_fuel().unwrap_or(0))
        } else {
            0
        }
    }

    /// Refuels the store and sets its deadline for one event.
    fn arm(&self, store: &mut Store<PluginState>) -> Result<(), wasmtime::Error> {
        if self.fuel_metered {
            store.set_fuel(self.manifest.limits.fuel)?;
        }
        store.set_epoch_deadline(crate::engine::deadline_ticks(
            self.manifest.limits.timeout,
            self.epoch_tick,
        ));
        // Host calls that wait (wasi:io/poll) end at the same deadline.
        store.data_mut().deadline.arm(self.manifest.limits.timeout);
        Ok(())
    }

    /// Delivers `event` to this plugin alone, synchronously, on the calling
    /// thread, without routing: returns the delivery and, when the handler
    /// succeeded, the events it emitted (for the caller to publish or drop).
    ///
    /// It blocks for as long as the handler runs, up to the plugin's time
    /// limit: call it from a blocking thread, not from an async task.
    /// [`Host::publish`](crate::Host::publish) is the routed, async way.
    ///
    /// Refuses an event of another tenant: a plugin only ever sees its own
    /// tenant's events.
    pub fn deliver(&self, event: &Event) -> Result<(Delivery, Vec<Event>), DeliverError> {
        if event.tenant() != self.identity.tenant {
            return Err(DeliverError::WrongTenant {
                event_tenant: event.tenant().to_owned(),
                plugin_tenant: self.identity.tenant.clone(),
            });
        }
        Ok(self.settle(self.deliver_in_chain(Item::new(event, None), &Overlay::default())))
    }

    /// The contract version the plugin's component targets, one of
    /// [`crate::bindings::VERSIONS`] (see `wit/`).
    pub fn wit_version(&self) -> &'static str {
        self.pre.version()
    }

    /// Applies a finished delivery's state writes to the host's store (the
    /// in-memory paths; the durable bus commits them with its cursor
    /// instead). When the store fails, the delivery fails with
    /// [`FailureKind::StateStore`] and its emitted events are dropped.
    fn settle(&self, (mut delivery, effects): (Delivery, Effects)) -> (Delivery, Vec<Event>) {
        if !delivery.outcome.is_handled() || effects.state.is_empty() {
            return (delivery, effects.emitted);
        }
        let store = self.bounds.state.store();
        match store.apply(&self.identity.tenant, &self.identity.name, &effects.state) {
            Ok(()) => (delivery, effects.emitted),
            Err(e) => {
                let failure = Failure {
                    kind: FailureKind::StateStore,
                    message: format!("the handler's state writes were not saved: {e}"),
                };
                tracing::error!(
                    plugin = %self.identity.label,
                    event_id = %delivery.event_id,
                    "{}",
                    failure.message
                );
                self.stats.failures[FailureKind::StateStore.index()]
                    .fetch_add(1, Ordering::Relaxed);
                delivery.outcome = Outcome::Failed(failure);
                delivery.emitted.clear();
                self.keep_effects(&delivery.outcome, effects);
                (delivery, Vec::new())
            }
        }
    }

    /// Queues a delivery of `event`, whose report goes to `reply`. A
    /// drainer lingering on the empty queue takes it; otherwise a blocking
    /// thread takes it at once when fewer than `concurrency` threads
    /// deliver to this plugin; otherwise the next thread to finish a
    /// delivery takes it. Must be called within a tokio runtime.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        event: Arc<Event>,
        chain_budget: Option<Arc<AtomicUsize>>,
        reply: Reply,
    ) {
        let (start_drainer, wake) = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.jobs.push_back(Job {
                event,
                chain_budget,
                reply,
            });
            if queue.waiting > 0 {
                queue.waiting -= 1;
                queue.woken += 1;
                (false, true)
            } else if queue.woken == 0 && queue.drainers < self.concurrency {
                queue.drainers += 1;
                let max = self.bounds.lingering.max;
                if queue.linger < max / 8 && queue.ended.is_some_and(|ended| ended.elapsed() < max)
                {
                    // A linger would have caught this event: linger again.
                    queue.linger = max / 8;
                }
                (true, false)
            } else {
                (false, false)
            }
        };
        if wake {
            self.work.notify_one();
        }
        if start_drainer {
            let plugin = self.clone();
            tokio::task::spawn_blocking(move || plugin.drain());
        }
    }

    /// Delivers queued events until the queue stays empty for a linger.
    /// With batching, it takes whatever is waiting (up to the batch limit)
    /// at once: it never waits for a batch to fill.
    fn drain(&self) {
        let _slot = DrainerSlot(self);
        let take = if self.batching() {
            self.bounds.max_batch_events
        } else {
            1
        };
        let mut jobs = Vec::with_capacity(take);
        let mut reports = Vec::with_capacity(take);
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.jobs.is_empty() {
                    match self.linger(queue) {
                        Some(more) => queue = more,
                        None => return,
                    }
                }
                let n = take.min(queue.jobs.len());
                jobs.extend(queue.jobs.drain(..n));
            }
            if jobs.len() == 1
                && let Some(job) = jobs.pop()
            {
                let report = self.settle(self.deliver_in_chain(
                    Item::new(&job.event, job.chain_budget),
                    &Overlay::default(),
                ));
                // The publisher may have gone away; the delivery happened anyway.
                job.reply.send(report);
                continue;
            }
            // A batch whose pending commit fills up ends early: its
            // reports go out (and their memory with them), and the rest
            // make the next batch.
            while !jobs.is_empty() {
                let items: Vec<_> = jobs
                    .iter()
                    .map(|job| Item::new(&job.event, job.chain_budget.clone()))
                    .collect();
                let delivered = self.deliver_batch_in_chain(items, false);
                let n = delivered.len().max(1).min(jobs.len());
                // Every report is settled before the first goes out, so
                // that the publishers wake once the batch is done rather
                // than in step with it.
                reports.extend(delivered.into_iter().map(|r| self.settle(r)));
                for (job, report) in jobs.drain(..n).zip(reports.drain(..)) {
                    job.reply.send(report);
                }
            }
        }
    }

    /// Lingers on the empty queue, up to the plugin's current linger, while
    /// the host's bound on lingering threads allows: returns the queue with
    /// work in it, or `None` when the drainer ends (its place given back).
    fn linger<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> Option<MutexGuard<'a, Queue>> {
        let bound = &self.bounds.lingering;
        if queue.linger.is_zero() || !bound.enter() {
            queue.drainers -= 1;
            if !bound.max.is_zero() {
                queue.ended = Some(Instant::now());
            }
            return None;
        }
        let deadline = Instant::now() + queue.linger;
        queue.waiting += 1;
        while queue.jobs.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            queue = self
                .work
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        // Woken or not, this thread no longer waits.
        if queue.woken > 0 {
            queue.woken -= 1;
        } else {
            queue.waiting -= 1;
        }
        bound.leave();
        if queue.jobs.is_empty() {
            // Nothing came: linger less next time, and not at all below
            // an eighth of the bound.
            queue.linger /= 2;
            if queue.linger < bound.max / 8 {
                queue.linger = Duration::ZERO;
            }
            queue.drainers -= 1;
            queue.ended = Some(Instant::now());
            None
        } else {
            queue.linger = (queue.linger * 2).min(bound.max);
            Some(queue)
        }
    }

    /// Whether this plugin's events go through `handle-batch`: it exports
    /// it, batches may hold more than one event, and instances are reused
    /// (a batch shares one instance, which fresh instances must not).
    pub fn batching(&self) -> bool {
        self.batch_export.is_some()
            && self.mode == InstanceMode::Reuse
            && self.bounds.max_batch_events > 1
    }

    /// The most bytes of encoded events one batch of this plugin may hold.
    fn max_batch_bytes(&self) -> usize {
        let quarter = usize::try_from(self.manifest.limits.memory_bytes / 4).unwrap_or(usize::MAX);
        self.bounds.max_batch_bytes.min(quarter)
    }

    /// Delivers `events`, in order, to this plugin alone, synchronously, on
    /// the calling thread, through `handle-batch` when the plugin
    /// [batches](Plugin::batching), and one by one through `handle`
    /// otherwise. Each event gets the same outcome, fuel, limits and
    /// emitted events as through [`Plugin::deliver`]; only the calls into
    /// the plugin are fewer.
    ///
    /// Refuses the whole slice, delivering nothing, when any event is of
    /// another tenant.
    pub fn deliver_batch(
        &self,
        events: &[Event],
    ) -> Result<Vec<(Delivery, Vec<Event>)>, DeliverError> {
        for event in events {
            if event.tenant() != self.identity.tenant {
                return Err(DeliverError::WrongTenant {
                    event_tenant: event.tenant().to_owned(),
                    plugin_tenant: self.identity.tenant.clone(),
                });
            }
        }
        let mut settled = Vec::with_capacity(events.len());
        while settled.len() < events.len() {
            let rest = &events[settled.len()..];
            let reports = self
                .deliver_batch_in_chain(rest.iter().map(|e| Item::new(e, None)).collect(), false);
            if reports.is_empty() {
                break;
            }
            // Settled before the next batch, which reads what they wrote.
            settled.extend(reports.into_iter().map(|r| self.settle(r)));
        }
        Ok(settled)
    }

    /// Delivers events in order, each with its chain's budget, through
    /// `handle-batch` where it can; returns one report per event, in order.
    /// With `until_failure`, stops after the first failed delivery: the
    /// reports are then those of the events up to and including it, and
    /// the events after it were not delivered.
    ///
    /// The reports' effects are one pending commit, bounded by
    /// [`HostConfig::max_batch_commit_bytes`](crate::HostConfig::max_batch_commit_bytes):
    /// when one more delivery at its per-delivery limits would not fit,
    /// the call stops there too, and returns the reports so far (at least
    /// one); the caller delivers the rest in another call, after it has
    /// stored these.
    pub fn deliver_batch_in_chain(
        &self,
        items: Vec<Item<'_>>,
        until_failure: bool,
    ) -> Vec<(Delivery, Effects)> {
        let mut reports = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        let mut buffer = Vec::new();
        // The state writes of the handled events so far, for the later
        // events to read (they are stored only after the whole call).
        let mut prior = Overlay::default();
        while let Some(first) = items.next() {
            let mut chunk = self.next_chunk(first, &mut items).into_iter();
            while chunk.len() > 0 {
                let before = reports.len();
                self.deliver_chunk(&mut chunk, &mut buffer, &mut reports, &prior, until_failure);
                // The next instance must see what these events wrote.
                add_handled(&mut prior, &reports[before..]);
                let failed = reports.last().is_some_and(|(d, _)| !d.outcome.is_handled());
                if (until_failure && failed) || self.commit_full(&prior) {
                    return reports;
                }
            }
        }
        reports
    }

    /// The next batch: `first` and the events after it that fit the
    /// batch's limits, in order. An event too large for a batch goes alone.
    fn next_chunk<'a>(
        &self,
        first: Item<'a>,
        items: &mut std::iter::Peekable<std::vec::IntoIter<Item<'a>>>,
    ) -> Vec<Item<'a>> {
        let max_bytes = self.max_batch_bytes();
        let mut bytes = crate::batch::encoded_len(first.event);
        let mut chunk = vec![first];
        while chunk.len() < self.bounds.max_batch_events {
            let Some(next) = items.peek() else { break };
            let len = crate::batch::encoded_len(next.event);
            if bytes + len > max_bytes {
                break;
            }
            bytes += len;
            chunk.extend(items.next());
        }
        chunk
    }

    /// Whether the pending commit `prior` describes has no room left for
    /// one more delivery at its limits.
    fn commit_full(&self, prior: &Overlay) -> bool {
        prior
            .commit_bytes
            .saturating_add(self.bounds.max_delivery_bytes())
            > self.bounds.max_batch_commit_bytes
    }

    /// Delivers the events of `chunk` through one call of `handle-batch`
    /// on one instance, or the first of them alone through `handle` when
    /// there is one event, no instance with the export, or it would not
    /// fit. Stops early when the instance traps; the caller calls again
    /// with the events left.
    fn deliver_chunk(
        &self,
        chunk: &mut std::vec::IntoIter<Item<'_>>,
        buffer: &mut Vec<u8>,
        reports: &mut Vec<(Delivery, Effects)>,
        prior: &Overlay,
        until_failure: bool,
    ) {
        let Some((mut warm, func)) = self.batch_instance(chunk.as_slice()) else {
            if let Some(item) = chunk.next() {
                reports.push(self.deliver_in_chain(item, prior));
            }
            return;
        };
        let call = self.call_batch(
            &mut warm,
            func,
            chunk.as_slice(),
            buffer,
            prior,
            until_failure,
        );
        let chunk_start = reports.len();
        for (done, item) in call.finished.into_iter().zip(chunk.by_ref()) {
            // Reported in the span the event ran in.
            let _entered = done.span.enter();
            let outcome = self.outcome_of(done.result);
            let effects = self.keep_effects(&outcome, done.effects);
            reports.push(self.report(item.event, outcome, done.fuel, done.duration, effects));
        }
        let ended = BatchEnd {
            running: call.running,
            started: call.started,
            events: call.events,
        };
        match call.result {
            Ok(()) => {
                self.clear_scope(&mut warm.store);
                self.release(warm, true, ended.events);
                let failed = reports.last().is_some_and(|(d, _)| !d.outcome.is_handled());
                // Unless the batch stopped at a failure or a full commit on
                // the host's word, the events the plugin returned without
                // reporting go through `handle`, one by one.
                if chunk.len() > 0 && !(until_failure && failed) && !call.commit_full {
                    self.deliver_unreported(chunk, reports, prior, ended);
                }
            }
            Err(err) => {
                let fuel = self.fuel_consumed(&warm.store);
                let (effects, stderr) = self.clear_scope(&mut warm.store);
                self.release(warm, false, ended.events);
                let trap = Trapped {
                    err,
                    stderr,
                    fuel,
                    effects,
                };
                self.report_trapped(chunk, reports, chunk_start, prior, ended, trap);
            }
        }
    }

    /// An instance for a batch of `events` with the export `handle-batch`,
    /// from the pool or fresh; `None` when the events go one by one: there
    /// is one, the plugin does not batch, the first is too large for a
    /// batch, or no instance with the export could be had (the first
    /// event's own delivery then instantiates again and reports the
    /// failure exactly as it would alone).
    fn batch_instance(&self, events: &[Item<'_>]) -> Option<(Warm, BatchFunc)> {
        if events.len() < 2
            || !self.batching()
            || crate::batch::encoded_len(events[0].event) > self.max_batch_bytes()
        {
            return None;
        }
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let warm = pooled.map_or_else(|| self.instantiate(), Ok).ok()?;
        match warm.batch {
            Some(func) => Some((warm, func)),
            None => {
                self.release(warm, true, 0);
                None
            }
        }
    }

    /// Calls `handle-batch` once with `events`, each under its own scope
    /// and limits (`batch.done` moves from one to the next), the batch's
    /// buffer encoded into `buffer`.
    fn call_batch(
        &self,
        warm: &mut Warm,
        func: BatchFunc,
        events: &[Item<'_>],
        buffer: &mut Vec<u8>,
        prior: &Overlay,
        until_failure: bool,
    ) -> BatchCall {
        crate::batch::encode(events.iter().map(|i| (i.event, i.attempt)), buffer);
        let mut scopes = events
            .iter()
            .map(|item| self.scope_for(item.event, item.chain_budget.clone()));
        let first_scope = scopes.next().unwrap_or_default();
        let fuel = self.fuel_metered.then_some(self.manifest.limits.fuel);
        let deadline = crate::engine::deadline_ticks(self.manifest.limits.timeout, self.epoch_tick);
        // Leaves a span a batch that unwound may have left entered, so that
        // the current span is the one that drives this batch: the parent
        // of each of its events' delivery spans.
        enter_span(None);
        let driver = tracing::Span::current();
        enter_span(events.first().map(|item| self.span(item.event)));
        let state = warm.store.data_mut();
        state.scope = first_scope;
        state.overlay = prior.clone();
        state.batch = Some(BatchRun::new(
            scopes.collect(),
            fuel,
            deadline,
            until_failure,
            driver,
        ));
        self.stats.batch_calls.fetch_add(1, Ordering::Relaxed);
        let result = self
            .arm(&mut warm.store)
            .and_then(|()| func.call(&mut warm.store, (std::mem::take(buffer),)));
        // The span of the event that was running when the call ended: one
        // that trapped, or that the plugin left unreported.
        let running = enter_span(None);
        let run = warm.store.data_mut().batch.take();
        let (finished, started, commit_full) = run.map_or_else(
            || (Vec::new(), Instant::now(), false),
            |r| (r.finished, r.started, r.commit_full),
        );
        let events = finished.len() as u64;
        self.stats
            .batched_deliveries
            .fetch_add(events, Ordering::Relaxed);
        BatchCall {
            result,
            finished,
            events,
            started,
            commit_full,
            running,
        }
    }

    /// Delivers the first event a plugin returned from `handle-batch`
    /// without reporting through `handle`, in the span it had started in;
    /// the caller's next calls deliver the others.
    fn deliver_unreported(
        &self,
        chunk: &mut std::vec::IntoIter<Item<'_>>,
        reports: &mut Vec<(Delivery, Effects)>,
        prior: &Overlay,
        ended: BatchEnd,
    ) {
        tracing::warn!(
            plugin = %self.identity.label,
            unreported = chunk.len(),
            "handle-batch returned without reporting every event; the rest go through handle"
        );
        if let Some(item) = chunk.next() {
            reports.push(self.deliver_in_span(item, prior, ended.running));
        }
    }

    /// Reports the event of `chunk` that was running when the batch's
    /// instance trapped, if any: failed with the trap; or, when the trap
    /// was the memory limit, delivered again alone through `handle`, since
    /// the batch's buffer shares the instance's memory. `reports` from
    /// `chunk_start` on are this batch's events reported before the trap.
    fn report_trapped(
        &self,
        chunk: &mut std::vec::IntoIter<Item<'_>>,
        reports: &mut Vec<(Delivery, Effects)>,
        chunk_start: usize,
        prior: &Overlay,
        ended: BatchEnd,
        trap: Trapped,
    ) {
        let Some(item) = chunk.next() else {
            // Every event was reported before the trap.
            return;
        };
        let span = ended.running.unwrap_or_else(|| self.span(item.event));
        let failure = span.in_scope(|| self.failure_of(&trap.err, &trap.stderr));
        if failure.kind == FailureKind::MemoryLimit {
            let mut prior = prior.clone();
            add_handled(&mut prior, &reports[chunk_start..]);
            reports.push(self.deliver_in_span(item, &prior, Some(span)));
            return;
        }
        let _entered = span.enter();
        let outcome = Outcome::Failed(failure);
        let effects = self.keep_effects(&outcome, trap.effects);
        let duration = ended.started.elapsed();
        reports.push(self.report(item.event, outcome, trap.fuel, duration, effects));
    }

    /// The delivery span of `event` to this plugin, a child of the span
    /// current on this thread: the one that drives the delivery (no
    /// delivery span is entered where this is called).
    fn span(&self, event: &Event) -> tracing::Span {
        let extension = |name: &str| event.extensions().get(name).map(String::as_str);
        delivery_span(
            &self.identity,
            event.id(),
            extension("traceparent"),
            extension("tracestate"),
            &tracing::Span::current(),
        )
    }

    /// What the host functions need to know about the delivery of `event`.
    fn scope_for(&self, event: &Event, chain_budget: Option<Arc<AtomicUsize>>) -> DeliveryScope {
        DeliveryScope {
            event_id: event.id().to_owned(),
            correlation_id: event.correlation_id().to_owned(),
            trace: ["traceparent", "tracestate"]
                .into_iter()
                .filter_map(|name| event.extensions().get(name).map(|v| (name, v.clone())))
                .collect(),
            depth: event.chain_depth(),
            emitted: Vec::new(),
            emitted_bytes: 0,
            log_lines: 0,
            refusals: 0,
            chain_budget,
            state: crate::overlay::PendingWrites::default(),
            http_requests: Arc::default(),
        }
    }

    /// Ends the store's delivery: flushes its output, leaves an empty
    /// scope, and returns what it emitted and wrote, and the tail of its
    /// stderr.
    fn clear_scope(&self, store: &mut Store<PluginState>) -> (Effects, String) {
        let state = store.data_mut();
        let scope = std::mem::take(&mut state.scope);
        state.batch = None;
        state.overlay.clear();
        let stderr = state.end_output();
        (Effects::of(scope), stderr)
    }

    /// A failure of guest origin, its message cut at the host's limit.
    fn bounded(&self, mut failure: Failure) -> Failure {
        // The plugin's secrets never leave in a failure: it reaches logs,
        // dead letters and the API.
        self.identity.redactor.scrub_in_place(&mut failure.message);
        if plugbus_core::text::truncate_in_place(&mut failure.message, self.bounds.max_error_bytes)
        {
            self.stats
                .error_messages_truncated
                .fetch_add(1, Ordering::Relaxed);
        }
        failure
    }

    /// The failure a call's (or an instantiation's) error means, bounded.
    fn failure_of(&self, err: &wasmtime::Error, stderr: &str) -> Failure {
        self.bounded(classify(err, stderr))
    }

    /// The outcome of a handler that returned, its error message bounded.
    fn outcome_of(&self, result: Result<(), HandlerError>) -> Outcome {
        match outcome_of(result) {
            Outcome::Failed(failure) => Outcome::Failed(self.bounded(failure)),
            handled => handled,
        }
    }

    /// Returns an instance to the pool when it may serve again, or counts
    /// it as discarded after a trap; `events` is how many events the call
    /// that just ended delivered. An instance due for recycling is dropped,
    /// and the next event gets a fresh one.
    fn release(&self, mut warm: Warm, keep: bool, events: u64) {
        if !keep {
            self.stats
                .instances_discarded
                .fetch_add(1, Ordering::Relaxed);
        } else if self.mode == InstanceMode::Reuse {
            let used = warm.store.data().limiter.used();
            let limit = self.manifest.limits.memory_bytes;
            let due = (events > 0)
                .then(|| {
                    warm.life
                        .after_delivery(events, used, limit, &self.bounds.recycle)
                })
                .flatten();
            if let Some(reason) = due {
                self.recycling.record(&self.identity.label, reason, used);
                return;
            }
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            // The instance goes back only after its output was flushed and
            // its scope cleared, so the next event starts clean.
            if idle.len() < self.concurrency {
                idle.push(warm);
            }
        }
    }

    /// What a delivery emitted and wrote, kept when it succeeded; dropped
    /// (the events counted) when it failed.
    fn keep_effects(&self, outcome: &Outcome, effects: Effects) -> Effects {
        if outcome.is_handled() {
            return effects;
        }
        if !effects.emitted.is_empty() {
            self.stats
                .emits_discarded
                .fetch_add(effects.emitted.len() as u64, Ordering::Relaxed);
        }
        Effects::default()
    }

    /// Like [`Plugin::deliver`], with the budget of events the chain of the
    /// published event may still emit.
    ///
    /// Never panics on anything the plugin does: every failure becomes an
    /// [`Outcome::Failed`].
    pub(crate) fn deliver_in_chain(&self, item: Item<'_>, prior: &Overlay) -> (Delivery, Effects) {
        self.deliver_in_span(item, prior, None)
    }

    /// Like [`Plugin::deliver_in_chain`], in `span` when the event already
    /// has its delivery span (it started in a batch that could not finish
    /// it).
    fn deliver_in_span(
        &self,
        item: Item<'_>,
        prior: &Overlay,
        span: Option<tracing::Span>,
    ) -> (Delivery, Effects) {
        let event = item.event;
        let span = span.unwrap_or_else(|| self.span(event));
        let _entered = span.enter();
        let started = Instant::now();

        let pooled = match self.mode {
            InstanceMode::Reuse => self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop(),
            InstanceMode::FreshPerEvent => None,
        };
        let (outcome, fuel, effects) = match pooled.map_or_else(|| self.instantiate(), Ok) {
            Err((failure, fuel)) => {
                self.stats
                    .instances_discarded
                    .fetch_add(1, Ordering::Relaxed);
                (Outcome::Failed(failure), fuel, Effects::default())
            }
            Ok(warm) => self.call(warm, item, prior),
        };
        self.report(event, outcome, fuel, started.elapsed(), effects)
    }

    /// Counts and logs a finished delivery and builds its report.
    fn report(
        &self,
        event: &Event,
        outcome: Outcome,
        fuel: u64,
        duration: Duration,
        effects: Effects,
    ) -> (Delivery, Effects) {
        self.metrics.seconds().record(duration.as_secs_f64());
        self.metrics.fuel().record(fuel as f64);
        match &outcome {
            Outcome::Handled => {
                self.metrics.handled().increment(1);
                self.stats.deliveries_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(fuel, micros = duration.as_micros() as u64, "handled");
            }
            Outcome::Failed(f) => {
                self.metrics.failed(f.kind).increment(1);
                self.stats.failures[f.kind.index()].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    kind = f.kind.as_str(),
                    fuel,
                    micros = duration.as_micros() as u64,
                    "delivery failed: {}",
                    plugbus_core::text::escape(&f.message, self.bounds.max_error_bytes)
                );
            }
        }
        let delivery = Delivery {
            event_id: event.id().to_owned(),
            tenant: event.tenant().to_owned(),
            event_type: event.ty().to_owned(),
            plugin: self.identity.name.clone(),
            plugin_version: self.identity.version.clone(),
            outcome,
            fuel,
            duration,
            causation_id: event.causation_id().map(str::to_owned),
            emitted: effects
                .emitted
                .iter()
                .map(|e| EmittedEvent {
                    id: e.id().to_owned(),
                    ty: e.ty().to_owned(),
                    subject: e.subject().map(str::to_owned),
                })
                .collect(),
        };
        (delivery, effects)
    }

    /// Calls `handle` on an instance, then returns the instance to the pool
    /// or, after a trap, drops it.
    fn call(&self, mut warm: Warm, item: Item<'_>, prior: &Overlay) -> (Outcome, u64, Effects) {
        warm.store.data_mut().scope = self.scope_for(item.event, item.chain_budget);
        warm.store.data_mut().overlay = prior.clone();
        let armed = self.arm(&mut warm.store);
        let result = armed.and_then(|()| {
            warm.handler
                .call_handle(&mut warm.store, item.event, item.attempt)
        });
        let fuel = self.fuel_consumed(&warm.store);
        let (effects, stderr) = self.clear_scope(&mut warm.store);
        let (outcome, keep_instance) = match result {
            Ok(result) => (self.outcome_of(result), true),
            Err(err) => (Outcome::Failed(self.failure_of(&err, &stderr)), false),
        };
        let effects = self.keep_effects(&outcome, effects);
        self.release(warm, keep_instance, 1);
        (outcome, fuel, effects)
    }
}

/// Adds the state writes and commit bytes of the handled deliveries of
/// `reports` to `prior`, for the deliveries after them to see.
fn add_handled(prior: &mut Overlay, reports: &[(Delivery, Effects)]) {
    for (delivery, effects) in reports {
        if delivery.outcome.is_handled() {
            prior.add(&effects.state);
            prior.commit_bytes = prior.commit_bytes.saturating_add(effects.bytes());
        }
    }
}

/// One event to deliver: with the budget of events its chain may still
/// emit, and which attempt this is.
#[derive(Clone)]
pub struct Item<'a> {
    /// The event.
    pub event: &'a Event,
    /// What its chain may still emit, shared by the deliveries of the
    /// chain; `None` for no chain budget.
    pub chain_budget: Option<Arc<AtomicUsize>>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

impl<'a> Item<'a> {
    /// A first attempt.
    pub fn new(event: &'a Event, chain_budget: Option<Arc<AtomicUsize>>) -> Self {
        Self {
            event,
            chain_budget,
            attempt: 1,
        }
    }
}

/// The outcome of a handler that returned.
fn outcome_of(result: Result<(), HandlerError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Handled,
        Err(HandlerError::Retryable(message)) => Outcome::Failed(Failure {
            kind: FailureKind::HandlerRetryable,
            message,
        }),
        Err(HandlerError::Permanent(message)) => Outcome::Failed(Failure {
            kind: FailureKind::HandlerPermanent,
            message,
        }),
    }
}

/// Turns the error of a call (or of an instantiation) into a failure kind.
/// `stderr` is what the plugin wrote to stderr during the delivery: a Rust
/// panic prints its message there before it aborts with `unreachable`.
fn classify(err: &wasmtime::Error, stderr: &str) -> Failure {
    if let Some(e) = err.downcast_ref::<crate::deadline::DeadlineExceeded>() {
        return Failure {
            kind: FailureKind::Timeout,
            message: e.to_string(),
        };
    }
    if let Some(e) = err.downcast_ref::<plugbus_core::state::StateError>() {
        return Failure {
            kind: FailureKind::StateStore,
            message: e.to_string(),
        };
    }
    if let Some(limit) = err.downcast_ref::<MemoryLimitExceeded>() {
        return Failure {
            kind: FailureKind::MemoryLimit,
            message: limit.to_string(),
        };
    }
    let Some(trap) = err.downcast_ref::<Trap>() else {
        return Failure {
            kind: FailureKind::Trap,
            message: format!("{err:#}"),
        };
    };
    let (kind, message) = match trap {
        Trap::OutOfFuel => (
            FailureKind::FuelExhausted,
            "fuel exhausted: the handler used up its fuel for this event".to_owned(),
        ),
        Trap::Interrupt => (
            FailureKind::Timeout,
            "timeout: the handler ran past its wall-clock limit".to_owned(),
        ),
        Trap::StackOverflow => (
            FailureKind::StackOverflow,
            "stack overflow: the handler used more than the wasm stack limit".to_owned(),
        ),
        Trap::UnreachableCodeReached => match panic_message(stderr) {
            Some(panic) => (FailureKind::Trap, format!("panic: {panic}")),
            None => (
                FailureKind::Trap,
                "unreachable: the handler executed an unreachable instruction".to_owned(),
            ),
        },
        other => (FailureKind::Trap, format!("trap: {other}")),
    };
    Failure { kind, message }
}

/// The message of a Rust panic, from the `panicked at <location>:\n<message>`
/// text the panic hook prints.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let text = &stderr[start + "panicked at ".len()..];
    let mut lines = text.lines();
    let location = lines.next().unwrap_or_default().trim_end_matches(':');
    let message = lines
        .take_while(|l| !l.starts_with("note:"))
        .collect::<Vec<_>>()
        .join(" ");
    Some(if message.is_empty() {
        format!("at {location}")
    } else {
        format!("{message} (at {location})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nfixture panic on evt-1\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("fixture panic on evt-1 (at src/lib.rs:12:9)")
        );
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn only_permanent_errors_are_final() {
        for kind in FailureKind::ALL {
            assert_eq!(kind.is_retryable(), kind != FailureKind::HandlerPermanent);
        }
    }
}
