//! What a plugin instance's `Store` holds: a deny-by-default WASI context,
//! the `wasi:http` context and its hooks (`crate::outbound`), the memory
//! limiter, the bounded capture of stdout and stderr, the scope
//! of the delivery under way and, during a call of `handle-batch`, the
//! batch's run. The host functions that read and write them, for every
//! version of the world, are in module `bindings`; this module knows
//! nothing of the generated types.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wasmtime_wasi_io::bytes::Bytes;

use crate::deadline::{Deadline, HasDeadline, RecyclePolicy};
use crate::overlay::{Overlay, PendingWrites, StateSlot};
use crate::stats::Stats;
use plugbus_core::event::Event;
use plugbus_core::secrets::{Redactor, Secrets};
use plugbus_core::state::StateWrite;

/// The most table elements any table of a plugin may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The most core instances, tables and memories one plugin instance may create.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
/// How many bytes of stderr are kept per delivery to explain a trap.
const STDERR_TAIL: usize = 2048;
/// The most bytes (of wasmtime-wasi-http's in-memory representation) one
/// `wasi:http` fields resource (a request's or response's headers) may
/// hold: about 8 KiB of headers on the wire, as HTTP servers commonly
/// allow, with room for the representation's overhead.
const MAX_HTTP_FIELDS_BYTES: usize = 64 * 1024;
/// The most resources (streams, pollables, `wasi:http` requests, fields,
/// bodies, …) one instance may hold at once. They live in the host's
/// memory, outside the instance's memory limit: with
/// [`MAX_HTTP_FIELDS_BYTES`] per fields resource and the outbound hooks'
/// 16 KiB per unsent body, this bounds what a plugin that creates them
/// and never sends them can make the host hold (about 80 MiB). Plugins
/// hold a handful; a Python or JavaScript runtime some tens.
const MAX_RESOURCES: usize = 1024;

/// The bounds the host functions enforce, part of the host's
/// configuration, and the state store they read.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    pub state: Arc<StateSlot>,
    /// When long-lived instances are recycled.
    pub recycle: RecyclePolicy,
    pub max_state_key_bytes: usize,
    pub max_state_value_bytes: usize,
    pub max_state_bytes_per_delivery: usize,
    pub max_chain_depth: u32,
    pub max_emits_per_delivery: usize,
    pub max_log_bytes: usize,
    pub max_log_lines_per_delivery: usize,
    pub max_output_bytes_per_delivery: usize,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    /// The most bytes of events one delivery may emit, counted by
    /// [`crate::batch::event_bytes`].
    pub max_emit_bytes_per_delivery: usize,
    /// The largest emitted event the event log stores, in bytes of its
    /// stored form (its CloudEvents JSON); `None`: no bound of the log's.
    pub max_event_bytes: Option<usize>,
    /// The most bytes one batch's pending commit may hold: the emitted
    /// events and state writes of its successful deliveries so far, and of
    /// the delivery running.
    pub max_batch_commit_bytes: usize,
    /// The longest failure message of guest origin kept, in bytes.
    pub max_error_bytes: usize,
    /// How long, and how many, drainer threads linger on empty queues.
    pub lingering: Arc<crate::dispatch::Lingering>,
}

impl Bounds {
    /// The most bytes one delivery can add to its batch's commit: its
    /// emitted events and its state writes at their limits.
    pub fn max_delivery_bytes(&self) -> usize {
        self.max_emit_bytes_per_delivery
            .saturating_add(self.max_state_bytes_per_delivery)
    }
}

/// Who a plugin is: what its host functions need to know about it.
#[derive(Debug)]
pub(crate) struct Identity {
    pub tenant: String,
    pub name: String,
    /// `<tenant>/<plugin>`, the name the plugin's logs go under.
    pub label: String,
    /// The source of the events it emits: `plugbus://<tenant>/<plugin>`.
    pub source: String,
    pub version: String,
    pub config: BTreeMap<String, String>,
    /// The secrets of its tenant its manifest grants it, that the tenant has.
    pub secrets: Secrets,
    /// Scrubs their values from what leaves the sandbox: its log lines,
    /// output and error messages.
    pub redactor: Arc<Redactor>,
}

/// A plugin's memory went past its limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the instance asked for {requested} bytes of linear memory; its limit is {limit}"
)]
pub(crate) struct MemoryLimitExceeded {
    pub requested: u64,
    pub limit: u64,
}

/// Caps the sum of all linear memories of one instance, and the count and
/// size of its tables.
pub(crate) struct Limiter {
    limit: u64,
    used: u64,
}

impl Limiter {
    /// The bytes of linear memory the instance holds, all memories together.
    pub fn used(&self) -> u64 {
        self.used
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self
            .used
            .saturating_sub(current as u64)
            .saturating_add(desired as u64);
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested,
                limit: self.limit,
            }));
        }
        self.used = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// What one delivery in progress needs: the handled event's chain, the
/// events emitted so far, and the per-delivery budgets.
#[derive(Default)]
pub(crate) struct DeliveryScope {
    pub event_id: String,
    pub correlation_id: String,
    pub depth: u32,
    pub emitted: Vec<Event>,
    /// Bytes of the events emitted so far, as [`crate::batch::event_bytes`]
    /// counts them when they are emitted.
    pub emitted_bytes: usize,
    pub log_lines: usize,
    /// Emits and state writes refused so far; only the first is logged,
    /// so that a plugin calling again and again cannot flood the log.
    pub refusals: usize,
    /// Events the whole chain of the published event may still emit.
    pub chain_budget: Option<Arc<AtomicUsize>>,
    /// The state writes of the delivery so far.
    pub state: PendingWrites,
    /// The trace context (`traceparent`, `tracestate`) of the handled
    /// event, carried onto the events it emits.
    pub trace: Vec<(&'static str, String)>,
    /// The outbound HTTP requests of the delivery so far: a fresh counter
    /// for every delivery (every attempt, every event of a batch), which
    /// [`crate::outbound::Hooks`] takes up at the delivery's first
    /// `wasi:http` call.
    pub http_requests: Arc<std::sync::atomic::AtomicU32>,
}

/// The data of a plugin instance's `Store`.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    /// The resources of WASI and `wasi:http`, in one table.
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    /// How the plugin's outbound HTTP requests are sent.
    pub http: crate::outbound::Hooks,
    pub limiter: Limiter,
    /// When the delivery under way must end, for host calls that wait.
    pub deadline: Deadline,
    pub identity: Arc<Identity>,
    pub bounds: Arc<Bounds>,
    pub stats: Arc<Stats>,
    pub output: Arc<OutputCapture>,
    pub scope: DeliveryScope,
    /// The batch being handled through `handle-batch`, if any.
    pub batch: Option<BatchRun>,
    /// The state writes of the batch's successful deliveries so far.
    pub overlay: Overlay,
}

impl PluginState {
    /// A fresh state: no files, no environment, no arguments, no network;
    /// stdout and stderr go to the host log, bounded.
    pub fn new(
        identity: Arc<Identity>,
        bounds: Arc<Bounds>,
        stats: Arc<Stats>,
        memory_limit: u64,
    ) -> Self {
        let output = Arc::new(OutputCapture::new(
            identity.label.clone(),
            bounds.max_output_bytes_per_delivery,
            bounds.max_log_bytes,
            identity.redactor.clone(),
        ));
        let wasi = WasiCtx::builder()
            .stdout(CapturedStream {
                capture: output.clone(),
                stream: Stream::Stdout,
            })
            .stderr(CapturedStream {
                capture: output.clone(),
                stream: Stream::Stderr,
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut http_ctx = WasiHttpCtx::new();
        http_ctx.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            http_ctx,
            http: crate::outbound::Hooks::default(),
            limiter: Limiter {
                limit: memory_limit,
                used: 0,
            },
            deadline: Deadline::default(),
            identity,
            bounds,
            stats,
            output,
            scope: DeliveryScope::default(),
            batch: None,
            overlay: Overlay::default(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // The hooks see the delivery under way: its event, its trace, its
        // request count (taken up when the delivery changed) and its
        // deadline (re-armed for every event of a batch).
        self.http.follow(&self.scope, self.deadline.at());
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl HasDeadline for PluginState {
    fn deadline(&self) -> Deadline {
        self.deadline
    }
}

impl PluginState {
    /// Ends the output of the delivery under way: flushes its unfinished
    /// lines, counts the bytes dropped over its budget, and returns the
    /// tail of its stderr.
    pub fn end_output(&mut self) -> String {
        let (stderr, dropped) = self.output.finish_delivery();
        if dropped > 0 {
            self.stats
                .output_bytes_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        stderr
    }

    /// Counts a refused emit or state write; true for the delivery's first.
    pub fn first_refusal(&mut self) -> bool {
        self.scope.refusals += 1;
        self.scope.refusals == 1
    }

    /// Whether `size` more bytes fit in the pending commit of the batch
    /// this delivery is part of: what the batch's earlier successful
    /// deliveries hold, what this delivery emitted and wrote so far, and
    /// `size`.
    pub fn check_commit_bytes(&self, size: usize) -> Result<(), String> {
        let max = self.bounds.max_batch_commit_bytes;
        let held = self
            .overlay
            .commit_bytes
            .saturating_add(self.scope.emitted_bytes)
            .saturating_add(self.scope.state.bytes);
        let total = held.saturating_add(size);
        if total > max {
            return Err(format!(
                "the host's limit of {max} bytes of emitted events and state writes per batch commit is reached: \
                 {held} bytes are held, and these {size} would make {total}"
            ));
        }
        Ok(())
    }
}

/// How a handler failed, in the host's terms: each version of the world
/// has its own generated `handler-error`, and its bindings convert it to
/// this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandlerError {
    /// `handler-error::retryable`.
    Retryable(String),
    /// `handler-error::permanent`.
    Permanent(String),
}

impl HandlerError {
    /// The handler's message.
    fn message_mut(&mut self) -> &mut String {
        match self {
            Self::Retryable(message) | Self::Permanent(message) => message,
        }
    }
}

/// What a successful delivery leaves behind, for its caller to publish and
/// store: empty for a failed one.
#[derive(Debug, Default)]
pub struct Effects {
    /// The events it emitted.
    pub emitted: Vec<Event>,
    /// Its state writes, in order.
    pub state: Vec<StateWrite>,
}

impl Effects {
    /// What an ended delivery emitted and wrote. When the delivery had a
    /// chain budget, each emitted event carries its share of what the
    /// chain has left (its `chainbudget` extension), so that the budget
    /// travels with the events: the events below each one may be at most
    /// its share.
    pub(crate) fn of(scope: DeliveryScope) -> Self {
        let mut emitted = scope.emitted;
        if let Some(budget) = &scope.chain_budget {
            let left = budget.load(Ordering::Acquire);
            let shares = split_chain_budget(left, emitted.len());
            for (event, share) in emitted.iter_mut().zip(shares) {
                event.set_chain_budget(share);
            }
        }
        Self {
            emitted,
            state: scope.state.writes,
        }
    }

    /// The bytes they add to a commit: each emitted event's
    /// [`crate::batch::event_bytes`], each state write's key and value.
    pub fn bytes(&self) -> usize {
        let events: usize = self.emitted.iter().map(crate::batch::event_bytes).sum();
        let writes: usize = self
            .state
            .iter()
            .map(|w| plugbus_core::state::write_bytes(&w.key, w.value.as_deref()))
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

/// The batch a store is handling through `handle-batch`: the events still
/// to start, the results reported so far, and each event's budgets.
pub(crate) struct BatchRun {
    /// The scopes of the events not started yet, in order.
    pending: VecDeque<DeliveryScope>,
    /// What each reported event did, in order.
    pub finished: Vec<Finished>,
    /// Each event's fuel, when fuel is metered.
    fuel: Option<u64>,
    /// Each event's deadline, in epoch ticks.
    epoch_deadline: u64,
    /// When the event now running started.
    pub started: Instant,
    /// Every event has been reported.
    exhausted: bool,
    /// Stop the batch at the first failure.
    until_failure: bool,
    /// The batch stopped with events left because its pending commit had
    /// no room for another delivery.
    pub commit_full: bool,
    /// The span that was current when the batch started (or none): the
    /// parent of every delivery span of the batch. Each event's span is
    /// made while the previous event's span is still entered, so the
    /// parent is named, never taken from the current span.
    driver: tracing::Span,
}

impl BatchRun {
    /// A run of the events of `pending` (the first one's scope is already
    /// in the store), each with `fuel` and an epoch deadline of
    /// `epoch_deadline` ticks, their delivery spans children of `driver`.
    pub fn new(
        pending: VecDeque<DeliveryScope>,
        fuel: Option<u64>,
        epoch_deadline: u64,
        until_failure: bool,
        driver: tracing::Span,
    ) -> Self {
        Self {
            driver,
            finished: Vec::with_capacity(pending.len() + 1),
            pending,
            fuel,
            epoch_deadline,
            started: Instant::now(),
            exhausted: false,
            until_failure,
            commit_full: false,
        }
    }
}

/// One event of a batch, reported through `batch.done`.
pub(crate) struct Finished {
    /// The delivery span it ran in.
    pub span: tracing::Span,
    pub result: Result<(), HandlerError>,
    pub fuel: u64,
    pub duration: Duration,
    pub effects: Effects,
}

/// Why `batch.done` was refused: the plugin called it when it may not.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchMisuse {
    /// Not inside a call of `handle-batch`.
    #[error("batch.done called outside of handle-batch")]
    OutsideBatch,
    /// After the last event of the batch.
    #[error("batch.done called more often than the batch has events")]
    TooOften,
}

/// What the store is to run next after `batch.done`, and under which
/// limits: each event, and the plugin's return after the last, runs under
/// a full event's limits.
pub(crate) struct BatchStep {
    /// Whether the plugin is to go on with the next event.
    pub go_on: bool,
    /// The fuel to set, when fuel is metered.
    pub fuel: Option<u64>,
    /// The epoch deadline to set, in ticks.
    pub epoch_deadline: u64,
}

impl BatchRun {
    /// Ends the event now running, after it `failed` or not: the batch
    /// goes on unless it stops at failures and this one failed, or its
    /// pending commit is `commit_full` (another event at its limits would
    /// not fit). Returns the step and the scope of the next event, if any.
    fn advance(&mut self, failed: bool, commit_full: bool) -> (BatchStep, Option<DeliveryScope>) {
        self.commit_full = commit_full && !self.pending.is_empty();
        let stop = (self.until_failure && failed) || commit_full;
        if stop {
            self.pending.clear();
        }
        let next = self.pending.pop_front();
        self.exhausted = next.is_none();
        let step = BatchStep {
            go_on: !stop,
            fuel: self.fuel,
            epoch_deadline: self.epoch_deadline,
        };
        (step, next)
    }
}

impl PluginState {
    /// `batch.done`, in the host's terms: records the result, fuel
    /// (`fuel_left` is what the store has left), time and effects of the
    /// batch's event now running, then starts the next event with its own
    /// scope; or, after a failure in a batch that stops at failures, or
    /// when the batch's pending commit has no room for another delivery,
    /// ends the batch.
    pub fn batch_event_done(
        &mut self,
        result: Result<(), HandlerError>,
        fuel_left: Option<u64>,
    ) -> Result<BatchStep, BatchMisuse> {
        let mut run = self.batch.take().ok_or(BatchMisuse::OutsideBatch)?;
        let step = self.record_batch_event(&mut run, result, fuel_left);
        self.batch = Some(run);
        step
    }

    /// [`PluginState::batch_event_done`] of `run`, taken out of the store.
    fn record_batch_event(
        &mut self,
        run: &mut BatchRun,
        mut result: Result<(), HandlerError>,
        fuel_left: Option<u64>,
    ) -> Result<BatchStep, BatchMisuse> {
        if run.exhausted {
            return Err(BatchMisuse::TooOften);
        }
        let fuel = match (run.fuel, fuel_left) {
            (Some(budget), Some(left)) => budget.saturating_sub(left),
            _ => 0,
        };
        let duration = run.started.elapsed();
        // Bounded at once: the batch holds its events' results until it ends.
        self.bound_handler_error(&mut result);
        // What the batch's pending commit holds with this event's effects;
        // the batch ends when another event at its limits would not fit.
        let held = match result {
            Ok(()) => self
                .overlay
                .commit_bytes
                .saturating_add(self.scope.emitted_bytes + self.scope.state.bytes),
            Err(_) => self.overlay.commit_bytes,
        };
        let commit_full = held.saturating_add(self.bounds.max_delivery_bytes())
            > self.bounds.max_batch_commit_bytes;
        let (step, next) = run.advance(result.is_err(), commit_full);
        // The next event's span is made while this event's span is still
        // entered: its parent is the batch's driver, named.
        let next_span = next
            .as_ref()
            .map(|next| scope_span(&self.identity, next, &run.driver));
        let scope = std::mem::replace(&mut self.scope, next.unwrap_or_default());
        self.end_output();
        let span = enter_span(next_span)
            .unwrap_or_else(|| scope_span(&self.identity, &scope, &run.driver));
        let effects = match result {
            Ok(()) => {
                // The events after this one see its writes.
                self.overlay.add(&scope.state.writes);
                self.overlay.commit_bytes = held;
                Effects::of(scope)
            }
            Err(_) => {
                // A failed event's effects are dropped now, not held until
                // the batch ends.
                self.stats
                    .emits_discarded
                    .fetch_add(scope.emitted.len() as u64, Ordering::Relaxed);
                Effects::default()
            }
        };
        run.finished.push(Finished {
            span,
            result,
            fuel,
            duration,
            effects,
        });
        run.started = Instant::now();
        Ok(step)
    }

    /// Scrubs the plugin's secrets from a handler's error message, then
    /// cuts it at the host's limit, counted.
    fn bound_handler_error(&self, result: &mut Result<(), HandlerError>) {
        if let Err(error) = result {
            self.identity.redactor.scrub_in_place(error.message_mut());
        }
        if let Err(error) = result
            && plugbus_core::text::truncate_in_place(
                error.message_mut(),
                self.bounds.max_error_bytes,
            )
        {
            self.stats
                .error_messages_truncated
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// The delivery span entered for the event of a batch that is running
    /// on this thread, so that what the plugin logs lands in it.
    static BATCH_SPAN: std::cell::RefCell<Option<tracing::span::EnteredSpan>> =
        const { std::cell::RefCell::new(None) };
}

/// Leaves the batch event's span entered on this thread, if any, and
/// enters `span`; returns the span it left.
pub(crate) fn enter_span(span: Option<tracing::Span>) -> Option<tracing::Span> {
    BATCH_SPAN.with(|current| {
        let mut current = current.borrow_mut();
        let left = current.take().map(tracing::span::EnteredSpan::exit);
        *current = span.map(tracing::Span::entered);
        left
    })
}

/// The delivery span of the event `scope` is for, a child of `parent`
/// (see [`delivery_span`]).
fn scope_span(identity: &Identity, scope: &DeliveryScope, parent: &tracing::Span) -> tracing::Span {
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
        parent,
    )
}

/// The span of one delivery: tenant, plugin, version and event id, and
/// the event's W3C trace context, which it continues.
///
/// Its parent is `parent`, the span that drives the delivery (or
/// [`tracing::Span::none`], for a root), never the span current when it is
/// made: in a batch, that is the previous event's delivery span, and each
/// delivery would be logged (and exported) inside every earlier one. When
/// the event carries a valid `traceparent` and spans are exported, the
/// exported span's parent is that remote span instead.
pub(crate) fn delivery_span(
    identity: &Identity,
    event_id: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    parent: &tracing::Span,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: parent,
        "delivery",
        tenant = %identity.tenant,
        plugin = %identity.name,
        version = %identity.version,
        event_id = %event_id,
        traceparent = traceparent,
    );
    plugbus_core::trace::continue_trace(&span, traceparent, tracestate);
    span
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// A plugin's stdout and stderr: forwarded line by line into the host log
/// under the plugin's name, up to a byte budget per delivery; the rest is
/// counted and dropped. The guest never sees a write fail.
pub(crate) struct OutputCapture {
    label: String,
    /// The longest line forwarded, in bytes, once escaped.
    max_line_bytes: usize,
    /// Scrubs the plugin's secrets from each line and from the stderr
    /// returned.
    redactor: Arc<Redactor>,
    inner: Mutex<CaptureInner>,
}

struct CaptureInner {
    budget: usize,
    used: usize,
    dropped: usize,
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
    stderr_tail: Vec<u8>,
}

impl OutputCapture {
    fn new(label: String, budget: usize, max_line_bytes: usize, redactor: Arc<Redactor>) -> Self {
        Self {
            label,
            max_line_bytes,
            redactor,
            inner: Mutex::new(CaptureInner {
                budget,
                used: 0,
                dropped: 0,
                stdout_line: Vec::new(),
                stderr_line: Vec::new(),
                stderr_tail: Vec::new(),
            }),
        }
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let room = inner.budget.saturating_sub(inner.used);
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        inner.used += kept.len();
        inner.dropped += dropped.len();
        if let Stream::Stderr = stream {
            let room = STDERR_TAIL.saturating_sub(inner.stderr_tail.len());
            let take = kept.len().min(room);
            inner.stderr_tail.extend_from_slice(&kept[..take]);
        }
        for &byte in kept {
            let line = match stream {
                Stream::Stdout => &mut inner.stdout_line,
                Stream::Stderr => &mut inner.stderr_line,
            };
            if byte == b'\n' {
                let text = String::from_utf8_lossy(line).into_owned();
                line.clear();
                self.forward(stream, &text, false);
            } else {
                line.push(byte);
            }
        }
    }

    /// Writes one line of the plugin's output into the host log, its
    /// secrets scrubbed (also a secret's start at its end, when it was
    /// `cut`), escaped and bounded like its log lines.
    fn forward(&self, stream: Stream, text: &str, cut: bool) {
        let text = if cut {
            self.redactor.scrub_cut(text)
        } else {
            self.redactor.scrub(text)
        };
        let text = plugbus_core::text::escape(&text, self.max_line_bytes);
        tracing::info!(
            target: "plugbus::plugin",
            plugin = %self.label,
            stream = stream.name(),
            "{text}"
        );
    }

    /// Ends a delivery: forwards unfinished lines, reports dropped output,
    /// resets the budget, and returns the stderr written during the delivery
    /// (its first bytes), which explains a panic.
    pub fn finish_delivery(&self) -> (String, usize) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = match stream {
                Stream::Stdout => std::mem::take(&mut inner.stdout_line),
                Stream::Stderr => std::mem::take(&mut inner.stderr_line),
            };
            if !line.is_empty() {
                // Unfinished: the plugin's output may have been cut at the
                // budget in the middle of a secret.
                self.forward(stream, &String::from_utf8_lossy(&line), true);
            }
        }
        let dropped = std::mem::take(&mut inner.dropped);
        if dropped > 0 {
            tracing::warn!(
                plugin = %self.label,
                "plugin wrote {dropped} bytes of stdout/stderr over the limit of {} per delivery; they were dropped",
                inner.budget
            );
        }
        inner.used = 0;
        let tail = String::from_utf8_lossy(&std::mem::take(&mut inner.stderr_tail)).into_owned();
        // The tail may end in the middle of a secret, cut at its length.
        (self.redactor.scrub_cut(&tail).into_owned(), dropped)
    }
}

/// The stdout or stderr handed to the guest's WASI context.
struct CapturedStream {
    capture: Arc<OutputCapture>,
    stream: Stream,
}

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(CapturedWriter {
            capture: self.capture.clone(),
            stream: self.stream,
        })
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(CapturedWriter {
            capture: self.capture.clone(),
            stream: self.stream,
        })
    }
}

struct CapturedWriter {
    capture: Arc<OutputCapture>,
    stream: Stream,
}

/// How much the guest may write in one call.
const WRITE_PERMIT: usize = 64 * 1024;

impl OutputStream for CapturedWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.capture.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_times_have_one_length() {
        let time = plugbus_core::clock::now_rfc3339();
        assert_eq!(time.len(), "2026-11-22T10:00:00.000000Z".len(), "{time}");
        time::OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    }

    #[test]
    fn output_is_bounded_per_delivery() {
        let capture = OutputCapture::new("t/p".into(), 10, 4096, Arc::default());
        capture.write(Stream::Stdout, b"0123456789abcdef\n");
        capture.write(Stream::Stderr, b"more");
        let (tail, dropped) = capture.finish_delivery();
        assert_eq!(dropped, 11);
        assert_eq!(tail, "");
        capture.write(Stream::Stderr, b"panicked at x\n");
        let (tail, dropped) = capture.finish_delivery();
        assert_eq!(dropped, 4);
        assert_eq!(tail, "panicked a");
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
    fn limiter_sums_memories() {
        use wasmtime::ResourceLimiter as _;
        let mut limiter = Limiter {
            limit: 100,
            used: 0,
        };
        assert!(limiter.memory_growing(0, 60, None).expect("fits"));
        assert!(limiter.memory_growing(0, 30, None).expect("fits"));
        let err = limiter.memory_growing(60, 80, None).unwrap_err();
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some());
        assert!(limiter.memory_growing(30, 40, None).expect("fits"));
    }
}
