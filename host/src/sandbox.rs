//! What a plugin instance's `Store` holds: a deny-by-default WASI context,
//! the memory limiter, the bounded capture of stdout and stderr, and the
//! host functions of interfaces `host` (`emit`, `log`, `config-get`) and
//! `state` (`get`, `set`, `delete`), for every version of the world.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_io::bytes::Bytes;

use crate::bindings::{Level, OutgoingEvent, v0_1, v0_2};
use crate::event::{self, Event};
use crate::state::{Overlay, Pending, StateSlot, StateWrite};
use crate::stats::Stats;

/// The most table elements any table of a plugin may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The most core instances, tables and memories one plugin instance may create.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
/// How many bytes of stderr are kept per delivery to explain a trap.
const STDERR_TAIL: usize = 2048;

/// The bounds the host functions enforce, part of the host's
/// configuration, and the state store they read.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    pub state: Arc<StateSlot>,
    /// When long-lived instances are recycled.
    pub recycle: crate::deadline::RecyclePolicy,
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
    /// The most bytes one batch's pending commit may hold: the emitted
    /// events and state writes of its successful deliveries so far, and of
    /// the delivery running.
    pub max_batch_commit_bytes: usize,
    /// The longest failure message of guest origin kept, in bytes.
    pub max_error_bytes: usize,
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
    pub state: Pending,
    /// The trace context (`traceparent`, `tracestate`) of the handled
    /// event, carried onto the events it emits.
    pub trace: Vec<(&'static str, String)>,
}

/// The data of a plugin instance's `Store`.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    /// When the delivery under way must end, for host calls that wait.
    pub deadline: crate::deadline::Deadline,
    pub identity: Arc<Identity>,
    pub bounds: Arc<Bounds>,
    pub stats: Arc<Stats>,
    pub output: Arc<OutputCapture>,
    pub scope: DeliveryScope,
    /// The batch being handled through `handle-batch`, if any.
    pub batch: Option<crate::dispatch::BatchRun>,
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
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                limit: memory_limit,
                used: 0,
            },
            deadline: crate::deadline::Deadline::default(),
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

impl v0_2::plugbus::plugin::types::Host for PluginState {}
impl v0_1::plugbus::plugin::types::Host for PluginState {}

/// Extension names only the host may set on an emitted event.
const HOST_OWNED: &[&str] = &[
    event::CAUSATION_EXTENSION,
    event::CORRELATION_EXTENSION,
    event::DEPTH_EXTENSION,
    event::BUDGET_EXTENSION,
];

impl v0_1::plugbus::plugin::host::Host for PluginState {
    fn emit(
        &mut self,
        outgoing: v0_1::plugbus::plugin::types::OutgoingEvent,
    ) -> Result<String, String> {
        v0_2::plugbus::plugin::host::Host::emit(self, outgoing.into())
    }

    fn log(&mut self, level: v0_1::plugbus::plugin::types::Level, message: String) {
        v0_2::plugbus::plugin::host::Host::log(self, level.into(), message);
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        v0_2::plugbus::plugin::host::Host::config_get(self, key)
    }
}

impl v0_2::plugbus::plugin::state::Host for PluginState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(value) = self
            .scope
            .state
            .latest(&key)
            .or_else(|| self.overlay.latest(&key))
        {
            return Ok(value.map(<[u8]>::to_vec));
        }
        let store = self.bounds.state.store();
        store
            .get(&self.identity.tenant, &self.identity.name, &key)
            .map_err(|e| {
                wasmtime::Error::new(crate::state::StateError(format!("get {key:?}: {}", e.0)))
            })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if let Err((reason, refusal)) = self.check_state_write(&key, Some(&value)) {
            self.refused_state_write(reason, &refusal);
            return Err(refusal);
        }
        self.scope.state.bytes += crate::state::write_bytes(&key, Some(&value));
        self.scope.state.writes.push(StateWrite {
            key,
            value: Some(value),
        });
        Ok(())
    }

    fn delete(&mut self, key: String) {
        // A key that cannot have been stored has nothing to delete; a
        // delete past a budget is dropped, counted and logged (`delete`
        // has no error to return).
        match self.check_state_write(&key, None) {
            Ok(()) => {
                self.scope.state.bytes += crate::state::write_bytes(&key, None);
                self.scope
                    .state
                    .writes
                    .push(StateWrite { key, value: None });
            }
            Err(("key", _)) => {}
            Err((reason, refusal)) => self.refused_state_write(reason, &refusal),
        }
    }
}

impl PluginState {
    /// Counts and logs a refused state write.
    fn refused_state_write(&mut self, reason: &'static str, refusal: &str) {
        self.stats
            .state_writes_refused
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "plugbus_state_writes_refused_total",
            "tenant" => self.identity.tenant.clone(),
            "plugin" => self.identity.name.clone(),
            "reason" => reason
        )
        .increment(1);
        if self.first_refusal() {
            tracing::warn!(
                plugin = %self.identity.label,
                reason,
                "state write refused: {} (further refusals of this delivery are counted, not logged)",
                crate::text::escape(refusal, self.bounds.max_log_bytes)
            );
        }
    }

    /// Counts a refused emit or state write; true for the delivery's first.
    fn first_refusal(&mut self) -> bool {
        self.scope.refusals += 1;
        self.scope.refusals == 1
    }

    /// Why a state write may not be made, if it may not: the reason's
    /// label (for the metric) and the message for the plugin.
    fn check_state_write(
        &self,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), (&'static str, String)> {
        let bounds = &self.bounds;
        if key.is_empty() || key.len() > bounds.max_state_key_bytes {
            return Err((
                "key",
                format!(
                    "a state key is 1 to {} bytes; this one is {}",
                    bounds.max_state_key_bytes,
                    key.len()
                ),
            ));
        }
        let len = value.map_or(0, <[u8]>::len);
        if len > bounds.max_state_value_bytes {
            return Err((
                "value",
                format!(
                    "the value of state {:?} is {len} bytes; the limit is {}",
                    crate::text::truncate(key, 64),
                    bounds.max_state_value_bytes
                ),
            ));
        }
        let size = crate::state::write_bytes(key, value);
        if self.scope.state.bytes + size > bounds.max_state_bytes_per_delivery {
            return Err((
                "delivery_bytes",
                format!(
                    "a delivery may write at most {} bytes of state",
                    bounds.max_state_bytes_per_delivery
                ),
            ));
        }
        self.check_commit_bytes(size)
            .map_err(|m| ("commit_bytes", m))
    }

    /// Whether `size` more bytes fit in the pending commit of the batch
    /// this delivery is part of: what the batch's earlier successful
    /// deliveries hold, what this delivery emitted and wrote so far, and
    /// `size`.
    fn check_commit_bytes(&self, size: usize) -> Result<(), String> {
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

impl v0_2::plugbus::plugin::host::Host for PluginState {
    fn emit(&mut self, outgoing: OutgoingEvent) -> Result<String, String> {
        let refusal = match self.build_emitted(outgoing) {
            Ok((emitted, size)) => {
                self.stats.emits_accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(emitted = %emitted.id(), r#type = %emitted.ty(), "plugin emitted an event");
                let id = emitted.id().to_owned();
                self.scope.emitted.push(emitted);
                self.scope.emitted_bytes += size;
                return Ok(id);
            }
            Err(refusal) => refusal,
        };
        let stats = &self.stats;
        let counter = match refusal {
            EmitRefusal::ChainDepth(_) => &stats.emits_refused_chain_depth,
            EmitRefusal::Count(_) | EmitRefusal::ChainBudget(_) => &stats.emits_refused_budget,
            EmitRefusal::Bytes(_) => &stats.emits_refused_bytes,
            EmitRefusal::Commit(_) => &stats.emits_refused_commit,
            EmitRefusal::Invalid(_) => &stats.emits_refused_invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "plugbus_emits_refused_total",
            "tenant" => self.identity.tenant.clone(),
            "plugin" => self.identity.name.clone(),
            "reason" => refusal.reason()
        )
        .increment(1);
        let message = refusal.to_string();
        if self.first_refusal() {
            tracing::warn!(
                plugin = %self.identity.label,
                reason = refusal.reason(),
                "emit refused: {} (further refusals of this delivery are counted, not logged)",
                crate::text::escape(&message, self.bounds.max_log_bytes)
            );
        }
        Err(message)
    }

    fn log(&mut self, level: Level, message: String) {
        self.scope.log_lines += 1;
        if self.scope.log_lines > self.bounds.max_log_lines_per_delivery {
            self.stats.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
            if self.scope.log_lines == self.bounds.max_log_lines_per_delivery + 1 {
                tracing::warn!(
                    plugin = %self.identity.label,
                    "plugin wrote more than {} log lines in one delivery; the rest are dropped",
                    self.bounds.max_log_lines_per_delivery
                );
            }
            return;
        }
        // Escaped and bounded: a plugin cannot start a line of its own in
        // the host's log, nor write escape sequences to a terminal.
        let text = crate::text::escape(&message, self.bounds.max_log_bytes);
        let plugin = self.identity.label.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "plugbus::plugin", plugin, "{text}"),
            Level::Debug => tracing::debug!(target: "plugbus::plugin", plugin, "{text}"),
            Level::Info => tracing::info!(target: "plugbus::plugin", plugin, "{text}"),
            Level::Warn => tracing::warn!(target: "plugbus::plugin", plugin, "{text}"),
            Level::Error => tracing::error!(target: "plugbus::plugin", plugin, "{text}"),
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.identity.config.get(&key).cloned()
    }
}

/// Why an emit was refused; the message goes back to the plugin.
#[derive(Debug, thiserror::Error)]
enum EmitRefusal {
    /// The chain depth limit.
    #[error("{0}")]
    ChainDepth(String),
    /// The most events one delivery may emit.
    #[error("{0}")]
    Count(String),
    /// The events the chain may still cause.
    #[error("{0}")]
    ChainBudget(String),
    /// The bytes one delivery may emit.
    #[error("{0}")]
    Bytes(String),
    /// The bytes one batch's pending commit may hold.
    #[error("{0}")]
    Commit(String),
    /// An invalid event, or an extension only the host may set.
    #[error("{0}")]
    Invalid(String),
}

impl EmitRefusal {
    /// The `reason` label of `plugbus_emits_refused_total`.
    fn reason(&self) -> &'static str {
        match self {
            Self::ChainDepth(_) => "chain_depth",
            Self::Count(_) => "emit_count",
            Self::ChainBudget(_) => "chain_budget",
            Self::Bytes(_) => "emit_bytes",
            Self::Commit(_) => "commit_bytes",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl PluginState {
    /// The event a plugin emits, with the host's attributes, and its
    /// bytes; or why it is refused. A refused emit takes nothing from the
    /// chain's budget.
    fn build_emitted(&self, outgoing: OutgoingEvent) -> Result<(Event, usize), EmitRefusal> {
        let scope = &self.scope;
        let depth = scope.depth.saturating_add(1);
        if depth > self.bounds.max_chain_depth {
            return Err(EmitRefusal::ChainDepth(format!(
                "chain depth limit of {} reached: event {} is at depth {}, so it may not cause further events",
                self.bounds.max_chain_depth, scope.event_id, scope.depth
            )));
        }
        if scope.emitted.len() >= self.bounds.max_emits_per_delivery {
            return Err(EmitRefusal::Count(format!(
                "a delivery may emit at most {} events",
                self.bounds.max_emits_per_delivery
            )));
        }
        let mut extensions = BTreeMap::new();
        for (name, value) in outgoing.extensions {
            event::check_extension_name(&name).map_err(|e| EmitRefusal::Invalid(e.to_string()))?;
            if HOST_OWNED.contains(&name.as_str()) {
                return Err(EmitRefusal::Invalid(format!(
                    "extension '{name}' is set by the host and may not be set by a plugin"
                )));
            }
            if extensions.insert(name.clone(), value).is_some() {
                return Err(EmitRefusal::Invalid(format!(
                    "extension '{name}' is given twice"
                )));
            }
        }
        extensions.insert(
            event::CAUSATION_EXTENSION.to_owned(),
            scope.event_id.clone(),
        );
        extensions.insert(
            event::CORRELATION_EXTENSION.to_owned(),
            scope.correlation_id.clone(),
        );
        extensions.insert(event::DEPTH_EXTENSION.to_owned(), depth.to_string());
        for (name, value) in crate::telemetry::for_emitted(&scope.trace) {
            extensions.entry(name.to_owned()).or_insert(value);
        }
        if let Some(budget) = &scope.chain_budget {
            // In place before the event is checked, so that it counts
            // among the event's extensions; its value is set below.
            extensions.insert(
                event::BUDGET_EXTENSION.to_owned(),
                budget.load(Ordering::Acquire).to_string(),
            );
        }
        let mut emitted = Event::builder(
            self.identity.tenant.clone(),
            uuid::Uuid::now_v7().to_string(),
            self.identity.source.clone(),
            outgoing.type_,
        )
        .subject(outgoing.subject)
        .time(now_rfc3339())
        .datacontenttype(outgoing.datacontenttype)
        .dataschema(outgoing.dataschema)
        .data(outgoing.data)
        .extensions(extensions)
        .build()
        .map_err(|e| EmitRefusal::Invalid(format!("invalid event: {e}")))?;
        let Some(budget) = &scope.chain_budget else {
            let size = crate::batch::event_bytes(&emitted);
            self.check_emit_bytes(size)?;
            return Ok((emitted, size));
        };
        let took = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            left.checked_sub(1)
        });
        let Ok(before) = took else {
            return Err(EmitRefusal::ChainBudget(format!(
                "the chain of events caused by {} has reached the host's limit of events per published event",
                scope.correlation_id
            )));
        };
        // What the chain has left after this emit, for now: when the
        // delivery ends, each event it emitted gets its share of what is
        // left then, which is no more. Its bytes are counted with it.
        emitted.set_chain_budget(before - 1);
        let size = crate::batch::event_bytes(&emitted);
        if let Err(refusal) = self.check_emit_bytes(size) {
            budget.fetch_add(1, Ordering::AcqRel);
            return Err(refusal);
        }
        Ok((emitted, size))
    }

    /// Whether an event of `size` bytes fits in this delivery's emit
    /// budget and in its batch's pending commit.
    fn check_emit_bytes(&self, size: usize) -> Result<(), EmitRefusal> {
        let max = self.bounds.max_emit_bytes_per_delivery;
        let total = self.scope.emitted_bytes.saturating_add(size);
        if total > max {
            return Err(EmitRefusal::Bytes(format!(
                "the host's limit of {max} bytes of emitted events per delivery is reached: \
                 the events emitted so far take {} bytes, and this one of {size} would make {total}",
                self.scope.emitted_bytes
            )));
        }
        self.check_commit_bytes(size).map_err(EmitRefusal::Commit)
    }
}

/// The current time as RFC 3339, in UTC, to the microsecond, always in
/// the same number of bytes (`2026-11-22T10:00:00.000000Z`), so that an
/// emitted event's size does not depend on the moment it was emitted.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
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
    fn new(label: String, budget: usize, max_line_bytes: usize) -> Self {
        Self {
            label,
            max_line_bytes,
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
                self.forward(stream, &text);
            } else {
                line.push(byte);
            }
        }
    }

    /// Writes one line of the plugin's output into the host log, escaped
    /// and bounded like its log lines.
    fn forward(&self, stream: Stream, text: &str) {
        let text = crate::text::escape(text, self.max_line_bytes);
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
                self.forward(stream, &String::from_utf8_lossy(&line));
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
        (tail, dropped)
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
        let time = now_rfc3339();
        assert_eq!(time.len(), "2026-11-22T10:00:00.000000Z".len(), "{time}");
        time::OffsetDateTime::parse(&time, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    }

    #[test]
    fn output_is_bounded_per_delivery() {
        let capture = OutputCapture::new("t/p".into(), 10, 4096);
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

    /// A `Write` that keeps what the log subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The `forge-log` mode of the `hostile` fixture writes CR, LF, a line
    /// in the host's format and escape sequences through `log`, stdout and
    /// stderr: every line of the host's log is still one of the host's,
    /// with no raw CR or ESC in it.
    #[test]
    fn plugin_text_cannot_forge_host_log_lines() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tenant = dir.path().join("chaos");
        std::fs::create_dir(&tenant).expect("the tenant's folder");
        std::fs::copy(
            plugbus_artifacts::FIXTURE_HOSTILE,
            tenant.join("forge.wasm"),
        )
        .expect("the fixture");
        std::fs::write(
            tenant.join("forge.toml"),
            "subscribe = [\"hostile.*\"]\n[config]\nmode = \"forge-log\"\n",
        )
        .expect("the manifest");
        let host = crate::Host::new(crate::HostConfig::default()).expect("a host");
        let report = host.load_dir(dir.path()).expect("loaded");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let plugin = host.plugin("chaos", "forge").expect("loaded");
        let event = Event::from_json(
            r#"{"specversion":"1.0","id":"l-1","source":"/t","type":"hostile.forge-log","tenant":"chaos"}"#,
        )
        .expect("an event");

        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let (delivery, _) = tracing::subscriber::with_default(subscriber, || {
            plugin.deliver(&event).expect("deliverable")
        });
        assert!(delivery.outcome.is_handled(), "{delivery:#?}");

        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let log = String::from_utf8(bytes).expect("UTF-8");
        assert!(
            !log.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']),
            "{log:?}"
        );
        // The forged host line, inside five log lines, one line of stdout
        // and two of stderr.
        assert_eq!(
            log.matches("FORGED operator line").count(),
            5 + 1 + 2,
            "{log}"
        );
        for line in log.lines() {
            let level = line.split_whitespace().next().unwrap_or_default();
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "a line the host did not write: {line:?}"
            );
        }
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
