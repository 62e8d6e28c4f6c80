//! The log in memory, lost when it is dropped: the contract of
//! [`SqliteLog`](super::SqliteLog) without a file, for tests of what sits
//! on top of the log. Positions, duplicates within the window, cursors and
//! what a plugin finished ahead, commits with state, dead letters and
//! their quotas, redrives, quarantines and retention behave as in the
//! embedded log; every write is durable at once and the log is always
//! writable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{
    Appended, Commit, Committed, CursorStore, DeadLetter, DeadLetterDepths, DeadLetterQuota,
    DeadLetterStore, EventStore, InspectStore, LogError, Page, Pruned, Quarantine,
    QuarantineChange, QuarantineStore, ReadLimit, Reply, Retention, Seq, StateEntry, StateQuery,
    StoredEvent, now_ms,
};
use plugbus_core::event::Event;
use plugbus_core::state::{StateError, StateStore, StateWrite};

/// The settings of a [`MemoryLog`]: those of
/// [`SqliteLogConfig`](super::SqliteLogConfig) that are about what the log
/// keeps, not how.
#[derive(Debug, Clone)]
pub struct MemoryLogConfig {
    /// How long an appended (tenant, source, id) makes a second append of
    /// it a duplicate (default 24 hours).
    pub duplicate_window: Duration,
    /// Every tenant's dead-letter quota, unless `tenant_dead_letters`
    /// names the tenant.
    pub dead_letters: DeadLetterQuota,
    /// Dead-letter quotas of particular tenants, by tenant.
    pub tenant_dead_letters: HashMap<String, DeadLetterQuota>,
}

impl Default for MemoryLogConfig {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(24 * 60 * 60),
            dead_letters: DeadLetterQuota::default(),
            tenant_dead_letters: HashMap::new(),
        }
    }
}

/// A (tenant, plugin) pair.
type Plugin = (String, String);

/// A dead letter as kept, with its bytes as the embedded log counts them
/// (its event's and its attempts' JSON).
struct KeptLetter {
    letter: DeadLetter,
    bytes: u64,
}

/// Everything the log keeps, behind one lock: each request sees and
/// leaves it whole.
#[derive(Default)]
struct Tables {
    /// The last position given out; positions are never reused, not even
    /// those of refused duplicates.
    last_seq: Seq,
    /// By tenant, then position.
    events: BTreeMap<String, BTreeMap<Seq, StoredEvent>>,
    /// The position and time of each appended (tenant, source, id).
    ingest_keys: HashMap<(String, String, String), (Seq, i64)>,
    cursors: HashMap<Plugin, Seq>,
    /// What each plugin finished past its cursor.
    ahead: BTreeMap<Plugin, BTreeSet<Seq>>,
    dead_letters: BTreeMap<Plugin, BTreeMap<Seq, KeptLetter>>,
    /// The dead letters whose redrive was requested.
    redrives: BTreeMap<Plugin, BTreeSet<Seq>>,
    quarantines: BTreeMap<Plugin, Quarantine>,
    state: HashMap<Plugin, BTreeMap<String, Vec<u8>>>,
    /// The plugin that emitted each emitted event still kept, by position.
    emitted_by: HashMap<Seq, String>,
}

/// The log in memory, lost when it is dropped: the contract of the
/// embedded log without a file, for tests of what sits on top of the log.
/// Every write is durable at once; the log is always writable.
#[derive(Default)]
pub struct MemoryLog {
    config: MemoryLogConfig,
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn key(tenant: &str, plugin: &str) -> Plugin {
    (tenant.to_owned(), plugin.to_owned())
}

impl MemoryLog {
    /// An empty log with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log with `config`.
    pub fn with_config(config: MemoryLogConfig) -> Self {
        Self {
            config,
            tables: Mutex::default(),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn quota(&self, tenant: &str) -> &DeadLetterQuota {
        self.config
            .tenant_dead_letters
            .get(tenant)
            .unwrap_or(&self.config.dead_letters)
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.config.duplicate_window.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Tables {
    /// Stores `event` at the next position, stamped `now`.
    fn put_event(&mut self, event: &Event, now: i64) -> Seq {
        self.last_seq += 1;
        let seq = self.last_seq;
        let stored = StoredEvent {
            seq,
            appended_at_ms: now,
            bytes: event.to_json_string().len() as u64,
            event: event.clone(),
        };
        self.events
            .entry(event.tenant().to_owned())
            .or_default()
            .insert(seq, stored);
        seq
    }

    /// Appends one event unless its key was appended within `window_ms`.
    fn append_one(&mut self, event: &Event, now: i64, window_ms: i64) -> Appended {
        // As in the embedded log, a duplicate takes a position too.
        let seq = self.put_event(event, now);
        let ingest_key = (
            event.tenant().to_owned(),
            event.source().to_owned(),
            event.id().to_owned(),
        );
        if let Some(&(earlier, at)) = self.ingest_keys.get(&ingest_key)
            && now.saturating_sub(at) < window_ms
        {
            self.drop_event(event.tenant(), seq);
            return Appended {
                seq: earlier,
                duplicate: true,
            };
        }
        self.ingest_keys.insert(ingest_key, (seq, now));
        Appended {
            seq,
            duplicate: false,
        }
    }

    fn drop_event(&mut self, tenant: &str, seq: Seq) {
        self.emitted_by.remove(&seq);
        if let Some(events) = self.events.get_mut(tenant) {
            events.remove(&seq);
            if events.is_empty() {
                self.events.remove(tenant);
            }
        }
    }

    fn write_state(&mut self, plugin: &Plugin, writes: &[StateWrite]) {
        if writes.is_empty() {
            return;
        }
        let entries = self.state.entry(plugin.clone()).or_default();
        for write in writes {
            match &write.value {
                Some(value) => entries.insert(write.key.clone(), value.clone()),
                None => entries.remove(&write.key),
            };
        }
    }

    /// Deletes a dead letter and its redrive request; answers whether
    /// there was one.
    fn drop_dead_letter(&mut self, plugin: &Plugin, seq: Seq) -> bool {
        if let Some(requests) = self.redrives.get_mut(plugin) {
            requests.remove(&seq);
        }
        let Some(letters) = self.dead_letters.get_mut(plugin) else {
            return false;
        };
        let found = letters.remove(&seq).is_some();
        if letters.is_empty() {
            self.dead_letters.remove(plugin);
        }
        found
    }

    /// The dead letters of `tenant` and their bytes.
    fn dead_letter_usage(&self, tenant: &str) -> (u64, u64) {
        self.dead_letters
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .flat_map(|(_, letters)| letters.values())
            .fold((0, 0), |(count, bytes), kept| {
                (count + 1, bytes.saturating_add(kept.bytes))
            })
    }

    /// Stores a dead letter unless it is new and `quota` is reached;
    /// answers whether it was stored. One stored again is kept with its
    /// new attempts, and is done being redriven.
    fn store_dead_letter(
        &mut self,
        plugin: &Plugin,
        dead: &DeadLetter,
        quota: &DeadLetterQuota,
    ) -> bool {
        let attempts = serde_json::to_string(&dead.attempts).map_or(0, |json| json.len());
        let bytes = (dead.event.to_json_string().len() + attempts) as u64;
        let existing = self
            .dead_letters
            .get_mut(plugin)
            .and_then(|letters| letters.get_mut(&dead.seq));
        if let Some(kept) = existing {
            kept.letter.attempts.clone_from(&dead.attempts);
            kept.bytes = bytes;
        } else {
            let (count, used) = self.dead_letter_usage(&plugin.0);
            if !quota.admits(count, used, bytes) {
                return false;
            }
            self.dead_letters.entry(plugin.clone()).or_default().insert(
                dead.seq,
                KeptLetter {
                    letter: dead.clone(),
                    bytes,
                },
            );
        }
        if let Some(requests) = self.redrives.get_mut(plugin) {
            requests.remove(&dead.seq);
        }
        true
    }

    /// Moves the commit's cursor unless someone else moved it since;
    /// keeps what was finished ahead; answers whether it moved.
    fn move_cursor(&mut self, plugin: &Plugin, commit: &Commit) -> bool {
        match commit.expected {
            None => {
                self.cursors.insert(plugin.clone(), commit.cursor);
                // Moved by force: what was finished ahead is delivered
                // again.
                self.ahead.remove(plugin);
                true
            }
            Some(expected) if self.cursors.get(plugin) == Some(&expected) => {
                self.cursors.insert(plugin.clone(), commit.cursor);
                let ahead = self.ahead.entry(plugin.clone()).or_default();
                ahead.extend(commit.ahead.iter().copied());
                ahead.retain(|seq| *seq > commit.cursor);
                if ahead.is_empty() {
                    self.ahead.remove(plugin);
                }
                true
            }
            Some(_) => false,
        }
    }

    /// The highest position retention may delete of each tenant with live
    /// plugins: the lowest of their cursors (0 without one).
    fn ceilings(&self, live: &[(String, String)]) -> HashMap<String, Seq> {
        let mut ceilings: HashMap<String, Seq> = HashMap::new();
        for plugin in live {
            let cursor = self.cursors.get(plugin).copied().unwrap_or(0);
            ceilings
                .entry(plugin.0.clone())
                .and_modify(|c| *c = (*c).min(cursor))
                .or_insert(cursor);
        }
        ceilings
    }

    /// The events retention may delete, oldest first, as (position,
    /// tenant, appended at).
    fn eligible(&self, live: &[(String, String)]) -> Vec<(Seq, String, i64)> {
        let ceilings = self.ceilings(live);
        let mut eligible: Vec<_> = self
            .events
            .iter()
            .flat_map(|(tenant, events)| {
                let ceiling = ceilings.get(tenant).copied().unwrap_or(Seq::MAX);
                events
                    .range(..=ceiling)
                    .map(|(seq, stored)| (*seq, tenant.clone(), stored.appended_at_ms))
            })
            .collect();
        eligible.sort_unstable();
        eligible
    }

    /// The bytes the log keeps: its events' and dead letters' stored forms
    /// and its state's keys and values, the memory counterpart of the
    /// embedded log's pages in use.
    fn bytes_in_use(&self) -> u64 {
        let events: u64 = self
            .events
            .values()
            .flat_map(BTreeMap::values)
            .map(|stored| stored.bytes)
            .sum();
        let letters: u64 = self
            .dead_letters
            .values()
            .flat_map(BTreeMap::values)
            .map(|kept| kept.bytes)
            .sum();
        let state: usize = self
            .state
            .values()
            .flat_map(BTreeMap::iter)
            .map(|(key, value)| key.len() + value.len())
            .sum();
        events + letters + state as u64
    }

    fn prune(&mut self, now: i64, retention: &Retention, live: &[(String, String)]) -> Pruned {
        let mut pruned = Pruned::default();
        if let Some(age) = retention.max_age {
            let cutoff = now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            for (seq, tenant, at) in self.eligible(live) {
                if at < cutoff {
                    self.drop_event(&tenant, seq);
                    pruned.deleted += 1;
                }
            }
        }
        if let Some(max_bytes) = retention.max_bytes {
            let mut eligible = self.eligible(live).into_iter();
            while self.bytes_in_use() > max_bytes {
                let Some((seq, tenant, _)) = eligible.next() else {
                    pruned.held_back = true;
                    break;
                };
                self.drop_event(&tenant, seq);
                pruned.deleted += 1;
            }
        }
        pruned
    }
}

impl EventStore for MemoryLog {
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>> {
        let (now, window_ms) = (now_ms(), self.window_ms());
        let mut tables = self.tables();
        let appended = events
            .iter()
            .map(|event| tables.append_one(event, now, window_ms))
            .collect();
        Reply::ready(Ok(appended))
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let tables = self.tables();
        let Some(events) = tables.events.get(tenant) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for stored in events
            .range(after.saturating_add(1)..)
            .map(|(_, s)| s)
            .take(limit.events)
        {
            let first = out.is_empty() && limit.first_always;
            if !first && bytes.saturating_add(stored.bytes) > limit.bytes {
                break;
            }
            bytes = bytes.saturating_add(stored.bytes);
            out.push(stored.clone());
        }
        Ok(out)
    }

    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        let tables = self.tables();
        let count = tables.events.get(tenant).map_or(0, |events| {
            events
                .range(after.saturating_add(1)..)
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .count()
        });
        Ok(count as u64)
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        let tables = self.tables();
        Ok(tables.events.get(tenant).and_then(|events| {
            events
                .values()
                .find(|stored| stored.appended_at_ms >= at_ms)
                .map(|stored| stored.seq)
        }))
    }

    fn head(&self) -> Result<Seq, LogError> {
        let tables = self.tables();
        Ok(tables
            .events
            .values()
            .filter_map(|events| events.last_key_value().map(|(seq, _)| *seq))
            .max()
            .unwrap_or(0))
    }

    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned> {
        Reply::ready(Ok(self.tables().prune(now_ms(), &retention, &live)))
    }
}

impl CursorStore for MemoryLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        Ok(self.tables().cursors.get(&key(tenant, plugin)).copied())
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        Ok(self
            .tables()
            .ahead
            .get(&key(tenant, plugin))
            .map(|ahead| ahead.iter().copied().collect())
            .unwrap_or_default())
    }

    fn commit(&self, commit: Commit) -> Reply<Committed> {
        let now = now_ms();
        let plugin = key(&commit.tenant, &commit.plugin);
        let quota = self.quota(&commit.tenant);
        let mut tables = self.tables();
        let emitted = commit
            .emitted
            .iter()
            .map(|event| {
                let seq = tables.put_event(event, now);
                // As in the embedded log: a plugin's emits are those into
                // its own tenant.
                if event.tenant() == commit.tenant {
                    tables.emitted_by.insert(seq, commit.plugin.clone());
                }
                seq
            })
            .collect();
        tables.write_state(&plugin, &commit.state);
        for seq in &commit.redriven {
            tables.drop_dead_letter(&plugin, *seq);
        }
        let refused_dead_letters = commit
            .dead_letters
            .iter()
            .filter(|dead| !tables.store_dead_letter(&plugin, dead, quota))
            .map(|dead| dead.seq)
            .collect();
        let cursor_moved = tables.move_cursor(&plugin, &commit);
        Reply::ready(Ok(Committed {
            emitted,
            cursor_moved,
            refused_dead_letters,
        }))
    }
}

impl DeadLetterStore for MemoryLog {
    fn dead_letters(&self, tenant: &str, plugin: &str) -> Result<Vec<DeadLetter>, LogError> {
        Ok(self
            .tables()
            .dead_letters
            .get(&key(tenant, plugin))
            .map(|letters| letters.values().map(|kept| kept.letter.clone()).collect())
            .unwrap_or_default())
    }

    fn dead_letter_plugins(&self, tenant: &str) -> Result<Vec<String>, LogError> {
        Ok(self
            .tables()
            .dead_letters
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, plugin)| plugin.clone())
            .collect())
    }

    fn discard_dead_letter(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        Reply::ready(Ok(self
            .tables()
            .drop_dead_letter(&key(tenant, plugin), seq)))
    }

    fn request_redrive(&self, tenant: &str, plugin: &str, seq: Seq) -> Reply<bool> {
        let plugin = key(tenant, plugin);
        let mut tables = self.tables();
        let found = tables
            .dead_letters
            .get(&plugin)
            .is_some_and(|letters| letters.contains_key(&seq));
        if found {
            tables.redrives.entry(plugin).or_default().insert(seq);
        }
        Reply::ready(Ok(found))
    }

    fn redrives(
        &self,
        tenant: &str,
        plugin: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let plugin = key(tenant, plugin);
        let tables = self.tables();
        let (Some(requests), Some(letters)) = (
            tables.redrives.get(&plugin),
            tables.dead_letters.get(&plugin),
        ) else {
            return Ok(Vec::new());
        };
        Ok(requests
            .iter()
            .filter_map(|seq| letters.get(seq))
            .take(limit)
            .map(|kept| kept.letter.clone())
            .collect())
    }

    fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.tables()
            .dead_letters
            .iter()
            .map(|(plugin, letters)| (plugin.clone(), letters.len() as u64))
            .collect()
    }
}

impl QuarantineStore for MemoryLog {
    fn set_quarantine(&self, change: QuarantineChange) -> Reply<bool> {
        let mut tables = self.tables();
        let changed = match change {
            QuarantineChange::Begin(quarantine) => {
                let plugin = key(&quarantine.tenant, &quarantine.plugin);
                tables.quarantines.insert(plugin, quarantine);
                true
            }
            QuarantineChange::Lift { tenant, plugin } => {
                tables.quarantines.remove(&(tenant, plugin)).is_some()
            }
        };
        Reply::ready(Ok(changed))
    }

    fn quarantines(&self) -> Result<Vec<Quarantine>, LogError> {
        Ok(self.tables().quarantines.values().cloned().collect())
    }
}

/// One process holds a memory log: every lease is its own, for ever (the
/// provided, trivial [`LeaseStore`](super::LeaseStore) methods).
impl super::LeaseStore for MemoryLog {}

impl StateStore for MemoryLog {
    fn get(&self, tenant: &str, plugin: &str, key_: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tables()
            .state
            .get(&key(tenant, plugin))
            .and_then(|entries| entries.get(key_).cloned()))
    }

    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        self.tables().write_state(&key(tenant, plugin), writes);
        Ok(())
    }
}

/// The items of `sized` (each with its size) that fit in `limit`, and
/// whether more were left.
fn page<T>(sized: impl Iterator<Item = (T, u64)>, limit: ReadLimit) -> Page<T> {
    let mut items = Vec::new();
    let mut bytes = 0u64;
    for (item, size) in sized {
        let first = items.is_empty() && limit.first_always;
        if items.len() >= limit.events || (!first && bytes.saturating_add(size) > limit.bytes) {
            return Page { items, more: true };
        }
        bytes = bytes.saturating_add(size);
        items.push(item);
    }
    Page { items, more: false }
}

impl InspectStore for MemoryLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        let tables = self.tables();
        let Some(entries) = tables.state.get(&key(tenant, plugin)) else {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        };
        let after = query.after.as_deref();
        let sized = entries
            .range(query.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&query.prefix))
            .filter(|(k, _)| after.is_none_or(|after| k.as_str() > after))
            .map(|(k, value)| {
                let size = (k.len() + value.len()) as u64;
                let entry = StateEntry {
                    key: k.clone(),
                    value: value.clone(),
                };
                (entry, size)
            });
        Ok(page(
            sized,
            ReadLimit {
                events: query.limit,
                bytes: query.max_bytes,
                first_always: true,
            },
        ))
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        let tables = self.tables();
        let Some(events) = tables.events.get(tenant) else {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        };
        let sized = events
            .range(..before.unwrap_or(Seq::MAX))
            .rev()
            .filter(|(seq, _)| tables.emitted_by.get(*seq).is_some_and(|p| p == plugin))
            .map(|(_, stored)| (stored.clone(), stored.bytes));
        Ok(page(sized, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, id: &str) -> Event {
        Event::from_json_value(serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": "/test",
            "type": "t",
            "tenant": tenant,
        }))
        .expect("a valid event")
    }

    #[test]
    fn a_duplicate_takes_a_position_as_in_the_embedded_log() -> Result<(), LogError> {
        let log = MemoryLog::new();
        let first = log.append(vec![event("acme", "e-1")]).wait()?;
        let again = log
            .append(vec![event("acme", "e-1"), event("acme", "e-2")])
            .wait()?;
        assert_eq!(first[0].seq, 1);
        assert!(again[0].duplicate);
        assert_eq!(again[0].seq, 1);
        assert_eq!(again[1].seq, 3, "the duplicate's position is a gap");
        assert_eq!(log.head()?, 3);
        Ok(())
    }

    #[test]
    fn retention_by_size_stops_at_what_live_plugins_have_not_handled() -> Result<(), LogError> {
        let log = MemoryLog::new();
        log.append((1..=4).map(|i| event("acme", &format!("e-{i}"))).collect())
            .wait()?;
        log.commit_cursor("acme", "p", 2).wait()?;
        let live = vec![key("acme", "p")];
        let size = log.read("acme", 0, 1)?[0].bytes;
        let pruned = log
            .prune(
                Retention {
                    max_age: None,
                    max_bytes: Some(3 * size),
                },
                live.clone(),
            )
            .wait()?;
        assert_eq!(
            pruned,
            Pruned {
                deleted: 1,
                held_back: false
            }
        );
        let pruned = log
            .prune(
                Retention {
                    max_age: None,
                    max_bytes: Some(0),
                },
                live,
            )
            .wait()?;
        assert_eq!(
            pruned,
            Pruned {
                deleted: 1,
                held_back: true
            }
        );
        assert_eq!(log.read("acme", 0, 10)?.len(), 2);
        Ok(())
    }
}
