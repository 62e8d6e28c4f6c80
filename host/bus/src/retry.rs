//! The retry schedule: how long a failed delivery waits before its next
//! attempt, and when it is given up. Pure arithmetic on durations; the
//! only randomness (the jitter) is drawn by [`RetryPolicy::backoff`] and
//! handed to [`RetryPolicy::backoff_with_jitter`], which is deterministic.

use std::hash::BuildHasher;
use std::time::Duration;

/// The longest wait the bus computes a deadline for, about 30 years: a
/// longer quarantine or backoff (up to `Duration::MAX`) ends at this
/// horizon instead of overflowing.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `wait` after `now`, saturating: waits past [`MAX_WAIT`] end at it.
pub(super) fn deadline(now: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    now.checked_add(wait.min(MAX_WAIT))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 60 * 60)))
        .unwrap_or(now)
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries of one event before it becomes a dead letter, the first
    /// included (default 5).
    pub max_attempts: u32,
    /// The wait before the first retry (default 100 ms); each retry waits
    /// twice as long as the one before, up to `max_backoff`, and a random
    /// half of each wait is jitter. Any value is safe (waits saturate at
    /// [`MAX_WAIT`]); sensible ones are 1 ms to a minute.
    pub base_backoff: Duration,
    /// The longest wait between two attempts (default 30 s). Any value is
    /// safe (saturating at [`MAX_WAIT`]); sensible ones are up to a day.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1 for the first):
    /// [`RetryPolicy::backoff_with_jitter`] with a random jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let jitter = std::collections::hash_map::RandomState::new().hash_one(failures);
        self.backoff_with_jitter(failures, jitter)
    }

    /// The wait after the `failures`-th failed attempt (1 for the first)
    /// with the random number `jitter`: the full wait is `base_backoff`
    /// doubled for each failure after the first, at most `max_backoff`
    /// (saturating, never overflowing); half of it is always waited, the
    /// other half is `jitter` modulo that half. So the wait lies in
    /// `[full / 2, full)` (exactly `full` only when that is under 2 ns).
    pub fn backoff_with_jitter(&self, failures: u32, jitter: u64) -> Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
        let full = self
            .base_backoff
            .saturating_mul(doubling)
            .min(self.max_backoff);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(jitter % nanos.max(1))
    }

    /// After `used` attempts of which the last failed (`retryable` when it
    /// may succeed later), the wait before the next attempt, or `None`
    /// when the event is given up: its failure is permanent, or it has
    /// had `max_attempts` (the plugin's own, else the policy's).
    pub fn retry_after(
        &self,
        used: u32,
        retryable: bool,
        max_attempts: Option<u32>,
    ) -> Option<Duration> {
        let max_attempts = max_attempts.unwrap_or(self.max_attempts);
        (retryable && used < max_attempts).then(|| self.backoff(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_backoff: base,
            max_backoff: max,
        }
    }

    #[test]
    fn the_first_retry_waits_between_half_the_base_and_the_base() {
        let p = policy(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(p.backoff_with_jitter(1, 0), Duration::from_millis(50));
        assert_eq!(
            p.backoff_with_jitter(1, 50_000_000 - 1),
            Duration::from_millis(100) - Duration::from_nanos(1)
        );
        // The jitter wraps within the half.
        assert_eq!(
            p.backoff_with_jitter(1, 50_000_000),
            Duration::from_millis(50)
        );
        for failures in 0..40 {
            let wait = p.backoff(failures);
            let full = p.backoff_with_jitter(failures, 0) * 2;
            assert!(wait >= full / 2 && wait < full, "{failures}: {wait:?}");
        }
    }

    #[test]
    fn each_retry_doubles_the_wait_up_to_the_maximum() {
        let p = policy(Duration::from_millis(100), Duration::from_secs(30));
        let floor = |failures| p.backoff_with_jitter(failures, 0);
        // The zeroth failure counts as the first.
        assert_eq!(floor(0), Duration::from_millis(50));
        assert_eq!(floor(2), Duration::from_millis(100));
        assert_eq!(floor(3), Duration::from_millis(200));
        assert_eq!(floor(9), Duration::from_millis(12_800));
        assert_eq!(floor(10), Duration::from_secs(15));
        assert_eq!(floor(11), Duration::from_secs(15));
        assert_eq!(floor(u32::MAX), Duration::from_secs(15));
        assert!(p.backoff(u32::MAX) < Duration::from_secs(30));
    }

    #[test]
    fn huge_settings_saturate_instead_of_overflowing() {
        let p = policy(Duration::MAX, Duration::MAX);
        assert_eq!(p.backoff_with_jitter(u32::MAX, 0), Duration::MAX / 2);
        assert!(p.backoff_with_jitter(u32::MAX, u64::MAX) <= Duration::MAX);
        let p = policy(Duration::from_secs(1), Duration::MAX);
        assert_eq!(
            p.backoff_with_jitter(64, 0),
            Duration::from_secs(1) * u32::MAX / 2
        );
        let now = tokio::time::Instant::now();
        assert_eq!(deadline(now, p.backoff(u32::MAX)), now + MAX_WAIT);
    }

    #[test]
    fn a_zero_or_tiny_backoff_is_safe() {
        let p = policy(Duration::ZERO, Duration::from_secs(30));
        assert_eq!(p.backoff_with_jitter(1, u64::MAX), Duration::ZERO);
        assert_eq!(p.backoff(7), Duration::ZERO);
        let p = policy(Duration::from_nanos(1), Duration::from_secs(30));
        assert_eq!(p.backoff_with_jitter(1, 12345), Duration::ZERO);
        // A maximum below the base wins.
        let p = policy(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(p.backoff_with_jitter(1, 0), Duration::from_millis(500));
    }

    #[test]
    fn retries_stop_at_the_attempts_or_a_permanent_failure() {
        let p = policy(Duration::from_millis(100), Duration::from_secs(30));
        assert!(p.retry_after(1, true, None).is_some());
        assert!(p.retry_after(4, true, None).is_some());
        assert_eq!(p.retry_after(5, true, None), None);
        assert_eq!(p.retry_after(u32::MAX, true, None), None);
        assert_eq!(p.retry_after(1, false, None), None, "permanent");
        // The plugin's own count wins over the policy's.
        assert_eq!(p.retry_after(1, true, Some(1)), None);
        assert_eq!(p.retry_after(0, true, Some(0)), None);
        assert!(p.retry_after(9, true, Some(10)).is_some());
        let wait = p.retry_after(3, true, None).expect("retried");
        assert!(wait >= Duration::from_millis(200) && wait < Duration::from_millis(400));
    }

    #[test]
    fn deadlines_saturate() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(deadline(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(deadline(now, Duration::from_secs(u64::MAX)), now + MAX_WAIT);
    }
}
