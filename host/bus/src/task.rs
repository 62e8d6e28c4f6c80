//! The bus's supervised tasks: what they are, how long a stopped one
//! waits before it restarts, and what one that panicked said.

use std::time::Duration;

/// The wait before a supervised task that stopped unexpectedly is
/// restarted, for its `restarts`-th restart in a row (0 for the first):
/// 100 ms, doubling each time, at most 30 s. A task that ran for a minute
/// before it stopped starts the count again.
pub fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(restarts))
        .min(Duration::from_secs(30))
}

/// A task of the bus that is restarted when it stops unexpectedly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    /// The consumer of a plugin.
    Consumer {
        /// The plugin's tenant.
        tenant: String,
        /// The plugin.
        plugin: String,
    },
    /// Retention, which deletes old events now and then.
    Retention,
    /// The watcher that starts a consumer for every plugin loaded.
    Reloads,
    /// The keeper of the host's leases, when several hosts share the log.
    Leases,
}

impl Task {
    /// The task's name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Consumer { .. } => "consumer",
            Self::Retention => "retention",
            Self::Reloads => "reloads",
            Self::Leases => "leases",
        }
    }
}

/// Aborts its task when dropped: a supervisor that is aborted takes the
/// task it runs along.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task that ended by a panic or a cancellation said.
pub(crate) fn join_failure(error: tokio::task::JoinError) -> String {
    if error.is_panic() {
        let payload = error.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "without a message".to_owned());
        format!("panicked: {message}")
    } else {
        "was cancelled".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_thirty_seconds() {
        assert_eq!(restart_backoff(0), Duration::from_millis(100));
        assert_eq!(restart_backoff(1), Duration::from_millis(200));
        assert_eq!(restart_backoff(2), Duration::from_millis(400));
        assert_eq!(restart_backoff(8), Duration::from_millis(25_600));
        assert_eq!(restart_backoff(9), Duration::from_secs(30));
        assert_eq!(restart_backoff(u32::MAX), Duration::from_secs(30));
    }
}
