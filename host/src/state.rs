//! Plugin state: the durable key-value store behind the WIT interface
//! `state`, scoped to a tenant and a plugin.
//!
//! A handler's writes are buffered in its delivery and leave it only when
//! the handler succeeded: the durable bus commits them in the same log
//! transaction as the plugin's cursor and emitted events; the in-memory
//! paths ([`Host::publish`](crate::Host::publish),
//! [`Plugin::deliver`](crate::Plugin::deliver)) apply them to the host's
//! store right after the delivery. [`StateStore`] is the store's interface;
//! [`MemoryState`] is the default, and the durable log
//! ([`SqliteLog`](crate::log::SqliteLog)) is the store of `plugbus serve`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

/// One write a successful handler made: a value stored under `key`, or
/// with `value: None`, `key` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The key.
    pub key: String,
    /// The new value, or `None` to remove the key.
    pub value: Option<Vec<u8>>,
}

/// The store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin state store: {0}")]
pub struct StateError(pub String);

/// Where plugin state is kept.
pub trait StateStore: Send + Sync {
    /// The value of `key` in the state of `plugin` of `tenant`. Blocking.
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Applies `writes`, in order, to the state of `plugin` of `tenant`, all
    /// or none. Blocking.
    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError>;
}

/// One plugin's keys and values, in key order.
type Entries = BTreeMap<String, Vec<u8>>;

/// State in memory, lost when the process ends: the default store of a
/// [`Host`](crate::Host) that runs without a durable log.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// By (tenant, plugin).
    entries: Mutex<HashMap<(String, String), Entries>>,
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key and value of `plugin` of `tenant`, in key order.
    pub fn entries(&self, tenant: &str, plugin: &str) -> Entries {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant.to_owned(), plugin.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

impl StateStore for MemoryState {
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant.to_owned(), plugin.to_owned()))
            .and_then(|entries| entries.get(key).cloned()))
    }

    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut all = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = all
            .entry((tenant.to_owned(), plugin.to_owned()))
            .or_default();
        for write in writes {
            match &write.value {
                Some(value) => entries.insert(write.key.clone(), value.clone()),
                None => entries.remove(&write.key),
            };
        }
        Ok(())
    }
}

/// The host's current store, replaceable while plugins run (the durable
/// bus installs its log when it starts).
pub(crate) struct StateSlot(ArcSwap<Arc<dyn StateStore>>);

impl StateSlot {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self(ArcSwap::from_pointee(store))
    }

    pub fn store(&self) -> Arc<dyn StateStore> {
        Arc::clone(&self.0.load())
    }

    pub fn set(&self, store: Arc<dyn StateStore>) {
        self.0.store(Arc::new(store));
    }
}

impl std::fmt::Debug for StateSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSlot")
    }
}

/// The state writes of a delivery in progress, and of the deliveries of
/// its batch that succeeded before it: what `get` must see on top of the
/// store. Later writes to a key replace earlier ones.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// This delivery's writes, in order.
    pub writes: Vec<StateWrite>,
    /// Bytes of keys and values written by this delivery.
    pub bytes: usize,
}

impl Pending {
    /// The newest write to `key`: `Some(None)` when it was removed.
    pub fn latest(&self, key: &str) -> Option<Option<&[u8]>> {
        self.writes
            .iter()
            .rev()
            .find(|w| w.key == key)
            .map(|w| w.value.as_deref())
    }
}

/// What the successful deliveries of a batch so far left for the pending
/// commit: their state writes, newest value per key, for the events after
/// them to read; and the bytes of the commit they fill (their emitted
/// events by [`crate::batch::event_bytes`], their state writes by
/// [`write_bytes`]), which bounds what the events after them may add.
///
/// Cloning is cheap: the values are shared until one side adds to them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overlay {
    values: Arc<HashMap<String, Option<Vec<u8>>>>,
    /// Bytes the batch's pending commit holds so far.
    pub commit_bytes: usize,
}

impl Overlay {
    pub fn add(&mut self, writes: &[StateWrite]) {
        if writes.is_empty() {
            return;
        }
        let values = Arc::make_mut(&mut self.values);
        for write in writes {
            values.insert(write.key.clone(), write.value.clone());
        }
    }

    pub fn latest(&self, key: &str) -> Option<Option<&[u8]>> {
        self.values.get(key).map(Option::as_deref)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The bytes a state write holds, as the host's budgets count them: its
/// key and its value.
pub fn write_bytes(key: &str, value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> StateWrite {
        StateWrite {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn memory_state_is_scoped_to_tenant_and_plugin() -> Result<(), StateError> {
        let store = MemoryState::new();
        store.apply("acme", "saga", &[set("k", "1"), set("j", "2")])?;
        store.apply(
            "acme",
            "saga",
            &[StateWrite {
                key: "j".into(),
                value: None,
            }],
        )?;
        assert_eq!(store.get("acme", "saga", "k")?, Some(b"1".to_vec()));
        assert_eq!(store.get("acme", "saga", "j")?, None);
        assert_eq!(store.get("acme", "other", "k")?, None);
        assert_eq!(store.get("globex", "saga", "k")?, None);
        assert_eq!(store.entries("acme", "saga").len(), 1);
        Ok(())
    }

    #[test]
    fn the_newest_pending_write_wins() {
        let mut pending = Pending::default();
        pending.writes.push(set("k", "1"));
        pending.writes.push(StateWrite {
            key: "k".into(),
            value: None,
        });
        assert_eq!(pending.latest("k"), Some(None));
        assert_eq!(pending.latest("x"), None);
        let mut overlay = Overlay::default();
        overlay.add(&[set("k", "1"), set("k", "2")]);
        assert_eq!(overlay.latest("k"), Some(Some(&b"2"[..])));
        // A clone shares the values until one side adds to them.
        let mut later = overlay.clone();
        later.add(&[set("k", "3")]);
        assert_eq!(overlay.latest("k"), Some(Some(&b"2"[..])));
        assert_eq!(later.latest("k"), Some(Some(&b"3"[..])));
        assert_eq!(write_bytes("key", Some(b"value")), 8);
        assert_eq!(write_bytes("key", None), 3);
    }
}
