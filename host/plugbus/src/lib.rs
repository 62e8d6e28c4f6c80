//! # plugbus
//!
//! A host bus for event handlers written as WebAssembly components.
//!
//! Tenants drop plugins — components that target the WIT world
//! `plugbus:plugin/handler@0.2.0` (see `wit/plugbus.wit`; 0.1.0 is still
//! served) — into their own
//! folder, `<plugins-dir>/<tenant>/<plugin>.wasm`, with an optional manifest
//! `<plugin>.toml`. Each [`Event`], a CloudEvents 1.0 envelope that belongs
//! to one tenant, reaches exactly that tenant's plugins whose subscriptions
//! match its type, and runs under each plugin's fuel, memory and time
//! limits. A failing plugin is an [`Outcome`], never a host error.
//!
//! This crate is the top of the house: the operator's configuration
//! ([`config`]), the OpenTelemetry export ([`telemetry`]) and the `plugbus`
//! binary. The layers below it, each a crate that depends only on the ones
//! under it:
//! - [`plugbus_core`]: the event, manifests, outcomes, the state interface,
//!   trace context, text handling and the clock (re-exported here as
//!   [`event`], [`manifest`], [`outcome`], [`state`], [`trace`], [`text`],
//!   [`clock`]);
//! - [`plugbus_runtime`]: wasmtime, plugins, loading, routing and reload
//!   (re-exported as [`engine`], [`bindings`], [`dispatch`], [`batch`],
//!   [`cache`], [`loader`], [`registry`], [`reload`], [`host`]);
//! - [`plugbus_log`]: the durable event log and its SQLite implementation
//!   (re-exported as [`log`]);
//! - [`plugbus_log_nats`]: the same log in NATS JetStream, for several
//!   hosts sharing the work (`[log] backend = "nats"`; re-exported as
//!   [`log_nats`]);
//! - [`plugbus_bus`]: delivery from the log, at least once (re-exported as
//!   [`durable`]);
//! - [`plugbus_api`]: HTTP ingest, the admin API and metrics (re-exported as
//!   [`api`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let host = plugbus::Host::new(plugbus::HostConfig::default())?;
//! host.load_dir("plugins".as_ref())?;
//! let event = plugbus::Event::from_json(
//!     r#"{"specversion":"1.0","id":"1","source":"/pos","type":"inventory.stock_changed",
//!         "tenant":"acme-pos","data":{"sku":"sku-1","new_quantity":3}}"#,
//! )?;
//! for delivery in host.publish(event).await?.deliveries {
//!     println!("{} -> {:?} ({} fuel)", delivery.plugin, delivery.outcome, delivery.fuel);
//! }
//! # Ok(()) }
//! ```

pub mod config;
pub mod telemetry;

pub use plugbus_api as api;
pub use plugbus_bus as durable;
pub use plugbus_core::{clock, event, manifest, outcome, secrets, state, text, trace};
pub use plugbus_log as log;
pub use plugbus_log_nats as log_nats;
pub use plugbus_runtime::{
    batch, bindings, cache, deadline, dispatch, engine, host, loader, registry, reload,
};

pub use plugbus_core::{
    Event, EventError, Failure, FailureKind, Limits, Manifest, ManifestError, Outcome, Start,
    Subscription,
};
pub use plugbus_runtime::{
    DeliverError, Delivery, EmittedEvent, Health, Host, HostConfig, HostError, InstanceMode,
    LoadError, LoadReport, OutboundConfig, Plugin, PluginInfo, PluginStatus, PublishError,
    PublishReport, ReloadEvent, StatsSnapshot, Watcher,
};
