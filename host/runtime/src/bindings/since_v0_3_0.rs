//! Version 0.3.0 of the world `plugbus:plugin/handler`
//! (`wit/plugbus.wit`), the current one: its bindings, the host functions
//! of interfaces `host` (`emit`, `log`, `config-get`), `state` (`get`,
//! `set`, `delete`), `secrets` (`get`) and `batch` (`done`), and their
//! registration. Older versions delegate to these host functions.
//!
//! The world also imports `wasi:http/outgoing-handler`: its bindings are
//! wasmtime-wasi-http's own (mapped with `with`, so that the resource types
//! are the ones its linker functions register), and it is registered with
//! WASI in [`super::linker`], not here.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use wasmtime::StoreContextMut;
use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::{HandlerError, PluginState};
use plugbus_core::clock::now_rfc3339;
use plugbus_core::event::{self, Event};
use plugbus_core::state::StateWrite;

/// The bindings generated from the version's WIT.
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "handler",
        // A store that cannot be read fails the delivery (retried), rather
        // than telling the plugin a key is missing.
        imports: { "plugbus:plugin/state.get": trappable },
        // As wasmtime-wasi(-http)'s bindings, which it links to, require.
        require_store_data_send: true,
        // The wasi packages the world imports are wasmtime-wasi(-http)'s.
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub use generated::{Handler, HandlerPre, plugbus};

use self::plugbus::plugin::{host, secrets, state, types};

/// The version of the contract.
pub const VERSION: &str = "0.3.0";

/// Registers the world's own imports, `batch.done` included, in `linker`
/// (`wasi:http` is registered with WASI).
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    types::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    host::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    state::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    secrets::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    // `batch.done`, imported by plugins of world `batch-handler`.
    linker
        .instance(&format!("plugbus:plugin/batch@{VERSION}"))?
        .func_wrap("done", batch_done)?;
    Ok(())
}

/// The event as this version's record.
pub(crate) fn event(e: &Event, attempt: u32) -> types::Event {
    types::Event {
        id: e.id().to_owned(),
        source: e.source().to_owned(),
        type_: e.ty().to_owned(),
        subject: e.subject().map(str::to_owned),
        time: e.time().map(str::to_owned),
        datacontenttype: e.datacontenttype().map(str::to_owned),
        dataschema: e.dataschema().map(str::to_owned),
        data: e.data().to_vec(),
        extensions: e
            .extensions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tenant: e.tenant().to_owned(),
        attempt,
    }
}

impl From<types::HandlerError> for HandlerError {
    fn from(error: types::HandlerError) -> Self {
        match error {
            types::HandlerError::Retryable(message) => Self::Retryable(message),
            types::HandlerError::Permanent(message) => Self::Permanent(message),
        }
    }
}

impl From<types::Level> for tracing::Level {
    fn from(level: types::Level) -> Self {
        match level {
            types::Level::Trace => tracing::Level::TRACE,
            types::Level::Debug => tracing::Level::DEBUG,
            types::Level::Info => tracing::Level::INFO,
            types::Level::Warn => tracing::Level::WARN,
            types::Level::Error => tracing::Level::ERROR,
        }
    }
}

impl types::Host for PluginState {}

/// Extension names only the host may set on an emitted event.
const HOST_OWNED: &[&str] = &[
    event::CAUSATION_EXTENSION,
    event::CORRELATION_EXTENSION,
    event::DEPTH_EXTENSION,
    event::BUDGET_EXTENSION,
];

impl state::Host for PluginState {
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
            .map_err(|e| wasmtime::Error::new(e.reading(&key)))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if let Err((reason, refusal)) = self.check_state_write(&key, Some(&value)) {
            self.refused_state_write(reason, &refusal);
            return Err(refusal);
        }
        self.scope.state.bytes += plugbus_core::state::write_bytes(&key, Some(&value));
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
                self.scope.state.bytes += plugbus_core::state::write_bytes(&key, None);
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
                plugbus_core::text::escape(refusal, self.bounds.max_log_bytes)
            );
        }
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
                    plugbus_core::text::truncate(key, 64),
                    bounds.max_state_value_bytes
                ),
            ));
        }
        let size = plugbus_core::state::write_bytes(key, value);
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
}

impl secrets::Host for PluginState {
    fn get(&mut self, name: String) -> Option<String> {
        // Only the granted secrets its tenant has are in the identity.
        self.identity
            .secrets
            .get(&name)
            .map(|value| value.expose().to_owned())
    }
}

impl host::Host for PluginState {
    fn emit(&mut self, outgoing: types::OutgoingEvent) -> Result<String, String> {
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
            EmitRefusal::Bytes(_) | EmitRefusal::EventSize(_) => &stats.emits_refused_bytes,
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
                plugbus_core::text::escape(&message, self.bounds.max_log_bytes)
            );
        }
        Err(message)
    }

    fn log(&mut self, level: types::Level, message: String) {
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
        // Its secrets scrubbed, then escaped and bounded: a plugin cannot
        // start a line of its own in the host's log, nor write escape
        // sequences to a terminal.
        let message = self.identity.redactor.scrub(&message);
        let text = plugbus_core::text::escape(&message, self.bounds.max_log_bytes);
        let plugin = self.identity.label.as_str();
        match level {
            types::Level::Trace => tracing::trace!(target: "plugbus::plugin", plugin, "{text}"),
            types::Level::Debug => tracing::debug!(target: "plugbus::plugin", plugin, "{text}"),
            types::Level::Info => tracing::info!(target: "plugbus::plugin", plugin, "{text}"),
            types::Level::Warn => tracing::warn!(target: "plugbus::plugin", plugin, "{text}"),
            types::Level::Error => tracing::error!(target: "plugbus::plugin", plugin, "{text}"),
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
    /// The largest event the event log stores.
    #[error("{0}")]
    EventSize(String),
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
            Self::EventSize(_) => "event_bytes",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl PluginState {
    /// The event a plugin emits, with the host's attributes, and its
    /// bytes; or why it is refused. A refused emit takes nothing from the
    /// chain's budget.
    fn build_emitted(&self, outgoing: types::OutgoingEvent) -> Result<(Event, usize), EmitRefusal> {
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
        for (name, value) in plugbus_core::trace::for_emitted(&scope.trace) {
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
            self.check_emit_bytes(&emitted, size)?;
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
        if let Err(refusal) = self.check_emit_bytes(&emitted, size) {
            budget.fetch_add(1, Ordering::AcqRel);
            return Err(refusal);
        }
        Ok((emitted, size))
    }

    /// Whether `emitted`, of `size` bytes, fits in the event log, in this
    /// delivery's emit budget and in its batch's pending commit.
    fn check_emit_bytes(&self, emitted: &Event, size: usize) -> Result<(), EmitRefusal> {
        if let Some(max) = self.bounds.max_event_bytes
            // Its stored form is at most six times its counted bytes (a
            // control character escaped as `\u00XX`) and the JSON's names
            // and punctuation: smaller ones fit without encoding them.
            && size.saturating_mul(6).saturating_add(64 * 1024) > max
        {
            let stored = emitted.to_json_string().len();
            if stored > max {
                return Err(EmitRefusal::EventSize(format!(
                    "this event takes {stored} bytes as the event log stores it (its CloudEvents JSON); \
                     the event log stores events of at most {max} bytes"
                )));
            }
        }
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

/// `batch.done`: records the current event's result, fuel, time and
/// emitted events, then starts the next event with a full tank, a fresh
/// deadline and its own scope; or, after a failure in a batch that stops
/// at failures, tells the plugin to stop.
pub(crate) fn batch_done(
    mut store: StoreContextMut<'_, PluginState>,
    (result,): (Result<(), types::HandlerError>,),
) -> wasmtime::Result<(bool,)> {
    let fuel_left = store.get_fuel().ok();
    let step = store
        .data_mut()
        .batch_event_done(result.map_err(HandlerError::from), fuel_left)
        .map_err(wasmtime::Error::new)?;
    // The next event, or the plugin's return after the last, runs under a
    // full event's limits.
    if let Some(fuel) = step.fuel {
        store.set_fuel(fuel)?;
    }
    store.data_mut().deadline.restart();
    store.set_epoch_deadline(step.epoch_deadline);
    Ok((step.go_on,))
}
