//! The events role ([`EventStore`]): appends with message ids, reads by
//! tenant subject, counts, positions by time, and retention by purging
//! what every live plugin has finished with. Also the emitted events of a
//! commit ([`publish_emitted`]) and the index of them.

use plugbus_core::event::Event;
use plugbus_log::{
    Appended, EventStore, LogError, LogHealth, Pruned, ReadLimit, Reply, Retention, Seq,
    StoredEvent,
};

use crate::{Inner, NatsLog};

/// What the events role keeps in memory.
#[derive(Debug, Default)]
pub(crate) struct EventsState {}

/// Publishes the events commit number `commit` of `plugin` of `tenant`
/// emitted, with message ids from the commit's number and each emit's
/// index (a commit applied again publishes duplicates, which JetStream
/// answers with the first copy's position), and indexes those emitted into
/// the plugin's own tenant. Answers their positions, in order.
pub(crate) async fn publish_emitted(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
    commit: u64,
    events: &[Event],
) -> Result<Vec<Seq>, LogError> {
    let _ = (inner, tenant, plugin, commit, events);
    todo!("publish_emitted")
}

/// The event stored at `seq`, if the stream still has it.
pub(crate) async fn event_at(inner: &Inner, seq: Seq) -> Result<Option<StoredEvent>, LogError> {
    let _ = (inner, seq);
    todo!("event_at")
}

impl EventStore for NatsLog {
    fn append(&self, events: Vec<Event>) -> Reply<Vec<Appended>> {
        let _ = events;
        todo!("append")
    }

    fn read_bounded(
        &self,
        tenant: &str,
        after: Seq,
        limit: ReadLimit,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let _ = (tenant, after, limit);
        todo!("read_bounded")
    }

    fn count_after(&self, tenant: &str, after: Seq, limit: u64) -> Result<u64, LogError> {
        let _ = (tenant, after, limit);
        todo!("count_after")
    }

    fn first_since(&self, tenant: &str, at_ms: i64) -> Result<Option<Seq>, LogError> {
        let _ = (tenant, at_ms);
        todo!("first_since")
    }

    fn head(&self) -> Result<Seq, LogError> {
        todo!("head")
    }

    fn prune(&self, retention: Retention, live: Vec<(String, String)>) -> Reply<Pruned> {
        let _ = (retention, live);
        todo!("prune")
    }

    fn health(&self) -> LogHealth {
        self.inner.health()
    }
}
