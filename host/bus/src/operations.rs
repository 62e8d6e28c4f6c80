//! What operators ask of the bus (the HTTP admin API, the CLI through
//! it): plugin reports, dead letters, redrive, replay, resume, reload,
//! recent failures, and a plugin's state and recent emits. The API asks these of [`DurableBus`] and never reaches
//! through it to the host or the log.

use std::path::Path;
use std::sync::PoisonError;

use crate::bus::DurableBus;
use crate::failures::RecentFailure;
use plugbus_core::Limits;
use plugbus_core::state::StateError;
use plugbus_log::{
    DeadLetter, EventLog, LogError, Page, ReadLimit, ReplayError, Replayed, Seq, StateEntry,
    StateQuery, StoredEvent,
};
use plugbus_runtime::{HostError, PluginInfo, PluginStatus};

/// A plugin as operators see it: its status (with its quarantine), its
/// limits, and where its consumer is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReport {
    /// Its status, with its quarantine if it has one.
    pub status: PluginStatus,
    /// The limits of one delivery, when the plugin is loaded.
    pub limits: Option<Limits>,
    /// Its cursor, when it has one and the log could be read.
    pub cursor: Option<Seq>,
    /// How many of its tenant's events it has yet to finish (at most
    /// 1,000,000 counted), when the log could be read.
    pub lag: Option<u64>,
}

impl DurableBus {
    /// Every plugin the host has loaded.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.inner.host.plugins()
    }

    /// The limits of one delivery to a loaded plugin.
    pub fn plugin_limits(&self, tenant: &str, plugin: &str) -> Option<Limits> {
        self.inner
            .host
            .plugin(tenant, plugin)
            .map(|p| p.manifest().limits)
    }

    /// A report of every plugin (of `tenant` only, when given), in the
    /// order of [`DurableBus::statuses`]. Reads the log off the runtime's
    /// threads; empty if that task fails.
    pub async fn plugin_reports(&self, tenant: Option<&str>) -> Vec<PluginReport> {
        let statuses: Vec<PluginStatus> = self
            .statuses()
            .into_iter()
            .filter(|s| tenant.is_none_or(|t| t == s.tenant))
            .collect();
        let limits: Vec<Option<Limits>> = statuses
            .iter()
            .map(|s| self.plugin_limits(&s.tenant, &s.name))
            .collect();
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || {
            statuses
                .into_iter()
                .zip(limits)
                .map(|(status, limits)| PluginReport {
                    cursor: log.cursor(&status.tenant, &status.name).ok().flatten(),
                    lag: lag(log.as_ref(), &status.tenant, &status.name).ok(),
                    limits,
                    status,
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// `plugin`'s dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        plugin: &str,
    ) -> Result<Vec<DeadLetter>, LogError> {
        let (tenant, plugin) = (tenant.to_owned(), plugin.to_owned());
        plugbus_log::blocking(&self.inner.log, move |log| {
            log.dead_letters(&tenant, &plugin)
        })
        .await
    }

    /// `plugin`'s dead letter of the event at `seq`, if it has one.
    pub async fn dead_letter(
        &self,
        tenant: &str,
        plugin: &str,
        seq: Seq,
    ) -> Result<Option<DeadLetter>, LogError> {
        let letters = self.dead_letters(tenant, plugin).await?;
        Ok(letters.into_iter().find(|d| d.seq == seq))
    }

    /// Asks for `plugin`'s dead letter at `seq` to be delivered again, to
    /// its current version (its consumer takes the request); answers
    /// whether there was such a dead letter.
    pub async fn request_redrive(
        &self,
        tenant: &str,
        plugin: &str,
        seq: Seq,
    ) -> Result<bool, LogError> {
        self.inner.log.request_redrive(tenant, plugin, seq).await
    }

    /// Deletes `plugin`'s dead letter at `seq`; answers whether there was
    /// one.
    pub async fn discard_dead_letter(
        &self,
        tenant: &str,
        plugin: &str,
        seq: Seq,
    ) -> Result<bool, LogError> {
        self.inner
            .log
            .discard_dead_letter(tenant, plugin, seq)
            .await
    }

    /// Moves `plugin`'s cursor back so that its consumer delivers again
    /// from `from`: a position in the log, or an RFC 3339 time.
    pub async fn replay(
        &self,
        tenant: &str,
        plugin: &str,
        from: &str,
    ) -> Result<Replayed, ReplayError> {
        let log = self.inner.log.clone();
        let (tenant, plugin, from) = (tenant.to_owned(), plugin.to_owned(), from.to_owned());
        tokio::task::spawn_blocking(move || {
            plugbus_log::replay(log.as_ref(), &tenant, &plugin, &from)
        })
        .await
        .map_err(|_| ReplayError::Log(LogError::Closed))?
    }

    /// Loads, replaces and unloads plugins to match `dir` now; the bus
    /// starts a consumer for every plugin loaded.
    pub async fn refresh(&self, dir: &Path) -> Result<(), HostError> {
        self.inner.host.refresh(dir).await
    }

    /// `tenant`'s most recent failed deliveries (at most
    /// [`RECENT_FAILURES`](crate::failures::RECENT_FAILURES)), oldest first.
    pub fn recent_failures(&self, tenant: &str) -> Vec<RecentFailure> {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of(tenant)
    }
}

impl DurableBus {
    /// The entries of `plugin`'s state that `query` selects, in key order:
    /// what its committed deliveries wrote.
    pub async fn state_entries(
        &self,
        tenant: &str,
        plugin: &str,
        query: StateQuery,
    ) -> Result<Page<StateEntry>, LogError> {
        let (tenant, plugin) = (tenant.to_owned(), plugin.to_owned());
        plugbus_log::blocking(&self.inner.log, move |log| {
            log.state_entries(&tenant, &plugin, &query)
        })
        .await
    }

    /// The value of `key` in `plugin`'s state, if it has one.
    pub async fn state_value(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let log = self.inner.log.clone();
        let (tenant, plugin, key) = (tenant.to_owned(), plugin.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || log.get(&tenant, &plugin, &key))
            .await
            .unwrap_or_else(|_| Err(StateError::store(LogError::Closed)))
    }

    /// The events `plugin` emitted that the log still holds (retention
    /// deletes them with the rest), newest first, before position `before`
    /// when given.
    pub async fn emitted(
        &self,
        tenant: &str,
        plugin: &str,
        before: Option<Seq>,
        limit: ReadLimit,
    ) -> Result<Page<StoredEvent>, LogError> {
        let (tenant, plugin) = (tenant.to_owned(), plugin.to_owned());
        plugbus_log::blocking(&self.inner.log, move |log| {
            log.emitted(&tenant, &plugin, before, limit)
        })
        .await
    }
}

/// How many of its tenant's events a plugin has yet to finish (at most
/// 1,000,000 counted per partition): the sum over the partitions.
fn lag(log: &dyn EventLog, tenant: &str, plugin: &str) -> Result<u64, LogError> {
    let mut lag = 0u64;
    for partition in 0..log.partitions().max(1) {
        let cursor = log
            .partition_cursor(tenant, plugin, partition)?
            .unwrap_or(0);
        lag = lag.saturating_add(log.count_partition_after(tenant, partition, cursor, 1_000_000)?);
    }
    Ok(lag)
}
