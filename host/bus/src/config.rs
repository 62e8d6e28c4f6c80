//! The settings of durable delivery and the bound on what a consumer
//! holds read ahead.

use std::time::Duration;

use crate::retry::RetryPolicy;
use plugbus_log::Retention;

/// The settings of durable delivery.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// How failed deliveries are retried.
    pub retry: RetryPolicy,
    /// The most events a consumer reads (and delivers) at once (default 128).
    pub read_batch: usize,
    /// The most bytes of events (their stored CloudEvents JSON) one
    /// consumer holds read ahead of its cursor: events waiting behind a
    /// failing event of their key, and those about to be delivered
    /// (default 64 MiB per plugin). At the bound the consumer stops
    /// reading until some are finished; with nothing held it still reads
    /// one event, however large, so an event above the bound is delivered.
    /// Alongside it, at most [`MAX_PENDING`] events are held.
    pub max_pending_bytes: u64,
    /// The most bytes of events one read of the log returns (default
    /// 8 MiB), events the plugin does not subscribe to included: the
    /// memory a consumer needs for one read, whatever the events' size.
    pub max_read_bytes: u64,
    /// After this many failed deliveries in a row a plugin is quarantined:
    /// paused instead of burning fuel on every event (default 20; 0 never).
    pub quarantine_after: u32,
    /// How long a quarantine lasts unless a new version of the plugin is
    /// loaded or [`DurableBus::resume`](crate::bus::DurableBus::resume) ends it first (default 5 minutes).
    /// Its events wait in the log meanwhile; none is dropped. Any value is
    /// safe: one past [`MAX_WAIT`](crate::retry::MAX_WAIT) (about 30 years) lasts that long, in
    /// effect until resumed or replaced.
    pub quarantine_for: Duration,
    /// How long the log keeps events (default: 7 days, no size bound); an
    /// event a loaded plugin has not finished with is always kept.
    pub retention: Retention,
    /// How often retention runs (default every minute); held between
    /// 1 s and 1 day.
    pub retention_interval: Duration,
    /// This host's id among the hosts that share a log (NATS): 1 to 128 of
    /// `A-Z a-z 0-9 - _`, unique among them (default: the host name, the
    /// process id and a random suffix, new for each process).
    pub host_id: String,
    /// How long a lease on a plugin's work lasts unless its host renews it
    /// (default 10 s; at least 100 ms), when several hosts share the log.
    /// The host renews every `lease_ttl / 3` and stops delivering a
    /// plugin `lease_ttl / 4` (the margin) before its lease would expire
    /// unrenewed; another host takes an expired lease a margin after its
    /// expiry. So a plugin of a host that dies moves to another host
    /// within `lease_ttl + lease_ttl / 3 + lease_ttl / 4` (15.8 s by
    /// default; twice the renewal period more when the host the plugin
    /// now belongs on does not run it), one that stops moves within
    /// `lease_ttl / 3`, and the hosts' clocks may differ by up to the
    /// margin. Unused by a log one host has alone (SQLite).
    pub lease_ttl: Duration,
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            read_batch: 128,
            max_pending_bytes: 64 * 1024 * 1024,
            max_read_bytes: 8 * 1024 * 1024,
            quarantine_after: 20,
            quarantine_for: Duration::from_secs(5 * 60),
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 24 * 60 * 60)),
                max_bytes: None,
            },
            retention_interval: Duration::from_secs(60),
            host_id: crate::lease::default_host_id(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// The most events a consumer holds read ahead of its cursor (waiting
/// behind failing events of their keys, or about to be delivered) before
/// it stops reading new ones, until some are handled or dead-lettered.
/// [`DurableConfig::max_pending_bytes`] bounds their bytes.
pub const MAX_PENDING: usize = 10_000;
