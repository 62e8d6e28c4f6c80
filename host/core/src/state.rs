//! Plugin state: the durable key-value store behind the WIT interface
//! `state`, scoped to a tenant and a plugin.
//!
//! A handler's writes are buffered in its delivery and leave it only when
//! the handler succeeded: the durable bus commits them in the same log
//! transaction as the plugin's cursor and emitted events; the in-memory
//! paths (the runtime's `Host::publish` and `Plugin::deliver`) apply them
//! to the host's store right after the delivery. [`StateStore`] is the
//! store's interface; [`MemoryState`] is the default, and the durable log
//! (`plugbus_log::SqliteLog`) is the store of `plugbus serve`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// One write a successful handler made: a value stored under `key`, or
/// with `value: None`, `key` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The key.
    pub key: String,
    /// The new value, or `None` to remove the key.
    pub value: Option<Vec<u8>>,
}

/// The store could not be read or written. The cause is kept as the
/// error's [`source`](std::error::Error::source) (downcast it, e.g. to the
/// log's own error type); the message repeats it, as plugins see only the
/// message.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error("plugin state store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading `key` failed: what a plugin's `state.get` fails with.
    #[error("plugin state store: get {key:?}: {source}")]
    Get {
        /// The key being read.
        key: String,
        /// Why the store failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StateError {
    /// A failure of the store, caused by `source`.
    pub fn store(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Store(source.into())
    }

    /// This failure, as the failure of reading `key` (a [`StateError::Get`]
    /// stays as it is).
    #[must_use]
    pub fn reading(self, key: &str) -> Self {
        match self {
            Self::Store(source) => Self::Get {
                key: key.to_owned(),
                source,
            },
            get @ Self::Get { .. } => get,
        }
    }
}

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

    #[derive(Debug, thiserror::Error)]
    #[error("disk on fire")]
    struct Cause;

    #[test]
    fn a_failed_read_names_the_key_and_keeps_its_cause() {
        let error = StateError::store(Cause).reading("count/a");
        assert_eq!(
            error.to_string(),
            "plugin state store: get \"count/a\": disk on fire"
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.downcast_ref::<Cause>().is_some());
        assert!(matches!(error.reading("other"), StateError::Get { key, .. } if key == "count/a"));
    }

    #[test]
    fn a_failed_store_keeps_its_message_and_cause() {
        let error = StateError::store(Cause);
        assert_eq!(error.to_string(), "plugin state store: disk on fire");
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.downcast_ref::<Cause>().is_some());
    }
}
