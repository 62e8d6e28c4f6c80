//! A delivery's state writes on their way: the host's current store, the
//! writes of the delivery in progress, and what earlier successful
//! deliveries of its batch left for the pending commit.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use plugbus_core::state::{StateStore, StateWrite};

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
pub(crate) struct PendingWrites {
    /// This delivery's writes, in order.
    pub writes: Vec<StateWrite>,
    /// Bytes of keys and values written by this delivery.
    pub bytes: usize,
}

impl PendingWrites {
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
/// [`plugbus_core::state::write_bytes`]), which bounds what the events after them may add.
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

#[cfg(test)]
mod tests {
    use plugbus_core::state::write_bytes;

    use super::*;

    fn set(key: &str, value: &str) -> StateWrite {
        StateWrite {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_newest_pending_write_wins() {
        let mut pending = PendingWrites::default();
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
