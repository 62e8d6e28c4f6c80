//! The recent failed deliveries of each tenant, as the bus keeps them for
//! operators (`GET /v1/tenants/{tenant}/failures`): a bounded ring per
//! tenant, newest last.

use std::collections::{HashMap, VecDeque};

use plugbus_core::FailureKind;
use plugbus_runtime::Delivery;

/// How many recent failed deliveries are kept per tenant.
pub const RECENT_FAILURES: usize = 100;

/// A failed delivery, as kept among a tenant's recent failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentFailure {
    /// When the bus saw it fail, RFC 3339 in UTC with microseconds.
    pub at: String,
    /// The plugin.
    pub plugin: String,
    /// The plugin's version.
    pub plugin_version: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Why it failed.
    pub kind: FailureKind,
    /// The failure's message.
    pub message: String,
    /// The fuel the delivery consumed.
    pub fuel: u64,
}

/// Per tenant, its most recent failed deliveries, newest last, at most
/// `capacity` each.
#[derive(Debug)]
pub(super) struct Failures {
    capacity: usize,
    by_tenant: HashMap<String, VecDeque<RecentFailure>>,
}

impl Failures {
    /// Empty, keeping at most `capacity` failures per tenant.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_tenant: HashMap::new(),
        }
    }

    /// Keeps `delivery` if it failed, as seen `at`, dropping its tenant's
    /// oldest failure when full.
    pub(super) fn record(&mut self, delivery: &Delivery, at: impl FnOnce() -> String) {
        let Some(failure) = delivery.outcome.failure() else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        let recent = self.by_tenant.entry(delivery.tenant.clone()).or_default();
        if recent.len() >= self.capacity {
            recent.pop_front();
        }
        recent.push_back(RecentFailure {
            at: at(),
            plugin: delivery.plugin.clone(),
            plugin_version: delivery.plugin_version.clone(),
            event_id: delivery.event_id.clone(),
            event_type: delivery.event_type.clone(),
            kind: failure.kind,
            message: failure.message.clone(),
            fuel: delivery.fuel,
        });
    }

    /// `tenant`'s recent failures, oldest first.
    pub(super) fn of(&self, tenant: &str) -> Vec<RecentFailure> {
        self.by_tenant
            .get(tenant)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use plugbus_core::{Failure, Outcome};

    fn delivery(tenant: &str, id: &str, failed: bool) -> Delivery {
        Delivery {
            event_id: id.into(),
            tenant: tenant.into(),
            event_type: "t.x".into(),
            plugin: "p".into(),
            plugin_version: "v1".into(),
            outcome: if failed {
                Outcome::Failed(Failure {
                    kind: FailureKind::Trap,
                    message: "boom".into(),
                })
            } else {
                Outcome::Handled
            },
            fuel: 7,
            duration: Duration::ZERO,
            causation_id: None,
            emitted: Vec::new(),
        }
    }

    fn ids(failures: &Failures, tenant: &str) -> Vec<String> {
        failures
            .of(tenant)
            .into_iter()
            .map(|f| f.event_id)
            .collect()
    }

    #[test]
    fn only_failures_are_kept_per_tenant_newest_last() {
        let mut failures = Failures::new(2);
        failures.record(&delivery("a", "1", true), || "t1".into());
        failures.record(&delivery("a", "2", false), || unreachable!("handled"));
        failures.record(&delivery("b", "3", true), || "t3".into());
        failures.record(&delivery("a", "4", true), || "t4".into());
        failures.record(&delivery("a", "5", true), || "t5".into());
        assert_eq!(ids(&failures, "a"), ["4", "5"], "the oldest dropped");
        assert_eq!(ids(&failures, "b"), ["3"]);
        assert!(failures.of("c").is_empty());
        let kept = &failures.of("b")[0];
        assert_eq!(
            (
                kept.at.as_str(),
                kept.kind,
                kept.message.as_str(),
                kept.fuel
            ),
            ("t3", FailureKind::Trap, "boom", 7)
        );
    }

    #[test]
    fn a_ring_of_none_keeps_nothing() {
        let mut failures = Failures::new(0);
        failures.record(&delivery("a", "1", true), || "t".into());
        assert!(failures.of("a").is_empty());
    }
}
