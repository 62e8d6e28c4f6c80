//! What bounds each tenant's requests: requests in flight, and the ingest
//! rate in events and bytes per second (a token bucket per tenant and
//! unit), with the request-level timeouts and the scrape token.
//!
//! The rate is a small token bucket rather than the `governor` crate:
//! governor would bring half a dozen crates the workspace does not have
//! (dashmap, nonzero_ext, spinning_top, futures-timer, …), and it checks one
//! quota at a time, so a request refused on bytes would already have spent
//! its events. Here both buckets are checked, then both are charged, under
//! one lock: a refused request costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A tenant's ingest rate. Each limit allows a burst of one second's worth
/// (a full bucket); a single request larger than that is let through when
/// the bucket is full, and the tenant then waits until it has paid it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events per second (default 10,000; 0 turns this limit off).
    pub events_per_second: u64,
    /// Request body bytes per second (default 32 MiB; 0 turns this limit
    /// off).
    pub bytes_per_second: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            events_per_second: 10_000,
            bytes_per_second: 32 * 1024 * 1024,
        }
    }
}

/// The bounds of the request handlers, besides [`ApiConfig`](crate::state::ApiConfig)'s body
/// and batch sizes; the connection-level ones are in
/// [`ServerLimits`](crate::server::ServerLimits).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// How long the body of an ingest request may take to arrive, from the
    /// moment its head has been read (default 30 s). A slower body is
    /// answered 408 and its connection closed; nothing is stored.
    pub body_read_timeout: Duration,
    /// How long one request may take, body and handling together, until
    /// its answer is ready (default 60 s). Past it the request is answered
    /// 503 (`"limit": "request_timeout"`) and its connection closed. An
    /// ingest whose append was under way may still have been stored: a
    /// retry is a duplicate, which the log recognises.
    pub request_timeout: Duration,
    /// How many requests one tenant's token may have under way at once
    /// (default 64; 0 means no limit). One more is answered 429 with
    /// `Retry-After: 1`. The admin token is not limited.
    pub max_in_flight_per_tenant: usize,
    /// Every tenant's ingest rate, unless [`ApiLimits::tenant_rates`] names
    /// the tenant (default [`RateLimit::default`]). Over it an ingest
    /// request is answered 429 with `Retry-After` (whole seconds, at least
    /// 1) and a body naming the limit; nothing of it is stored.
    pub rate: RateLimit,
    /// Per-tenant rates that replace [`ApiLimits::rate`] (default none).
    pub tenant_rates: HashMap<String, RateLimit>,
    /// The `/metrics` scrape token, as the hex SHA-256 of the token (like
    /// the other tokens; `plugbus hash-token` prints it). When set, a
    /// scrape without `Authorization: Bearer <token>` (this token or the
    /// admin's) is answered 401. Default: none, `/metrics` is open.
    pub metrics_token: Option<String>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_in_flight_per_tenant: 64,
            rate: RateLimit::default(),
            tenant_rates: HashMap::new(),
            metrics_token: None,
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most one second's
/// worth. Its balance may go below zero after a request larger than the
/// bucket, which is let through only from a full bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// Tokens per second; 0 is no limit.
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
    }

    /// How long until `cost` may be taken; `None` if it may be now.
    pub(crate) fn wait(&mut self, cost: u64, now: Instant) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        self.refill(now);
        // A request larger than the bucket needs a full bucket.
        let needed = cost.min(self.rate) as f64;
        if self.tokens >= needed {
            return None;
        }
        Some(Duration::from_secs_f64(
            (needed - self.tokens) / self.rate as f64,
        ))
    }

    /// Takes `cost` (after [`Bucket::wait`] said it may).
    pub(crate) fn take(&mut self, cost: u64) {
        if self.rate > 0 {
            self.tokens -= cost as f64;
        }
    }
}

/// One tenant's two buckets.
#[derive(Debug)]
struct TenantBuckets {
    events: Bucket,
    bytes: Bucket,
}

/// A request over its tenant's rate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverRate {
    /// `events_per_second` or `bytes_per_second`: the limit with the
    /// longest wait.
    pub limit: &'static str,
    /// That limit's value.
    pub per_second: u64,
    /// Whole seconds until the request would fit, at least 1.
    pub retry_after: u64,
}

/// The per-tenant rate buckets and in-flight counts.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: ApiLimits,
    buckets: Mutex<HashMap<String, TenantBuckets>>,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Admission {
    pub(crate) fn new(limits: ApiLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn limits(&self) -> &ApiLimits {
        &self.limits
    }

    /// The rate that applies to `tenant`.
    pub(crate) fn rate_of(&self, tenant: &str) -> RateLimit {
        self.limits
            .tenant_rates
            .get(tenant)
            .copied()
            .unwrap_or(self.limits.rate)
    }

    /// Charges `events` and `bytes` to `tenant`'s buckets, both or neither.
    pub(crate) fn charge(
        &self,
        tenant: &str,
        events: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<(), OverRate> {
        let limit = self.rate_of(tenant);
        let mut all = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = all
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantBuckets {
                events: Bucket::new(limit.events_per_second, now),
                bytes: Bucket::new(limit.bytes_per_second, now),
            });
        let waits = [
            (
                "events_per_second",
                limit.events_per_second,
                buckets.events.wait(events, now),
            ),
            (
                "bytes_per_second",
                limit.bytes_per_second,
                buckets.bytes.wait(bytes, now),
            ),
        ];
        let longest = waits
            .into_iter()
            .filter_map(|(name, value, wait)| Some((name, value, wait?)))
            .max_by_key(|(_, _, wait)| *wait);
        if let Some((name, per_second, wait)) = longest {
            return Err(OverRate {
                limit: name,
                per_second,
                retry_after: retry_after_seconds(wait),
            });
        }
        buckets.events.take(events);
        buckets.bytes.take(bytes);
        Ok(())
    }

    /// A place among `tenant`'s requests in flight, held until dropped;
    /// `None` when it has [`ApiLimits::max_in_flight_per_tenant`] already.
    pub(crate) fn enter(&self, tenant: &str) -> Option<Option<OwnedSemaphorePermit>> {
        let max = self.limits.max_in_flight_per_tenant;
        if max == 0 {
            return Some(None);
        }
        let semaphore = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
            .clone();
        semaphore.try_acquire_owned().ok().map(Some)
    }
}

/// `wait` in whole seconds, rounded up, at least 1 (`Retry-After`).
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `wait` is `expected`, give or take a microsecond of
    /// floating point.
    fn about(wait: Option<Duration>, expected: Duration) -> bool {
        wait.is_some_and(|w| w.abs_diff(expected) < Duration::from_micros(1))
    }

    #[test]
    fn a_bucket_allows_one_second_then_refills() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, t0);
        assert_eq!(bucket.wait(10, t0), None);
        bucket.take(10);
        // Empty: one more waits a tenth of a second.
        assert!(about(bucket.wait(1, t0), Duration::from_millis(100)));
        // Half a second refills five.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(bucket.wait(5, t1), None);
        assert!(bucket.wait(6, t1).is_some());
        // Never more than the burst of one second.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(bucket.wait(10, t2), None);
        bucket.take(10);
        assert!(bucket.wait(1, t2).is_some());
    }

    #[test]
    fn a_request_larger_than_the_bucket_needs_it_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, t0);
        bucket.take(1);
        // 25 > 10: waits until the bucket is full again.
        assert!(about(bucket.wait(25, t0), Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(bucket.wait(25, t1), None);
        bucket.take(25);
        // 15 in debt: one more token is 1.6 s away.
        assert!(about(bucket.wait(1, t1), Duration::from_millis(1600)));
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0, t0);
        assert_eq!(bucket.wait(u64::MAX, t0), None);
        bucket.take(u64::MAX);
        assert_eq!(bucket.wait(u64::MAX, t0), None);
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
    }

    fn admission(rate: RateLimit, overrides: &[(&str, RateLimit)]) -> Admission {
        Admission::new(ApiLimits {
            rate,
            tenant_rates: overrides
                .iter()
                .map(|(t, r)| ((*t).to_owned(), *r))
                .collect(),
            ..ApiLimits::default()
        })
    }

    #[test]
    fn both_limits_are_charged_or_neither() {
        let t0 = Instant::now();
        let a = admission(
            RateLimit {
                events_per_second: 3,
                bytes_per_second: 100,
            },
            &[],
        );
        assert_eq!(a.charge("acme", 1, 60, t0), Ok(()));
        // Over the bytes: refused, and its event is not spent.
        let over = a.charge("acme", 1, 50, t0).expect_err("over the bytes");
        assert_eq!(
            (over.limit, over.per_second, over.retry_after),
            ("bytes_per_second", 100, 1)
        );
        assert_eq!(a.charge("acme", 2, 10, t0), Ok(()));
        // The fourth event is one too many, whatever the bytes.
        let over = a.charge("acme", 1, 1, t0).expect_err("over the events");
        assert_eq!(over.limit, "events_per_second");
        // Another tenant has buckets of its own.
        assert_eq!(a.charge("globex", 3, 10, t0), Ok(()));
        // The longest wait is named: 90 bytes in debt against one event.
        assert_eq!(a.charge("globex", 0, 90, t0), Ok(()));
        let over = a.charge("globex", 1, 100, t0).expect_err("both over");
        assert_eq!(over.limit, "bytes_per_second");
    }

    #[test]
    fn a_tenant_override_replaces_the_default() {
        let t0 = Instant::now();
        let small = RateLimit {
            events_per_second: 1,
            bytes_per_second: 0,
        };
        let a = admission(RateLimit::default(), &[("acme", small)]);
        assert_eq!(a.rate_of("acme"), small);
        assert_eq!(a.charge("acme", 1, 1 << 40, t0), Ok(()));
        assert!(a.charge("acme", 1, 0, t0).is_err());
        assert_eq!(a.charge("globex", 1000, 1000, t0), Ok(()));
    }

    #[test]
    fn in_flight_places_are_per_tenant_and_come_back() {
        let a = Admission::new(ApiLimits {
            max_in_flight_per_tenant: 2,
            ..ApiLimits::default()
        });
        let first = a.enter("acme").expect("a place");
        let _second = a.enter("acme").expect("a place");
        assert!(a.enter("acme").is_none(), "the third is refused");
        assert!(a.enter("globex").is_some(), "another tenant's are its own");
        drop(first);
        assert!(a.enter("acme").is_some(), "a place is given back");
        let unlimited = Admission::new(ApiLimits {
            max_in_flight_per_tenant: 0,
            ..ApiLimits::default()
        });
        let held: Vec<_> = (0..1000).map(|_| unlimited.enter("acme")).collect();
        assert!(held.iter().all(Option::is_some));
    }
}
