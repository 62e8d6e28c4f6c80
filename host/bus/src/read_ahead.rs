//! A consumer's read-ahead: the events of its tenant read past its
//! committed cursor, and the per-key order they are delivered in.
//!
//! Events of one partition key (the CloudEvents `partitionkey` extension,
//! else the subject) are delivered in order: while one of them fails and
//! waits for its retry, the later events of its key wait behind it, and
//! events of other keys (and events with no key) go on. The cursor is
//! committed just before the first unfinished event; events finished
//! ahead of it are committed as such, so that a restart skips them.
//!
//! Pure bookkeeping: no I/O, no clock (the caller passes `now`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{DurableConfig, MAX_PENDING};
use plugbus_log::{Commit, FailedAttempt, ReadLimit, Seq, StoredEvent};

/// What an event keeps its order with, for one plugin: the events of the
/// same partition key (the CloudEvents `partitionkey` extension, else the
/// subject). An event with neither keeps no order with others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OrderKey {
    Key(String),
    Alone(Seq),
}

impl OrderKey {
    fn of(stored: &StoredEvent) -> Self {
        let event = &stored.event;
        match event
            .extensions()
            .get("partitionkey")
            .map(String::as_str)
            .or(event.subject())
        {
            Some(key) => Self::Key(key.to_owned()),
            None => Self::Alone(stored.seq),
        }
    }
}

/// A failed event waiting for its retry; it holds back the later events
/// of its key.
#[derive(Debug)]
struct Waiting {
    seq: Seq,
    attempts: Vec<FailedAttempt>,
    retry_at: Instant,
}

/// A consumer's view of its plugin's events: the committed cursor, the
/// events read past it and not finished, the failed ones waiting for a
/// retry, and the events finished ahead of the cursor while an earlier
/// event of another key waits.
#[derive(Debug)]
pub(super) struct ReadAhead {
    /// The committed cursor: every event of the tenant up to it is
    /// finished (handled, dead-lettered, or not subscribed to).
    position: Seq,
    /// The last event read.
    read_after: Seq,
    /// The events read and not finished, by position.
    pending: BTreeMap<Seq, Arc<StoredEvent>>,
    /// Their stored bytes together.
    pending_bytes: u64,
    /// Every event read past the cursor, in order, finished or not: how
    /// far the consumer has read ahead of it.
    read_seqs: VecDeque<Seq>,
    /// By key, the failed event waiting for its retry.
    waiting: HashMap<OrderKey, Waiting>,
    /// Events finished since the last commit.
    unsaved: Vec<Seq>,
    /// Events past the cursor that were finished before a restart (or a
    /// failed commit), skipped when read.
    skip: BTreeSet<Seq>,
    /// A commit found the cursor moved by someone else.
    moved: bool,
    /// Set by a read that reached the end of the log: the appends of the
    /// tenant through this bus counted before it, and when it began.
    read_to_end: Option<(u64, Instant)>,
}

/// How long a consumer that read to the end of the log goes without
/// reading it while nothing is appended through its bus: events other
/// processes append (other hosts on a shared log) are read within this.
pub(super) const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl ReadAhead {
    /// Nothing read yet, the cursor at `position`.
    pub(super) fn new(position: Seq) -> Self {
        Self {
            position,
            read_after: position,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            read_seqs: VecDeque::new(),
            waiting: HashMap::new(),
            unsaved: Vec::new(),
            skip: BTreeSet::new(),
            moved: false,
            read_to_end: None,
        }
    }

    /// The committed cursor.
    pub(super) fn position(&self) -> Seq {
        self.position
    }

    /// The last event read: the next read starts after it.
    pub(super) fn read_after(&self) -> Seq {
        self.read_after
    }

    /// How many events were read past the cursor, finished or not.
    pub(super) fn behind(&self) -> usize {
        self.read_seqs.len()
    }

    /// How many events are held unfinished.
    pub(super) fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// Their stored bytes together.
    pub(super) fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Events finished ahead of the cursor before (by an earlier run):
    /// skipped when read. Those at or before the cursor are ignored.
    pub(super) fn skip(&mut self, finished: impl IntoIterator<Item = Seq>) {
        let position = self.position;
        self.skip = finished.into_iter().filter(|s| *s > position).collect();
    }

    /// Notes that a commit found the cursor moved by someone else.
    pub(super) fn mark_moved(&mut self) {
        self.moved = true;
    }

    /// Whether a commit found the cursor moved since this was last asked.
    pub(super) fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Whether the log must be read now, when the tenant's appends through
    /// this bus number `appends`: unless the last read reached the end of
    /// the log, no append was counted since it began, and it began less
    /// than [`LOOK_AGAIN`] before `now`. A line that never read reads.
    pub(super) fn needs_read(&self, appends: u64, now: Instant) -> bool {
        match self.read_to_end {
            Some((counted, at)) => {
                counted != appends || now.saturating_duration_since(at) >= LOOK_AGAIN
            }
            None => true,
        }
    }

    /// Notes a read that began at `at` with `appends` counted, and whether
    /// it reached the end of the log (fewer events than asked for, none
    /// left behind): only then may the next rounds go without reading.
    pub(super) fn read_done(&mut self, appends: u64, at: Instant, at_the_end: bool) {
        self.read_to_end = at_the_end.then_some((appends, at));
    }

    /// Takes newly read events: pending, or finished at once when not
    /// subscribed to (`subscribes` says by event type) or finished before.
    pub(super) fn take(&mut self, events: Vec<StoredEvent>, subscribes: impl Fn(&str) -> bool) {
        for stored in events {
            let seq = stored.seq;
            self.read_after = self.read_after.max(seq);
            if seq > self.position {
                self.read_seqs.push_back(seq);
            }
            if self.skip.remove(&seq) {
                continue;
            }
            if subscribes(stored.event.ty()) {
                self.pending_bytes = self.pending_bytes.saturating_add(stored.bytes);
                if let Some(replaced) = self.pending.insert(seq, Arc::new(stored)) {
                    self.pending_bytes = self.pending_bytes.saturating_sub(replaced.bytes);
                }
            } else {
                self.unsaved.push(seq);
            }
        }
    }

    /// The pending events to deliver now, in order, at most `limit`, each
    /// with its attempt number: every event whose key has no earlier
    /// event waiting, and the waiting events whose retry is due.
    pub(super) fn due(&self, now: Instant, limit: usize) -> Vec<(Arc<StoredEvent>, u32)> {
        let mut due = Vec::new();
        for (seq, stored) in &self.pending {
            if due.len() >= limit {
                break;
            }
            match self.waiting.get(&OrderKey::of(stored)) {
                None => due.push((stored.clone(), 1)),
                Some(w) if w.seq == *seq && w.retry_at <= now => {
                    let attempt = u32::try_from(w.attempts.len() + 1).unwrap_or(u32::MAX);
                    due.push((stored.clone(), attempt));
                }
                // Held back by an earlier event of its key.
                Some(_) => {}
            }
        }
        due
    }

    /// When the next waiting event is due.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.retry_at).min()
    }

    /// Takes the failed attempts so far of the pending event at `seq`
    /// (none when it is not waiting for a retry).
    pub(super) fn attempts(&mut self, seq: Seq) -> Vec<FailedAttempt> {
        let Some(stored) = self.pending.get(&seq) else {
            return Vec::new();
        };
        let key = OrderKey::of(stored);
        match self.waiting.get(&key) {
            Some(w) if w.seq == seq => self
                .waiting
                .remove(&key)
                .map(|w| w.attempts)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Holds `stored` (and the later events of its key) until `retry_at`.
    pub(super) fn wait(
        &mut self,
        stored: &StoredEvent,
        attempts: Vec<FailedAttempt>,
        retry_at: Instant,
    ) {
        self.waiting.insert(
            OrderKey::of(stored),
            Waiting {
                seq: stored.seq,
                attempts,
                retry_at,
            },
        );
    }

    /// Marks the pending event at `seq` finished: handled or dead-lettered.
    /// Its key, if it held it, is released.
    pub(super) fn finish(&mut self, seq: Seq) {
        if let Some(stored) = self.pending.remove(&seq) {
            self.pending_bytes = self.pending_bytes.saturating_sub(stored.bytes);
            let key = OrderKey::of(&stored);
            if self.waiting.get(&key).is_some_and(|w| w.seq == seq) {
                self.waiting.remove(&key);
            }
            self.unsaved.push(seq);
        }
    }

    /// Fills in `commit`'s cursor (just before the first unfinished event)
    /// and the events finished ahead of it; true when there is anything to
    /// commit.
    pub(super) fn advance(&self, commit: &mut Commit) -> bool {
        let frontier = match self.pending.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.read_after,
        }
        .max(self.position);
        commit.cursor = frontier;
        commit.ahead = self
            .unsaved
            .iter()
            .copied()
            .filter(|seq| *seq > frontier)
            .collect();
        frontier != self.position
            || !commit.ahead.is_empty()
            || !commit.emitted.is_empty()
            || !commit.state.is_empty()
            || !commit.dead_letters.is_empty()
    }

    /// How many events were finished since the last commit: a commit
    /// made now records these.
    pub(super) fn finished_since_commit(&self) -> usize {
        self.unsaved.len()
    }

    /// The commit up to `cursor` is durable, with the first `finished`
    /// events finished since the commit before it (as
    /// [`finished_since_commit`](Self::finished_since_commit) counted
    /// them when it was made); those finished since are still to be
    /// committed.
    pub(super) fn committed(&mut self, cursor: Seq, finished: usize) {
        self.position = cursor;
        self.unsaved.drain(..finished.min(self.unsaved.len()));
        while self.read_seqs.front().is_some_and(|seq| *seq <= cursor) {
            self.read_seqs.pop_front();
        }
    }

    /// How much the next read may bring: nothing when the line holds
    /// [`MAX_PENDING`] events or `max_pending_bytes`; else up to
    /// `read_batch` events (no more than fit under [`MAX_PENDING`]) and
    /// the bytes left under either bound, strictly while the line holds
    /// events, and at least one event when it holds none.
    pub(super) fn read_limit(&self, config: &DurableConfig) -> Option<ReadLimit> {
        let held = self.pending.len();
        if held >= MAX_PENDING || self.pending_bytes >= config.max_pending_bytes {
            return None;
        }
        Some(ReadLimit {
            events: config.read_batch.clamp(1, MAX_PENDING - held),
            bytes: (config.max_pending_bytes - self.pending_bytes).min(config.max_read_bytes),
            first_always: held == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use plugbus_core::event::Event;

    /// An event of type `ty` at `seq`, of `bytes` bytes, with these
    /// extra attributes (a subject, a partition key).
    fn event(seq: Seq, ty: &str, extra: &[(&str, &str)], bytes: u64) -> StoredEvent {
        let extra: String = extra
            .iter()
            .map(|(name, value)| format!(r#","{name}":"{value}""#))
            .collect();
        let event = Event::from_json(&format!(
            r#"{{"specversion":"1.0","id":"e-{seq}","source":"/t","type":"{ty}","tenant":"acme"{extra}}}"#
        ))
        .expect("event");
        StoredEvent {
            seq,
            appended_at_ms: 0,
            event,
            bytes,
        }
    }

    /// An event keyed by `subject` (none: keyless).
    fn keyed(seq: Seq, subject: Option<&str>, bytes: u64) -> StoredEvent {
        match subject {
            Some(subject) => event(seq, "t.x", &[("subject", subject)], bytes),
            None => event(seq, "t.x", &[], bytes),
        }
    }

    fn stored(seq: Seq, bytes: u64) -> StoredEvent {
        keyed(seq, None, bytes)
    }

    fn all(_: &str) -> bool {
        true
    }

    fn seqs(due: &[(Arc<StoredEvent>, u32)]) -> Vec<(Seq, u32)> {
        due.iter().map(|(s, a)| (s.seq, *a)).collect()
    }

    fn attempt() -> FailedAttempt {
        FailedAttempt {
            kind: plugbus_core::FailureKind::Trap,
            message: "boom".into(),
            fuel: 0,
            plugin_version: "v".into(),
            at_ms: 0,
        }
    }

    fn commit() -> Commit {
        Commit::default()
    }

    #[test]
    fn a_line_reads_until_a_read_reaches_the_end() {
        let now = Instant::now();
        let mut line = ReadAhead::new(0);
        assert!(line.needs_read(0, now), "a line that never read reads");
        // A read cut short (it may have left events behind): read again.
        line.take((1..=2).map(|s| stored(s, 1)).collect(), all);
        line.read_done(0, now, false);
        assert!(line.needs_read(0, now));
        // At the end, and nothing appended since: no read.
        line.read_done(0, now, true);
        assert!(!line.needs_read(0, now));
        assert!(!line.needs_read(0, now + LOOK_AGAIN / 2));
    }

    #[test]
    fn an_append_since_the_last_read_makes_the_next_round_read() {
        let now = Instant::now();
        let mut line = ReadAhead::new(0);
        // Two appends counted before the read began.
        line.read_done(2, now, true);
        assert!(!line.needs_read(2, now));
        // Another counted since: its events may not be in what was read.
        assert!(line.needs_read(3, now));
        // Read again with that count: quiet until the next.
        line.read_done(3, now, true);
        assert!(!line.needs_read(3, now));
        assert!(line.needs_read(4, now));
    }

    #[test]
    fn a_quiet_line_still_reads_once_a_second_for_other_processes_events() {
        let now = Instant::now();
        let mut line = ReadAhead::new(0);
        line.read_done(0, now, true);
        assert!(!line.needs_read(0, now + LOOK_AGAIN - Duration::from_millis(1)));
        assert!(line.needs_read(0, now + LOOK_AGAIN));
        // A clock seen going back does not keep it from reading later.
        assert!(!line.needs_read(0, now.checked_sub(Duration::from_secs(5)).unwrap_or(now)));
    }

    #[test]
    fn events_of_a_key_wait_behind_its_retrying_event() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut line = ReadAhead::new(0);
        line.take(
            vec![
                keyed(1, Some("a"), 1),
                keyed(2, Some("a"), 1),
                keyed(3, Some("b"), 1),
                keyed(4, None, 1),
                keyed(5, None, 1),
            ],
            all,
        );
        assert_eq!(
            seqs(&line.due(now, 10)),
            [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
        );
        // 1 fails: 2 (same key) waits behind it; another key and keyless
        // events go on.
        let mut attempts = line.attempts(1);
        assert!(attempts.is_empty());
        attempts.push(attempt());
        line.wait(&keyed(1, Some("a"), 1), attempts, later);
        assert_eq!(seqs(&line.due(now, 10)), [(3, 1), (4, 1), (5, 1)]);
        assert_eq!(line.next_retry(), Some(later));
        // A keyless event failing holds back no other keyless event.
        line.wait(&keyed(4, None, 1), vec![attempt()], later);
        assert_eq!(seqs(&line.due(now, 10)), [(3, 1), (5, 1)]);
        // Due: the retry is its second attempt, and 2 still waits.
        assert_eq!(seqs(&line.due(later, 10)), [(1, 2), (3, 1), (4, 2), (5, 1)]);
        // Handled at last: the key is released.
        assert_eq!(line.attempts(1).len(), 1);
        line.finish(1);
        assert_eq!(seqs(&line.due(now, 10)), [(2, 1), (3, 1), (5, 1)]);
    }

    #[test]
    fn a_dead_lettered_head_releases_its_key() {
        let now = Instant::now();
        let mut line = ReadAhead::new(0);
        line.take(vec![keyed(1, Some("a"), 1), keyed(2, Some("a"), 1)], all);
        line.wait(&keyed(1, Some("a"), 1), vec![attempt(); 4], now);
        assert_eq!(seqs(&line.due(now, 10)), [(1, 5)]);
        // Given up: dead-lettered, finished; the next of its key goes.
        let attempts = line.attempts(1);
        assert_eq!(attempts.len(), 4);
        line.finish(1);
        assert_eq!(line.next_retry(), None);
        assert_eq!(seqs(&line.due(now, 10)), [(2, 1)]);
        let mut c = commit();
        assert!(line.advance(&mut c));
        assert_eq!(c.cursor, 1);
        assert!(c.ahead.is_empty());
    }

    #[test]
    fn a_partition_key_outranks_the_subject() {
        let now = Instant::now();
        let event = |seq: Seq, key: &str, subject: &str| {
            event(
                seq,
                "t.x",
                &[("partitionkey", key), ("subject", subject)],
                1,
            )
        };
        let mut line = ReadAhead::new(0);
        line.take(vec![event(1, "k", "s1"), event(2, "k", "s2")], all);
        line.wait(
            &event(1, "k", "s1"),
            vec![attempt()],
            now + Duration::from_secs(1),
        );
        assert!(line.due(now, 10).is_empty(), "same key, other subjects");
    }

    #[test]
    fn due_events_are_bounded_and_in_order() {
        let mut line = ReadAhead::new(0);
        line.take((1..=5).map(|s| stored(s, 1)).collect(), all);
        assert_eq!(seqs(&line.due(Instant::now(), 2)), [(1, 1), (2, 1)]);
        assert!(line.due(Instant::now(), 0).is_empty());
    }

    #[test]
    fn the_cursor_stops_before_the_first_unfinished_event() {
        let now = Instant::now();
        let mut line = ReadAhead::new(10);
        line.take(
            vec![
                keyed(11, Some("a"), 1),
                keyed(12, Some("b"), 1),
                keyed(13, None, 1),
            ],
            all,
        );
        line.wait(&keyed(11, Some("a"), 1), vec![attempt()], now);
        line.finish(12);
        line.finish(13);
        let mut c = commit();
        assert!(line.advance(&mut c), "finished ahead of the cursor");
        assert_eq!((c.cursor, c.ahead.clone()), (10, vec![12, 13]));
        line.committed(c.cursor, line.finished_since_commit());
        assert_eq!(line.position(), 10);
        assert_eq!(line.behind(), 3);
        line.finish(11);
        let mut c = commit();
        assert!(line.advance(&mut c));
        assert_eq!((c.cursor, c.ahead.clone()), (13, vec![]));
        line.committed(13, line.finished_since_commit());
        assert_eq!((line.position(), line.behind()), (13, 0));
        let mut c = commit();
        assert!(!line.advance(&mut c), "nothing more to commit");
    }

    /// A commit in flight records what was finished when it was made;
    /// events finished while it is in flight (the next round's) stay to
    /// be recorded by the next commit, even ahead of its cursor.
    #[test]
    fn events_finished_while_a_commit_is_in_flight_go_into_the_next() {
        let now = Instant::now();
        let mut line = ReadAhead::new(0);
        line.take(
            vec![
                keyed(1, Some("a"), 1),
                keyed(2, Some("b"), 1),
                keyed(3, Some("c"), 1),
                keyed(4, Some("d"), 1),
            ],
            all,
        );
        line.wait(&keyed(1, Some("a"), 1), vec![attempt()], now);
        line.finish(2);
        let mut first = commit();
        assert!(line.advance(&mut first));
        assert_eq!((first.cursor, first.ahead.clone()), (0, vec![2]));
        let in_flight = line.finished_since_commit();
        // Delivered while the first commit is in flight.
        line.finish(3);
        line.finish(4);
        line.committed(first.cursor, in_flight);
        let mut next = commit();
        assert!(line.advance(&mut next), "3 and 4 are not recorded yet");
        assert_eq!((next.cursor, next.ahead.clone()), (0, vec![3, 4]));
        line.committed(next.cursor, line.finished_since_commit());
        line.finish(1);
        let mut last = commit();
        assert!(line.advance(&mut last));
        assert_eq!((last.cursor, last.ahead.clone()), (4, vec![]));
    }

    #[test]
    fn unsubscribed_and_skipped_events_are_finished_when_read() {
        let mut line = ReadAhead::new(0);
        line.skip([0, 2]);
        let other = event(3, "t.other", &[], 1);
        line.take(vec![stored(1, 1), stored(2, 1), other], |ty| ty == "t.x");
        assert_eq!(seqs(&line.due(Instant::now(), 10)), [(1, 1)]);
        assert_eq!((line.pending_events(), line.pending_bytes()), (1, 1));
        assert_eq!((line.read_after(), line.behind()), (3, 3));
        let mut c = commit();
        assert!(line.advance(&mut c));
        assert_eq!((c.cursor, c.ahead.clone()), (0, vec![3]));
        line.finish(1);
        let mut c = commit();
        line.advance(&mut c);
        assert_eq!((c.cursor, c.ahead.clone()), (3, vec![]));
    }

    #[test]
    fn finishing_an_unknown_event_changes_nothing() {
        let mut line = ReadAhead::new(0);
        line.take(vec![keyed(1, Some("a"), 5)], all);
        line.finish(7);
        assert!(line.attempts(7).is_empty());
        assert_eq!((line.pending_events(), line.pending_bytes()), (1, 5));
        let mut c = commit();
        assert!(!line.advance(&mut c));
    }

    #[test]
    fn reading_an_event_again_does_not_count_its_bytes_twice() {
        let mut line = ReadAhead::new(0);
        line.take(vec![stored(1, 10)], all);
        line.take(vec![stored(1, 10)], all);
        assert_eq!((line.pending_events(), line.pending_bytes()), (1, 10));
    }

    #[test]
    fn a_moved_cursor_is_told_once() {
        let mut line = ReadAhead::new(0);
        assert!(!line.take_moved());
        line.mark_moved();
        assert!(line.take_moved());
        assert!(!line.take_moved());
    }

    #[test]
    fn the_read_limit_leaves_room_for_what_the_line_holds() {
        let config = DurableConfig {
            max_pending_bytes: 100,
            max_read_bytes: 60,
            read_batch: 128,
            ..DurableConfig::default()
        };
        let mut line = ReadAhead::new(0);
        // Holding nothing: up to the read bound, the first event always.
        assert_eq!(
            line.read_limit(&config),
            Some(ReadLimit {
                events: 128,
                bytes: 60,
                first_always: true
            })
        );
        line.take(vec![stored(1, 30), stored(2, 30)], all);
        assert_eq!(line.pending_bytes(), 60);
        // Holding some: strictly what is left.
        assert_eq!(
            line.read_limit(&config),
            Some(ReadLimit {
                events: 128,
                bytes: 40,
                first_always: false
            })
        );
        line.take(vec![stored(3, 40)], all);
        assert_eq!(line.read_limit(&config), None, "full");
        line.finish(1);
        assert_eq!(line.pending_bytes(), 70);
        assert_eq!(line.read_limit(&config).map(|l| l.bytes), Some(30));
        // Behind the cursor: every event read past it.
        assert_eq!(line.behind(), 3);
        line.committed(1, line.finished_since_commit());
        assert_eq!(line.behind(), 2);
    }

    #[test]
    fn the_read_limit_stops_at_max_pending_events() {
        let config = DurableConfig::default();
        let mut line = ReadAhead::new(0);
        let almost: Vec<_> = (1..MAX_PENDING as Seq).map(|seq| stored(seq, 1)).collect();
        line.take(almost, all);
        assert_eq!(line.read_limit(&config).map(|l| l.events), Some(1));
        line.take(vec![stored(MAX_PENDING as Seq, 1)], all);
        assert_eq!(line.read_limit(&config), None);
    }

    #[test]
    fn a_zero_read_batch_still_reads_one_event() {
        let config = DurableConfig {
            read_batch: 0,
            ..DurableConfig::default()
        };
        assert_eq!(
            ReadAhead::new(0).read_limit(&config).map(|l| l.events),
            Some(1)
        );
    }
}
