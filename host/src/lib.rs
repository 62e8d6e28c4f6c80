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
//! The modules follow the architecture:
//! - [`engine`]: the one wasmtime engine for untrusted code, and its epoch ticker;
//! - [`bindings`]: the host side of the WIT world;
//! - [`manifest`]: manifests, subscriptions, limits, names;
//! - [`loader`]: finding, checking and compiling plugins on disk;
//! - [`cache`]: compiled components on disk, by content and engine;
//! - [`registry`]: the loaded plugins by tenant, and routing;
//! - [`reload`]: keeping the plugins in step with their files, while events flow;
//! - [`dispatch`]: one delivery of one event to one plugin, and its outcome;
//! - [`batch`]: many events in one call, for plugins that export `handle-batch`;
//! - [`event`]: the CloudEvents envelope and its JSON format;
//! - [`state`]: the plugins' key-value state, committed with their deliveries;
//! - [`log`]: the durable event log, its cursors, and the embedded SQLite backend;
//! - [`durable`]: publishing into the log and delivering from it, at least once;
//! - [`host`]: the [`Host`] that ties them together;
//! - [`config`]: the operator's `plugbus.toml`;
//! - [`api`]: HTTP ingest, the admin API, health and metrics;
//! - [`telemetry`]: trace context through deliveries, and OpenTelemetry export.
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

pub mod api;
pub mod batch;
pub mod bindings;
pub mod cache;
pub mod config;
pub mod deadline;
pub mod dispatch;
pub mod durable;
pub mod engine;
pub mod event;
pub mod host;
pub mod loader;
pub mod log;
pub mod manifest;
pub mod registry;
pub mod reload;
mod sandbox;
pub mod state;
mod stats;
pub mod telemetry;
pub mod text;

pub use dispatch::{
    DeliverError, Delivery, EmittedEvent, Failure, FailureKind, InstanceMode, Outcome, Plugin,
};
pub use event::{Event, EventError};
pub use host::{Host, HostConfig, HostError, LoadReport, PluginInfo, PublishError, PublishReport};
pub use loader::LoadError;
pub use manifest::{Limits, Manifest, ManifestError, Start, Subscription};
pub use reload::{Health, PluginStatus, ReloadEvent, Watcher};
pub use stats::StatsSnapshot;
