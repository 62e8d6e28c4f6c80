//! The tail cache: the events the writer appended most recently, kept
//! parsed (with their positions) once their group commit is durable, so
//! that a consumer reading right behind the head reads memory, not SQLite.
//!
//! The cache holds *every* event of the log with a position in
//! `(lower, upto]`, per tenant in order, and nothing else:
//! - `upto` is the newest position the writer has published: everything
//!   it appended up to there is in the cache (or was evicted, see below).
//! - `lower` is where the cache starts knowing: the head of the log when
//!   the cache was last reset (at open, after retention deleted events, when
//!   another process wrote to the file, or when a commit failed and what it
//!   left is unknown), raised by eviction past the newest evicted position.
//!   Eviction goes in position order across tenants (oldest first), so
//!   that every event between `lower` and `upto` is still held.
//!
//! A read after a position at or past `lower` is answered from the cache
//! (what it holds of the tenant past that position, which may be nothing);
//! a read from before `lower` goes to SQLite. So the cache never answers
//! with an event the log no longer holds (retention resets it before its
//! deletions commit) and never skips one (it covers a range whole, or not
//! at all). It is bounded by a number of events and of bytes (their stored
//! JSON); 0 turns it off.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{ReadLimit, Seq, StoredEvent};

/// How much the tail cache holds, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailCacheLimits {
    /// The most events, across tenants (default 65,536; 0: no cache).
    pub events: usize,
    /// The most bytes of the events' stored forms, across tenants
    /// (default 64 MiB; 0: no cache). The events' parsed forms take about
    /// twice that in memory.
    pub bytes: u64,
}

impl Default for TailCacheLimits {
    fn default() -> Self {
        Self {
            events: 65_536,
            bytes: 64 * 1024 * 1024,
        }
    }
}

/// The tail cache, shared by the writer (which fills it) and the readers.
pub(super) struct TailCache {
    limits: TailCacheLimits,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each tenant's cached events, in position order.
    tenants: HashMap<String, VecDeque<StoredEvent>>,
    /// Every cached event's position and tenant, in position order: the
    /// order of eviction.
    order: VecDeque<(Seq, String)>,
    /// The bytes of the cached events.
    bytes: u64,
    /// The cache knows every event after this position...
    lower: Seq,
    /// ...up to this one.
    upto: Seq,
}

impl Inner {
    /// The cached events of `tenant` after `after`, in order, when the
    /// cache knows every one of them (an empty run for a tenant it holds
    /// nothing of); `None` when it does not, and SQLite must answer.
    fn after(
        &self,
        tenant: &str,
        after: Seq,
    ) -> Option<std::collections::vec_deque::Iter<'_, StoredEvent>> {
        if after < self.lower || self.upto == Seq::MAX {
            return None;
        }
        let Some(queue) = self.tenants.get(tenant) else {
            return Some(std::collections::vec_deque::Iter::default());
        };
        let start = queue.partition_point(|stored| stored.seq <= after);
        Some(queue.range(start..))
    }

    fn reset(&mut self, head: Seq) {
        self.tenants.clear();
        self.order.clear();
        self.bytes = 0;
        self.lower = head;
        self.upto = head;
    }
}

impl TailCache {
    /// An empty cache that knows nothing yet: the writer resets it at the
    /// log's head before the first group.
    pub fn new(limits: TailCacheLimits) -> Self {
        Self {
            limits,
            inner: RwLock::new(Inner {
                lower: Seq::MAX,
                upto: Seq::MAX,
                ..Inner::default()
            }),
        }
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn enabled(&self) -> bool {
        self.limits.events > 0 && self.limits.bytes > 0
    }

    /// Forgets everything: the cache knows the events after `head` (the
    /// log's newest position, as the writer sees it inside its
    /// transaction), none yet.
    pub fn reset(&self, head: Seq) {
        self.write_inner().reset(head);
    }

    /// Forgets everything and knows nothing until the next reset: the log
    /// may hold events the cache was not told about.
    pub fn invalidate(&self) {
        self.reset(Seq::MAX);
    }

    /// Whether the cache knows where the log stands (it was reset since it
    /// was last invalidated).
    pub fn valid(&self) -> bool {
        self.read_inner().upto != Seq::MAX
    }

    /// Adds the events of a committed group, in position order, every one
    /// after the newest published; `head` is the log's newest position
    /// after the group (at least the last event's). Evicts the oldest
    /// events beyond the limits.
    pub fn publish(&self, events: Vec<(String, StoredEvent)>, head: Seq) {
        let mut guard = self.write_inner();
        let inner = &mut *guard;
        if inner.upto == Seq::MAX {
            return;
        }
        if !self.enabled() {
            inner.lower = head;
            inner.upto = head;
            return;
        }
        for (tenant, stored) in events {
            if stored.seq <= inner.upto {
                // Not after what is published: the cache's order would
                // break. Cannot happen (positions only grow); start over.
                inner.reset(head);
                return;
            }
            inner.bytes = inner.bytes.saturating_add(stored.bytes);
            inner.upto = stored.seq;
            inner.order.push_back((stored.seq, tenant.clone()));
            inner.tenants.entry(tenant).or_default().push_back(stored);
        }
        inner.upto = inner.upto.max(head);
        while inner.order.len() > self.limits.events || inner.bytes > self.limits.bytes {
            let Some((seq, tenant)) = inner.order.pop_front() else {
                break;
            };
            inner.lower = inner.lower.max(seq);
            if let Some(queue) = inner.tenants.get_mut(&tenant) {
                if let Some(oldest) = queue.pop_front() {
                    inner.bytes = inner.bytes.saturating_sub(oldest.bytes);
                }
                if queue.is_empty() {
                    inner.tenants.remove(&tenant);
                }
            }
        }
    }

    /// The events of `tenant` after `after`, as many as `limit` allows,
    /// when the cache knows them all; `None` when the read must go to
    /// SQLite.
    pub fn read(&self, tenant: &str, after: Seq, limit: ReadLimit) -> Option<Vec<StoredEvent>> {
        if !self.enabled() {
            return None;
        }
        let inner = self.read_inner();
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for stored in inner.after(tenant, after)?.take(limit.events) {
            let first = out.is_empty() && limit.first_always;
            if !first && bytes.saturating_add(stored.bytes) > limit.bytes {
                break;
            }
            bytes = bytes.saturating_add(stored.bytes);
            out.push(stored.clone());
        }
        Some(out)
    }

    /// How many events of `tenant` there are after `after`, counting at
    /// most `limit`, when the cache knows them all.
    pub fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        let inner = self.read_inner();
        let known = inner.after(tenant, after)?.len();
        Some((known as u64).min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugbus_core::event::Event;

    fn stored(tenant: &str, seq: Seq) -> (String, StoredEvent) {
        let event = Event::builder(tenant, format!("e-{seq}"), "/src", "t.x")
            .build()
            .expect("an event");
        (
            tenant.to_owned(),
            StoredEvent {
                seq,
                appended_at_ms: 1,
                event,
                bytes: 10,
            },
        )
    }

    fn seqs(events: Option<Vec<StoredEvent>>) -> Option<Vec<Seq>> {
        events.map(|events| events.iter().map(|s| s.seq).collect())
    }

    fn all(n: usize) -> ReadLimit {
        ReadLimit::events(n)
    }

    #[test]
    fn it_knows_nothing_before_its_first_reset() {
        let cache = TailCache::new(TailCacheLimits::default());
        cache.publish(vec![stored("a", 1)], 1);
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        cache.reset(1);
        cache.publish(vec![stored("a", 2)], 2);
        assert_eq!(seqs(cache.read("a", 1, all(10))), Some(vec![2]));
        // Before where it starts knowing: SQLite.
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        assert_eq!(cache.count_after("a", 0, 10), None);
    }

    #[test]
    fn reads_are_per_tenant_in_order_within_their_limits() {
        let cache = TailCache::new(TailCacheLimits::default());
        cache.reset(10);
        cache.publish(vec![stored("a", 11), stored("b", 12), stored("a", 13)], 13);
        cache.publish(vec![stored("a", 15)], 16);
        assert_eq!(seqs(cache.read("a", 10, all(10))), Some(vec![11, 13, 15]));
        assert_eq!(seqs(cache.read("a", 11, all(10))), Some(vec![13, 15]));
        assert_eq!(seqs(cache.read("a", 12, all(1))), Some(vec![13]));
        assert_eq!(seqs(cache.read("b", 10, all(10))), Some(vec![12]));
        // Known to have nothing more, without SQLite.
        assert_eq!(seqs(cache.read("a", 16, all(10))), Some(vec![]));
        assert_eq!(seqs(cache.read("c", 10, all(10))), Some(vec![]));
        assert_eq!(cache.count_after("a", 10, 2), Some(2));
        assert_eq!(cache.count_after("a", 15, 2), Some(0));
        // The byte bound: strict unless the first always comes.
        let strict = ReadLimit {
            events: 10,
            bytes: 15,
            first_always: false,
        };
        assert_eq!(seqs(cache.read("a", 10, strict)), Some(vec![11]));
        let tiny = ReadLimit {
            events: 10,
            bytes: 5,
            first_always: false,
        };
        assert_eq!(seqs(cache.read("a", 10, tiny)), Some(vec![]));
        let first = ReadLimit {
            first_always: true,
            ..tiny
        };
        assert_eq!(seqs(cache.read("a", 10, first)), Some(vec![11]));
    }

    #[test]
    fn eviction_goes_oldest_first_across_tenants_and_raises_the_lower_edge() {
        let cache = TailCache::new(TailCacheLimits {
            events: 3,
            bytes: u64::MAX,
        });
        cache.reset(0);
        cache.publish(
            vec![
                stored("a", 1),
                stored("b", 2),
                stored("a", 3),
                stored("b", 4),
            ],
            4,
        );
        // 1 went: a read from before it goes to SQLite, one from it on is
        // answered whole.
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        assert_eq!(seqs(cache.read("b", 0, all(10))), None);
        assert_eq!(seqs(cache.read("a", 1, all(10))), Some(vec![3]));
        assert_eq!(seqs(cache.read("b", 1, all(10))), Some(vec![2, 4]));
        // By bytes too.
        let cache = TailCache::new(TailCacheLimits {
            events: 100,
            bytes: 25,
        });
        cache.reset(0);
        cache.publish(vec![stored("a", 1), stored("a", 2), stored("a", 3)], 3);
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        assert_eq!(seqs(cache.read("a", 1, all(10))), Some(vec![2, 3]));
    }

    #[test]
    fn a_reset_or_invalidation_forgets_everything() {
        let cache = TailCache::new(TailCacheLimits::default());
        cache.reset(0);
        cache.publish(vec![stored("a", 1), stored("a", 2)], 2);
        cache.reset(2);
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        assert_eq!(seqs(cache.read("a", 2, all(10))), Some(vec![]));
        cache.invalidate();
        assert!(!cache.valid());
        assert_eq!(seqs(cache.read("a", 2, all(10))), None);
        cache.publish(vec![stored("a", 3)], 3);
        assert_eq!(seqs(cache.read("a", 2, all(10))), None, "not until a reset");
    }

    #[test]
    fn a_cache_turned_off_holds_nothing_and_answers_nothing() {
        let cache = TailCache::new(TailCacheLimits {
            events: 0,
            bytes: 0,
        });
        cache.reset(0);
        cache.publish(vec![stored("a", 1)], 1);
        assert_eq!(seqs(cache.read("a", 0, all(10))), None);
        assert_eq!(seqs(cache.read("a", 1, all(10))), None);
        assert_eq!(cache.count_after("a", 1, 1), None);
    }
}
