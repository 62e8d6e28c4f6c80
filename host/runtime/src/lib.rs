//! # plugbus-runtime
//!
//! The WebAssembly runtime of plugbus: everything that touches wasmtime.
//! It knows events ([`plugbus_core`]) and nothing of the log, the bus,
//! HTTP or the CLI.
//!
//! Bottom-up:
//! - [`engine`]: the one wasmtime engine for untrusted code, and its epoch ticker;
//! - [`deadline`]: the deadline that also bounds time inside host calls;
//! - `sandbox` and `overlay`: a plugin's store data (its identity, limits,
//!   the delivery in progress and the batch run), and a delivery's state
//!   writes on their way to the commit;
//! - [`bindings`]: the host side of the WIT world, one module per version
//!   (bindings, host imports and linker together; older versions delegate
//!   to the latest);
//! - [`batch`]: many events in one call, for plugins that export `handle-batch`;
//! - [`dispatch`]: a loaded [`Plugin`], one delivery of one event to it, and
//!   its [`plugbus_core::Outcome`];
//! - [`cache`] and [`loader`]: compiled components on disk, and finding,
//!   checking and compiling plugins;
//! - [`registry`]: the loaded plugins by tenant, and routing;
//! - [`reload`]: keeping the plugins in step with their files, while events flow;
//! - [`host`]: the [`Host`] that ties them together.

pub mod batch;
pub mod bindings;
pub mod cache;
pub mod deadline;
pub mod dispatch;
pub mod engine;
pub mod host;
pub mod loader;
pub mod outbound;
mod overlay;
pub mod registry;
pub mod reload;
mod sandbox;
mod stats;

pub use dispatch::{DeliverError, Delivery, EmittedEvent, InstanceMode, Plugin};
pub use host::{Host, HostConfig, HostError, LoadReport, PluginInfo, PublishError, PublishReport};
pub use loader::LoadError;
pub use outbound::OutboundConfig;
pub use reload::{Health, PluginStatus, ReloadEvent, Watcher};
pub use stats::StatsSnapshot;
