//! The host side of the WIT world `plugbus:plugin/handler@0.1.0`, generated
//! by `wasmtime::component::bindgen!`, and the conversions between the
//! generated types and the host's own.

#![allow(missing_docs)] // generated code

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
});

pub use self::plugbus::plugin::types::{Level, OutgoingEvent};

impl From<&crate::event::Event> for plugbus::plugin::types::Event {
    fn from(e: &crate::event::Event) -> Self {
        Self {
            id: e.id.clone(),
            source: e.source.clone(),
            type_: e.ty.clone(),
            subject: e.subject.clone(),
            time: e.time.clone(),
            datacontenttype: e.datacontenttype.clone(),
            dataschema: e.dataschema.clone(),
            data: e.data.clone(),
            extensions: e
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tenant: e.tenant.clone(),
        }
    }
}

impl From<Level> for tracing::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        }
    }
}
