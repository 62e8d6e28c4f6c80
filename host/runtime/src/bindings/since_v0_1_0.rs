//! Version 0.1.0 of the world `plugbus:plugin/handler`
//! (`wit/v0.1.0/plugbus.wit`), served so that plugins built against the
//! first release keep loading: its bindings, and host functions that
//! convert its types and delegate to the [latest](super::latest) version's.
//! Its plugins are called through `handle` only: its batch layout has no
//! attempt.

use wasmtime::component::{HasSelf, Linker};

use super::since_v0_3_0 as latest;
use crate::sandbox::{HandlerError, PluginState};
use plugbus_core::event::Event;

/// The bindings generated from the version's WIT.
mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "handler",
    });
}

pub use generated::{Handler, HandlerPre, plugbus};

use self::plugbus::plugin::{host, types};

/// The version of the contract.
pub const VERSION: &str = "0.1.0";

/// Registers the world's imports, `batch.done` included, in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Handler::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |state| state)?;
    // A 0.1.0 plugin gets its events through `handle`, but it still
    // imports `batch.done`.
    linker
        .instance(&format!("plugbus:plugin/batch@{VERSION}"))?
        .func_wrap("done", latest::batch_done)?;
    Ok(())
}

/// The event as this version's record: the latest's, less what was added
/// since (the attempt).
pub(crate) fn event(e: &Event) -> types::Event {
    let latest::plugbus::plugin::types::Event {
        id,
        source,
        type_,
        subject,
        time,
        datacontenttype,
        dataschema,
        data,
        extensions,
        tenant,
        attempt: _,
    } = latest::event(e, 1);
    types::Event {
        id,
        source,
        type_,
        subject,
        time,
        datacontenttype,
        dataschema,
        data,
        extensions,
        tenant,
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

impl From<types::OutgoingEvent> for latest::plugbus::plugin::types::OutgoingEvent {
    fn from(e: types::OutgoingEvent) -> Self {
        Self {
            type_: e.type_,
            data: e.data,
            subject: e.subject,
            datacontenttype: e.datacontenttype,
            dataschema: e.dataschema,
            extensions: e.extensions,
        }
    }
}

impl From<types::Level> for latest::plugbus::plugin::types::Level {
    fn from(level: types::Level) -> Self {
        match level {
            types::Level::Trace => Self::Trace,
            types::Level::Debug => Self::Debug,
            types::Level::Info => Self::Info,
            types::Level::Warn => Self::Warn,
            types::Level::Error => Self::Error,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn emit(&mut self, outgoing: types::OutgoingEvent) -> Result<String, String> {
        latest::plugbus::plugin::host::Host::emit(self, outgoing.into())
    }

    fn log(&mut self, level: types::Level, message: String) {
        latest::plugbus::plugin::host::Host::log(self, level.into(), message);
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        latest::plugbus::plugin::host::Host::config_get(self, key)
    }
}
