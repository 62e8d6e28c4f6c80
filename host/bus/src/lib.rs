//! Durable delivery: events are published into the [`EventLog`] and every
//! plugin consumes its tenant's events from its own durable cursor, at
//! least once, in order, with retries and dead letters.
//!
//! - `publish` returns once the events are durable (the log groups commits).
//! - Each loaded plugin has a consumer: it reads its tenant's events after
//!   its cursor, delivers the ones it subscribes to (in batches, stopping
//!   at the first failure), and commits in one transaction the new cursor,
//!   the events the successful deliveries emitted, and the dead letters.
//!   A restarted host resumes every plugin at its cursor; what was
//!   delivered but not committed is delivered again (at least once).
//! - A failed delivery that may succeed later (`retryable`, a trap, a
//!   timeout, fuel or memory exhausted) is retried with exponential
//!   backoff and jitter, and holds back the plugin's later events until it
//!   succeeds or has used its attempts; then it becomes a dead letter with
//!   every attempt's failure. A `permanent` failure is a dead letter at once.
//! - A plugin whose last `quarantine_after` deliveries all failed is
//!   quarantined: paused for `quarantine_for`, or until a new version is
//!   loaded or [`DurableBus::resume`] is called. Its events wait.
//! - A plugin without a cursor starts at the end of the log: it sees the
//!   events published after it was loaded; with `start = "earliest"` in its
//!   manifest, at the beginning.
//! - A chain of events holds its budget through the log: a delivery may
//!   cause at most the event's `chainbudget` (the host's
//!   `max_events_per_chain` for an event published from outside), shared
//!   equally among the tenant's plugins that subscribe to its type.
//! - A consumer holds at most [`MAX_PENDING`] events and
//!   [`DurableConfig::max_pending_bytes`] bytes read ahead of its cursor,
//!   and reads at most [`DurableConfig::max_read_bytes`] at once.
//! - When several hosts share the log (NATS), each plugin is delivered by
//!   one host at a time, the one holding its lease; the leases spread over
//!   the live hosts and move when a host stops or dies (see
//!   [`DurableConfig::lease_ttl`]). On the embedded log every plugin's
//!   lease is its host's, for ever.
//! - Every task of the bus (each consumer, retention, the reload watcher)
//!   is supervised: one that stops for any reason but shutdown or its
//!   plugin's unloading is logged, counted
//!   (`plugbus_consumer_restarts_total{tenant,plugin}`,
//!   `plugbus_task_restarts_total{task}`) and restarted after
//!   [`restart_backoff`]; a restarted consumer resumes at its cursor.

mod bus;
mod config;
mod consumer;
mod failures;
mod lease;
mod operations;
mod read_ahead;
mod retry;
mod state;
mod supervise;
mod task;

pub use bus::{Backlog, DurableBus, DurablePublishError};
pub use config::{DurableConfig, MAX_PENDING};
pub use consumer::budget_share;
pub use failures::{RECENT_FAILURES, RecentFailure};
pub use lease::process_host_id;
pub use operations::PluginReport;
pub use plugbus_log::Quarantine;
pub use retry::{MAX_WAIT, RetryPolicy};
pub use task::{Task, restart_backoff};
