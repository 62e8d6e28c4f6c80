//! The durable bus itself: starting it, publishing into it, and what it
//! tells about its consumers, its log and its tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::config::DurableConfig;
use crate::consumer::Consumer;
use crate::failures::{self, RECENT_FAILURES};
use crate::state::{Inner, PartKey};
use crate::supervise::{retain, supervise, watch_reloads};
use crate::task::Task;
use plugbus_core::event::Event;
use plugbus_log::{
    Appended, DeadLetterDepths, EventLog, LogError, LogHealth, Partition, Quarantine, ReadLimit,
    partition_of,
};
use plugbus_runtime::Delivery;
use plugbus_runtime::host::Host;

/// Why a durable publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum DurablePublishError {
    /// The log could not store the events; none was stored.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A plugin's backlog, as its consumer keeps it: reading it costs no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The plugin's tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// Events of the tenant after the plugin's cursor: those read and not
    /// yet finished, and those not yet read. Exact once the consumer has
    /// caught up with the log; while it is behind (or paused, quarantined),
    /// the unread events are counted as this bus appends them, so events
    /// another process appended show once read.
    pub lag: u64,
    /// Events held read ahead of the cursor (see [`MAX_PENDING`](crate::config::MAX_PENDING)).
    pub pending_events: u64,
    /// Their bytes (see [`DurableConfig::max_pending_bytes`]).
    pub pending_bytes: u64,
}

/// A host whose events go through the durable log.
pub struct DurableBus {
    pub(crate) inner: Arc<Inner>,
    /// Starts a consumer for every plugin loaded later (supervised).
    reloads: tokio::task::JoinHandle<()>,
    /// Runs retention now and then (supervised).
    retention: tokio::task::JoinHandle<()>,
    /// Keeps the host's leases, when the log is shared (supervised).
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl DurableBus {
    /// Starts a consumer for every plugin `host` has loaded, and for every
    /// plugin it loads later, and makes `log` the store of the plugins'
    /// state. The plugins loaded now have their cursors
    /// when this returns: a plugin without one starts at the end of the log
    /// as it is now, before anything is published through the bus.
    pub async fn start(
        host: Arc<Host>,
        log: Arc<dyn EventLog>,
        config: DurableConfig,
    ) -> Result<Self, LogError> {
        Ok(Self::start_observed(host, log, config).await?.0)
    }

    /// Like [`DurableBus::start`], with a receiver of every delivery the
    /// consumers make, subscribed before the first of them starts, so that
    /// no delivery is missed (a later [`DurableBus::deliveries`] may miss
    /// those made before it).
    pub async fn start_observed(
        host: Arc<Host>,
        log: Arc<dyn EventLog>,
        config: DurableConfig,
    ) -> Result<(Self, broadcast::Receiver<Delivery>), LogError> {
        // The plugins' state lives in the log, so that it commits with
        // their cursors.
        host.set_state_store(log.clone());
        let leases = crate::lease::Leases::new(
            config.host_id.clone(),
            config.lease_ttl.max(Duration::from_millis(100)),
            log.shared(),
        );
        let log_partitions = log.partitions().max(1);
        let inner = Arc::new(Inner {
            host,
            log,
            config,
            tenants: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            gauges: Mutex::new(HashMap::new()),
            partitions: log_partitions,
            restarts: Mutex::new(BTreeMap::new()),
            stop: watch::Sender::new(false),
            deliveries: broadcast::Sender::new(4096),
            quarantined: Mutex::new(HashMap::new()),
            failures: Mutex::new(failures::Failures::new(RECENT_FAILURES)),
            leases,
            dead_letters: Mutex::new(None),
        });
        let observer = inner.deliveries.subscribe();
        let reload_events = inner.host.reload_events();
        for plugin in inner.host.plugins() {
            for partition in 0..inner.partitions {
                let key = (plugin.tenant.clone(), plugin.name.clone(), partition);
                let consumer = Consumer::new(&inner, &key, Arc::default());
                let position = consumer.start_position().await?;
                inner.ensure_consumer(&key, Some(position));
            }
        }
        let watcher = inner.clone();
        let mut first = Some(reload_events);
        let reloads = tokio::spawn(supervise(inner.clone(), Task::Reloads, move |_| {
            watch_reloads(watcher.clone(), first.take())
        }));
        let retainer = inner.clone();
        let retention = tokio::spawn(supervise(inner.clone(), Task::Retention, move |_| {
            retain(retainer.clone())
        }));
        let keeper = inner.leases.shared.then(|| {
            let keeper = inner.clone();
            tokio::spawn(supervise(inner.clone(), Task::Leases, move |_| {
                crate::lease::keep(keeper.clone())
            }))
        });
        Ok((
            Self {
                inner,
                reloads,
                retention,
                keeper,
            },
            observer,
        ))
    }

    /// Appends `events` (valid, as every [`Event`] is) to the log and
    /// answers once they are durable; the consumers then deliver them. All
    /// or none.
    pub async fn publish(&self, events: Vec<Event>) -> Result<Vec<Appended>, DurablePublishError> {
        let partitions = self.inner.partitions;
        let tenants: Vec<(String, Partition)> = events
            .iter()
            .map(|e| (e.tenant().to_owned(), partition_of(e, partitions)))
            .collect();
        // Counted before they can be read, so that no consumer reads one
        // before it is counted (and counts it twice).
        let mut count: HashMap<(&str, Partition), u64> = HashMap::new();
        for (tenant, partition) in &tenants {
            *count.entry((tenant, *partition)).or_default() += 1;
        }
        self.inner.appending(&count, true);
        let appended = match self.inner.log.append(events).await {
            Ok(appended) => appended,
            Err(e) => {
                self.inner.appending(&count, false);
                return Err(e.into());
            }
        };
        let mut duplicates: HashMap<(&str, Partition), u64> = HashMap::new();
        for ((tenant, partition), answer) in tenants.iter().zip(&appended) {
            if answer.duplicate {
                *duplicates.entry((tenant, *partition)).or_default() += 1;
            }
        }
        self.inner.appending(&duplicates, false);
        let woken: std::collections::BTreeSet<&str> = count.keys().map(|(t, _)| *t).collect();
        for tenant in woken {
            self.inner.appends(tenant).appended();
        }
        Ok(appended)
    }

    /// Every delivery the consumers make from now on, failed attempts
    /// included (see [`DurableBus::start_observed`] for all of them). A listener that falls more than 4,096 deliveries behind
    /// misses the oldest (`RecvError::Lagged`); the deliveries happen anyway.
    pub fn deliveries(&self) -> broadcast::Receiver<Delivery> {
        self.inner.deliveries.subscribe()
    }

    /// Waits until every running consumer is finished with every event of
    /// its tenant in the log (delivered, skipped as not subscribed, or
    /// dead-lettered) and with every redrive requested of it. A quarantined
    /// plugin counts as finished: its events wait in the log.
    pub async fn settle(&self) -> Result<(), LogError> {
        loop {
            let running: Vec<PartKey> = {
                let quarantined = self
                    .inner
                    .quarantined
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.inner
                    .consumers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|((tenant, plugin, _), task)| {
                        !task.is_finished()
                            && !quarantined.contains_key(&(tenant.clone(), plugin.clone()))
                    })
                    .map(|(key, _)| key.clone())
                    .collect()
            };
            let log = self.inner.log.clone();
            let settled = tokio::task::spawn_blocking(move || {
                for (tenant, plugin, partition) in running {
                    let cursor = log
                        .partition_cursor(&tenant, &plugin, partition)?
                        .unwrap_or(0);
                    let next =
                        log.read_partition(&tenant, partition, cursor, ReadLimit::events(1))?;
                    if !next.is_empty() || !log.redrives(&tenant, &plugin, 1)?.is_empty() {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await
            .map_err(|_| LogError::Closed)??;
            if settled {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Each running consumer's backlog (its lag and what it holds), kept
    /// as it works: cheap enough for every metrics scrape. A plugin's
    /// partitions are summed into one backlog.
    pub fn backlogs(&self) -> Vec<Backlog> {
        let gauges = self
            .inner
            .gauges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut by_plugin: BTreeMap<(String, String), Backlog> = BTreeMap::new();
        for (tenant, plugins) in gauges.iter() {
            for ((plugin, _), g) in plugins {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let sum = by_plugin
                    .entry((tenant.clone(), plugin.clone()))
                    .or_insert_with(|| Backlog {
                        tenant: tenant.clone(),
                        plugin: plugin.clone(),
                        lag: 0,
                        pending_events: 0,
                        pending_bytes: 0,
                    });
                sum.lag = sum
                    .lag
                    .saturating_add(get(&g.behind).saturating_add(get(&g.unread)));
                sum.pending_events = sum.pending_events.saturating_add(get(&g.pending_events));
                sum.pending_bytes = sum.pending_bytes.saturating_add(get(&g.pending_bytes));
            }
        }
        by_plugin.into_values().collect()
    }

    /// How many dead letters each plugin has, by (tenant, plugin), without
    /// reading them: the log counts them once when it opens and keeps the
    /// counts as dead letters are stored, discarded and redriven.
    pub fn dead_letter_depths(&self) -> DeadLetterDepths {
        self.inner.log.dead_letter_depths()
    }

    /// Whether the log can be written now: false from the first failed
    /// append or commit (disk full, data directory gone, file system
    /// read-only) until a write or the log's probe succeeds again.
    pub fn writable(&self) -> bool {
        self.inner.log.health().writable
    }

    /// The log's health, with the last write error while not writable.
    pub fn log_health(&self) -> LogHealth {
        self.inner.log.health()
    }

    /// How often each supervised task was restarted after it stopped
    /// unexpectedly (tasks never restarted are not listed).
    pub fn restarts(&self) -> BTreeMap<Task, u64> {
        self.inner
            .restarts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// The plugins in quarantine now.
    pub fn quarantined(&self) -> Vec<Quarantine> {
        let mut all: Vec<_> = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(q, _)| q.clone())
            .collect();
        all.sort_by(|a, b| (&a.tenant, &a.plugin).cmp(&(&b.tenant, &b.plugin)));
        all
    }

    /// The host's plugin statuses, each with its quarantine if it has one.
    pub fn statuses(&self) -> Vec<plugbus_runtime::PluginStatus> {
        let quarantined = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut statuses = self.inner.host.statuses();
        for status in &mut statuses {
            let key = (status.tenant.clone(), status.name.clone());
            status.quarantine = quarantined.get(&key).map(|(q, _)| q.clone());
        }
        statuses
    }

    /// Ends a plugin's quarantine now; returns whether it was quarantined.
    pub fn resume(&self, tenant: &str, plugin: &str) -> bool {
        let key = (tenant.to_owned(), plugin.to_owned());
        let entry = self
            .inner
            .quarantined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        match entry {
            Some((_, wake)) => {
                wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// The log the bus publishes into.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    /// The (tenant, plugin)s of which this host holds a lease now (of one
    /// partition at least): those it delivers for. Every loaded plugin on
    /// a log one host has alone.
    pub fn held_leases(&self) -> Vec<(String, String)> {
        let mut held: Vec<(String, String)> = self
            .inner
            .leases
            .held()
            .into_iter()
            .map(|(tenant, plugin, _)| (tenant, plugin))
            .collect();
        held.dedup();
        held
    }

    /// The (tenant, plugin, partition)s whose lease this host holds now,
    /// sorted.
    pub fn held_partitions(&self) -> Vec<(String, String, Partition)> {
        self.inner.leases.held()
    }

    /// This host's id among the hosts sharing the log.
    pub fn host_id(&self) -> &str {
        &self.inner.leases.host
    }

    /// Stops every consumer after the batch it is delivering, and waits;
    /// then, when several hosts share the log, leaves their registry and
    /// releases every lease, so that the others take the plugins over at
    /// their next renewal round.
    pub async fn shutdown(self) {
        self.inner.leases.close().await;
        self.reloads.abort();
        self.retention.abort();
        let _ = self.inner.stop.send(true);
        let consumers: Vec<_> = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, task)| task)
            .collect();
        for task in consumers {
            let _ = task.await;
        }
        if let Some(keeper) = self.keeper {
            keeper.abort();
            let _ = keeper.await;
        }
        crate::lease::release_all(&self.inner).await;
    }
}
