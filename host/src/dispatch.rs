//! Delivering one event to one plugin: an instance from the plugin's pool
//! (or a fresh one), fuel and an epoch deadline set for the event, the call
//! of `handle`, and the classification of what happened into an
//! [`Outcome`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::{ComponentExportIndex, HasSelf, TypedFunc};
use wasmtime::{AsContextMut, Engine, Store, StoreContextMut, Trap};

use crate::bindings::{HandlerError, Instance as Handler, Pre};
use crate::event::Event;
use crate::manifest::Manifest;
use crate::sandbox::{Bounds, DeliveryScope, Identity, MemoryLimitExceeded, PluginState};
use crate::state::{Overlay, StateWrite};
use crate::stats::Stats;

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

/// The kind of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned `handler-error::retryable`.
    HandlerRetryable,
    /// The handler returned `handler-error::permanent`.
    HandlerPermanent,
    /// The handler used up its fuel.
    FuelExhausted,
    /// The handler ran past its wall-clock limit.
    Timeout,
    /// The instance asked for more memory than its limit.
    MemoryLimit,
    /// The handler overflowed the wasm stack.
    StackOverflow,
    /// The handler trapped: a panic, an `unreachable`, or another trap.
    Trap,
    /// The plugin's state could not be read or saved: the host's store
    /// failed, not the plugin.
    StateStore,
}

impl FailureKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FailureKind; 8] = [
        Self::HandlerRetryable,
        Self::HandlerPermanent,
        Self::FuelExhausted,
        Self::Timeout,
        Self::MemoryLimit,
        Self::StackOverflow,
        Self::Trap,
        Self::StateStore,
    ];

    /// The kind's name as it appears in output: `handler_retryable`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerRetryable => "handler_retryable",
            Self::HandlerPermanent => "handler_permanent",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::Trap => "trap",
            Self::StateStore => "state_store",
        }
    }

    /// Whether delivering the same event again may succeed. Only a
    /// permanent handler error says it cannot.
    pub fn is_retryable(self) -> bool {
        self != Self::HandlerPermanent
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed delivery: its kind and a message that explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The handler's message, the trap, or the limit that was hit.
    pub message: String,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned `ok`.
    Handled,
    /// The delivery failed.
    Failed(Failure),
}

impl Outcome {
    /// Whether the handler returned `ok`.
    pub fn is_handled(&self) -> bool {
        matches!(self, Self::Handled)
    }

    /// The failure, if the delivery failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Handled => None,
            Self::Failed(f) => Some(f),
        }
    }

    /// The failure's kind, if the delivery failed.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        self.failure().map(|f| f.kind)
    }
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
    /// The event is invalid.
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] crate::event::EventError),
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
    /// The most threads delivering to this plugin at once, and the most
    /// idle instances kept.
    concurrency: usize,
    /// Its delivery metrics, resolved once.
    metrics: DeliveryMetrics,
}

/// A plugin's handles into the process's metrics recorder (no-ops when
/// there is none): deliveries by outcome and failure kind, handle time and
/// fuel.
struct DeliveryMetrics {
    handled: metrics::Counter,
    failed: [metrics::Counter; FailureKind::ALL.len()],
    seconds: metrics::Histogram,
    fuel: metrics::Histogram,
}

impl DeliveryMetrics {
    fn new(identity: &Identity) -> Self {
        let (tenant, plugin) = (identity.tenant.clone(), identity.name.clone());
        let counter = |outcome: &'static str, kind: &'static str| {
            metrics::counter!(
                "plugbus_deliveries_total",
                "tenant" => tenant.clone(),
                "plugin" => plugin.clone(),
                "outcome" => outcome,
                "kind" => kind
            )
        };
        Self {
            handled: counter("handled", ""),
            failed: FailureKind::ALL.map(|kind| counter("failed", kind.as_str())),
            seconds: metrics::histogram!(
                "plugbus_handle_seconds",
                "tenant" => tenant.clone(),
                "plugin" => plugin.clone()
            ),
            fuel: metrics::histogram!(
                "plugbus_fuel_consumed",
                "tenant" => tenant.clone(),
                "plugin" => plugin.clone()
            ),
        }
    }
}

/// A plugin's waiting deliveries.
#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    drainers: usize,
}

/// One delivery to make, and where its report goes.
struct Job {
    event: Arc<Event>,
    chain_budget: Option<Arc<AtomicUsize>>,
    reply: tokio::sync::oneshot::Sender<(Delivery, Vec<Event>)>,
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
    batch: Option<TypedFunc<(Vec<u8>,), ()>>,
    /// What it has done, for the recycling rules.
    life: crate::deadline::Life,
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
}

impl Plugin {
    pub(crate) fn new(parts: PluginParts) -> Self {
        let metrics = DeliveryMetrics::new(&parts.identity);
        let recycling = crate::deadline::Recycling::new(&parts.identity);
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
            queue: Mutex::new(Queue::default()),
            concurrency: parts.concurrency,
            metrics,
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
    /// Refuses an invalid event, and an event of another tenant: a plugin
    /// only ever sees its own tenant's events.
    pub fn deliver(&self, event: &Event) -> Result<(Delivery, Vec<Event>), DeliverError> {
        if event.tenant() != self.identity.tenant {
            return Err(DeliverError::WrongTenant {
                event_tenant: event.tenant().to_owned(),
                plugin_tenant: self.identity.tenant.clone(),
            });
        }
        Ok(self.settle(self.deliver_in_chain(Item::new(event, None), &Overlay::default())))
    }

    /// The contract version the plugin's component targets, `0.2.0` or
    /// `0.1.0` (see `wit/`).
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

    /// Queues a delivery of `event` and returns where its report will
    /// arrive. A blocking thread takes it at once when fewer than
    /// `concurrency` threads deliver to this plugin; otherwise the next
    /// thread to finish a delivery takes it. Must be called within a tokio
    /// runtime.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        event: Arc<Event>,
        chain_budget: Option<Arc<AtomicUsize>>,
    ) -> tokio::sync::oneshot::Receiver<(Delivery, Vec<Event>)> {
        let (reply, report) = tokio::sync::oneshot::channel();
        let start_drainer = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.jobs.push_back(Job {
                event,
                chain_budget,
                reply,
            });
            let start = queue.drainers < self.concurrency;
            if start {
                queue.drainers += 1;
            }
            start
        };
        if start_drainer {
            let plugin = self.clone();
            tokio::task::spawn_blocking(move || plugin.drain());
        }
        report
    }

    /// Delivers queued events until the queue is empty. With batching, it
    /// takes whatever is waiting (up to the batch limit) at once: it never
    /// waits for a batch to fill.
    fn drain(&self) {
        let _slot = DrainerSlot(self);
        let take = if self.batching() {
            self.bounds.max_batch_events
        } else {
            1
        };
        let mut jobs = Vec::with_capacity(take);
        loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.jobs.is_empty() {
                    queue.drainers -= 1;
                    return;
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
                let _ = job.reply.send(report);
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
                let reports = self.deliver_batch_in_chain(items, false);
                let delivered = reports.len().max(1).min(jobs.len());
                for (job, report) in jobs.drain(..delivered).zip(reports) {
                    let _ = job.reply.send(self.settle(report));
                }
            }
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
    /// Refuses the whole slice, delivering nothing, when any event is
    /// invalid or of another tenant.
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
    pub(crate) fn deliver_batch_in_chain(
        &self,
        items: Vec<Item<'_>>,
        until_failure: bool,
    ) -> Vec<(Delivery, Effects)> {
        let mut reports = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        let max_bytes = self.max_batch_bytes();
        let mut buffer = Vec::new();
        // The state writes of the handled events so far, for the later
        // events to read (they are stored only after the whole call).
        let mut prior = Overlay::default();
        while let Some(first) = items.next() {
            // The batch: events that fit its limits, in order. An event
            // too large for a batch goes alone.
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
            let mut chunk = chunk.into_iter();
            while chunk.len() > 0 {
                let before = reports.len();
                self.deliver_chunk(&mut chunk, &mut buffer, &mut reports, &prior, until_failure);
                // The next instance must see what these events wrote.
                for (delivery, effects) in &reports[before..] {
                    if delivery.outcome.is_handled() {
                        prior.add(&effects.state);
                        prior.commit_bytes = prior.commit_bytes.saturating_add(effects.bytes());
                    }
                }
                let failed = reports.last().is_some_and(|(d, _)| !d.outcome.is_handled());
                if until_failure && failed {
                    return reports;
                }
                if self.commit_full(&prior) {
                    return reports;
                }
            }
        }
        reports
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
        let single = |chunk: &mut std::vec::IntoIter<Item<'_>>,
                      reports: &mut Vec<(Delivery, Effects)>| {
            if let Some(item) = chunk.next() {
                reports.push(self.deliver_in_chain(item, prior));
            }
        };
        if chunk.len() < 2
            || !self.batching()
            || crate::batch::encoded_len(chunk.as_slice()[0].event) > self.max_batch_bytes()
        {
            return single(chunk, reports);
        }
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut warm = match pooled.map_or_else(|| self.instantiate(), Ok) {
            Ok(warm) => warm,
            // The first event's own delivery instantiates again and
            // reports the failure exactly as it would alone.
            Err(_) => return single(chunk, reports),
        };
        let Some(func) = warm.batch else {
            self.release(warm, true, 0);
            return single(chunk, reports);
        };

        let events: Vec<_> = chunk.as_slice().to_vec();
        crate::batch::encode(events.iter().map(|i| (i.event, i.attempt)), buffer);
        let mut scopes = events
            .iter()
            .map(|item| self.scope_for(item.event, item.chain_budget.clone()));
        let first_scope = scopes.next().unwrap_or_default();
        let fuel = self.fuel_metered.then_some(self.manifest.limits.fuel);
        let deadline = crate::engine::deadline_ticks(self.manifest.limits.timeout, self.epoch_tick);
        enter_span(Some(self.span(events[0].event)));
        warm.store.data_mut().scope = first_scope;
        warm.store.data_mut().overlay = prior.clone();
        warm.store.data_mut().batch = Some(BatchRun {
            pending: scopes.collect(),
            finished: Vec::with_capacity(events.len()),
            fuel,
            deadline,
            started: Instant::now(),
            exhausted: false,
            until_failure,
            commit_full: false,
        });
        self.stats.batch_calls.fetch_add(1, Ordering::Relaxed);
        let result = self
            .arm(&mut warm.store)
            .and_then(|()| func.call(&mut warm.store, (std::mem::take(buffer),)));
        // The span of the event that was running when the call ended: one
        // that trapped, or that the plugin left unreported.
        let mut running = enter_span(None);
        let run = warm.store.data_mut().batch.take();
        let (finished, started, commit_full) = run.map_or_else(
            || (Vec::new(), Instant::now(), false),
            |r| (r.finished, r.started, r.commit_full),
        );
        let batch_events = finished.len() as u64;
        self.stats
            .batched_deliveries
            .fetch_add(batch_events, Ordering::Relaxed);

        let chunk_start = reports.len();
        for (done, item) in finished.into_iter().zip(chunk.by_ref()) {
            // Reported in the span the event ran in.
            let _entered = done.span.enter();
            let outcome = self.outcome_of(done.result);
            let effects = self.keep_effects(&outcome, done.effects);
            reports.push(self.report(item.event, outcome, done.fuel, done.duration, effects));
        }
        match result {
            Ok(()) => {
                self.clear_scope(&mut warm.store);
                self.release(warm, true, batch_events);
                let failed = reports.last().is_some_and(|(d, _)| !d.outcome.is_handled());
                // Events the plugin returned without reporting go through
                // `handle`, one by one, by the caller's next calls; unless
                // the batch stopped at a failure or a full commit on the
                // host's word.
                if chunk.len() > 0 && !(until_failure && failed) && !commit_full {
                    tracing::warn!(
                        plugin = %self.identity.label,
                        unreported = chunk.len(),
                        "handle-batch returned without reporting every event; the rest go through handle"
                    );
                    if let Some(item) = chunk.next() {
                        reports.push(self.deliver_in_span(item, prior, running.take()));
                    }
                }
            }
            Err(err) => {
                let fuel = self.fuel_consumed(&warm.store);
                let (effects, stderr) = self.clear_scope(&mut warm.store);
                self.release(warm, false, batch_events);
                let Some(item) = chunk.next() else {
                    // Every event was reported before the trap.
                    return;
                };
                let span = running.take().unwrap_or_else(|| self.span(item.event));
                let _entered = span.enter();
                let failure = self.failure_of(&err, &stderr);
                if failure.kind == FailureKind::MemoryLimit {
                    // The batch's buffer shares the instance's memory: the
                    // event alone, through `handle`, decides its outcome.
                    drop(_entered);
                    let mut prior = prior.clone();
                    for (delivery, effects) in &reports[chunk_start..] {
                        if delivery.outcome.is_handled() {
                            prior.add(&effects.state);
                            prior.commit_bytes = prior.commit_bytes.saturating_add(effects.bytes());
                        }
                    }
                    reports.push(self.deliver_in_span(item, &prior, Some(span)));
                    return;
                }
                let outcome = Outcome::Failed(failure);
                let effects = self.keep_effects(&outcome, effects);
                reports.push(self.report(item.event, outcome, fuel, started.elapsed(), effects));
            }
        }
    }

    /// The delivery span of `event` to this plugin.
    fn span(&self, event: &Event) -> tracing::Span {
        let extension = |name: &str| event.extensions().get(name).map(String::as_str);
        delivery_span(
            &self.identity,
            event.id(),
            extension("traceparent"),
            extension("tracestate"),
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
            state: crate::state::Pending::default(),
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
        let (stderr, dropped) = state.output.finish_delivery();
        if dropped > 0 {
            self.stats
                .output_bytes_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        (effects_of(scope), stderr)
    }

    /// A failure of guest origin, its message cut at the host's limit.
    fn bounded(&self, mut failure: Failure) -> Failure {
        if crate::text::truncate_in_place(&mut failure.message, self.bounds.max_error_bytes) {
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
                self.recycling.record(&self.identity, reason, used);
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
        self.metrics.seconds.record(duration.as_secs_f64());
        self.metrics.fuel.record(fuel as f64);
        match &outcome {
            Outcome::Handled => {
                self.metrics.handled.increment(1);
                self.stats.deliveries_ok.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(fuel, micros = duration.as_micros() as u64, "handled");
            }
            Outcome::Failed(f) => {
                self.metrics.failed[f.kind.index()].increment(1);
                self.stats.failures[f.kind.index()].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    kind = f.kind.as_str(),
                    fuel,
                    micros = duration.as_micros() as u64,
                    "delivery failed: {}",
                    crate::text::escape(&f.message, self.bounds.max_error_bytes)
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

/// One event to deliver: with the budget of events its chain may still
/// emit, and which attempt this is.
#[derive(Clone)]
pub(crate) struct Item<'a> {
    pub event: &'a Event,
    pub chain_budget: Option<Arc<AtomicUsize>>,
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

/// What a successful delivery leaves behind, for its caller to publish and
/// store: empty for a failed one.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// The events it emitted.
    pub emitted: Vec<Event>,
    /// Its state writes, in order.
    pub state: Vec<StateWrite>,
}

impl Effects {
    /// The bytes they add to a commit: each emitted event's
    /// [`crate::batch::event_bytes`], each state write's key and value.
    pub fn bytes(&self) -> usize {
        let events: usize = self.emitted.iter().map(crate::batch::event_bytes).sum();
        let writes: usize = self
            .state
            .iter()
            .map(|w| crate::state::write_bytes(&w.key, w.value.as_deref()))
            .sum();
        events.saturating_add(writes)
    }
}

/// The share of a chain's remaining event budget that the `index`-th of
/// `n` children gets: `remaining` divided as evenly as possible, the first
/// `remaining % n` children getting one more than the others; 0 when
/// `index` is not below `n`. The shares of all `n` children add up to
/// `remaining`.
///
/// A delivery's emitted events divide what the chain had left when it
/// ended; a durable consumer divides an event's budget
/// ([`Event::chain_budget`]) among the plugins subscribed to it, each by
/// its place in a fixed order.
pub fn chain_budget_share(remaining: usize, n: usize, index: usize) -> usize {
    if index >= n {
        return 0;
    }
    remaining / n + usize::from(index < remaining % n)
}

/// The shares of `remaining` among `n` children, in order; see
/// [`chain_budget_share`]. Empty when `n` is 0.
pub fn split_chain_budget(remaining: usize, n: usize) -> impl ExactSizeIterator<Item = usize> {
    (0..n).map(move |index| chain_budget_share(remaining, n, index))
}

/// What an ended delivery emitted and wrote. When the delivery had a chain
/// budget, each emitted event carries its share of what the chain has left
/// (its `chainbudget` extension), so that the budget travels with the
/// events: the events below each one may be at most its share.
fn effects_of(scope: DeliveryScope) -> Effects {
    let mut emitted = scope.emitted;
    if let Some(budget) = &scope.chain_budget {
        let left = budget.load(Ordering::Acquire);
        let shares = split_chain_budget(left, emitted.len());
        for (event, share) in emitted.iter_mut().zip(shares) {
            event.set_chain_budget(share);
        }
    }
    Effects {
        emitted,
        state: scope.state.writes,
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

/// The batch a store is handling through `handle-batch`: the events still
/// to start, the results reported so far, and each event's budgets.
pub(crate) struct BatchRun {
    /// The scopes of the events not started yet, in order.
    pending: std::collections::VecDeque<DeliveryScope>,
    /// What each reported event did, in order.
    finished: Vec<Finished>,
    /// Each event's fuel, when fuel is metered.
    fuel: Option<u64>,
    /// Each event's deadline, in epoch ticks.
    deadline: u64,
    /// When the event now running started.
    started: Instant,
    /// Every event has been reported.
    exhausted: bool,
    /// Stop the batch at the first failure.
    until_failure: bool,
    /// The batch stopped with events left because its pending commit had
    /// no room for another delivery.
    commit_full: bool,
}

/// One event of a batch, reported through `batch.done`.
struct Finished {
    /// The delivery span it ran in.
    span: tracing::Span,
    result: Result<(), HandlerError>,
    fuel: u64,
    duration: Duration,
    effects: Effects,
}

thread_local! {
    /// The delivery span entered for the event of a batch that is running
    /// on this thread, so that what the plugin logs lands in it.
    static BATCH_SPAN: std::cell::RefCell<Option<tracing::span::EnteredSpan>> =
        const { std::cell::RefCell::new(None) };
}

/// Leaves the batch event's span entered on this thread, if any, and
/// enters `span`; returns the span it left.
fn enter_span(span: Option<tracing::Span>) -> Option<tracing::Span> {
    BATCH_SPAN.with(|current| {
        let mut current = current.borrow_mut();
        let left = current.take().map(tracing::span::EnteredSpan::exit);
        *current = span.map(tracing::Span::entered);
        left
    })
}

/// The delivery span of the event `scope` is for.
fn scope_span(identity: &Identity, scope: &DeliveryScope) -> tracing::Span {
    let extension = |name: &str| {
        scope
            .trace
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    delivery_span(
        identity,
        &scope.event_id,
        extension("traceparent"),
        extension("tracestate"),
    )
}

/// The span of one delivery: tenant, plugin, version and event id, and
/// the event's W3C trace context, which it continues.
fn delivery_span(
    identity: &Identity,
    event_id: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "delivery",
        tenant = %identity.tenant,
        plugin = %identity.name,
        version = %identity.version,
        event_id = %event_id,
        traceparent = traceparent,
    );
    crate::telemetry::continue_trace(&span, traceparent, tracestate);
    span
}

/// `batch.done`: records the current event's result, fuel, time and
/// emitted events, then starts the next event with a full tank, a fresh
/// deadline and its own scope; or, after a failure in a batch that stops
/// at failures, tells the plugin to stop.
fn batch_done(
    mut store: StoreContextMut<'_, PluginState>,
    (result,): (Result<(), HandlerError>,),
) -> wasmtime::Result<(bool,)> {
    let left = store.get_fuel().ok();
    let state = store.data_mut();
    let Some(run) = state.batch.as_mut() else {
        return Err(wasmtime::Error::msg(
            "batch.done called outside of handle-batch",
        ));
    };
    if run.exhausted {
        return Err(wasmtime::Error::msg(
            "batch.done called more often than the batch has events",
        ));
    }
    let fuel = match (run.fuel, left) {
        (Some(budget), Some(left)) => budget.saturating_sub(left),
        _ => 0,
    };
    let duration = run.started.elapsed();
    // Bounded at once: the batch holds its events' results until it ends.
    let mut result = result;
    if let Err(HandlerError::Retryable(message) | HandlerError::Permanent(message)) = &mut result
        && crate::text::truncate_in_place(message, state.bounds.max_error_bytes)
    {
        state
            .stats
            .error_messages_truncated
            .fetch_add(1, Ordering::Relaxed);
    }
    // What the event adds to the batch's pending commit; the batch ends
    // when another event at its limits would not fit.
    let adds = if result.is_ok() {
        state.scope.emitted_bytes + state.scope.state.bytes
    } else {
        0
    };
    let held = state.overlay.commit_bytes.saturating_add(adds);
    let commit_full = held.saturating_add(state.bounds.max_delivery_bytes())
        > state.bounds.max_batch_commit_bytes;
    run.commit_full = commit_full && !run.pending.is_empty();
    let stop = (run.until_failure && result.is_err()) || commit_full;
    if stop {
        run.pending.clear();
    }
    let next = run.pending.pop_front();
    let (fuel_budget, deadline) = (run.fuel, run.deadline);
    let exhausted = next.is_none();
    let next_span = next.as_ref().map(|next| scope_span(&state.identity, next));
    let scope = std::mem::replace(&mut state.scope, next.unwrap_or_default());
    let (_, dropped) = state.output.finish_delivery();
    if dropped > 0 {
        state
            .stats
            .output_bytes_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
    if result.is_ok() {
        // The events after this one see its writes.
        state.overlay.add(&scope.state.writes);
        state.overlay.commit_bytes = held;
    }
    let span = enter_span(next_span).unwrap_or_else(|| scope_span(&state.identity, &scope));
    let effects = if result.is_ok() {
        effects_of(scope)
    } else {
        // A failed event's effects are dropped now, not held until the
        // batch ends.
        state
            .stats
            .emits_discarded
            .fetch_add(scope.emitted.len() as u64, Ordering::Relaxed);
        Effects::default()
    };
    let Some(run) = state.batch.as_mut() else {
        return Ok((false,));
    };
    run.finished.push(Finished {
        span,
        result,
        fuel,
        duration,
        effects,
    });
    run.exhausted = exhausted;
    run.started = Instant::now();
    // The next event, or the plugin's return after the last, runs under a
    // full event's limits.
    if let Some(budget) = fuel_budget {
        store.set_fuel(budget)?;
    }
    store.data_mut().deadline.restart();
    store.as_context_mut().set_epoch_deadline(deadline);
    Ok((!stop,))
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
    if let Some(e) = err.downcast_ref::<crate::state::StateError>() {
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

/// Registers the imports of every served version of the world, WASI
/// included, in a linker.
pub(crate) fn linker(
    engine: &Engine,
) -> Result<wasmtime::component::Linker<PluginState>, wasmtime::Error> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // Host calls that wait end at the delivery's deadline.
    crate::deadline::add_to_linker(&mut linker)?;
    crate::bindings::v0_2::Handler::add_to_linker::<PluginState, HasSelf<PluginState>>(
        &mut linker,
        |state| state,
    )?;
    crate::bindings::v0_1::Handler::add_to_linker::<PluginState, HasSelf<PluginState>>(
        &mut linker,
        |state| state,
    )?;
    // `batch.done`, imported by plugins of world `batch-handler`. A 0.1.0
    // plugin gets its events through `handle` (its batch layout has no
    // attempt), but it still imports `done`.
    for version in crate::bindings::VERSIONS {
        linker
            .instance(&format!("plugbus:plugin/batch@{version}"))?
            .func_wrap("done", batch_done)?;
    }
    Ok(linker)
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
    fn chain_budgets_split_evenly_and_add_up() {
        for remaining in 0..200 {
            assert_eq!(split_chain_budget(remaining, 0).len(), 0);
            for n in 1..24 {
                let shares: Vec<_> = split_chain_budget(remaining, n).collect();
                assert_eq!(shares.len(), n);
                assert_eq!(
                    shares.iter().sum::<usize>(),
                    remaining,
                    "{remaining} in {n}"
                );
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(
                    max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                    "{shares:?}"
                );
                // The larger shares come first.
                assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
                assert_eq!(chain_budget_share(remaining, n, n), 0);
            }
        }
        assert_eq!(split_chain_budget(10, 4).collect::<Vec<_>>(), [3, 3, 2, 2]);
        assert_eq!(split_chain_budget(2, 3).collect::<Vec<_>>(), [1, 1, 0]);
        let huge: Vec<_> = split_chain_budget(usize::MAX, 2).collect();
        assert_eq!(huge, [usize::MAX / 2 + 1, usize::MAX / 2]);
    }

    #[test]
    fn only_permanent_errors_are_final() {
        for kind in FailureKind::ALL {
            assert_eq!(kind.is_retryable(), kind != FailureKind::HandlerPermanent);
        }
    }
}
