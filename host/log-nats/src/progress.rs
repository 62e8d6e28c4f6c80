//! The progress roles: each plugin's cursor and what it finished ahead
//! ([`CursorStore`]), the [`Commit`] protocol (written whole, then applied
//! step by step, applied again after a crash), the plugins' state
//! ([`StateStore`]), and what operators inspect ([`InspectStore`]).

use plugbus_core::state::{StateError, StateStore, StateWrite};
use plugbus_log::{
    Commit, Committed, CursorStore, InspectStore, LogError, Page, ReadLimit, Reply, Seq,
    StateEntry, StateQuery, StoredEvent,
};

use crate::{Inner, NatsLog};

/// What the progress role keeps in memory.
#[derive(Debug, Default)]
pub(crate) struct ProgressState {}

/// The cursor of `plugin` of `tenant`, after applying its last commit if
/// that was not applied yet (a host died in the middle of it).
pub(crate) async fn cursor_of(
    inner: &Inner,
    tenant: &str,
    plugin: &str,
) -> Result<Option<Seq>, LogError> {
    let _ = (inner, tenant, plugin);
    todo!("cursor_of")
}

impl CursorStore for NatsLog {
    fn cursor(&self, tenant: &str, plugin: &str) -> Result<Option<Seq>, LogError> {
        let _ = (tenant, plugin);
        todo!("cursor")
    }

    fn ahead(&self, tenant: &str, plugin: &str) -> Result<Vec<Seq>, LogError> {
        let _ = (tenant, plugin);
        todo!("ahead")
    }

    fn commit(&self, commit: Commit) -> Reply<Committed> {
        let _ = commit;
        todo!("commit")
    }
}

impl StateStore for NatsLog {
    fn get(&self, tenant: &str, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let _ = (tenant, plugin, key);
        todo!("state get")
    }

    fn apply(&self, tenant: &str, plugin: &str, writes: &[StateWrite]) -> Result<(), StateError> {
        let _ = (tenant, plugin, writes);
        todo!("state apply")
    }
}

impl InspectStore for NatsLog {
    fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: &StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        let _ = (tenant, plugin, query);
        todo!("state_entries")
    }

    fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        let _ = (tenant, plugin, before, limit);
        todo!("emitted")
    }
}
