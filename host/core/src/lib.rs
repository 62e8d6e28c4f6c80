//! # plugbus-core
//!
//! The layer every other plugbus crate stands on, with no wasmtime, SQLite
//! or HTTP in it:
//! - [`event`]: the CloudEvents 1.0 envelope of one tenant, and its formats;
//! - [`manifest`]: plugin manifests, subscriptions, limits and names;
//! - [`outbound`]: outbound HTTP origins (`[http] allow`) and the
//!   addresses refused unless the operator allows them;
//! - [`outcome`]: how a delivery ended, and the kinds of failure;
//! - [`secrets`]: tenants' secrets, their sources, and their scrubbing;
//! - [`state`]: the interface of the plugins' key-value state, and an
//!   in-memory store;
//! - [`trace`]: the W3C trace context that events carry into spans;
//! - [`text`]: escaping and truncating tenant text for logs and terminals;
//! - [`clock`]: the host's timestamps.

pub mod clock;
pub mod event;
pub mod manifest;
pub mod outbound;
pub mod outcome;
pub mod secrets;
pub mod state;
pub mod text;
pub mod trace;

pub use event::{Event, EventError};
pub use manifest::{Limits, Manifest, ManifestError, Start, Subscription};
pub use outcome::{Failure, FailureKind, Outcome};
