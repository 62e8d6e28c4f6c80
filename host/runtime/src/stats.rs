//! Counters of what the host has done, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

use plugbus_core::FailureKind;

/// The host's counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub events_published: AtomicU64,
    pub deliveries_ok: AtomicU64,
    pub failures: [AtomicU64; FailureKind::ALL.len()],
    pub emits_accepted: AtomicU64,
    pub emits_refused_chain_depth: AtomicU64,
    pub emits_refused_budget: AtomicU64,
    pub emits_refused_invalid: AtomicU64,
    pub emits_refused_bytes: AtomicU64,
    pub emits_refused_commit: AtomicU64,
    pub emits_discarded: AtomicU64,
    pub state_writes_refused: AtomicU64,
    pub error_messages_truncated: AtomicU64,
    pub log_lines_dropped: AtomicU64,
    pub output_bytes_dropped: AtomicU64,
    pub instances_created: AtomicU64,
    pub instances_discarded: AtomicU64,
    pub batch_calls: AtomicU64,
    pub batched_deliveries: AtomicU64,
}

/// A snapshot of the host's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Events accepted by `publish`, not counting emitted events.
    pub events_published: u64,
    /// Deliveries whose handler returned `ok`.
    pub deliveries_ok: u64,
    /// Failed deliveries, by kind, in the order of [`FailureKind::ALL`].
    pub failures: Vec<(FailureKind, u64)>,
    /// Events plugins emitted and the host accepted.
    pub emits_accepted: u64,
    /// Emits refused because the chain depth limit was reached.
    pub emits_refused_chain_depth: u64,
    /// Emits refused because a delivery or a chain emitted too many events
    /// (in count; see `emits_refused_bytes` for bytes).
    pub emits_refused_budget: u64,
    /// Emits refused because the event was invalid, or set an extension
    /// only the host may set.
    pub emits_refused_invalid: u64,
    /// Emits refused because the delivery's emitted events would pass
    /// [`HostConfig::max_emit_bytes_per_delivery`](crate::HostConfig::max_emit_bytes_per_delivery).
    pub emits_refused_bytes: u64,
    /// Emits refused because the pending commit of the delivery's batch
    /// would pass [`HostConfig::max_batch_commit_bytes`](crate::HostConfig::max_batch_commit_bytes).
    pub emits_refused_commit: u64,
    /// State writes (and deletes) refused: an invalid key, a value, a
    /// delivery's or a batch commit's bytes over their limits.
    pub state_writes_refused: u64,
    /// Failure messages of guest origin (handler errors, trap and panic
    /// text) cut at [`HostConfig::max_error_bytes`](crate::HostConfig::max_error_bytes).
    pub error_messages_truncated: u64,
    /// Accepted emits dropped because their delivery then failed.
    pub emits_discarded: u64,
    /// Plugin log lines dropped over the per-delivery limit.
    pub log_lines_dropped: u64,
    /// Bytes of plugin stdout/stderr dropped over the per-delivery limit.
    pub output_bytes_dropped: u64,
    /// Plugin instances created.
    pub instances_created: u64,
    /// Plugin instances thrown away after a trap.
    pub instances_discarded: u64,
    /// Calls of plugins' `handle-batch` export.
    pub batch_calls: u64,
    /// Deliveries made inside those calls (reported through `batch.done`).
    pub batched_deliveries: u64,
}

impl StatsSnapshot {
    /// Failed deliveries of one kind.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            events_published: get(&self.events_published),
            deliveries_ok: get(&self.deliveries_ok),
            failures: FailureKind::ALL
                .iter()
                .zip(&self.failures)
                .map(|(k, c)| (*k, get(c)))
                .collect(),
            emits_accepted: get(&self.emits_accepted),
            emits_refused_chain_depth: get(&self.emits_refused_chain_depth),
            emits_refused_budget: get(&self.emits_refused_budget),
            emits_refused_invalid: get(&self.emits_refused_invalid),
            emits_refused_bytes: get(&self.emits_refused_bytes),
            emits_refused_commit: get(&self.emits_refused_commit),
            state_writes_refused: get(&self.state_writes_refused),
            error_messages_truncated: get(&self.error_messages_truncated),
            emits_discarded: get(&self.emits_discarded),
            log_lines_dropped: get(&self.log_lines_dropped),
            output_bytes_dropped: get(&self.output_bytes_dropped),
            instances_created: get(&self.instances_created),
            instances_discarded: get(&self.instances_discarded),
            batch_calls: get(&self.batch_calls),
            batched_deliveries: get(&self.batched_deliveries),
        }
    }
}
