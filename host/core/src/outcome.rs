//! How a delivery ended: handled, or failed with a [`FailureKind`] and a
//! message. Shared by the runtime that classifies a delivery, the log that
//! records it, the bus that retries or dead-letters it and the API that
//! reports it.

use serde::Serialize;

/// The kind of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned `handler-error::retryable`.
    HandlerRetryable,
    /// The handler returned `handler-error::permanent`.
    HandlerPermanent,
    /// The handler used up its fuel.
    FuelExhausted,
    /// The handler ran past its wall-clock limit.
    Timeout,
    /// The instance asked for more memory than its limit.
    MemoryLimit,
    /// The handler overflowed the wasm stack.
    StackOverflow,
    /// The handler trapped: a panic, an `unreachable`, or another trap.
    Trap,
    /// The plugin's state could not be read or saved: the host's store
    /// failed, not the plugin.
    StateStore,
}

impl FailureKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FailureKind; 8] = [
        Self::HandlerRetryable,
        Self::HandlerPermanent,
        Self::FuelExhausted,
        Self::Timeout,
        Self::MemoryLimit,
        Self::StackOverflow,
        Self::Trap,
        Self::StateStore,
    ];

    /// The kind's name as it appears in output: `handler_retryable`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerRetryable => "handler_retryable",
            Self::HandlerPermanent => "handler_permanent",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::Trap => "trap",
            Self::StateStore => "state_store",
        }
    }

    /// Whether delivering the same event again may succeed. Only a
    /// permanent handler error says it cannot.
    pub fn is_retryable(self) -> bool {
        self != Self::HandlerPermanent
    }

    /// The position of this kind in [`FailureKind::ALL`], for counters
    /// sized by kind.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed delivery: its kind and a message that explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The handler's message, the trap, or the limit that was hit.
    pub message: String,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned `ok`.
    Handled,
    /// The delivery failed.
    Failed(Failure),
}

impl Outcome {
    /// Whether the handler returned `ok`.
    pub fn is_handled(&self) -> bool {
        matches!(self, Self::Handled)
    }

    /// The failure, if the delivery failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Handled => None,
            Self::Failed(f) => Some(f),
        }
    }

    /// The failure's kind, if the delivery failed.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        self.failure().map(|f| f.kind)
    }
}

/// A quarantined plugin, as the log records it so that an operator can see
/// it and lift it from another process (`plugbus quarantine`), and as a
/// plugin's status reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantine {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The version that failed.
    pub version: String,
    /// When the quarantine began, in milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// When it ends unless lifted first, in milliseconds since the epoch.
    pub until_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::FailureKind;

    /// The README's outcomes table says it lists every kind: a kind added
    /// here without a row there fails this test.
    #[test]
    fn the_readme_lists_every_failure_kind() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Outcomes")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("README.md has an Outcomes section");
        for kind in FailureKind::ALL {
            let row = format!("| `{}` |", kind.as_str());
            assert!(
                section.contains(&row),
                "README.md's Outcomes table has no row for {}",
                kind.as_str()
            );
        }
    }
}
